"""A benchmark worker process: many simulated nodes (or raw MQTT sessions) in one event loop.

    python bench/simworker.py      (started by bench/rollout.py and bench/reconnect.py, never by hand)

Reads one JSON command a line on stdin and answers each with one JSON line on
stdout (logs go to stderr). Commands:

- ``{"cmd": "agents", "kind": "light"|"full", "nodes": [[STATE_DIR, BIND_ADDRESS], ...]}``: start one agent
  per node and answer once every one is connected (``connected``, RSS before and after, seconds);
- ``{"cmd": "raw", "hub_state": DIR, "broker": URL, "clients": [[NAME, BIND], ...], "reply_bytes": N}``:
  plain aiomqtt (paho) sessions, no edgecollab code on the message path: each subscribes to
  ``bench/raw/NAME/cmd`` and answers every message there with ``reply_bytes`` bytes on ``bench/raw/NAME/reply``;
- ``{"cmd": "raw_stop"}``, ``{"cmd": "report"}`` (per-node Deployed times, connect times, applies, CPU and
  RSS of this process), ``{"cmd": "stop"}`` (stop everything and exit).

Two kinds of simulated node:

- ``full``: the project's ``Agent`` class with the dry-run runtime (local SQLite store and its thread,
  reconcile loop, uplink, certificate renewer): exactly ``edgeagent run --runtime dry-run``.
- ``light``: protocol-faithful and cheap: a real TLS MQTT session with the node's certificate and last
  will, presence and resync on connect, every assignment verified and decrypted with the real
  ``edgeprotocol`` code (``open_sealed``), then what a real agent sends for it when its apply is quick (an
  Applied event, then, ``status_coalesce`` later, status Deployed, with real ``NodeStatus``/``Event``
  messages). No store, no runtime.

Every client socket binds the source address it is given (127.0.0.0/8), see bench/README.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import random
import resource
import ssl
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import aiomqtt  # noqa: E402

from edgeagent.agent import Agent, AgentSettings  # noqa: E402
from edgeagent.identity import NodeIdentity, load_bundle_key  # noqa: E402
from edgeagent.runtime import DryRunRuntime, DryRunSettings  # noqa: E402
from edgekit.mqtt import BrokerAddress, MqttSession  # noqa: E402
from edgekit.tasks import OwnedTask  # noqa: E402
from edgeprotocol import topics  # noqa: E402
from edgeprotocol.errors import ProtocolError  # noqa: E402
from edgeprotocol.messages import Event, NodeStatus, Presence, ReleaseStatus, Resync, now  # noqa: E402
from edgeprotocol.signing import load_public_key, open_sealed  # noqa: E402

logger = logging.getLogger("simworker")
# Connects in progress at once per worker while agents start (a fleet does not boot in one instant; the
# reconnect storm after a broker restart is not throttled: the agents' own backoff spreads it).
START_CONCURRENCY = 64
KEEPALIVE = 10  # the agent's default
MQTT_TIMEOUT = 60.0
STATUS_COALESCE = AgentSettings(state_dir=Path(".")).status_coalesce  # the agent's default


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Metrics:
    """What the simulated nodes of this worker saw: Deployed times, connects, applies."""

    def __init__(self) -> None:
        self.deployed: dict[str, dict[int, float]] = {}  # node -> revision -> wall time of the Deployed status
        self.connects: list[float] = []  # wall time of every MQTT connection established
        self.assignment_bytes = 0
        self.status_bytes = 0

    def saw_status(self, node: str, payload: bytes) -> None:
        self.status_bytes = max(self.status_bytes, len(payload))
        try:
            status = NodeStatus.decode(payload)
        except ProtocolError:
            return
        self.saw_deployed(node, [r.applied_revision for r in status.releases if r.phase == "Deployed"])

    def saw_deployed(self, node: str, revisions: list[int]) -> None:
        """``node`` reported these revisions Deployed now (the first report of each counts)."""
        mine = self.deployed.setdefault(node, {})
        for revision in revisions:
            mine.setdefault(revision, time.time())


class LightAgent:
    """A protocol-faithful node without store or runtime (see the module docstring)."""

    def __init__(self, state_dir: Path, bind: str, metrics: Metrics) -> None:
        self.identity = NodeIdentity.load(state_dir)
        self.node = self.identity.node
        self.state_dir = state_dir
        self.bind = bind
        self.metrics = metrics
        self.hub_key = load_public_key(self.identity.hub_public_key)
        self.bundle_key = load_bundle_key(state_dir)
        self.broker = BrokerAddress.parse(self.identity.mqtt_url)
        self.held: dict[tuple[str, str], int] = {}
        self.seq = 0
        self.event_seq = 0
        self.connected = asyncio.Event()
        self.applies = 0
        self._task = OwnedTask(f"light-{self.node}")

    def start(self) -> None:
        self._task.start(self._run())

    async def stop(self) -> None:
        with contextlib.suppress(Exception):  # a session that died is reported by its missing figures
            await self._task.stop()

    def _context(self) -> ssl.SSLContext:
        tls = self.identity.broker_tls(self.state_dir)
        assert tls is not None, "the bench runs the broker with identities"
        return tls.context()

    async def _run(self) -> None:
        attempt = 0
        context = self._context()
        while True:
            try:
                will = aiomqtt.Will(topics.presence(self.node), Presence(node=self.node, state="offline").encode(),
                                    qos=1, retain=True)
                async with aiomqtt.Client(self.broker.host, self.broker.port, identifier=f"edgeagent-{self.node}",
                                          tls_context=context, will=will, keepalive=KEEPALIVE, clean_session=True,
                                          timeout=MQTT_TIMEOUT, bind_address=self.bind,
                                          max_queued_incoming_messages=1000) as client:
                    await client.subscribe(topics.assignments_of(self.node), qos=1, timeout=MQTT_TIMEOUT)
                    attempt = 0
                    self.metrics.connects.append(time.time())
                    await client.publish(topics.presence(self.node),
                                         Presence(node=self.node, state="online", at=now()).encode(), qos=1,
                                         retain=True)
                    held = {f"{ns}/{rel}": rev for (ns, rel), rev in self.held.items()}
                    await client.publish(topics.resync(self.node), Resync(node=self.node, held=held).encode(), qos=1)
                    await self._status(client, {})
                    self.connected.set()
                    async for message in client.messages:
                        await self._on_message(client, message)
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                attempt += 1
                delay = random.uniform(0, min(30.0, 0.5 * 2 ** attempt))  # as MqttSession's backoff
                logger.debug("%s: %s; reconnecting in %.1f s", self.node, exc, delay)
                await asyncio.sleep(delay)

    async def _status(self, client: aiomqtt.Client, phases: dict[tuple[str, str], tuple[str, int, int]]) -> None:
        """A NodeStatus of every release held: ``phases`` overrides (phase, applied revision, ready)."""
        releases = []
        for key, revision in sorted(self.held.items()):
            phase, applied, ready = phases.get(key, ("Deployed", revision, 1))
            releases.append(ReleaseStatus(namespace=key[0], release=key[1], desired_revision=revision,
                                          applied_revision=applied, phase=phase, ready=ready, total=1,
                                          observed_at=now()))
        self.seq += 1
        payload = NodeStatus(node=self.node, seq=self.seq, observed_at=now(), releases=tuple(releases),
                             agent_version="bench-light", runtime="dry-run").encode()
        await client.publish(topics.status(self.node), payload, qos=1, retain=True, timeout=MQTT_TIMEOUT)
        self.metrics.status_bytes = max(self.metrics.status_bytes, len(payload))
        self.metrics.saw_deployed(self.node, [r.applied_revision for r in releases if r.phase == "Deployed"])

    async def _on_message(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        payload = message.payload if isinstance(message.payload, bytes) else b""
        if not payload:
            return
        try:
            parsed = topics.NodeTopic.parse(message.topic.value)
            assignment = open_sealed(payload, self.hub_key, node=self.node, generation=self.identity.generation,
                                     bundle_key=self.bundle_key)
            if (parsed.namespace, parsed.release) != assignment.key:
                raise ProtocolError("assignment on the wrong topic")
        except (ProtocolError, ValueError) as exc:
            logger.warning("%s rejected a message on %s: %s", self.node, message.topic.value, exc)
            return
        self.metrics.assignment_bytes = max(self.metrics.assignment_bytes, len(payload))
        key = assignment.key
        before = self.held.get(key, 0)
        if assignment.revision <= before:
            return  # not newer than what the node holds: nothing to do, as the real agent
        if assignment.kind == "tombstone":
            self.held.pop(key, None)
            await self._status(client, {})
            return
        self.held[key] = assignment.revision
        self.applies += 1
        self.event_seq += 1
        event = Event(node=self.node, seq=self.event_seq, at=now(), reason="Applied",
                      message=f"revision {assignment.revision} applied", namespace=key[0], release=key[1],
                      revision=assignment.revision)
        await client.publish(topics.events(self.node), event.encode(), qos=1, timeout=MQTT_TIMEOUT)
        # The real agent's status waits status_coalesce for the changes that follow: an apply as quick as a
        # dry run reports Deployed alone, without the Applying before it.
        await asyncio.sleep(STATUS_COALESCE)
        await self._status(client, {})


class FullAgent:
    """``edgeagent run --runtime dry-run`` in this process: the real Agent class."""

    def __init__(self, state_dir: Path, bind: str, metrics: Metrics) -> None:
        self.identity = NodeIdentity.load(state_dir)
        self.node = self.identity.node
        self.metrics = metrics
        self.runtime = DryRunRuntime(DryRunSettings(work_dir=state_dir / "dry-run"))
        self.agent = Agent(AgentSettings(state_dir=state_dir, mqtt_bind_address=bind), self.identity, self.runtime)
        self.connected = asyncio.Event()

    @property
    def applies(self) -> int:
        return self.runtime.applies

    async def enter(self) -> None:
        await self.agent.__aenter__()
        session: MqttSession = self.agent.session
        publish, on_connect = session.publish, session._on_connect
        metrics, node, status_topic = self.metrics, self.node, topics.status(self.node)

        async def publish_watched(topic: str, payload: bytes | str, *, retain: bool, qos: int = 1) -> bool:
            sent = await publish(topic, payload, retain=retain, qos=qos)
            if sent and topic == status_topic:
                metrics.saw_status(node, payload if isinstance(payload, bytes) else payload.encode())
            return sent

        async def on_connect_watched(s: MqttSession) -> None:
            metrics.connects.append(time.time())
            assert on_connect is not None
            await on_connect(s)
            self.connected.set()

        session.publish = publish_watched  # type: ignore[method-assign]
        session._on_connect = on_connect_watched

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.agent.__aexit__(None, None, None)


class RawSession:
    """A plain MQTT session: answers every command with a reply of a fixed size."""

    def __init__(self, name: str, bind: str, broker: BrokerAddress, context: ssl.SSLContext, reply: bytes) -> None:
        self.name, self.bind, self.broker, self.context, self.reply = name, bind, broker, context, reply
        self.connected = asyncio.Event()
        self._task = OwnedTask(f"raw-{self.name}")

    def start(self) -> None:
        self._task.start(self._run())

    async def stop(self) -> None:
        with contextlib.suppress(Exception):  # a session that died is reported by its missing figures
            await self._task.stop()

    async def _run(self) -> None:
        async with aiomqtt.Client(self.broker.host, self.broker.port, identifier=self.name,
                                  tls_context=self.context, keepalive=60, clean_session=True, timeout=MQTT_TIMEOUT,
                                  bind_address=self.bind) as client:
            await client.subscribe(f"bench/raw/{self.name}/cmd", qos=1, timeout=MQTT_TIMEOUT)
            self.connected.set()
            async for _ in client.messages:
                await client.publish(f"bench/raw/{self.name}/reply", self.reply, qos=1, timeout=MQTT_TIMEOUT)


def raw_identity(hub_state: Path, folder: Path, name: str) -> ssl.SSLContext:
    """A client certificate of the hub CA for ``name`` (made here: the raw sessions are the bench's own)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edgehub.identity import HubIdentity

    hub = _hub_identity(hub_state, HubIdentity)
    key = Ed25519PrivateKey.generate()
    cert = hub.issue(key.public_key(), name, usage="client", lifetime=dt.timedelta(days=1))
    key_file, cert_file = folder / f"{name}.key", folder / f"{name}.crt"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=hub.ca_pem)
    context.load_cert_chain(cert_file, key_file)
    return context


