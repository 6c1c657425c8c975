"""The reconciler: drives the node's runtime towards what the local store says, online or not.

It never touches the network: what it does and sees it hands to a
``Reporter`` (the uplink), which queues events in the persisted outbox and
publishes status when the link allows.

Rules it keeps:
- the node's own health comes first: the runtime's preflight runs before the
  first pass and after every failed apply. While it fails, the node reports
  conditions (``RuntimeReady``/``StorageReady`` False, with the reason) and one
  ``NodeNotReady`` event, applies nothing, and re-checks with backoff; a broken
  node never turns into an ApplyFailed event per release per pass;
- a release is (re)played only when its desired manifests differ from what was
  applied (digest), so a reconnect or a repeated assignment restarts nothing;
- a new revision whose manifests equal the applied ones is adopted without
  touching the runtime;
- an apply is journaled before it starts (``applying_digest``) and the release
  reports ``Applying`` until the runtime has finished and the pods are ready:
  never ``Deployed`` for a revision that is not fully applied;
- manifests the runtime rejects for good (``ManifestRejected``) fail once, with
  the reason, and wait for a new revision; other failures are retried with
  backoff;
- releases are reconciled concurrently (at most ``max_parallel_releases``
  runtime calls at once, one worker per release at a time), so a release whose
  runtime calls hang for their timeouts never holds up the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from typing import Protocol

from edgekit.tasks import OwnedTask
from edgeprotocol.messages import Phase

from .health import NodeHealth, summary
from .release_health import release_health
from .runtime import (
    EdgeRuntimeError,
    ManifestRejected,
    NodeContext,
    Observation,
    ReleaseRef,
    Runtime,
    RuntimeApplyError,
)
from .settings import AgentSettings
from .store import AgentStore, ReleaseRecord

logger = logging.getLogger(__name__)

# Pod phases that mean a pod is down, not starting: it is re-played.
# "Unmounted": podman's pod lost the subPath binds the runtime made for it (a reboot).
DEAD_POD_PHASES = frozenset({"Missing", "Exited", "Dead", "Stopped", "Error", "Unmounted"})
# The key of the node's own health in the backoff schedules, beside releases'.
_NODE_KEY = ("", "")
ReleaseKey = tuple[str, str]


class Reporter(Protocol):
    """Where the reconciler's events and status go (the uplink)."""

    async def record_event(self, reason: str, message: str, rec: ReleaseRecord | None = None) -> None: ...

    async def publish_status(self, *, force: bool = False) -> None: ...


class Backoff:
    """When each key may be tried next: the delay doubles from ``initial`` up to ``maximum``."""

    def __init__(self, initial: float, maximum: float) -> None:
        self._initial, self._maximum = initial, maximum
        self._schedule: dict[ReleaseKey, tuple[float, float]] = {}  # key -> (next attempt, delay)

    def due(self, key: ReleaseKey) -> bool:
        return time.monotonic() >= self._schedule.get(key, (0.0, 0.0))[0]

    def failed(self, key: ReleaseKey) -> float:
        """Schedule the next attempt for ``key`` and return the delay."""
        _, delay = self._schedule.get(key, (0.0, 0.0))
        delay = min(self._maximum, delay * 2 if delay else self._initial)
        self._schedule[key] = (time.monotonic() + delay, delay)
        return delay

    def succeeded(self, key: ReleaseKey) -> None:
        self._schedule.pop(key, None)


