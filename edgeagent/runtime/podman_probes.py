"""Kubernetes probes run by the agent, since podman 4.3 cannot run them.

podman 4.3's kube play mistranslates probes: a named port becomes port 0, a
tcpSocket probe loses its host, readiness and startup probes are dropped, and
its liveness healthcheck restarts containers that are healthy. The plan
(``podman_plan``) therefore strips every probe from what podman plays and
records it, resolved (named ports turned into numbers), in the played file's
record; this module runs them as the kubelet would:

* ``exec``: ``podman exec CONTAINER COMMAND...`` (exit 0: success; podman's own
  failure, exit 125, is "could not check", not a probe failure);
* ``httpGet``: a GET from inside the pod's network namespace (``nsenter
  --net=/proc/PID/ns/net``) by the agent's own Python (``sys.executable``), so
  nothing is needed in the image; 200-399 is success, as for the kubelet;
* ``tcpSocket``: a TCP connect from inside the pod's network namespace, likewise.

Timing follows the probe's ``initialDelaySeconds`` (counted from the
container's start), ``periodSeconds``, ``timeoutSeconds``,
``failureThreshold`` and ``successThreshold``. A container with a startup
probe runs no liveness or readiness probe until the startup probe passed.
Readiness (and a startup probe not passed yet) makes the pod not ready in
``observe``. Liveness restarts the container (``podman restart``) after
``failureThreshold`` consecutive real failures (a timed-out check is one;
podman failing to run the check is not). A failed startup probe restarts the
container the same way. A restart, by podman or by us, resets the container's
probe state (its start time changed).

The ``ProbeRunner`` is a background task owned by the runtime (started in
``PodmanRuntime.__aenter__``, cancelled and awaited in ``__aexit__``). Every
check has a timeout, at most ``max_concurrent`` checks run at once, and every
check is a subprocess awaited off the event loop.

Errors: nothing here raises to the runtime; a podman or nsenter failure is
logged and counts as "could not check".
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

from edgekit.processes import reap

from .base import ManifestRejected
from .podman_cli import PodmanCli

__all__ = ["Probe", "ProbeRunner", "ProbeSettings", "probes_of_container"]

logger = logging.getLogger(__name__)

ProbeKind = Literal["startup", "liveness", "readiness"]
_KINDS: tuple[tuple[ProbeKind, str], ...] = (
    ("startup", "startupProbe"),
    ("liveness", "livenessProbe"),
    ("readiness", "readinessProbe"),
)
Outcome = Literal["success", "failure", "error"]

# Run by the agent's own Python inside the pod's network namespace: argv is
# ACTION HOST PORT TIMEOUT [PATH SCHEME HEADER...]; exit 0 success, 1 failure.
_CHECK_SCRIPT = r"""
import socket, ssl, sys, http.client
action, host, port, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
try:
    if action == "tcp":
        socket.create_connection((host, port), timeout=timeout).close()
        sys.exit(0)
    path, scheme = sys.argv[5], sys.argv[6]
    if scheme == "HTTPS":
        ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    headers = {"User-Agent": "kube-probe/edgecollab", "Accept": "*/*"}
    for item in sys.argv[7:]:
        name, _, value = item.partition(":")
        headers[name] = value
    conn.request("GET", path, headers=headers)
    status = conn.getresponse().status
    sys.exit(0 if 200 <= status < 400 else 1)
