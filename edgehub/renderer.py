"""Rendering charts in worker processes, bounded in time, in output and in number.

A chart is code: a 243-byte template can loop for minutes and print
gigabytes (``{{ range $i := until 100000000 }}{{ $i }}{{ end }}``). So every
render of an apply:

- runs in a process of its own, never on the hub's event loop nor in its
  process. The process is *spawned*: the hub has threads, and the Helm
  engine's Go runtime survives no fork. Starting one costs about 0.2 s
  (importing the engine), small next to an apply, and a fresh process leaves
  nothing behind (memory, a wedged engine);
- is killed when it runs past ``render_timeout_seconds``; the apply answers
  422 naming the bound;
- may have Helm print at most ``render_output_bytes`` for all its render keys
  (checked by :func:`deployer_plugin.render_release` as each Helm render
  returns, before anything is parsed or stored), and no bundle may be larger
  than agents accept (``MAX_BUNDLE_BYTES``);
- runs in one of two lanes of ``render_parallel`` slots each, so that a small
  apply never waits for slow renders (below). At most ``render_queue``
  applies wait for a slot, and each waits no longer than the time bound in
  all; beyond that an apply is refused (409, apply again) instead of piling
  up with its chart in memory.

The two lanes. Every render starts in the *fast lane*, and may hold its slot
there for ``render_fast_seconds`` (2 s: the example renders in well under a
second, a large chart in one or two). A render still running then leaves the
fast lane for the *slow lane*: it goes on running there, the same process,
when a slow slot is free; otherwise its worker is killed and the render waits
for the slow lane (first come, first served), where it runs again from the
start with the whole time bound. A fast slot is thus never held longer than
``render_fast_seconds``: an apply waits at most that long for every
``render_parallel`` applies queued before it, however slow their charts. A
render runs again at most once (the slow lane stops none), so what is wasted
is at most ``render_fast_seconds`` of work per slow render. At most
``2 * render_parallel`` worker processes live at once: a slot is given back
only once its worker is dead and reaped. The wait budget (the time bound) is
one for both lines, and the time a render ran is not waiting; a render stopped
in the fast lane joins the slow lane's line even when the queue is full, as it
was taken in already.

Why stop and run again rather than suspend (SIGSTOP) a render that finds the
slow lane full: a suspended worker keeps its memory (100 MB and more; a
looping chart's gigabytes) for as long as it waits, and the queue holds up to
``render_queue`` of them, so the number of live processes, and the hub's
memory, would be bounded by the queue instead of by the lanes.

Errors: what the chart or its values do wrong is a ``SpecError`` (the
engine's own, translated in the worker as in-process rendering does, and a
``RenderError`` for a bound overrun or a worker that died), which the hub
answers with 422; a full queue, or no slot within the time bound, is
``RendererBusy`` (a ``ConcurrentChange``, 409); a bug in the worker is a
``RuntimeError`` (500, logged).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from deployer_plugin import Component, RenderedRelease, RenderError
from deployer_plugin.render import rebuilt_error
from edgeprotocol.messages import MAX_BUNDLE_BYTES, Bundle

from .errors import RendererBusy
from .render_worker import Outcome, RenderJob, render_in_worker
from .settings import HubSettings

logger = logging.getLogger(__name__)

# Once a worker has sent its outcome it exits at once; past this it is killed.
EXIT_GRACE_SECONDS = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RenderLimits:
    """The bounds of rendering; HubSettings explains and checks each one (``render_*``)."""

    timeout_seconds: float = 30.0
    max_output_bytes: int = 32 * 1024 * 1024
    parallel: int = 2
    queue: int = 16
    fast_seconds: float = 2.0

    @classmethod
    def of(cls, settings: HubSettings) -> RenderLimits:
        """The limits a HubSettings sets."""
        return cls(timeout_seconds=settings.render_timeout_seconds, max_output_bytes=settings.render_output_bytes,
                   parallel=settings.render_parallel, queue=settings.render_queue,
                   fast_seconds=settings.render_fast_seconds)


@dataclass(slots=True)
class RenderCounts:
    """What the lanes did since the renderer started."""

    started: int = 0  # worker processes started
    moved: int = 0  # renders that went on in the slow lane, in the same process
    stopped: int = 0  # renders stopped in the fast lane (the slow lane full), to run again there


class _Closed(Exception):
    """The renderer stopped while an apply waited for a slot."""


class _Lane:
    """``size`` render slots, handed out first come, first served. Used on the event loop only."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.busy = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def free(self) -> bool:
        return self.busy < self.size and not self._waiters

    def take_free(self) -> bool:
        """Take a slot if one is free now and nobody waits for one (they were first)."""
        if not self.free:
            return False
        self.busy += 1
        return True

    async def take(self, timeout: float) -> bool:
        """Take a slot, waiting in line at most ``timeout`` seconds; False if none came free by then.

        Raises _Closed when the renderer stops meanwhile.
        """
        if self.take_free():
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            return self._handed(waiter)  # a slot handed over just as time ran out is still taken
        except asyncio.CancelledError:
            if self._handed(waiter):
                self.release()  # handed a slot just as the apply went away: it is the next one's
            raise
        return True

    def _handed(self, waiter: asyncio.Future[None]) -> bool:
        """Whether release() gave ``waiter`` a slot before it stopped waiting; if not, it leaves the line."""
        if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            return True
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        return False

    def release(self) -> None:
        """Give a slot back: to the first in line, if any (the slot stays busy), else free."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.busy -= 1

    def close(self) -> None:
        """Send everyone in line away (the renderer is stopping)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(_Closed())