_HUB: Any = None


def _hub_identity(hub_state: Path, cls: Any) -> Any:
    global _HUB
    if _HUB is None:
        _HUB = cls.load_or_create(hub_state)
    return _HUB


class Worker:
    def __init__(self) -> None:
        self.metrics = Metrics()
        self.agents: list[LightAgent | FullAgent] = []
        self.raw: list[RawSession] = []
        self.rss_start = rss_kib()

    async def agents_cmd(self, kind: str, nodes: list[list[str]]) -> dict[str, Any]:
        rss_before, started = rss_kib(), time.monotonic()
        slots = asyncio.Semaphore(START_CONCURRENCY)

        async def start_one(state_dir: str, bind: str) -> None:
            async with slots:
                if kind == "full":
                    agent: LightAgent | FullAgent = FullAgent(Path(state_dir), bind, self.metrics)
                    self.agents.append(agent)
                    await agent.enter()
                else:
                    agent = LightAgent(Path(state_dir), bind, self.metrics)
                    self.agents.append(agent)
                    agent.start()
                await agent.connected.wait()

        await asyncio.gather(*(start_one(s, b) for s, b in nodes))
        return {"connected": sum(a.connected.is_set() for a in self.agents), "seconds": time.monotonic() - started,
                "rss_before_kib": rss_before, "rss_after_kib": rss_kib()}

    async def raw_cmd(self, hub_state: str, broker: str, clients: list[list[str]], reply_bytes: int,
                      folder: str) -> dict[str, Any]:
        address = BrokerAddress.parse(broker)
        Path(folder).mkdir(parents=True, exist_ok=True)
        reply = b"r" * reply_bytes
        slots = asyncio.Semaphore(START_CONCURRENCY)

        async def start_one(name: str, bind: str) -> None:
            async with slots:
                context = await asyncio.to_thread(raw_identity, Path(hub_state), Path(folder), name)
                session = RawSession(name, bind, address, context, reply)
                self.raw.append(session)
                session.start()
                await session.connected.wait()

        await asyncio.gather(*(start_one(n, b) for n, b in clients))
        return {"connected": len(self.raw)}

    async def raw_stop(self) -> dict[str, Any]:
        await asyncio.gather(*(s.stop() for s in self.raw))
        self.raw.clear()
        return {"stopped": True}

    def report(self) -> dict[str, Any]:
        return {"deployed": self.metrics.deployed, "connects": self.metrics.connects,
                "applies": {a.node: a.applies for a in self.agents},
                "connected": sum(a.connected.is_set() for a in self.agents),
                "assignment_bytes": self.metrics.assignment_bytes, "status_bytes": self.metrics.status_bytes,
                "cpu_s": cpu_seconds(), "rss_kib": rss_kib(), "rss_start_kib": self.rss_start}

    async def stop(self) -> dict[str, Any]:
        await self.raw_stop()
        await asyncio.gather(*(a.stop() for a in self.agents))
        return {"stopped": True}


async def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s worker: %(name)s: %(message)s")
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 30)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    worker = Worker()

    def answer(data: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(data) + "\n")
        sys.stdout.flush()

    while line := await reader.readline():
        command = json.loads(line)
        cmd = command.pop("cmd")
        try:
            if cmd == "agents":
                answer(await worker.agents_cmd(**command))
            elif cmd == "raw":
                answer(await worker.raw_cmd(**command))
            elif cmd == "raw_stop":
                answer(await worker.raw_stop())
            elif cmd == "report":
                answer(worker.report())
            elif cmd == "stop":
                answer(await worker.stop())
                return
            else:
                answer({"error": f"unknown command {cmd!r}"})
        except Exception as exc:  # the bench prints it and stops
            logger.exception("Command %s failed", cmd)
            answer({"error": f"{cmd}: {type(exc).__name__}: {exc}"})
    await worker.stop()  # stdin closed: the bench is gone


if __name__ == "__main__":
    asyncio.run(main())
