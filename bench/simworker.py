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
  will, presence, resync and status on every connect, every assignment verified and decrypted with the real
  ``edgeprotocol`` code (``open_sealed``), then what a real agent sends for it when its apply is quick (an
  Applied event, then, ``status_coalesce`` later, status Deployed, with real ``NodeStatus``/``Event``
  messages). No store, no runtime. The session is paho's MQTT client driven straight from this worker's
  event loop, without aiomqtt: paho's socket callbacks register its socket with the loop, its MQTT
  callbacks (connected, subscribed, message, acknowledged, disconnected) do the node's work, QoS 1
  publishes are handed to paho without waiting for each acknowledgement (paho keeps them until the broker
  acknowledges them), and one task per worker runs every client's keepalive check once a second. aiomqtt's
  futures and timeouts for each publish and its timer for each client cost more CPU than the node's work.

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
import socket
import ssl
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import aiomqtt  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

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
# How often the light agents' keepalive is checked (aiomqtt checks each of its clients once a second too).
KEEPALIVE_CHECK_INTERVAL = 1.0
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
    """A protocol-faithful node without store or runtime (see the module docstring).

    Its MQTT session is paho's client driven from the worker's event loop by callbacks: the socket is
    read when the loop sees it readable, what paho queued is written once the loop's current callbacks are
    done, QoS 1 publishes are handed to paho (which keeps them until the broker acknowledges them), and
    keepalive is checked by the worker's one ``KeepaliveTicker``. One task per node only connects, waits
    for the connection to end and waits out the reconnect backoff. Each connection gets a new paho client,
    as each aiomqtt session had: a clean session, and nothing of a lost connection is sent again (the
    presence, resync and status of the next connect say where the node is).
    """

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
        self._loop = asyncio.get_running_loop()
        # The connection's state, new for each connection (paho's client too: a clean session each time).
        self._client: mqtt.Client | None = None
        self._fd = -1
        self._subscribed: asyncio.Future[None] = self._loop.create_future()
        self._lost: asyncio.Future[None] = self._loop.create_future()
        self._flush_scheduled = False
        self._waiting_writable = False
        self._status_timer: asyncio.TimerHandle | None = None
        # Status publishes not acknowledged yet -> the revisions they report Deployed (counted once acknowledged,
        # as a full agent's are).
        self._deployed_by_mid: dict[int, list[int]] = {}

    def start(self) -> None:
        self._task.start(self._run())

    async def stop(self) -> None:
        with contextlib.suppress(Exception):  # a session that died is reported by its missing figures
            await self._task.stop()

    def check_keepalive(self) -> None:
        """paho's periodic duty (the worker's ticker calls it once a second): a PINGREQ when the link has been
        quiet for the keepalive, and dropping the connection when the broker did not answer the last one."""
        if self._client is not None:
            try:
                self._client.loop_misc()
            except Exception:
                logger.exception("%s: the keepalive check failed; dropping the connection", self.node)
                self._drop()

    def _context(self) -> ssl.SSLContext:
        tls = self.identity.broker_tls(self.state_dir)
        assert tls is not None, "the bench runs the broker with identities"
        return tls.context()

    async def _run(self) -> None:
        attempt = 0
        context = self._context()
        while True:
            if await self._one_connection(context):
                attempt = 0
            attempt += 1
            delay = random.uniform(0, min(30.0, 0.5 * 2 ** attempt))  # as MqttSession's backoff
            logger.debug("%s: connection ended; reconnecting in %.1f s", self.node, delay)
            await asyncio.sleep(delay)

    async def _one_connection(self, context: ssl.SSLContext) -> bool:
        """Connect, subscribe and serve until the connection is lost; True if it got as far as subscribed."""
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edgeagent-{self.node}", clean_session=True,
                             reconnect_on_failure=False)
        client.tls_set_context(context)
        client.will_set(topics.presence(self.node), Presence(node=self.node, state="offline").encode(), qos=1,
                        retain=True)
        if not await self._connect(client):
            return False
        self._attach(client)
        try:
            await asyncio.wait((self._subscribed, self._lost), timeout=MQTT_TIMEOUT,
                               return_when=asyncio.FIRST_COMPLETED)
            if not self._subscribed.done():
                return False  # refused, lost or no answer within MQTT_TIMEOUT
            await self._lost
            return True
        finally:
            self._drop()

    async def _connect(self, client: mqtt.Client) -> bool:
        """paho's connect (TCP, TLS handshake, CONNECT sent) blocks: run it in a thread, as aiomqtt does."""
        connecting = self._loop.run_in_executor(None, client.connect, self.broker.host, self.broker.port,
                                                KEEPALIVE, self.bind)
        try:
            await asyncio.shield(connecting)  # a thread cannot be cancelled: see below
        except asyncio.CancelledError:
            # Stopped mid-connect: close the socket once the thread has opened it, rather than leak it.
            connecting.add_done_callback(lambda _: _disconnect_now(client))
            raise
        except OSError as exc:  # refused, timed out, TLS failure (ssl.SSLError is an OSError)
            logger.debug("%s: connecting failed: %s", self.node, exc)
            return False
        return client.socket() is not None  # paho closes it when even the CONNECT could not be written

    def _attach(self, client: mqtt.Client) -> None:
        """Wire a freshly connected client into the event loop (its callbacks are set only now, in the loop's
        thread: paho called none of them from the connecting thread)."""
        self._client = client
        self._subscribed = self._loop.create_future()
        self._lost = self._loop.create_future()
        self._deployed_by_mid.clear()
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_disconnect = self._on_disconnect
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        sock = client.socket()
        assert sock is not None
        self._fd = sock.fileno()
        self._loop.add_reader(self._fd, self._on_readable)
        if client.want_write():  # the rest of a CONNECT the socket did not take at once
            self._on_register_write(client, None, sock)

    def _drop(self) -> None:
        """End the current connection, if any (stop, timeout, a bug in a callback); the lost future resolves."""
        client, self._client = self._client, None
        if client is not None:
            _disconnect_now(client)
        if not self._lost.done():
            self._lost.set_result(None)

    # --- paho's socket callbacks: the event loop does its I/O -----------------------------------------------

    def _on_readable(self) -> None:
        client = self._client
        if client is None:
            return
        try:
            client.loop_read()
            # paho reads a packet at a time; what TLS already decrypted the socket will not signal again.
            while isinstance(sock := client.socket(), ssl.SSLSocket) and sock.pending():
                client.loop_read()
        except Exception:
            logger.exception("%s: reading failed; dropping the connection", self.node)
            self._drop()

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # paho has queued bytes (a publish, an acknowledgement, a ping): write them once the loop's current
        # callbacks are done, so what they queue after this goes in the same write. Writability is waited
        # for only when the socket's send buffer is full (see _flush).
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        client = self._client
        if client is None:
            return
        try:
            client.loop_write()
        except Exception:
            logger.exception("%s: writing failed; dropping the connection", self.node)
            self._drop()
            return
        if client.want_write() and not self._waiting_writable and client.socket() is not None:
            self._waiting_writable = True
            self._loop.add_writer(self._fd, self._flush)

    def _on_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._waiting_writable:
            self._waiting_writable = False
            self._loop.remove_writer(self._fd)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._loop.remove_reader(self._fd)
        self._on_unregister_write(client, userdata, sock)

    # --- paho's MQTT callbacks ----------------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            logger.debug("%s: the broker refused the connection: %s", self.node, reason)
            return  # paho closes the connection
        client.subscribe(topics.assignments_of(self.node), qos=1)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        self.metrics.connects.append(time.time())
        client.publish(topics.presence(self.node), Presence(node=self.node, state="online", at=now()).encode(),
                       qos=1, retain=True)
        held = {f"{ns}/{rel}": rev for (ns, rel), rev in self.held.items()}
        client.publish(topics.resync(self.node), Resync(node=self.node, held=held).encode(), qos=1)
        self._publish_status()
        self.connected.set()
        if not self._subscribed.done():
            self._subscribed.set_result(None)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        logger.debug("%s: disconnected: %s", self.node, reason)
        self.connected.clear()
        if self._status_timer is not None:
            self._status_timer.cancel()  # as the real agent's: the next connect sends the status
            self._status_timer = None
        if not self._lost.done():
            self._lost.set_result(None)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        if (revisions := self._deployed_by_mid.pop(mid, None)) is not None:
            self.metrics.saw_deployed(self.node, revisions)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        payload = message.payload
        if not payload:
            return
        try:
            parsed = topics.NodeTopic.parse(message.topic)
            assignment = open_sealed(payload, self.hub_key, node=self.node, generation=self.identity.generation,
                                     bundle_key=self.bundle_key)
            if (parsed.namespace, parsed.release) != assignment.key:
                raise ProtocolError("assignment on the wrong topic")
        except (ProtocolError, ValueError) as exc:
            logger.warning("%s rejected a message on %s: %s", self.node, message.topic, exc)
            return
        self.metrics.assignment_bytes = max(self.metrics.assignment_bytes, len(payload))
        key = assignment.key
        before = self.held.get(key, 0)
        if assignment.revision <= before:
            return  # not newer than what the node holds: nothing to do, as the real agent
        if assignment.kind == "tombstone":
            self.held.pop(key, None)
            self._publish_status()
            return
        self.held[key] = assignment.revision
        self.applies += 1
        self.event_seq += 1
        event = Event(node=self.node, seq=self.event_seq, at=now(), reason="Applied",
                      message=f"revision {assignment.revision} applied", namespace=key[0], release=key[1],
                      revision=assignment.revision)
        client.publish(topics.events(self.node), event.encode(), qos=1)
        # The real agent's status waits status_coalesce for the changes that follow (one report for all of
        # them): an apply as quick as a dry run reports Deployed alone, without the Applying before it.
        if self._status_timer is None:
            self._status_timer = self._loop.call_later(STATUS_COALESCE, self._publish_coalesced_status)

    def _publish_coalesced_status(self) -> None:
        self._status_timer = None
        self._publish_status()

    def _publish_status(self) -> None:
        """A NodeStatus of every release held, all Deployed (what a quick apply reports)."""
        client = self._client
        if client is None:
            return
        releases = tuple(ReleaseStatus(namespace=namespace, release=release, desired_revision=revision,
                                       applied_revision=revision, phase="Deployed", ready=1, total=1,
                                       observed_at=now())
                         for (namespace, release), revision in sorted(self.held.items()))
        self.seq += 1
        payload = NodeStatus(node=self.node, seq=self.seq, observed_at=now(), releases=releases,
                             agent_version="bench-light", runtime="dry-run").encode()
        self.metrics.status_bytes = max(self.metrics.status_bytes, len(payload))
        info = client.publish(topics.status(self.node), payload, qos=1, retain=True)
        self._deployed_by_mid[info.mid] = [r.applied_revision for r in releases]