class _Run:
    """One render in one worker process, waited for on a thread of the renderer's pool."""

    def __init__(self, job: RenderJob, timeout: float, name: str) -> None:
        self.job = job
        self.timeout = timeout
        self.name = name
        self.stopped = False
        self.evicted = False
        # The lane whose slot this run holds; the event loop moves it (fast to slow) and gives it back.
        self.lane: _Lane | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._lock = threading.Lock()

    def stop(self) -> None:
        """Kill the worker (from any thread); the waiting thread then returns ("stopped", None)."""
        with self._lock:
            self.stopped = True
            if self._process is not None:
                self._process.kill()

    def evict(self) -> None:
        """Kill the worker to run it again in the slow lane; the waiting thread returns ("evicted", None)
        unless the outcome was in already."""
        with self._lock:
            self.evicted = True
            if self._process is not None:
                self._process.kill()

    def wait(self) -> Outcome:
        """Start the worker and wait for its outcome, at most ``timeout`` seconds (blocks)."""
        context = multiprocessing.get_context("spawn")
        receive, send = context.Pipe(duplex=False)
        process = context.Process(target=render_in_worker, args=(self.job, send), name=self.name, daemon=True)
        started = time.monotonic()
        received = False
        try:
            with self._lock:
                if self.stopped:
                    return ("stopped", None)
                if self.evicted:
                    return ("evicted", None)
                process.start()
                self._process = process
            send.close()  # the worker holds the other copy: its death ends the pipe
            if not receive.poll(max(0.0, self.timeout - (time.monotonic() - started))):
                return ("timeout", time.monotonic() - started)
            try:
                outcome: Outcome = receive.recv()
            except EOFError:
                process.join(EXIT_GRACE_SECONDS)
                if self.stopped:
                    return ("stopped", None)
                return ("evicted", None) if self.evicted else ("died", process.exitcode)
            received = True
            return outcome
        finally:
            if process.pid is not None:  # it was started
                if not received:
                    process.kill()
                process.join(EXIT_GRACE_SECONDS)
                if process.is_alive():
                    process.kill()
                    process.join()
            receive.close()
            send.close()


