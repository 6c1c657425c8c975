"""What bench/rollout.py and bench/reconnect.py share: broker, hub, joins, worker processes, measurements.

Facts the figures depend on (see bench/README.md):

- the broker is a real Mosquitto configured by ``edgehub mosquitto-config`` (TLS, client certificates, the
  dynamic security plugin) plus, for the bench only, ``sys_interval 1`` (its ``$SYS`` counters each second)
  and two identities of its own: ``bench.observer`` reads everything (``$SYS`` included) and writes
  ``bench/#``, ``raw-*`` sessions read and write ``bench/raw/#``;
- the hub is ``edgehub serve`` with a settings file that raises ``join_rate_limit`` (every simulated node
  joins from this machine); nothing else differs from its defaults;
- every simulated client binds its own source address in 127.0.0.0/8 (``source_address``);
- RLIMIT_NOFILE is raised to the hard limit before anything starts (children inherit it).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import aiomqtt  # noqa: E402

from edgeagent.identity import join  # noqa: E402
from edgeclient.hub import HubClient  # noqa: E402
from edgekit.tasks import OwnedTask  # noqa: E402
from edgesim.fleet import Hub, Mosquitto  # noqa: E402

WORKER = Path(__file__).resolve().parent / "simworker.py"
OBSERVER = "bench.observer"
RAW_ROLE = "bench-raw"
# File descriptors the bench needs beyond one per simulated client (the broker's own, the hub's, logs).
FD_SLACK = 512
# Joins in flight at once: enough to keep the hub's API busy on every core.
JOIN_THREADS = 16
MAX_TOKEN_USES = 10_000


# Simulated nodes per worker process: light ones are cheap, full ones carry a store thread each.
LIGHT_PER_WORKER = 2500
FULL_PER_WORKER = 250


# The component both benchmarks apply to every node (pool "bench").
COMPONENT = REPO / "bench" / "component.yaml"
NAMESPACE, NAME, POOL = "bench", "tiny", "bench"


def default_full_agents(n: int) -> int:
    """How many of n simulated nodes run the full ``Agent`` class unless told: a tenth, 1 to 200."""
    return min(n, max(1, n // 10), 200)


def fleet_parser(description: str) -> argparse.ArgumentParser:
    """The arguments both benchmarks take: --agents, --full-agents, --timeout, --keep."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--agents", type=int, required=True, help="simulated nodes (N)")
    parser.add_argument("--full-agents", type=int, default=None,
                        help="how many of the N run the full Agent class (default min(N, max(1, N // 10), 200))")
    parser.add_argument("--timeout", type=float, default=600.0, help="bound of every wait, seconds (default 600)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) for a look afterwards")
    return parser


def parse_fleet_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser``'s arguments, --agents and --full-agents checked (and the latter defaulted)."""
    args = parser.parse_args(argv)
    if args.agents < 1:
        parser.error("--agents must be at least 1")
    if args.full_agents is None:
        args.full_agents = default_full_agents(args.agents)
    if not 0 <= args.full_agents <= args.agents:
        parser.error("--full-agents must be from 0 to --agents")
    return args


def source_address(i: int) -> str:
    """The i-th simulated client's own loopback address: 127.A.B.C with B and C in 1..254."""
    a, rest = divmod(i, 254 * 254)
    b, c = divmod(rest, 254)
    return f"127.{10 + a}.{b + 1}.{c + 1}"