except Exception as exc:
    print(exc, file=sys.stderr)
    sys.exit(1)
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class Probe:
    """One probe of one container, ports resolved: what the runner needs and the played file records."""

    kind: ProbeKind
    container: str  # podman container name
    action: Literal["exec", "http", "tcp"]
    command: tuple[str, ...] = ()  # exec
    host: str = "127.0.0.1"  # http, tcp
    port: int = 0  # http, tcp
    path: str = "/"  # http
    scheme: str = "HTTP"  # http
    headers: tuple[tuple[str, str], ...] = ()  # http
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    failure_threshold: int = 3
    success_threshold: int = 1

    def to_record(self) -> dict[str, Any]:
        """This probe as plain data for the played file's record."""
        out: dict[str, Any] = {
            "kind": self.kind, "container": self.container, "action": self.action,
            "initialDelaySeconds": self.initial_delay, "periodSeconds": self.period,
            "timeoutSeconds": self.timeout, "failureThreshold": self.failure_threshold,
            "successThreshold": self.success_threshold,
        }
        if self.action == "exec":
            out["command"] = list(self.command)
        else:
            out.update(host=self.host, port=self.port)
        if self.action == "http":
            out.update(path=self.path, scheme=self.scheme, headers=[list(h) for h in self.headers])
        return out

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> Probe:
        """The inverse of ``to_record``; raises KeyError/TypeError/ValueError on a damaged record."""
        return cls(
            kind=data["kind"], container=str(data["container"]), action=data["action"],
            command=tuple(str(c) for c in data.get("command") or ()),
            host=str(data.get("host", "127.0.0.1")), port=int(data.get("port", 0)),
            path=str(data.get("path", "/")), scheme=str(data.get("scheme", "HTTP")),
            headers=tuple((str(n), str(v)) for n, v in data.get("headers") or ()),
            initial_delay=float(data["initialDelaySeconds"]), period=float(data["periodSeconds"]),
            timeout=float(data["timeoutSeconds"]), failure_threshold=int(data["failureThreshold"]),
            success_threshold=int(data["successThreshold"]),
        )


def _number(spec: Mapping[str, Any], key: str, default: int, minimum: int, where: str) -> int:
    value = spec.get(key, default)
    if value is None:
        value = default
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ManifestRejected(f"{where}: {key} {value!r} is not a whole number >= {minimum}")
    return value


def probes_of_container(
    container: Mapping[str, Any], podman_name: str, where: str, warnings: list[str]
) -> list[Probe]:
    """The probes of one container spec, named ports resolved from its ``ports``.

    Raises ManifestRejected for a probe that can never work (a named port the
    container does not declare, a malformed handler); appends to ``warnings``
    for a probe podman cannot run at all (grpc).
    """
    ports: dict[str, int] = {}
    declared = container.get("ports")
    for port in declared if isinstance(declared, list) else ():
        if isinstance(port, Mapping) and isinstance(port.get("name"), str):
            ports[port["name"]] = int(port.get("containerPort", 0))
    found: list[Probe] = []
    for kind, key in _KINDS:
        spec = container.get(key)
        if spec is None:
            continue
        here = f"{where}: container {container.get('name')!r}: {key}"
        if not isinstance(spec, Mapping):
            raise ManifestRejected(f"{here} must be a mapping")
        timing: _Timing = {
            "initial_delay": _number(spec, "initialDelaySeconds", 0, 0, here),
            "period": _number(spec, "periodSeconds", 10, 1, here),
            "timeout": _number(spec, "timeoutSeconds", 1, 1, here),
            "failure_threshold": _number(spec, "failureThreshold", 3, 1, here),
            # The kubelet requires 1 for liveness and startup probes.
            "success_threshold": 1 if kind != "readiness" else _number(spec, "successThreshold", 1, 1, here),
        }
        if isinstance(spec.get("exec"), Mapping):
            command = spec["exec"].get("command")
            if not isinstance(command, list) or not command:
                raise ManifestRejected(f"{here}: exec.command must be a non-empty list")
            found.append(Probe(kind=kind, container=podman_name, action="exec",
                               command=tuple(str(c) for c in command), **timing))
        elif isinstance(spec.get("httpGet"), Mapping) or isinstance(spec.get("tcpSocket"), Mapping):
            http = isinstance(spec.get("httpGet"), Mapping)
            handler = spec["httpGet" if http else "tcpSocket"]
            port = _resolve_port(handler.get("port"), ports, here)
            extra: _HttpTarget = {}
            if http:
                headers = handler.get("httpHeaders") or []
                extra = {
                    "path": str(handler.get("path") or "/"),
                    "scheme": str(handler.get("scheme") or "HTTP").upper(),
                    "headers": tuple((str(h.get("name")), str(h.get("value"))) for h in headers
                                     if isinstance(h, Mapping)),
                }
            found.append(Probe(kind=kind, container=podman_name, action="http" if http else "tcp",
                               host=str(handler.get("host") or "127.0.0.1"), port=port, **extra, **timing))
        elif spec.get("grpc") is not None:
            warnings.append(f"{here}: grpc probes are not run on podman (the agent runs exec, httpGet and "
                            "tcpSocket probes only); the container counts as passing it")
        else:
            raise ManifestRejected(f"{here}: no exec, httpGet, tcpSocket or grpc handler")
    return found