class Renderer:
    """Renders components in worker processes within ``limits``. Use as an async context manager."""

    def __init__(self, limits: RenderLimits | None = None) -> None:
        self.limits = limits or RenderLimits()
        self.counts = RenderCounts()
        self._executor: ThreadPoolExecutor | None = None
        self._fast = _Lane(self.limits.parallel)
        self._slow = _Lane(self.limits.parallel)
        self._running: set[_Run] = set()

    @property
    def max_workers(self) -> int:
        """The most worker processes alive at once: a slot of either lane each."""
        return self._fast.size + self._slow.size

    async def __aenter__(self) -> Renderer:
        if self._executor is not None:
            raise RuntimeError("this renderer is already running")
        # A thread per slot waits on its worker process: a wait blocks.
        self._executor = ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="render-wait")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        self._fast.close()
        self._slow.close()
        for run in list(self._running):
            run.stop()
        # The waiting threads return as soon as their workers are dead.
        await asyncio.to_thread(executor.shutdown, wait=True)

    async def render(
        self, component: Component, archive: bytes, *, revision: int, previous: Mapping[str, Bundle], upgrade: bool
    ) -> RenderedRelease:
        """:func:`deployer_plugin.render_release` in a worker process, within the limits.

        Raises:
            SpecError: as render_release raises it; a RenderError when the
                render ran out of time, printed too much, or its worker died.
            RendererBusy: when no render slot is to be had.
        """
        if self._executor is None:
            raise RuntimeError("the renderer is not running")
        ident = f"{component.namespace}/{component.name}"
        limits = self.limits
        waiting = self._fast.waiting + self._slow.waiting
        if not self._fast.free and waiting >= limits.queue:
            raise RendererBusy(f"the hub is rendering {self._fast.busy + self._slow.busy} chart(s) and {waiting} "
                               f"more apply(s) wait (render_parallel, render_queue); apply {ident} again shortly")
        job = RenderJob(component=component, archive=archive, revision=revision, previous=dict(previous),
                        upgrade=upgrade, max_output_bytes=limits.max_output_bytes)
        name = f"render-{component.namespace}-{component.name}-{revision}"
        started = time.monotonic()
        # One wait budget for both lines: an apply waits for slots no longer than the time bound in all.
        wait_left = await self._take(self._fast, limits.timeout_seconds, ident)
        outcome = await self._run(_Run(job, limits.timeout_seconds, name), self._fast, lease=limits.fast_seconds)
        if outcome[0] == "evicted":
            # Its worker is dead and its fast slot given back: it waits for the slow lane with what is left of
            # its wait budget (the time it ran does not count as waiting).
            await self._take(self._slow, wait_left, ident)
            outcome = await self._run(_Run(job, limits.timeout_seconds, name + "-slow"), self._slow, lease=None)
        return self._result(outcome, ident, time.monotonic() - started)

    async def _take(self, lane: _Lane, timeout: float, ident: str) -> float:
        """Take a slot of ``lane`` within ``timeout`` seconds; the wait budget left after it."""
        started = time.monotonic()
        try:
            taken = await lane.take(timeout)
        except _Closed:
            raise RuntimeError(f"the render of {ident} was stopped: the hub is shutting down") from None
        if not taken:
            raise RendererBusy(f"no render slot came free within {self.limits.timeout_seconds:g} s "
                               f"(render_timeout_seconds); apply {ident} again")
        return max(0.0, timeout - (time.monotonic() - started))

    async def _run(self, run: _Run, lane: _Lane, *, lease: float | None) -> Outcome:
        """``run`` in its worker on the slot it holds in ``lane``; in the fast lane, for ``lease`` seconds at most.

        The slot is given back once the worker is dead, whatever happens to this coroutine.
        """
        executor = self._executor
        if executor is None:
            lane.release()
            raise RuntimeError(f"the render of {run.job.component.namespace}/{run.job.component.name} was stopped: "
                               "the hub is shutting down")
        run.lane = lane
        self._running.add(run)
        self.counts.started += 1
        future = asyncio.get_running_loop().run_in_executor(executor, run.wait)

        def finished(_: object) -> None:
            # Only when the worker is gone: the slots bound live processes, even for a cancelled apply.
            self._running.discard(run)
            assert run.lane is not None
            run.lane.release()

        future.add_done_callback(finished)
        try:
            if lease is not None and lease < run.timeout:
                done, _ = await asyncio.wait({future}, timeout=lease)
                if not done:
                    self._leave_fast_lane(run, lease)
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            run.stop()  # nobody waits for it any more
            raise

    def _leave_fast_lane(self, run: _Run, lease: float) -> None:
        ident = f"{run.job.component.namespace}/{run.job.component.name}"
        if self._slow.take_free():
            # The same worker goes on: nothing is lost, and its time bound still counts from its start.
            self._fast.release()
            run.lane = self._slow
            self.counts.moved += 1
            logger.info("Render of %s ran past %g s (render_fast_seconds): it goes on in the slow lane", ident, lease)
        else:
            # Stopped now, its fast slot is given back as soon as the worker is dead (the thread returns).
            run.evict()
            self.counts.stopped += 1
            logger.info("Render of %s ran past %g s (render_fast_seconds) with the slow lane full: stopped, "
                        "to run again there", ident, lease)

    def _result(self, outcome: Outcome, ident: str, took: float) -> RenderedRelease:
        kind, payload = outcome
        if kind == "rendered":
            assert isinstance(payload, RenderedRelease)
            for key, bundle in payload.bundles.items():
                size = len(bundle.manifests.encode())
                if size > MAX_BUNDLE_BYTES:
                    raise RenderError(component=ident, pool=key, what="a rendered bundle is larger than agents accept",
                                      detail=f"{size} bytes, over {MAX_BUNDLE_BYTES} (the protocol's MAX_BUNDLE_BYTES)")
            logger.debug("Rendered %s in %.2f s", ident, took)
            return payload
        if kind == "refused":
            assert isinstance(payload, tuple)
            name, args, attributes = payload
            raise rebuilt_error(name, args, attributes)
        if kind == "timeout":
            logger.warning("Render of %s ran past %g s; its worker was killed", ident, self.limits.timeout_seconds)
            raise RenderError(component=ident, pool="", what="the render took longer than the time bound",
                              detail=f"Helm did not finish within {self.limits.timeout_seconds:g} s "
                                     "(render_timeout_seconds); the render was stopped")
        if kind == "died":
            logger.warning("The render worker of %s died with exit code %s", ident, payload)
            raise RenderError(component=ident, pool="", what="the render worker died",
                              detail=f"exit code {payload}; the chart may need more memory than the hub has")
        if kind == "stopped":
            raise RuntimeError(f"the render of {ident} was stopped: the hub is shutting down")
        raise RuntimeError(f"the render of {ident} failed in its worker: {payload}")
