"""The agent: an MQTT session to the hub and a reconcile loop over the local store.

The two halves are independent on purpose. The session only verifies
assignments and records newer ones in the store; the reconcile loop drives the
runtime towards the store, whether or not the link is up, and so the node keeps
working (and repairs itself) while offline. Status and events flow back through
the session when it is connected.

Rules the loop keeps:
- a release is (re)played only when its desired manifests differ from what was
  applied (digest), so a reconnect or a repeated assignment restarts nothing;
- a new revision whose manifests equal the applied ones is adopted without
  touching the runtime;
- an apply is journaled before it starts (``applying_digest``) and the release
  reports ``Applying`` until the runtime has finished and the pods are ready:
  never ``Deployed`` for a revision that is not fully applied;
- the node's own health comes first: the runtime's preflight runs at start and
  after every failed apply. While it fails the node reports conditions
  (``RuntimeReady``/``StorageReady`` False, with the reason) and one
  ``NodeNotReady`` event, applies nothing, and re-checks with backoff; a
  broken node never turns into an ApplyFailed event per release per pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import aiomqtt

from edgeprotocol import topics
from edgeprotocol.errors import ProtocolError
from edgeprotocol.messages import Event, NodeStatus, Presence, ReleaseStatus, Resync, now
from edgekit.mqtt import MqttSession, SessionSettings
from edgeprotocol.signing import load_public_key, open_sealed

from . import __version__
from .health import NodeHealth, summary
from .identity import NodeIdentity
from .runtime import EdgeRuntimeError, NodeContext, Observation, ReleaseRef, Runtime
from .store import AgentStore, ReleaseRecord

logger = logging.getLogger(__name__)

# Pod phases that mean a pod is down, not starting: it is re-played.
DEAD_POD_PHASES = frozenset({"Missing", "Exited", "Dead", "Stopped", "Error"})
# The key of the node's own health in the backoff schedules, beside releases'.
_NODE_KEY = ("", "")


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSettings:
    state_dir: Path
    # The loop runs at least this often without being woken; a pod that dies
    # is brought back within about this time (self-heal), online or not.
    reconcile_interval: float = 5.0
    # Status is re-sent at least this often even when nothing changed, so the
    # hub's "last seen" keeps moving.
    status_heartbeat: float = 30.0
    # Pods not all ready this long after an apply turn the release Degraded.
    ready_timeout: float = 120.0
    # A pod found missing or exited this long after an apply is brought back
    # by re-playing its release (self-heal); sooner, it may still be starting.
    heal_after: float = 5.0
    # A failed apply is retried after this, doubling up to retry_max.
    retry_initial: float = 2.0
    retry_max: float = 60.0
    # Events kept while offline; past this the oldest are dropped (counted).
    outbox_limit: int = 1000
    # MQTT keepalive in seconds: a cut link shows as offline after ~1.5x.
    keepalive: int = 10

    @property
    def db_path(self) -> Path:
        return self.state_dir / "agent.db"


class Agent:
    """One edge node's agent. Use as an async context manager."""

    def __init__(self, settings: AgentSettings, identity: NodeIdentity, runtime: Runtime) -> None:
        self.settings = settings
        self.identity = identity
        self.runtime = runtime
        self.node = identity.node
        self._context = NodeContext(node=identity.node, pool=identity.pool)
        self._hub_key = load_public_key(identity.hub_public_key)
        self._store: AgentStore | None = None
        self._session: MqttSession | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._reconciler: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._retry: dict[tuple[str, str], tuple[float, float]] = {}  # key -> (next attempt, delay)
        self._heal_retry: dict[tuple[str, str], tuple[float, float]] = {}
        self.health = NodeHealth(runtime)
        self._health_retry: dict[tuple[str, str], tuple[float, float]] = {}
        self._last_status: object = None
        self._last_status_at = 0.0
        self._flush_lock = asyncio.Lock()
        self.passes = 0  # reconcile passes done, for tests and status

    # --- lifecycle -----------------------------------------------------------

    async def __aenter__(self) -> Agent:
        if self._stack is not None:
            raise RuntimeError(f"agent {self.node} is already running")
        self._stack = contextlib.AsyncExitStack()
        try:
            self._store = await self._stack.enter_async_context(
                AgentStore(self.settings.db_path, outbox_limit=self.settings.outbox_limit)
            )
            # Start from the local store before any contact with the hub: a
            # node that reboots while offline brings its workloads back.
            self._reconciler = asyncio.create_task(self._reconcile_forever(), name=f"reconcile-{self.node}")
            self._stack.push_async_callback(self._stop_reconciler)
            self._session = await self._stack.enter_async_context(
                MqttSession(self._session_settings(), on_message=self._on_message, on_connect=self._on_connect)
            )
            self._stack.push_async_callback(self._say_offline)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
        self._session = self._store = None

    def _session_settings(self) -> SessionSettings:
        offline = Presence(node=self.node, state="offline").encode()
        return SessionSettings(
            url=self.identity.mqtt_url,
            client_id=f"edgeagent-{self.node}",
            subscriptions=(topics.assignments_of(self.node),),
            will=aiomqtt.Will(topics.presence(self.node), offline, qos=1, retain=True),
            keepalive=self.settings.keepalive,
        )

    async def _stop_reconciler(self) -> None:
        task, self._reconciler = self._reconciler, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _say_offline(self) -> None:
        # The broker sends the last will only when a link dies; a clean stop
        # says it itself.
        if self._session is not None:
            await self._session.publish(
                topics.presence(self.node), Presence(node=self.node, state="offline", at=now()).encode(), retain=True
            )

    @property
    def store(self) -> AgentStore:
        if self._store is None:
            raise RuntimeError("the agent is not running")
        return self._store

    @property
    def session(self) -> MqttSession:
        if self._session is None:
            raise RuntimeError("the agent is not running")
        return self._session

    # --- from the hub --------------------------------------------------------

    async def _on_connect(self, session: MqttSession) -> None:
        await self.store.set_counter("last_sync", int(time.time()))
        await session.publish(
            topics.presence(self.node), Presence(node=self.node, state="online", at=now()).encode(), retain=True
        )
        held = {f"{r.namespace}/{r.release}": r.desired_revision for r in await self.store.releases()}
        await session.publish(topics.resync(self.node), Resync(node=self.node, held=held).encode(), retain=False)
        await self._publish_status(force=True)
        await self._flush_outbox()

    async def _on_message(self, topic: str, payload: bytes) -> None:
        if not payload:
            return  # the hub cleared a retained assignment
        try:
            parsed = topics.NodeTopic.parse(topic)
            assignment = open_sealed(payload, self._hub_key, node=self.node)
            if (parsed.namespace, parsed.release) != assignment.key:
                raise ProtocolError(f"assignment for {assignment.namespace}/{assignment.release} arrived on {topic}")
        except (ProtocolError, ValueError) as exc:
            logger.warning("Rejected a message on %s: %s", topic, exc)
            await self.record_event("Rejected", f"message on {topic} rejected: {exc}")
            return
        if await self.store.accept(assignment):
            logger.info("Accepted %s %s/%s revision %d", assignment.kind, assignment.namespace,
                        assignment.release, assignment.revision)
            self._retry.pop(assignment.key, None)
            self._wake.set()
        else:
            await self.store.bump("assignments_ignored")
            logger.debug("Ignored %s/%s revision %d: not newer than what the node holds",
                         assignment.namespace, assignment.release, assignment.revision)

    # --- reconcile -----------------------------------------------------------

    async def _reconcile_forever(self) -> None:
        while True:
            try:
                await self.reconcile_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("Reconcile pass failed; trying again in %.1f s", self.settings.reconcile_interval)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.reconcile_interval)

    async def reconcile_once(self) -> None:
        """Drive every release one step towards its desired state, then report."""
        if await self._node_ready():
            for rec in await self.store.releases():
                await self._reconcile_release(rec)
        self.passes += 1
        await self._publish_status()

    async def _node_ready(self) -> bool:
        """Whether the runtime can run pods: checked first, then re-checked with backoff while it cannot."""
        if self.health.ready is None or (not self.health.ready and self._due(self._health_retry, _NODE_KEY)):
            await self._check_node()
        return bool(self.health.ready)

    async def _check_node(self) -> bool:
        """Run the runtime's preflight; report a change of the node's health once (log and event)."""
        was = self.health.ready
        ready = await self.health.check()
        if ready:
            self._health_retry.pop(_NODE_KEY, None)
            if was is not True:
                logger.info("Node %s can run pods: %s", self.node,
                            "; ".join(f"{c.name}: {c.detail}" for c in self.health.checks))
            if was is False:
                await self.record_event("NodeReady", "the runtime works again: " + ", ".join(
                    f"{c.type}={c.status}" for c in self.health.conditions))
            return True
        delay = self._backoff(self._health_retry, _NODE_KEY)
        if was is not False:
            text = summary(self.health.conditions)
            logger.error("Node %s cannot run pods: %s; applying nothing until this is fixed "
                         "(re-checking with backoff, next in %.0f s; 'edgeagent doctor' shows every check)",
                         self.node, text, delay)
            await self.record_event("NodeNotReady", f"the node cannot run pods: {text}")
        else:
            logger.debug("Node %s still cannot run pods; next check in %.0f s", self.node, delay)
        return False

    async def _reconcile_release(self, rec: ReleaseRecord) -> None:
        ref = ReleaseRef(namespace=rec.namespace, release=rec.release)
        if rec.desired_kind == "tombstone":
            if rec.phase != "Removed":
                try:
                    await self.runtime.remove(ref)
                except EdgeRuntimeError as exc:
                    await self.store.observe(rec, phase="Failed", ready=0, total=0, message=f"removal failed: {exc}")
                    logger.warning("Removing %s failed: %s; retrying next pass", ref, exc)
                    return
                await self.store.finish_remove(rec)
                await self.record_event("Removed", f"removed at revision {rec.desired_revision}", rec)
            return
        if rec.applied_digest != rec.digest:
            if not self._due(self._retry, (rec.namespace, rec.release)):
                return
            if not await self._apply(ref, rec):
                return
        elif rec.applied_revision != rec.desired_revision:
            await self.store.adopt_revision(rec)
            await self.record_event("Adopted", f"revision {rec.desired_revision} renders the running manifests; nothing replayed", rec)
        fresh = await self.store.get(rec.namespace, rec.release)
        if fresh is not None and fresh.desired_revision == rec.desired_revision:
            await self._observe(ref, fresh)

    async def _apply(self, ref: ReleaseRef, rec: ReleaseRecord, *, reason: str = "Applied", why: str = "") -> bool:
        await self.store.begin_apply(rec)
        await self._publish_status()
        try:
            result = await self.runtime.apply(ref, rec.manifests, self._context)
        except EdgeRuntimeError as exc:
            if not await self._check_node():
                # The node, not the release, is at fault: one NodeNotReady
                # event said so; the release goes when the node is fixed.
                await self.store.fail_apply(rec, message=f"not applied: the node cannot run pods: "
                                                         f"{summary(self.health.conditions)}")
                logger.info("Applying %s revision %d failed on a node that is not ready: %s",
                            ref, rec.desired_revision, exc)
                return False
            delay = self._backoff(self._retry, (rec.namespace, rec.release))
            await self.store.fail_apply(rec, message=str(exc))
            await self.record_event("ApplyFailed", f"revision {rec.desired_revision}: {exc}; retrying in {delay:.0f} s", rec)
            logger.warning("Applying %s revision %d failed: %s", ref, rec.desired_revision, exc)
            return False
        self._retry.pop((rec.namespace, rec.release), None)
        await self.store.finish_apply(rec, message="; ".join(result.warnings))
        await self.store.bump("applies")
        detail = f" ({why})" if why else ""
        await self.record_event(reason, f"revision {rec.desired_revision} applied{detail}", rec)
        logger.info("%s %s revision %d%s", reason, ref, rec.desired_revision, detail)
        return True

    def _needs_healing(self, observation: Observation, rec: ReleaseRecord) -> bool:
        settled = time.time() - rec.applied_at >= self.settings.heal_after
        return settled and any(p.phase in DEAD_POD_PHASES for p in observation.pods)

    @staticmethod
    def _due(schedule: dict[tuple[str, str], tuple[float, float]], key: tuple[str, str]) -> bool:
        return time.monotonic() >= schedule.get(key, (0.0, 0.0))[0]

    def _backoff(self, schedule: dict[tuple[str, str], tuple[float, float]], key: tuple[str, str]) -> float:
        """Schedule the next attempt for ``key``: the delay doubles from retry_initial up to retry_max."""
        _, delay = schedule.get(key, (0.0, 0.0))
        delay = min(self.settings.retry_max, delay * 2 if delay else self.settings.retry_initial)
        schedule[key] = (time.monotonic() + delay, delay)
        return delay

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
            self._heal_retry.pop(key, None)
        elif self._needs_healing(observation, rec) and self._due(self._heal_retry, key):
            dead = ", ".join(f"{p.name} ({p.phase})" for p in observation.pods if p.phase in DEAD_POD_PHASES)
            logger.warning("Release %s has pods down: %s; re-playing it", ref, dead)
            await self.store.bump("self_heals")
            self._backoff(self._heal_retry, key)
            if await self._apply(ref, rec, reason="SelfHealed", why=f"pods down: {dead}"):
                fresh = await self.store.get(rec.namespace, rec.release)
                if fresh is not None and fresh.desired_revision == rec.desired_revision:
                    rec, observation = fresh, await self.runtime.observe(ref)
        if observation.ready >= observation.total:
            phase = "Deployed"
        elif time.time() - rec.applied_at < self.settings.ready_timeout:
            phase = "Applying"
        else:
            phase = "Degraded"
        message = rec.message if phase == "Deployed" or not observation.message else observation.message
        if (phase, observation.ready, observation.total, message) != (rec.phase, rec.ready, rec.total, rec.message):
            await self.store.observe(rec, phase=phase, ready=observation.ready, total=observation.total, message=message)

    # --- to the hub ----------------------------------------------------------

    async def _publish_status(self, *, force: bool = False) -> None:
        releases = tuple(
            ReleaseStatus(
                namespace=r.namespace, release=r.release, desired_revision=r.desired_revision,
                applied_revision=r.applied_revision, phase=r.phase,  # type: ignore[arg-type]
                message=r.message, ready=r.ready, total=r.total, observed_at=r.observed_at,
            )
            for r in await self.store.releases()
            if r.phase != "Removed"
        )
        comparable = (tuple((r.namespace, r.release, r.desired_revision, r.applied_revision, r.phase, r.message,
                             r.ready, r.total) for r in releases), self.health.conditions)
        due = time.monotonic() - self._last_status_at >= self.settings.status_heartbeat
        if not force and not due and comparable == self._last_status:
            return
        if self._session is None or not self._session.connected.is_set():
            return  # the latest status is re-read from the store on connect
        status = NodeStatus(
            node=self.node, seq=await self.store.next_seq("status"), observed_at=now(), releases=releases,
            agent_version=__version__, runtime=self.runtime.name, conditions=self.health.conditions,
        )
        if await self._session.publish(topics.status(self.node), status.encode(), retain=True):
            self._last_status, self._last_status_at = comparable, time.monotonic()
            await self.store.set_counter("last_sync", int(time.time()))

    async def record_event(self, reason: str, message: str, rec: ReleaseRecord | None = None) -> None:
        """Queue an event in the persisted outbox and send what the link allows, in order."""
        event = Event(
            node=self.node, seq=await self.store.next_seq("event"), at=now(), reason=reason, message=message,
            namespace=rec.namespace if rec else "", release=rec.release if rec else "",
            revision=rec.desired_revision if rec else 0,
        )
        dropped = await self.store.enqueue(topics.events(self.node), event.encode())
        if dropped:
            logger.warning("Event outbox full: dropped the %d oldest event(s)", dropped)
        await self._flush_outbox()

    async def _flush_outbox(self) -> None:
        if self._session is None or not self._session.connected.is_set():
            return
        async with self._flush_lock:
            dropped = await self.store.counter("events_dropped")
            if dropped:
                # The dropped events were the oldest queued, so this notice goes
                # out first, where the gap is.
                notice = Event(node=self.node, seq=await self.store.next_seq("event"), at=now(),
                               reason="EventsDropped",
                               message=f"{dropped} event(s) dropped while offline: the outbox holds "
                                       f"{self.settings.outbox_limit} at most")
                if not await self._session.publish(topics.events(self.node), notice.encode(), retain=False):
                    return
                await self.store.bump("events_dropped", -dropped)
            while batch := await self.store.pending():
                for item in batch:
                    if not await self._session.publish(item.topic, item.payload, retain=False):
                        return
                    await self.store.delivered(item.id)
