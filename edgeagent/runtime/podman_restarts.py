"""Restarting exited containers as the kubelet does, with back-off, since podman restarts them at once.

A Deployment's container that exits at once would, under podman's own
``restartPolicy: Always``, be started again immediately, thousands of times an
hour, and look running whenever someone looked. So containers whose pod asks
for ``Always`` are played with ``Never`` (``podman_plan``), and this keeper
starts them again itself:

- after an exit it waits ``initial`` seconds (10), doubling with every
  consecutive restart up to ``cap`` (300), as the kubelet does; a container
  that ran ``reset_after`` seconds (600) before it exited starts over at 10;
- while it waits, the container is ``waiting`` with the reason
  ``CrashLoopBackOff``; each start counts as a restart;
- at each exit it notes the exit code, whether the kernel killed it for
  memory (``OOMKilled``), when it finished, and the last lines of its log.

The keeper is a background task owned by the runtime (started in
``PodmanRuntime.__aenter__``, cancelled and awaited in ``__aexit__``). It
looks at and starts a release's containers holding the release's lock (the
one the runtime's applies and removals hold), so it never starts a container
an apply is stopping, and keys what it knows by container ID, so a re-played container starts
counting from zero, as a recreated pod does in Kubernetes. Counts live in the
agent's memory: an agent restart starts them over.

Errors: nothing here raises to the runtime; a podman failure is logged and
tried again at the next tick.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from .base import EdgeRuntimeError, ReleaseRef
from .podman_cli import PodmanCli, loads_json

__all__ = ["RestartKeeper", "RestartSettings", "Termination", "running_seconds"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class RestartSettings:
    """The back-off of restarts, in seconds: the kubelet's own numbers."""

    initial: float = 10.0
    cap: float = 300.0
    # A container that ran this long before it exited is not crash-looping: its next back-off starts over.
    reset_after: float = 600.0
    # How often exited containers are looked for; a restart is at most this late.
    tick: float = 1.0
    # Lines of a container's log kept from before it exited (the status carries at most 200 characters).
    log_lines: int = 3

    def delay(self, consecutive: int) -> float:
        """The wait before restart number ``consecutive + 1`` of a crash loop."""
        return min(self.cap, self.initial * 2 ** min(consecutive, 16))


@dataclass(slots=True)
class Termination:
    """What the keeper knows of one container (by ID): its restarts and how it last exited."""

    container_id: str
    restarts: int = 0
    consecutive: int = 0
    due: float | None = None  # loop time of the next start while it waits out its back-off
    exit_code: int | None = None
    oom_killed: bool = False
    finished_at: str = ""
    last_log: str = ""
    start_failed: bool = False  # the last start podman refused: the runtime's self-heal may re-play it

    @property
    def waiting(self) -> bool:
        return self.due is not None


