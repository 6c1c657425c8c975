"""A whole edgecollab fleet on one machine: Mosquitto, a hub and simulated nodes.

Used by the demo and by the end-to-end tests, so both run the real commands a
user runs (``edgehub serve``, ``edgeagent join``/``run``, ``edgectl``) as
separate processes against a real broker and real podman. Every simulated node
gets its own state directory and podman storage (``--root``/``--runroot``); a
node joined with ``NodeOptions(runtime="kubernetes", kubeconfig=...)`` applies
to that cluster instead (a k3s node, as docs/edge-nodes.md joins one).
Addresses are loopback only.

Everything here is synchronous and blocking: it drives other processes and is
never imported by the product.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from edgeagent.runtime import PodmanSettings
from edgehub.identity import HubIdentity
from edgekit.mqtt import TlsIdentity

from .faults import LinkProxy
from .net import free_port
from .podman_setup import DEMO_IMAGE, import_image, remove_node_storage

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Processes get this long to stop on SIGTERM before they are killed.
STOP_GRACE_SECONDS = 15.0


class FleetError(RuntimeError):
    pass


def wait_until(predicate: Callable[[], T], *, timeout: float, what: str, interval: float = 0.25) -> T:
    """Poll ``predicate`` until it returns something truthy; raise naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - the predicate may fail while things start
            last_error = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")
        time.sleep(interval)


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


class ManagedProcess:
    """A child process with its output in a log file; stop() is safe to call twice."""

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        if self.running:
            raise FleetError(f"{self.name} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                         start_new_session=True)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop on SIGTERM within %.0f s; killing it", self.name, STOP_GRACE_SECONDS)
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, as in a crash or power loss."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


# A harness-only broker identity that reads every topic, so a test can watch what
# nodes and the hub publish (no product identity may: a node reads only its own).
OBSERVER = "observer.edgesim"
OBSERVER_ROLE = {"rolename": "edgesim-observer", "textname": "test observer: reads everything",
                 "acls": [{"acltype": kind, "topic": "#", "priority": 0, "allow": True}
                          for kind in ("subscribePattern", "publishClientReceive")]}