def _disconnect_now(client: mqtt.Client) -> None:
    """Close ``client``'s connection at once: a DISCONNECT (as aiomqtt sends when its session ends), written
    now, after which paho closes the socket itself; if the socket cannot take it, the socket is shut down and
    paho, reading the end of the stream, closes it as after any lost connection."""
    if client.socket() is None:
        return
    client.disconnect()
    client.loop_write()
    if (sock := client.socket()) is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        client.loop_read()


class KeepaliveTicker:
    """paho's keepalive duty (``LightAgent.check_keepalive``) for every light agent of this worker, from one
    task once a second: aiomqtt runs a timer of its own per client, thousands of wake-ups a second per worker
    for a PINGREQ each client needs every 10 s at most."""

    def __init__(self) -> None:
        self.agents: list[LightAgent] = []
        self._task = OwnedTask("light-keepalive")

    def add(self, agent: LightAgent) -> None:
        self.agents.append(agent)
        if not self._task.running:
            self._task.restart(self._tick())

    async def stop(self) -> None:
        await self._task.stop()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_CHECK_INTERVAL)
            for agent in self.agents:
                agent.check_keepalive()


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

        session.publish = publish_watched  # type: ignore[method-assign]  # publish wrapped to watch statuses
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
        self.keepalive = KeepaliveTicker()
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
                    self.keepalive.add(agent)
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
        await self.keepalive.stop()
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