def _resolve_port(port: Any, ports: Mapping[str, int], where: str) -> int:
    if isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536:
        return port
    if isinstance(port, str) and port.isdigit() and 0 < int(port) < 65536:
        return int(port)
    if isinstance(port, str) and port in ports:
        return ports[port]
    raise ManifestRejected(f"{where}: port {port!r} is neither a port number nor a named port of the container")


class _Timing(TypedDict):
    initial_delay: float
    period: float
    timeout: float
    failure_threshold: int
    success_threshold: int


class _HttpTarget(TypedDict, total=False):
    path: str
    scheme: str
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeSettings:
    """How the agent runs probes."""

    # How often the runner looks for due checks, in seconds. Probe periods are
    # whole seconds (>= 1); 0.25 s keeps a check within a quarter second of due.
    tick: float = 0.25
    # Checks running at once, across all releases: each is a subprocess
    # (podman exec or nsenter + python), and a node has few cores.
    max_concurrent: int = 4
    # Seconds added to a probe's timeoutSeconds for starting the subprocess
    # itself (podman exec takes ~0.1-0.3 s before the command runs).
    spawn_margin: float = 2.0


@dataclass(slots=True)
class _State:
    started_at: str  # the container start this state belongs to
    due: float  # loop time of the next check
    successes: int = 0
    failures: int = 0
    passed: bool = False  # the probe's current verdict (readiness: ready; startup: passed)
    running: bool = False  # a check is in flight


@dataclass(slots=True)
class _Target:
    """A probed container as the last inspect saw it."""

    name: str
    running: bool
    started_at: str
    pid: int
    grace: int = 0
    pod: str = ""  # the pod's ID


@dataclass(slots=True)
class _Release:
    probes: tuple[Probe, ...]
    grace: dict[str, int] = field(default_factory=dict)  # container -> stop grace seconds