class RestartKeeper:
    """Starts exited containers of ``Always`` pods again after their back-off (see the module docstring)."""

    def __init__(self, cli: PodmanCli, lock: Callable[[ReleaseRef], asyncio.Lock],
                 settings: RestartSettings | None = None, *, clock: Callable[[], float] | None = None,
                 restarting: Collection[str] = frozenset()) -> None:
        self._cli = cli
        # Containers someone else (a failed liveness probe) is restarting: their stop is not an exit to count.
        self._restarting = restarting
        self.settings = settings or RestartSettings()
        self._lock = lock
        self._clock = clock
        self._releases: dict[ReleaseRef, tuple[str, ...]] = {}  # release -> container names it keeps running
        self._known: dict[str, Termination] = {}  # container name -> what is known of its current ID

    def track(self, key: ReleaseRef, containers: Iterable[str]) -> None:
        """Keep ``containers`` of release ``key`` running from now on (replacing what it had)."""
        names = tuple(containers)
        if names:
            self._releases[key] = names
        else:
            self._releases.pop(key, None)
        kept = {n for names in self._releases.values() for n in names}
        for gone in set(self._known) - kept:
            del self._known[gone]

    def forget(self, key: ReleaseRef) -> None:
        self.track(key, ())

    def termination(self, name: str, container_id: str) -> Termination | None:
        """What is known of container ``name`` while it has the ID ``container_id`` (None: nothing yet)."""
        known = self._known.get(name)
        return known if known is not None and known.container_id == container_id else None

    def start_failed(self, name: str) -> bool:
        """Whether podman refused to start container ``name`` again the last time the keeper tried."""
        known = self._known.get(name)
        return known is not None and known.start_failed

    def _now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    async def run(self) -> None:
        """The keeper's loop; runs until cancelled."""
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("Restart pass failed; trying again in %.1f s", self.settings.tick)
            await asyncio.sleep(self.settings.tick)

    async def tick(self) -> None:
        """One pass: note new exits, start the containers whose back-off is over, release by release."""
        for key, names in list(self._releases.items()):
            lock = self._lock(key)
            if lock.locked():
                continue  # an apply or removal is at work on it: next tick
            async with lock:
                if self._releases.get(key) != names:
                    continue  # forgotten or replaced while waiting
                result = await self._cli.run("container", "inspect", "--format", "json", *names, check=False)
                try:
                    infos = loads_json(result.stdout, "inspect containers") or []
                except EdgeRuntimeError as exc:  # podman answered something unreadable: the next tick asks again
                    logger.debug("%s", exc)
                    continue
                for info in infos or ():
                    if isinstance(info, dict):
                        await self._keep(info)

    async def _keep(self, info: dict[str, Any]) -> None:
        name = str(info.get("Name") or "")
        container_id = str(info.get("Id") or "")
        if not name or name not in {n for names in self._releases.values() for n in names}:
            return
        if name in self._restarting:
            return
        known = self._known.get(name)
        if known is None or known.container_id != container_id:
            known = self._known[name] = Termination(container_id)
        state = info.get("State") or {}
        status = state.get("Status")
        now = self._now()
        if status == "running":
            known.due = None
            return
        if status not in ("exited", "stopped"):
            return  # created, configured, paused, removing: not for the keeper
        finished = str(state.get("FinishedAt") or "")
        if finished and finished != known.finished_at and not finished.startswith("0001-"):
            await self._note_exit(name, known, state, finished, now)
        if known.due is not None and now >= known.due:
            await self._start(name, known)

    async def _note_exit(self, name: str, known: Termination, state: dict[str, Any], finished: str,
                         now: float) -> None:
        previous_end = known.finished_at
        known.finished_at = finished
        code = state.get("ExitCode")
        known.exit_code = code if isinstance(code, int) else None
        known.oom_killed = bool(state.get("OOMKilled"))
        if _ran_seconds(state) >= self.settings.reset_after:
            known.consecutive = 0
        known.due = now + self.settings.delay(known.consecutive)
        logs = await self._cli.run("logs", "--timestamps", "--tail", str(self.settings.log_lines * 4), name,
                                   check=False)
        known.last_log = "\n".join(_lines_since(logs.stdout, previous_end).splitlines()[-self.settings.log_lines:])
        logger.info("Container %s exited %s%s; starting it again in %.0f s", name, known.exit_code,
                    " (OOMKilled)" if known.oom_killed else "", known.due - now)

    async def _start(self, name: str, known: Termination) -> None:
        result = await self._cli.run("start", name, check=False)
        if result.returncode != 0:
            logger.warning("Container %s could not be started again: %s", name, result.stderr.strip()[:300])
            known.due = self._now() + self.settings.delay(known.consecutive)
            known.start_failed = True
            return
        known.start_failed = False
        known.restarts += 1
        known.consecutive += 1
        known.due = None


def _lines_since(timestamped: str, previous_end: str) -> str:
    """The lines of a ``podman logs --timestamps`` text written after the run that ended at ``previous_end``
    ("": all of them),
    without their stamps: only what the run that just ended wrote, as Kubernetes' ``previous=True`` gives.
    podman's own ``--since`` rounds to the second, which takes in the last run's lines at a short back-off."""
    # conmon stamps a line when it reads it, a few milliseconds after the run may have ended; the next run
    # starts a back-off (a second at least) later: a quarter second past the end splits them.
    after = _parse(previous_end) + timedelta(seconds=0.25) if previous_end else None
    kept: list[str] = []
    for line in timestamped.splitlines():
        stamp, _, text = line.partition(" ")
        try:
            written = _parse(stamp)
        except ValueError:
            kept.append(line)  # not stamped: keep it as it is
            continue
        if after is None or written > after:
            kept.append(text)
    return "\n".join(kept).strip()


def running_seconds(state: Mapping[str, Any]) -> float:
    """How long a running container has run (0 when podman does not say)."""
    try:
        return (datetime.now(UTC) - _parse(str(state.get("StartedAt")))).total_seconds()
    except ValueError:
        return 0.0


def _ran_seconds(state: dict[str, Any]) -> float:
    """How long a container ran before it last exited (0 when podman does not say)."""
    started, finished = state.get("StartedAt"), state.get("FinishedAt")
    try:
        return (_parse(str(finished)) - _parse(str(started))).total_seconds()
    except ValueError:
        return 0.0


def _parse(value: str) -> datetime:
    """An RFC 3339 time as podman writes it (nanoseconds, ``Z`` or an offset), to the microsecond."""
    match = _PODMAN_TIME.match(value)
    if match is None:
        raise ValueError(f"not a time: {value!r}")
    whole, fraction, zone = match.groups()
    offset = (zone or "Z").replace("Z", "+00:00")
    parsed = datetime.fromisoformat(f"{whole}.{(fraction or '').ljust(6, '0')[:6]}{offset}")
    return parsed


_PODMAN_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$")