def raise_nofile(needed: int) -> str:
    """Raise RLIMIT_NOFILE to its hard limit; a warning ("" if none) when ``needed`` is more than that."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if needed > hard:
        return (f"warning: {needed} file descriptors needed but the hard limit is {hard}: raise it (as root: "
                f"ulimit -Hn {needed}; systemd: LimitNOFILE=) or run fewer agents; the broker will refuse clients")
    return ""


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (KiB) of ``pid``."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its children that ended, plus those still running."""
    ticks = os.sysconf("SC_CLK_TCK")

    def own(p: int) -> tuple[float, int]:
        fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
        return sum(int(f) for f in fields[11:15]) / ticks, int(fields[1])

    total, _ = own(pid)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != pid:
            try:
                seconds, parent = own(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
            if parent == pid:
                total += seconds
    return total


def percentile(values: list[float], p: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


class BenchBroker(Mosquitto):
    """edgesim's Mosquitto with identities, plus the bench's $SYS interval and identities."""

    def __init__(self, workdir: Path, *, hub_state: Path, raw_clients: int) -> None:
        super().__init__(workdir, hub_state=hub_state)
        self.raw_clients = raw_clients

    def _write_config(self) -> None:
        super()._write_config()
        with open(self.config, "a") as config:
            config.write("\n# bench only: $SYS counters every second\nsys_interval 1\n")
        path = self.config_dir / "dynamic-security.json"
        document = json.loads(path.read_text())
        names = {c["username"] for c in document["clients"]}
        if OBSERVER not in names:
            acls = [{"acltype": kind, "topic": topic, "priority": 0, "allow": True}
                    for topic in ("#", "$SYS/#") for kind in ("subscribePattern", "publishClientReceive")]
            acls.append({"acltype": "publishClientSend", "topic": "bench/#", "priority": 0, "allow": True})
            document["roles"].append({"rolename": "bench-observer", "acls": acls})
            document["clients"].append({"username": OBSERVER, "roles": [{"rolename": "bench-observer"}]})
            raw_acls = [{"acltype": kind, "topic": "bench/raw/#", "priority": 0, "allow": True}
                        for kind in ("subscribePattern", "publishClientReceive", "publishClientSend")]
            document["roles"].append({"rolename": RAW_ROLE, "acls": raw_acls})
            document["clients"].extend({"username": raw_name(i), "roles": [{"rolename": RAW_ROLE}]}
                                       for i in range(self.raw_clients))
            path.write_text(json.dumps(document))


def raw_name(i: int) -> str:
    """A raw session's user name: with a dot, as no node name has, so the hub leaves it on the broker."""
    return f"raw.{i}"


class SysWatch:
    """The broker's $SYS counters, read by the observer identity every second."""

    TOPICS = ("messages/received", "messages/sent", "bytes/received", "bytes/sent", "clients/connected",
              "publish/messages/received", "publish/messages/sent")

    def __init__(self, broker: BenchBroker) -> None:
        self.broker = broker
        self.values: dict[str, float] = {}
        self.series: list[tuple[float, str, float]] = []
        self.client: aiomqtt.Client | None = None
        self._reader = OwnedTask("sys-watch")
        self.on_message: Callable[[str, bytes], None] | None = None

    async def __aenter__(self) -> SysWatch:
        identity = self.broker.identity(OBSERVER)
        assert identity is not None
        self.client = aiomqtt.Client("127.0.0.1", self.broker.port, identifier=OBSERVER,
                                     tls_context=identity.context(), keepalive=30, timeout=60,
                                     max_queued_incoming_messages=0, max_inflight_messages=1000)
        self.client.pending_calls_threshold = 1_000_000  # the raw round trip keeps a window of publishes in flight
        await self.client.__aenter__()
        await self.client.subscribe("$SYS/broker/#", qos=0)
        self._reader.start(self._read())
        return self

    async def _read(self) -> None:
        assert self.client is not None
        async for message in self.client.messages:
            topic = message.topic.value
            payload = message.payload if isinstance(message.payload, bytes) else b""
            if topic.startswith("$SYS/broker/"):
                key = topic.removeprefix("$SYS/broker/")
                if key in self.TOPICS:
                    try:
                        value = float(payload.split()[0])
                    except (ValueError, IndexError):
                        continue
                    self.values[key] = value
                    self.series.append((time.time(), key, value))
            elif self.on_message is not None:
                self.on_message(topic, payload)

    def snapshot(self) -> dict[str, float]:
        return dict(self.values)

    async def settled_snapshot(self, timeout: float = 10.0) -> dict[str, float]:
        """The counters as of now: after two more $SYS updates (Mosquitto sends them every one to two seconds
        with ``sys_interval 1``), so everything up to this call is counted."""
        seen = sum(1 for _, key, _ in self.series if key == "messages/received")
        deadline = time.monotonic() + timeout
        while sum(1 for _, key, _ in self.series if key == "messages/received") < seen + 2:
            if time.monotonic() > deadline:
                break  # counters stale by at most one interval: better than no figure
            await asyncio.sleep(0.1)
        return self.snapshot()

    async def __aexit__(self, *exc: object) -> None:
        # The reader ends with the client's error when the broker went first: the figures are taken already.
        with contextlib.suppress(Exception):
            await self._reader.stop()
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.__aexit__(None, None, None)


def deltas(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    keys = ("messages/received", "messages/sent", "bytes/received", "bytes/sent")
    return {k.replace("/", "_"): after.get(k, 0) - before.get(k, 0) for k in keys}


class WorkerProcess:
    """One simworker.py process, spoken to with JSON lines."""

    def __init__(self, name: str, log: Path) -> None:
        self.name = name
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> WorkerProcess:
        with open(self.log, "ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, str(WORKER), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=err, limit=1 << 30, start_new_session=True)
        return self

    async def call(self, timeout: float, **command: Any) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        await self.proc.stdin.drain()
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except TimeoutError as exc:
            raise TimeoutError(f"worker {self.name}: no answer to {command['cmd']} within {timeout:.0f} s "
                               f"(log: {self.log})") from exc
        if not line:
            raise RuntimeError(f"worker {self.name} exited; its log:\n{tail(self.log)}")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"worker {self.name}: {answer['error']}\n{tail(self.log)}")
        return answer

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        try:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(b'{"cmd": "stop"}\n')
            await proc.stdin.drain()
            await asyncio.wait_for(proc.wait(), 30)
        except (TimeoutError, OSError, ConnectionError):
            proc.kill()
            await proc.wait()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Bench:
    """Broker, hub and worker processes under one temporary directory; ``close`` stops and removes all."""

    def __init__(self, *, agents: int, raw_clients: int, timeout: float, keep: bool = False) -> None:
        self.agents = agents
        self.timeout = timeout
        self.keep = keep
        self.workdir = Path(tempfile.mkdtemp(prefix="ec-bench-", dir="/tmp"))
        self.hub_dir = self.workdir / "hub"
        self.broker = BenchBroker(self.workdir / "broker", hub_state=Hub.state_dir_of(self.hub_dir),
                                  raw_clients=raw_clients)
        self.hub: Hub | None = None
        self.workers: list[WorkerProcess] = []
        self.nodes_dir = self.workdir / "nodes"

    def start(self) -> None:
        self.broker.start()
        settings = self.workdir / "hub-settings.json"
        # The one setting the bench changes: every simulated node joins from this machine.
        settings.write_text(json.dumps({"join_rate_limit": {"per_second": 100000, "burst": 100000}}))
        self.hub = Hub(self.hub_dir, self.broker.url, config=settings).start()

    @property
    def hub_pid(self) -> int:
        assert self.hub is not None and self.hub.proc is not None
        return self.hub.proc.pid

    @property
    def broker_pid(self) -> int:
        assert self.broker.proc is not None
        return self.broker.proc.pid

    def state_dir(self, i: int) -> Path:
        return self.nodes_dir / node_name(i) / "state"

    def join_all(self, pool: str, count: int) -> float:
        """Join ``count`` nodes over the HTTP API (the agent's own join), JOIN_THREADS at a time; seconds taken."""
        assert self.hub is not None
        tokens = [self.hub.token(pool, uses=min(MAX_TOKEN_USES, count - k), ttl="2h")
                  for k in range(0, count, MAX_TOKEN_USES)]
        url = self.hub.url
        deadline = time.monotonic() + self.timeout

        def one(i: int) -> None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"joins did not finish within {self.timeout:.0f} s")
            join(hub_url=url, token=tokens[i // MAX_TOKEN_USES], state_dir=self.state_dir(i), node=node_name(i))

        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(JOIN_THREADS) as pool_:
            for future in concurrent.futures.as_completed([pool_.submit(one, i) for i in range(count)]):
                future.result()
        return time.perf_counter() - started

    def hub_client(self, *, timeout: float = 120.0) -> HubClient:
        """The hub's API as its operator (the admin token the hub wrote)."""
        assert self.hub is not None
        return HubClient.at(self.hub.url, token=self.hub.admin_token_path.read_text().strip(), timeout=timeout)

    async def start_workers(self, count: int, prefix: str) -> list[WorkerProcess]:
        started = [await WorkerProcess(f"{prefix}{k}", self.workdir / f"worker-{prefix}{k}.log").start()
                   for k in range(count)]
        self.workers.extend(started)
        return started

    async def start_agents(self, n: int, full: int, deadline: float
                           ) -> tuple[list[WorkerProcess], list[WorkerProcess]]:
        """Start nodes 0..n-1 as agents, the first ``full`` as the ``Agent`` class (workers of their own), the
        rest light; (full workers, light workers) once every one is connected."""
        full_nodes = [[str(self.state_dir(i)), source_address(i)] for i in range(full)]
        light_nodes = [[str(self.state_dir(i)), source_address(i)] for i in range(full, n)]
        full_workers = await self.start_workers(math.ceil(full / FULL_PER_WORKER), "full") if full else []
        light_workers = await self.start_workers(math.ceil((n - full) / LIGHT_PER_WORKER), "light") \
            if n > full else []
        await asyncio.gather(
            *(w.call(deadline - time.monotonic(), cmd="agents", kind="full", nodes=part)
              for w, part in zip(full_workers, split(full_nodes, len(full_workers)), strict=True)),
            *(w.call(deadline - time.monotonic(), cmd="agents", kind="light", nodes=part)
              for w, part in zip(light_workers, split(light_nodes, len(light_workers)), strict=True)))
        return full_workers, light_workers

    async def wait_online(self, count: int, deadline: float) -> float:
        """Poll the hub until ``count`` nodes are online; seconds waited."""
        started = time.monotonic()
        while True:
            nodes = await asyncio.to_thread(self.hub_client().list, "nodes")
            if sum(n["presence"] == "online" for n in nodes) >= count:
                return time.monotonic() - started
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {sum(n['presence'] == 'online' for n in nodes)} of {count} nodes online "
                                   "on the hub before the timeout")
            await asyncio.sleep(poll_interval(count))

    async def close(self) -> None:
        await asyncio.gather(*(w.stop() for w in self.workers), return_exceptions=True)
        if self.hub is not None:
            self.hub.stop()
        self.broker.stop()
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


def node_name(i: int) -> str:
    return f"sim-{i:05d}"


def poll_interval(count: int) -> float:
    """Seconds between polls of the hub's API: each poll reads every node, so a big fleet is polled less often."""
    return min(2.0, 0.2 + count / 5000)


def split(items: list[Any], parts: int) -> list[list[Any]]:
    parts = max(1, min(parts, len(items)))
    return [items[k::parts] for k in range(parts)]


def machine() -> dict[str, Any]:
    mem = subprocess.run(["free", "-h"], capture_output=True, text=True).stdout.splitlines()
    return {"nproc": os.cpu_count(), "memory": mem[1].split()[1] if len(mem) > 1 else "?",
            "date": time.strftime("%Y-%m-%d"), "python": sys.version.split()[0]}