class Reconciler:
    """The reconcile loop of one node. Use as an async context manager: it runs while entered."""

    def __init__(self, settings: AgentSettings, store: AgentStore, runtime: Runtime, node: NodeContext, *,
                 reporter: Reporter, health: NodeHealth, wake: asyncio.Event) -> None:
        self.settings = settings
        self.store = store
        self.runtime = runtime
        self.node = node
        self.reporter = reporter
        self.health = health
        self._retry = Backoff(settings.retry_initial, settings.retry_max)
        self._heal_retry = Backoff(settings.retry_initial, settings.retry_max)
        self._health_retry = Backoff(settings.retry_initial, settings.retry_max)
        self._slots = asyncio.Semaphore(settings.max_parallel_releases)
        self._workers: dict[ReleaseKey, OwnedTask] = {}
        # Set by whoever learns of new desired state (the uplink); a pass runs at once.
        self._wake = wake
        self._loop = OwnedTask(f"reconcile-{node.node}")
        self.passes = 0  # reconcile passes done, for tests and benchmarks

    async def __aenter__(self) -> Reconciler:
        if self._loop.running:
            raise RuntimeError(f"the reconciler of {self.node.node} is already running")
        self._loop.start(self._run_forever())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        owned = [self._loop, *self._workers.values()]
        self._workers.clear()
        await asyncio.gather(*(task.stop() for task in owned))

    def wake(self) -> None:
        """Run a pass now (a new assignment arrived) instead of at the next interval."""
        self._wake.set()

    async def _run_forever(self) -> None:
        while True:
            # Cleared before the pass, not after: an assignment that arrives during the pass wakes the next
            # one at once instead of waiting out the interval.
            self._wake.clear()
            try:
                await self.reconcile_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("Reconcile pass failed; trying again in %.1f s", self.settings.reconcile_interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.reconcile_interval)

    async def reconcile_once(self) -> None:
        """Drive every release one step towards its desired state, then report.

        Each release gets a worker unless one is still busy with it; the pass
        waits for its workers at most one reconcile interval, so a worker stuck
        in slow runtime calls goes on alone while later passes serve the rest.
        """
        if await self._node_ready():
            started = []
            for rec in await self.store.releases():
                key = (rec.namespace, rec.release)
                busy = self._workers.get(key)
                if busy is not None and busy.running:
                    continue
                worker = OwnedTask(f"reconcile-{self.node.node}-{key[0]}/{key[1]}")
                self._workers[key] = worker
                task = worker.start(self._work(key))
                task.add_done_callback(functools.partial(self._forget_worker, key, worker))
                started.append(task)
            if started:
                await asyncio.wait(started, timeout=self.settings.reconcile_interval)
        self.passes += 1
        await self.reporter.publish_status()

    def _forget_worker(self, key: ReleaseKey, worker: OwnedTask, _done: object) -> None:
        if self._workers.get(key) is worker:
            del self._workers[key]

    async def _work(self, key: ReleaseKey) -> None:
        async with self._slots:
            # Read again: the record may have changed while this worker waited for a slot.
            rec = await self.store.get(*key)
            if rec is None:
                return
            try:
                await self._reconcile_release(rec)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("Reconciling %s/%s failed; trying again next pass", *key)
        fresh = await self.store.get(*key)
        if fresh is not None and fresh.desired_revision != rec.desired_revision:
            self.wake()  # a newer revision arrived while this one was worked on

    # --- the node's health ------------------------------------------------------

    async def _node_ready(self) -> bool:
        """Whether the runtime can run pods: checked first, then re-checked with backoff while it cannot."""
        if self.health.ready is None or (not self.health.ready and self._health_retry.due(_NODE_KEY)):
            await self.check_node()
        return bool(self.health.ready)

    async def check_node(self) -> bool:
        """Run the runtime's preflight; report a change of the node's health once (log and event)."""
        was = self.health.ready
        ready = await self.health.check()
        if ready:
            self._health_retry.succeeded(_NODE_KEY)
            if was is not True:
                logger.info("Node %s can run pods: %s", self.node.node,
                            "; ".join(f"{c.name}: {c.detail}" for c in self.health.checks))
            if was is False:
                await self.reporter.record_event("NodeReady", "the runtime works again: " + ", ".join(
                    f"{c.type}={c.status}" for c in self.health.conditions))
            return True
        delay = self._health_retry.failed(_NODE_KEY)
        if was is not False:
            text = summary(self.health.conditions)
            logger.error("Node %s cannot run pods: %s; applying nothing until this is fixed "
                         "(re-checking with backoff, next in %.1f s; 'edgeagent doctor' shows every check)",
                         self.node.node, text, delay)
            await self.reporter.record_event("NodeNotReady", f"the node cannot run pods: {text}")
        else:
            logger.debug("Node %s still cannot run pods; next check in %.1f s", self.node.node, delay)
        return False

    # --- one release --------------------------------------------------------------

    async def _reconcile_release(self, rec: ReleaseRecord) -> None:
        ref = ReleaseRef(namespace=rec.namespace, release=rec.release)
        key = (rec.namespace, rec.release)
        if rec.desired_kind == "tombstone":
            if rec.phase != "Removed":
                try:
                    await self.runtime.remove(ref, self.node)
                except EdgeRuntimeError as exc:
                    await self.store.observe(rec, phase="Failed", ready=0, total=0, message=f"removal failed: {exc}")
                    logger.warning("Removing %s failed: %s; retrying next pass", ref, exc)
                    return
                await self.store.finish_remove(rec)
                await self.reporter.record_event("Removed", f"removed at revision {rec.desired_revision}", rec)
            return
        if rec.applied_digest != rec.digest:
            if rec.rejected_digest == rec.digest or not self._retry.due(key):
                return
            if not await self._apply(ref, rec):
                return
        elif rec.applied_revision != rec.desired_revision:
            await self.store.adopt_revision(rec)
            await self.reporter.record_event(
                "Adopted", f"revision {rec.desired_revision} renders the running manifests; nothing replayed", rec)
        fresh = await self.store.get(rec.namespace, rec.release)
        if fresh is not None and fresh.desired_revision == rec.desired_revision:
            await self._observe(ref, fresh)

    async def _apply(self, ref: ReleaseRef, rec: ReleaseRecord, *, reason: str = "Applied", why: str = "") -> bool:
        key = (rec.namespace, rec.release)
        await self.store.begin_apply(rec)
        await self.reporter.publish_status()
        try:
            result = await self.runtime.apply(ref, rec.manifests, self.node, revision=rec.desired_revision)
        except ManifestRejected as exc:
            # The same manifests can never run: say so once and wait for a new revision.
            await self.store.reject_apply(rec, message=f"rejected: {exc}; waiting for a new revision")
            await self.reporter.record_event("ApplyRejected", f"revision {rec.desired_revision}: {exc}", rec)
            logger.warning("Revision %d of %s rejected for good: %s", rec.desired_revision, ref, exc)
            return False
        except EdgeRuntimeError as exc:
            if not await self.check_node():
                # The node, not the release, is at fault: one NodeNotReady
                # event said so; the release goes when the node is fixed.
                await self.store.fail_apply(rec, message=f"not applied: the node cannot run pods: "
                                                         f"{summary(self.health.conditions)}")
                logger.info("Applying %s revision %d failed on a node that is not ready: %s",
                            ref, rec.desired_revision, exc)
                return False
            delay = self._retry.failed(key)
            reason = exc.reason if isinstance(exc, RuntimeApplyError) else ""
            if reason == "ErrImagePull" and rec.reason in ("ErrImagePull", "ImagePullBackOff"):
                reason = "ImagePullBackOff"  # failed before: now waiting out the retry's back-off, as the kubelet says
            await self.store.fail_apply(rec, message=f"{reason}: {exc}" if reason else str(exc), reason=reason)
            await self.reporter.record_event(
                "ApplyFailed", f"revision {rec.desired_revision}: {exc}; retrying in {delay:.0f} s", rec)
            logger.warning("Applying %s revision %d failed: %s", ref, rec.desired_revision, exc)
            return False
        self._retry.succeeded(key)
        await self.store.finish_apply(rec, warnings="; ".join(result.warnings))
        await self.store.bump("applies")
        detail = f" ({why})" if why else ""
        hooks = f"; {'; '.join(result.hooks)}" if result.hooks else ""
        await self.reporter.record_event(reason, f"revision {rec.desired_revision} applied{detail}{hooks}", rec)
        logger.info("%s %s revision %d%s", reason, ref, rec.desired_revision, detail)
        return True

    def _needs_healing(self, observation: Observation, rec: ReleaseRecord) -> bool:
        settled = time.time() - rec.applied_at >= self.settings.heal_after
        return settled and any(p.phase in DEAD_POD_PHASES for p in observation.pods)

    async def _observe(self, ref: ReleaseRef, rec: ReleaseRecord) -> None:
        try:
            observation = await self.runtime.observe(ref)
        except EdgeRuntimeError as exc:
            # Not seeing the pods is not knowing they run: never keep Deployed.
            logger.warning("Cannot observe %s: %s", ref, exc)
            await self.store.observe(rec, phase="Degraded", ready=0, total=rec.total, message=f"cannot observe: {exc}")
            return
        key = (rec.namespace, rec.release)
        if observation.ready >= observation.total:
            self._heal_retry.succeeded(key)
        elif self._needs_healing(observation, rec) and self._heal_retry.due(key):
            dead = ", ".join(f"{p.name} ({p.phase})" for p in observation.pods if p.phase in DEAD_POD_PHASES)
            logger.warning("Release %s has pods down: %s; re-playing it", ref, dead)
            await self.store.bump("self_heals")
            self._heal_retry.failed(key)
            if await self._apply(ref, rec, reason="SelfHealed", why=f"pods down: {dead}"):
                fresh = await self.store.get(rec.namespace, rec.release)
                if fresh is not None and fresh.desired_revision == rec.desired_revision:
                    rec, observation = fresh, await self.runtime.observe(ref)
        health = release_health(observation.pods)
        phase: Phase
        if health.failing or observation.failed:
            phase = "Degraded"  # no waiting makes it right: said at once, not after ready_timeout
        elif observation.ready >= observation.total:
            phase = "Deployed"
        elif time.time() - rec.applied_at < self.settings.ready_timeout:
            phase = "Applying"
        else:
            phase = "Degraded"
        # What the runtime could not do stays in the message whatever the pods do.
        shortfall = (health.message, observation.message) if phase != "Deployed" else ()
        message = "; ".join(m for m in (*shortfall, rec.warnings) if m)
        if health.reason != rec.reason:
            if health.reason:
                await self.reporter.record_event("Unhealthy", f"revision {rec.desired_revision}: {health.message}",
                                                 rec)
            elif rec.reason and rec.phase != "Failed":
                await self.reporter.record_event("Healthy", f"revision {rec.desired_revision}: no container "
                                                 f"{rec.reason} any more", rec)
        if (phase, observation.ready, observation.total, message, health.reason, health.restarts,
                health.pods) != (rec.phase, rec.ready, rec.total, rec.message, rec.reason, rec.restarts,
                                 rec.pod_statuses()):
            await self.store.observe(rec, phase=phase, ready=observation.ready, total=observation.total,
                                     message=message, reason=health.reason, restarts=health.restarts,
                                     pods=health.pods)