class ProbeRunner:
    """Runs the probes of every release the runtime plays (see the module docstring)."""

    def __init__(self, cli: PodmanCli, settings: ProbeSettings | None = None, *,
                 clock: Callable[[], float] | None = None) -> None:
        self._cli = cli
        self.settings = settings or ProbeSettings()
        self._clock = clock
        # Containers a failed liveness probe is restarting right now (the restart keeper leaves them alone).
        self.restarting: set[str] = set()
        self._releases: dict[Any, _Release] = {}
        self._states: dict[tuple[str, str], _State] = {}  # (container, kind) -> state
        self._slots = asyncio.Semaphore(self.settings.max_concurrent)
        self._nsenter = shutil.which("nsenter")
        self.restarts: dict[str, int] = {}  # container -> restarts the runner made (for logs and tests)

    def track(self, key: object, probes: tuple[Probe, ...], grace: Mapping[str, int]) -> None:
        """Run ``probes`` for release ``key`` from now on (replacing what it had)."""
        if probes:
            self._releases[key] = _Release(probes, dict(grace))
        else:
            self._releases.pop(key, None)
        live = {(p.container, p.kind) for r in self._releases.values() for p in r.probes}
        for gone in set(self._states) - live:
            del self._states[gone]

    def forget(self, key: object) -> None:
        """Stop probing release ``key``."""
        self.track(key, (), {})

    def verdict(self, container: str) -> tuple[bool, str]:
        """(ready, why not) for ``container`` by its probes; (True, "") when it has none."""
        kinds = {p.kind for r in self._releases.values() for p in r.probes if p.container == container}
        if not kinds:
            return True, ""
        startup = self._states.get((container, "startup"))
        if "startup" in kinds and not (startup and startup.passed):
            return False, "startup probe not passed yet"
        readiness = self._states.get((container, "readiness"))
        if "readiness" in kinds and not (readiness and readiness.passed):
            return False, "readiness probe failing" if readiness and readiness.failures else "not ready yet"
        return True, ""

    def _now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    async def run(self) -> None:
        """The probe loop; runs until cancelled, cancelling its in-flight checks on the way out (the task
        group's exit: a check catches its own errors, so only a cancellation ends the group)."""
        async with asyncio.TaskGroup() as checks:
            while True:
                try:
                    await self._tick(checks)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("Probe loop pass failed; trying again in %.2f s", self.settings.tick)
                await asyncio.sleep(self.settings.tick)

    async def _tick(self, checks: asyncio.TaskGroup) -> None:
        probes = [(p, r.grace.get(p.container, 0)) for r in list(self._releases.values()) for p in r.probes]
        if not probes:
            return
        now = self._now()
        due = [(p, g) for p, g in probes
               if (s := self._states.get((p.container, p.kind))) is None or (not s.running and s.due <= now)]
        if not due:
            return
        targets = await self._inspect(sorted({p.container for p, _ in due}))
        now = self._now()
        for probe, grace in due:
            target = targets.get(probe.container)
            key = (probe.container, probe.kind)
            if target is None or not target.running:
                self._states.pop(key, None)  # starts afresh when the container runs again
                continue
            state = self._states.get(key)
            if state is None or state.started_at != target.started_at:
                state = _State(started_at=target.started_at, due=now + probe.initial_delay)
                self._states[key] = state
            if state.due > now or state.running or not self._gate_open(probe):
                continue
            target.grace = grace
            state.running = True
            checks.create_task(self._check(probe, state, target), name=f"probe {probe.kind} {probe.container}")

    def _gate_open(self, probe: Probe) -> bool:
        """Liveness and readiness wait for a startup probe to pass, as in the kubelet."""
        if probe.kind == "startup":
            state = self._states.get((probe.container, "startup"))
            return not (state and state.passed)  # a passed startup probe is not run again
        has_startup = any(p.container == probe.container and p.kind == "startup"
                          for r in self._releases.values() for p in r.probes)
        if not has_startup:
            return True
        startup = self._states.get((probe.container, "startup"))
        return bool(startup and startup.passed)

    async def _inspect(self, names: list[str]) -> dict[str, _Target]:
        result = await self._cli.run("container", "inspect", "--format",
                                     "{{.Name}} {{.State.Running}} {{.State.Pid}} {{.Pod}} {{.State.StartedAt}}",
                                     *names, check=False, timeout=30)
        found: dict[str, _Target] = {}
        for line in result.stdout.splitlines():
            parts = line.split(" ", 4)
            if len(parts) == 5 and parts[2].isdigit():
                found[parts[0]] = _Target(parts[0], parts[1] == "true", parts[4], int(parts[2]), pod=parts[3])
        return found

    async def _check(self, probe: Probe, state: _State, target: _Target) -> None:
        try:
            async with self._slots:
                outcome, detail = await self._attempt(probe, target)
            self._record(probe, state, outcome, detail)
            if probe.kind in ("liveness", "startup") and state.failures >= probe.failure_threshold:
                await self._restart(probe, target, detail)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("Probe %s of %s failed to run; trying again in %.0f s",
                             probe.kind, probe.container, probe.period)
        finally:
            state.running = False
            state.due = self._now() + probe.period

    def _record(self, probe: Probe, state: _State, outcome: Outcome, detail: str) -> None:
        if outcome == "error":
            logger.warning("Could not run the %s probe of %s (%s); not counted", probe.kind, probe.container, detail)
            return
        if outcome == "success":
            state.successes += 1
            state.failures = 0
            if state.successes >= probe.success_threshold:
                if not state.passed:
                    logger.info("%s probe of %s passes", probe.kind.capitalize(), probe.container)
                state.passed = True
            return
        state.failures += 1
        state.successes = 0
        logger.info("%s probe of %s failed (%d/%d): %s", probe.kind.capitalize(), probe.container,
                    state.failures, probe.failure_threshold, detail)
        if probe.kind == "readiness" and state.failures >= probe.failure_threshold:
            state.passed = False

    async def _attempt(self, probe: Probe, target: _Target) -> tuple[Outcome, str]:
        limit = probe.timeout + self.settings.spawn_margin
        if probe.action == "exec":
            result = await self._cli.run("exec", probe.container, *probe.command, check=False, timeout=limit)
            if result.returncode == 0:
                return "success", ""
            if result.returncode == 125:  # podman's own error: the container is gone or stopping
                return "error", result.stderr.strip()[:200]
            return "failure", f"exit {result.returncode}: {(result.stderr or result.stdout).strip()[:200]}"
        if self._nsenter is None:
            return "error", "nsenter is not installed (util-linux): http and tcp probes cannot run"
        argv = [self._nsenter, f"--net=/proc/{target.pid}/ns/net", sys.executable, "-I", "-c", _CHECK_SCRIPT,
                probe.action, probe.host, str(probe.port), str(probe.timeout)]
        if probe.action == "http":
            argv += [probe.path, probe.scheme, *(f"{n}:{v}" for n, v in probe.headers)]
        return await _run_check(argv, limit)

    async def _restart(self, probe: Probe, target: _Target, detail: str) -> None:
        logger.warning("%s probe of %s failed %d times (%s); restarting the container",
                       probe.kind.capitalize(), probe.container, probe.failure_threshold, detail)
        self.restarts[probe.container] = self.restarts.get(probe.container, 0) + 1
        self.restarting.add(probe.container)
        try:
            result = await self._cli.run("restart", "--time", str(target.grace), probe.container, check=False,
                                         timeout=target.grace + 30)
            if result.returncode != 0 and target.pod and "namespace path" in result.stderr:
                # The pod's only container stopped, and with it (podman's pod exit
                # policy) the pod's infra container whose namespaces it joins:
                # starting the pod brings both back.
                result = await self._cli.run("pod", "start", target.pod, check=False, timeout=30)
        finally:
            self.restarting.discard(probe.container)
        if result.returncode != 0:
            logger.warning("Could not restart %s: %s; the next failures will try again",
                           probe.container, result.stderr.strip())
        for kind, _ in _KINDS:  # the new start resets every probe of the container
            self._states.pop((probe.container, kind), None)


async def _run_check(argv: list[str], limit: float) -> tuple[Outcome, str]:
    """Run one nsenter check; a check that outlives ``limit`` is killed and counts as a failure."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
    except OSError as exc:
        return "error", f"cannot run {argv[0]}: {exc}"
    try:
        _, err = await asyncio.wait_for(proc.communicate(), limit)
    except TimeoutError:
        return "failure", f"no answer within {limit:.0f} s"
    finally:
        await reap(proc)
    text = err.decode(errors="replace").strip()[:200]
    if proc.returncode == 0:
        return "success", ""
    if "nsenter:" in text:  # the namespace is gone: the container stopped meanwhile
        return "error", text
    return "failure", text or f"exit {proc.returncode}"
