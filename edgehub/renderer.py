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
- takes one of ``render_parallel`` slots, so a slow chart leaves the others to
  other applies. At most ``render_queue`` applies wait for a slot, each no
  longer than the time bound; beyond that an apply is refused (409, apply
  again) instead of piling up with its chart in memory.

Errors: what the chart or its values do wrong is a ``SpecError`` (the
engine's own, translated in the worker as in-process rendering does, and a
``RenderError`` for a bound overrun or a worker that died), which the hub
answers with 422; a full queue is ``RendererBusy`` (a ``ConcurrentChange``,
409); a bug in the worker is a ``RuntimeError`` (500, logged).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
import time
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

    @classmethod
    def of(cls, settings: HubSettings) -> RenderLimits:
        """The limits a HubSettings sets."""
        return cls(timeout_seconds=settings.render_timeout_seconds, max_output_bytes=settings.render_output_bytes,
                   parallel=settings.render_parallel, queue=settings.render_queue)


class _Run:
    """One render in one worker process, waited for on a thread of the renderer's pool."""

    def __init__(self, job: RenderJob, timeout: float) -> None:
        self.job = job
        self.timeout = timeout
        self.stopped = False
        self._process: multiprocessing.process.BaseProcess | None = None
        self._lock = threading.Lock()

    def stop(self) -> None:
        """Kill the worker (from any thread); the waiting thread then returns ("stopped", None)."""
        with self._lock:
            self.stopped = True
            if self._process is not None:
                self._process.kill()

    def wait(self) -> Outcome:
        """Start the worker and wait for its outcome, at most ``timeout`` seconds (blocks)."""
        context = multiprocessing.get_context("spawn")
        receive, send = context.Pipe(duplex=False)
        name = f"render-{self.job.component.namespace}-{self.job.component.name}-{self.job.revision}"
        process = context.Process(target=render_in_worker, args=(self.job, send), name=name, daemon=True)
        started = time.monotonic()
        received = False
        try:
            with self._lock:
                if self.stopped:
                    return ("stopped", None)
                process.start()
                self._process = process
            send.close()  # the worker holds the other copy: its death ends the pipe
            if not receive.poll(max(0.0, self.timeout - (time.monotonic() - started))):
                return ("timeout", time.monotonic() - started)
            try:
                outcome: Outcome = receive.recv()
            except EOFError:
                process.join(EXIT_GRACE_SECONDS)
                return ("stopped", None) if self.stopped else ("died", process.exitcode)
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
        self._executor: ThreadPoolExecutor | None = None
        self._slots = asyncio.Semaphore(self.limits.parallel)
        self._waiting = 0
        self._running: set[_Run] = set()

    async def __aenter__(self) -> Renderer:
        if self._executor is not None:
            raise RuntimeError("this renderer is already running")
        # A thread per slot waits on its worker process: a wait blocks.
        self._executor = ThreadPoolExecutor(max_workers=self.limits.parallel, thread_name_prefix="render-wait")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
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
        executor = self._executor
        if executor is None:
            raise RuntimeError("the renderer is not running")
        ident = f"{component.namespace}/{component.name}"
        limits = self.limits
        if self._slots.locked() and self._waiting >= limits.queue:
            raise RendererBusy(f"the hub is rendering {limits.parallel} chart(s) and {self._waiting} more "
                               f"apply(s) wait (render_parallel, render_queue); apply {ident} again shortly")
        self._waiting += 1
        try:
            async with asyncio.timeout(limits.timeout_seconds):
                await self._slots.acquire()
        except TimeoutError:
            raise RendererBusy(f"no render slot came free within {limits.timeout_seconds:g} s "
                               f"(render_timeout_seconds); apply {ident} again") from None
        finally:
            self._waiting -= 1
        run = _Run(RenderJob(component=component, archive=archive, revision=revision, previous=dict(previous),
                             upgrade=upgrade, max_output_bytes=limits.max_output_bytes), limits.timeout_seconds)
        self._running.add(run)
        future = asyncio.get_running_loop().run_in_executor(executor, run.wait)

        def finished(_: object) -> None:
            # Only when the worker is gone: the slot bounds live processes, even for a cancelled apply.
            self._running.discard(run)
            self._slots.release()

        future.add_done_callback(finished)
        started = time.monotonic()
        try:
            outcome = await asyncio.shield(future)
        except asyncio.CancelledError:
            run.stop()  # nobody waits for it any more
            raise
        return self._result(outcome, ident, time.monotonic() - started)

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
            name, args, attributes = payload  # type: ignore[misc]
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