class Mosquitto(ManagedProcess):
    """A real Mosquitto on a loopback port.

    With ``hub_state`` (what the demo and fleet tests use) it runs the broker with identities exactly as a
    user sets it up: ``edgehub mosquitto-config --state HUB_STATE --listen 127.0.0.1:PORT --out DIR`` then
    ``mosquitto -c DIR/mosquitto.conf`` (TLS, client certificates of the hub CA, per-node permissions), plus
    one harness identity, ``OBSERVER``, that reads every topic. Without it: an anonymous loopback broker
    without persistence (a restart loses retained messages), for tests of the transport alone.
    """

    # Mosquitto cannot bind port 0 and say which port it got, so a free port is
    # picked first; if something takes it before Mosquitto binds, the first
    # start tries again with another (restarts keep theirs: clients reconnect to it).
    PORT_ATTEMPTS = 3

    def __init__(self, workdir: Path, port: int | None = None, *, hub_state: Path | None = None) -> None:
        super().__init__("mosquitto", workdir / "mosquitto.log")
        self.workdir = workdir
        self._chosen = port is None
        self.port = port or free_port()
        self.hub_state = hub_state
        self.config_dir = workdir / "config"
        self.config = self.config_dir / "mosquitto.conf" if hub_state else workdir / "mosquitto.conf"
        self._started_once = False

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.hub_state else 'mqtt'}://127.0.0.1:{self.port}"

    def start(self) -> Mosquitto:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.workdir.mkdir(parents=True, exist_ok=True)
        attempts = self.PORT_ATTEMPTS if self._chosen and not self._started_once else 1
        for attempt in range(1, attempts + 1):
            self._write_config()
            self._spawn([binary, "-c", str(self.config)])
            try:
                wait_until(lambda: _port_open(self.port) or self._check_alive(), timeout=10,
                           what=f"mosquitto on port {self.port}")
                break
            except FleetError:
                if attempt == attempts or "Address already in use" not in self.log_tail():
                    raise
                logger.info("Port %d was taken before mosquitto bound it; trying another", self.port)
                self.port = free_port()
        self._started_once = True
        return self

    def _write_config(self) -> None:
        if self.hub_state is None:
            self.config.write_text(
                f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                "log_dest stdout\nlog_type error\nlog_type warning\nlog_type notice\n"
                # As 'edgehub mosquitto-config' writes them: the broker holds what the hub has not taken yet.
                "max_inflight_messages 1000\nmax_queued_messages 200000\nset_tcp_nodelay true\n"
            )
            return
        result = subprocess.run(
            [sys.executable, "-m", "edgehub.cli", "mosquitto-config", "--state", str(self.hub_state),
             "--listen", f"127.0.0.1:{self.port}", "--out", str(self.config_dir)],
            capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise FleetError(f"edgehub mosquitto-config failed: {result.stderr.strip()}")
        self._add_observer()

    def _add_observer(self) -> None:
        path = self.config_dir / "dynamic-security.json"
        document = json.loads(path.read_text())
        if not any(c["username"] == OBSERVER for c in document["clients"]):
            document["clients"].append({"username": OBSERVER, "roles": [{"rolename": OBSERVER_ROLE["rolename"]}]})
            document["roles"].append(OBSERVER_ROLE)
            path.write_text(json.dumps(document, indent=2))

    def identity(self, common_name: str = OBSERVER) -> TlsIdentity | None:
        """A client certificate of the hub CA for ``common_name`` (None on an anonymous broker): what a node,
        the hub or the observer shows. Connecting as an identity already connected replaces that session."""
        if self.hub_state is None:
            return None
        hub = HubIdentity.load_or_create(self.hub_state)
        folder = self.workdir / "clients"
        folder.mkdir(parents=True, exist_ok=True)
        key, cert = folder / f"{common_name}.key", folder / f"{common_name}.crt"
        hub.ensure_certificate(key, cert, common_name, usage="client")
        return TlsIdentity(ca_pem=hub.trust_bundle_pem, cert_file=cert, key_file=key)

    def _check_alive(self) -> bool:
        if not self.running:
            raise FleetError(f"mosquitto exited:\n{self.log_tail()}")
        return False

    def restart(self) -> None:
        self.stop()
        self.start()


_LISTENING = re.compile(r"edgehub listening on (https?)://127\.0\.0\.1:(\d+)")


def listening_ports(hub_log: Path) -> list[int]:
    """The ports ``edgehub serve`` said it listens on (http or https), in its log, oldest first (one line per start)."""
    return [port for _, port in listening_urls(hub_log)]


def listening_urls(hub_log: Path) -> list[tuple[str, int]]:
    """(scheme, port) of each ``edgehub listening on`` line in the hub's log, oldest first."""
    with contextlib.suppress(OSError):
        return [(scheme, int(port)) for scheme, port in _LISTENING.findall(hub_log.read_text())]
    return []


class Hub(ManagedProcess):
    """``edgehub serve`` as a user runs it. Without a port it binds port 0 and reads the port it got
    from its first line; restarts keep that port. ``ctl`` and ``api`` use the operator token the hub
    wrote to its state directory, as a user given EDGECOLLAB_TOKEN_FILE does."""

    def __init__(self, workdir: Path, mqtt_url: str, port: int | None = None, *, tls: str | None = None,
                 config: Path | None = None, store: str | None = None, flags: tuple[str, ...] = ()) -> None:
        super().__init__("edgehub", workdir / "hub.log")
        self.workdir = workdir
        self.port = port or 0
        self.mqtt_url = mqtt_url
        # ``edgehub serve --tls`` (None: the hub's default, plain HTTP on loopback) and ``--config``.
        self.tls = tls
        self.config = config
        # ``edgehub serve --store URL`` (None: the SQLite file in the state directory).
        self.store = store
        # More flags of ``edgehub serve``, as given (``--allow-chart-source 127.0.0.0/8``, say).
        self.flags = flags
        self.scheme = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def state_dir(self) -> Path:
        return self.state_dir_of(self.workdir)

    @staticmethod
    def state_dir_of(workdir: Path) -> Path:
        return workdir / "state"

    @property
    def ca_path(self) -> Path:
        """The hub CA's certificate: what ``edgectl --ca-file`` trusts for a hub served over HTTPS."""
        return self.state_dir / "hub-ca.crt"

    @property
    def admin_token_path(self) -> Path:
        """Where the hub writes its operator token on first start."""
        return self.state_dir / "admin-token"

    def start(self) -> Hub:
        starts_before = self._listening_lines()
        argv = [sys.executable, "-m", "edgehub.cli", "serve", "--listen", f"127.0.0.1:{self.port}",
                "--mqtt", self.mqtt_url, "--state", str(self.state_dir)]
        if self.tls is not None:
            argv += ["--tls", self.tls]
        if self.config is not None:
            argv += ["--config", str(self.config)]
        if self.store is not None:
            argv += ["--store", self.store]
        argv += self.flags
        self._spawn(argv)
        wait_until(lambda: self._bound(starts_before), timeout=30, what="the hub to say where it listens")
        wait_until(self._healthy, timeout=30, what="the hub's /healthz")
        return self

    def _listening_lines(self) -> list[tuple[str, int]]:
        return listening_urls(self.log_path)

    def _bound(self, before: list[tuple[str, int]]) -> bool:
        if not self.running:
            raise FleetError(f"edgehub exited:\n{self.log_tail()}")
        lines = self._listening_lines()
        if len(lines) > len(before):
            self.scheme, self.port = lines[-1]
            return True
        return False

    def _healthy(self) -> bool:
        if not self.running:
            raise FleetError(f"edgehub exited:\n{self.log_tail()}")
        self.api("/healthz")
        return True

    def api(self, path: str) -> Any:
        """GET ``path`` from the hub's API with the operator token (once the hub has written it)."""
        headers = {}
        if self.admin_token_path.exists():
            headers["Authorization"] = f"Bearer {self.admin_token_path.read_text().strip()}"
        request = urllib.request.Request(self.url + path, headers=headers)
        context = ssl.create_default_context(cafile=str(self.ca_path)) if self.scheme == "https" else None
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return json.loads(response.read())

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``edgectl --hub URL ARGS`` with EDGECOLLAB_TOKEN_FILE naming the hub's token, as a user would."""
        env = {k: v for k, v in os.environ.items() if k not in ("EDGECOLLAB_TOKEN", "EDGECOLLAB_CA_FILE")}
        env["EDGECOLLAB_TOKEN_FILE"] = str(self.admin_token_path)
        if self.scheme == "https":
            env["EDGECOLLAB_CA_FILE"] = str(self.ca_path)
        result = subprocess.run([sys.executable, "-m", "edgectl.cli", "--hub", self.url, *args],
                                capture_output=True, text=True, timeout=120, env=env)
        if check and result.returncode != 0:
            raise FleetError(f"edgectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def ctl_json(self, *args: str) -> Any:
        return json.loads(self.ctl(*args, "-o", "json").stdout)

    def token(self, pool: str, *, uses: int = 1, ttl: str = "10m") -> str:
        return self.ctl("token", "create", "--pool", pool, "--uses", str(uses), "--ttl", ttl).stdout.strip()


@dataclass(frozen=True)
class NodeOptions:
    """What a simulated node's ``edgeagent run`` gets beyond the documented command (docs/operating.md).

    Only what a second node on the same machine needs is set by default
    (storage paths come from the node itself): timing flags stay the agent's
    own defaults unless a test is about them, so the suite runs what users run.
    """

    containers_conf: Path | None = None
    # Test machines keep pods off the shared pod bridge.
    network: str | None = "none"
    # None: the agent's default. Set only by tests about these flags.
    reconcile_interval: float | None = None
    keepalive: int | None = None
    image_tar: Path | None = None
    extra_args: tuple[str, ...] = ()
    # Environment of the agent process beyond the caller's (e.g. a PATH
    # without one of podman's helpers, to test a broken node).
    env: tuple[tuple[str, str], ...] = ()
    # A node policy file given to ``edgeagent join --policy`` (kept in the
    # node's state dir, read by ``run``); None: the agent's default policy.
    policy: Path | None = None
    # ``edgeagent join --runtime``: "podman", or "kubernetes" with the
    # cluster's ``kubeconfig`` (``join --kubeconfig``), as docs/edge-nodes.md joins a
    # k3s node. ``run`` takes the runtime chosen at join; a kubernetes node
    # has no podman storage and no image to load.
    runtime: str = "podman"
    kubeconfig: Path | None = None

    @property
    def uses_podman(self) -> bool:
        return self.runtime == "podman"


class Node(ManagedProcess):
    """A simulated edge node: its own state directory and podman storage."""

    def __init__(self, name: str, workdir: Path, hub: Hub, options: NodeOptions, *,
                 mqtt_url: str | None = None) -> None:
        self.node_dir = workdir / name
        # The broker URL this node's agent uses instead of the one from join
        # (a fault-injecting proxy in tests); None: the one from join.
        self.mqtt_url = mqtt_url
        super().__init__(f"edgeagent {name}", self.node_dir / "agent.log")
        self.name = name
        self.hub = hub
        self.options = options
        self.state_dir = self.node_dir / "state"
        self.join_output = ""
        # podman keeps sockets under runroot: short paths stay under the
        # 108-byte limit of Unix socket names.
        self.podman_base = Path(tempfile.mkdtemp(prefix=f"ec-{name[:12]}-", dir="/tmp"))
        self.podman_settings = PodmanSettings(
            work_dir=self.state_dir / "podman",
            root=self.podman_base / "root",
            runroot=self.podman_base / "run",
            tmpdir=self.podman_base / "tmp",
            containers_conf=options.containers_conf,
            network=options.network,
        )

    def join(self, token: str, *, labels: dict[str, str] | None = None,
             pool: str | None = None) -> subprocess.CompletedProcess[str]:
        args = [sys.executable, "-m", "edgeagent.cli", "join", "--hub", self.hub.url, "--token", token,
                "--name", self.name, "--state-dir", str(self.state_dir)]
        for key, value in (labels or {}).items():
            args += ["--label", f"{key}={value}"]
        if pool:
            args += ["--pool", pool]
        if self.options.policy is not None:
            args += ["--policy", str(self.options.policy)]
        if not self.options.uses_podman:
            args += ["--runtime", self.options.runtime]
            if self.options.kubeconfig is not None:
                args += ["--kubeconfig", str(self.options.kubeconfig)]
        return subprocess.run(args, capture_output=True, text=True, timeout=60)

    def load_image(self) -> None:
        if self.options.image_tar is not None and self.options.uses_podman:
            asyncio.run(import_image(self.podman_settings, self.options.image_tar, DEMO_IMAGE))

    def start(self) -> Node:
        o = self.options
        argv = [sys.executable, "-m", "edgeagent.cli", "run", "--state-dir", str(self.state_dir), *o.extra_args]
        if o.uses_podman:
            argv += ["--podman-root", str(self.podman_settings.root), "--podman-runroot",
                     str(self.podman_settings.runroot), "--podman-tmpdir", str(self.podman_settings.tmpdir)]
        if o.reconcile_interval is not None:
            argv += ["--reconcile-interval", str(o.reconcile_interval)]
        if o.keepalive is not None:
            argv += ["--keepalive", str(o.keepalive)]
        if o.network and o.uses_podman:
            argv += ["--podman-network", o.network]
        if self.mqtt_url:
            argv += ["--mqtt", self.mqtt_url]
        if o.containers_conf and o.uses_podman:
            argv += ["--containers-conf", str(o.containers_conf)]
        self._spawn(argv, env=dict(o.env))
        return self

    # --- looking at the node through podman, not through the hub -------------

    def podman(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        s = self.podman_settings
        env = {**os.environ}
        if s.containers_conf:
            env["CONTAINERS_CONF"] = str(s.containers_conf)
        result = subprocess.run(["podman", *s.global_args(), *args],
                                capture_output=True, text=True, env=env, timeout=120)
        if check and result.returncode != 0:
            raise FleetError(f"podman {' '.join(args)} on {self.name} failed: {result.stderr.strip()}")
        return result

    def pods(self) -> list[dict[str, Any]]:
        """Pods that podman runs for edgecollab releases on this node."""
        out = self.podman("pod", "ps", "--filter", "label=edgecollab.io/release", "--format", "json").stdout
        return json.loads(out or "[]")

    def running_pods(self) -> list[dict[str, Any]]:
        return [p for p in self.pods() if p.get("Status") == "Running"]

    def release_pods(self, release: str) -> list[dict[str, Any]]:
        """Running pods of one release, ``release`` as in the label: ``NAMESPACE.RELEASE``."""
        return [p for p in self.running_pods() if p.get("Labels", {}).get("edgecollab.io/release") == release]

    def main_container(self, release: str) -> str:
        """The (first non-infra) container of the release's single running pod."""
        (pod,) = self.release_pods(release)
        return next(c["Names"] for c in pod["Containers"] if not c["Names"].endswith("-infra"))

    def served_page(self, release: str, port: int = 8080) -> str:
        """The page the release's httpd serves, fetched inside the pod on its own loopback."""
        url = f"http://127.0.0.1:{port}/"
        return self.podman("exec", self.main_container(release), "wget", "-q", "-O-", url).stdout

    def container_env(self, container: str) -> dict[str, str]:
        out = self.podman("inspect", container, "--format", "{{json .Config.Env}}").stdout
        return dict(item.split("=", 1) for item in json.loads(out))

    def cleanup(self) -> None:
        """Stop the agent and remove every pod and the podman storage of this node (a kubernetes node's
        objects stay in its cluster: the test that made them removes them)."""
        self.stop()
        if self.options.uses_podman:
            remove_node_storage(self.podman_settings, self.podman_base)
        else:
            shutil.rmtree(self.podman_base, ignore_errors=True)


@dataclass
class Fleet:
    """Broker, hub and nodes under one work directory; close() stops and removes all."""

    workdir: Path
    node_options: NodeOptions = field(default_factory=NodeOptions)
    broker: Mosquitto | None = None
    hub: Hub | None = None
    nodes: dict[str, Node] = field(default_factory=dict)
    links: dict[str, LinkProxy] = field(default_factory=dict)
    # More flags of ``edgehub serve`` (Hub.flags).
    hub_flags: tuple[str, ...] = ()

    def start(self) -> Fleet:
        hub_dir = self.workdir / "hub"
        self.broker = Mosquitto(self.workdir / "broker", hub_state=Hub.state_dir_of(hub_dir)).start()
        self.hub = Hub(hub_dir, self.broker.url, flags=self.hub_flags).start()
        return self

    def add_node(self, name: str, pool: str, *, labels: dict[str, str] | None = None, token: str | None = None,
                 start: bool = True, link: LinkProxy | None = None, options: NodeOptions | None = None) -> Node:
        """Join a new simulated node to ``pool`` (with a fresh single-use token unless given one) and start it.

        With ``link``, the agent reaches the broker through that proxy, so a test can cut its link.
        ``options`` replaces the fleet's node options for this node.
        """
        assert self.hub is not None
        node = Node(name, self.workdir / "nodes", self.hub, options or self.node_options,
                    mqtt_url=link.url if link else None)
        self.nodes[name] = node
        result = node.join(token or self.hub.token(pool), labels=labels)
        if result.returncode != 0:
            raise FleetError(f"join of {name} failed: {result.stderr.strip()}")
        node.join_output = result.stdout  # what `edgeagent join` told the user (the demo shows it)
        node.load_image()
        if start:
            node.start()
        return node

    def link(self, name: str) -> LinkProxy:
        """A fault-injecting proxy to the broker, for a node added with ``link=``."""
        assert self.broker is not None
        scheme = self.broker.url.partition(":")[0]
        proxy = self.links[name] = LinkProxy(self.broker.port, name=name, scheme=scheme).start()
        return proxy

    def close(self) -> None:
        for node in self.nodes.values():
            node.cleanup()
        for proxy in self.links.values():
            proxy.close()
        if self.hub:
            self.hub.stop()
        if self.broker:
            self.broker.stop()

    def __enter__(self) -> Fleet:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.close()

