"""Fleet status on the bus: retained JSON summaries that MQTT dashboards read with no plugin.

Topics (schemas with examples in docs/dashboards.md):

    ec/v1/summary/fleet                          every node, component and release counted
    ec/v1/summary/pools/{pool}                   one pool
    ec/v1/summary/components/{namespace}/{name}  one component's rollout, per pool
    ec/v1/summary/nodes/{node}                   one node: presence, conditions, releases

Every payload is a flat JSON object (numbers and strings at the top level;
per-pool detail also nested under ``pools``) that names what it is about
(``node``, ``pool`` or ``component``) and says when its content last changed
(``observed_at``): Grafana's MQTT data source drops the topic of a wildcard
match, so the payload must carry its identity.

``Summaries`` computes every payload from the store (the truth), and
``SummaryPublisher`` publishes only what changed, coalesced: a store change
schedules one pass, passes run at most once per ``interval``, each publishes at
most ``max_per_pass`` topics (the rest wait for the next pass, newest content
winning), and a summary that disappeared (a node reset, a deleted component)
has its retained message cleared. The bound for any fleet is therefore
``max_per_pass / interval`` messages per second (2,000/s by default), and a
quiet fleet publishes nothing but the periodic refresh of fleet, pool and
component summaries that keeps Home Assistant's ``expire_after`` from marking
live values stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, get_args

from edgekit.mqtt import PUBLISH_WINDOW
from edgekit.tasks import OwnedTask, each_within
from edgeprotocol import topics
from edgeprotocol.health import release_failing
from edgeprotocol.messages import READINESS_CONDITIONS, Phase, now

from .store.assignments import AssignmentRecord, AssignmentStore
from .store.components import ComponentRecord, ComponentStore, RolloutRow
from .store.enrollment import NodeRecord
from .store.reports import ReportStore
from .views import release_targets, reported_release

logger = logging.getLogger(__name__)

# The largest share of the hub's time summary passes may take (the rest is the fleet's).
PASS_SHARE = 0.2

SUMMARY_PREFIX = f"{topics.PREFIX}/summary"
HUB_STATE_TOPIC = f"{topics.PREFIX}/hub/state"
PHASES: tuple[str, ...] = get_args(Phase)

Publish = Callable[[str, bytes], Awaitable[bool]]


def fleet_topic() -> str:
    return f"{SUMMARY_PREFIX}/fleet"


def pool_topic(pool: str) -> str:
    return f"{SUMMARY_PREFIX}/pools/{pool}"


def component_topic(namespace: str, name: str) -> str:
    return f"{SUMMARY_PREFIX}/components/{namespace}/{name}"


def node_topic(node: str) -> str:
    return f"{SUMMARY_PREFIX}/nodes/{node}"


def _phase_counts(phases: Counter[str]) -> dict[str, int]:
    return {f"releases_{p.lower()}": phases.get(p, 0) for p in PHASES}


@dataclass(slots=True)
class _Target:
    """One node's share of a component's rollout."""

    pool: str
    online: bool
    applied: int
    phase: str
    stale: bool
    reason: str = ""  # the release's health word, "" when healthy

    @property
    def failing(self) -> bool:
        return release_failing(self.phase, self.reason)


def _rollout(targets: list[_Target], revision: int) -> dict[str, int]:
    return {
        "desired": len(targets),
        "updated": sum(1 for t in targets if t.applied == revision),
        "ready": sum(1 for t in targets if t.applied == revision and t.phase == "Deployed" and not t.stale
                     and not t.failing),
        "failed": sum(1 for t in targets if t.failing),
        "offline": sum(1 for t in targets if not t.online),
    }


# The most reasons a component's summary counts: a reason is what an agent says, so a fleet could say many.
MAX_SUMMARY_REASONS = 16


def _reasons(targets: list[_Target]) -> dict[str, int]:
    """How many targets report each health word (a release has one only while it is unhealthy), the most
    common first, at most ``MAX_SUMMARY_REASONS``."""
    return dict(Counter(t.reason for t in targets if t.reason).most_common(MAX_SUMMARY_REASONS))


def _rollout_state(counts: dict[str, int]) -> str:
    if counts["desired"] == 0:
        return "no targets"
    if counts["ready"] == counts["desired"]:
        return "complete"
    if counts["failed"]:
        return "failing"
    if counts["offline"] and counts["ready"] + counts["offline"] == counts["desired"]:
        return "waiting for offline nodes"
    return "progressing"


def _targets(comp: ComponentRecord, by_name: dict[str, NodeRecord],
             assignments: list[AssignmentRecord]) -> list[_Target]:
    """The component's targets among ``by_name`` (joined nodes), each as its node last reported it
    (``assignments``: the component's release assignments, ``views.release_targets``)."""
    targets = []
    for a in assignments:
        node = by_name.get(a.node)
        if node is None:
            continue
        reported = reported_release(node, comp.namespace, comp.name)
        online = node.presence == "online"
        targets.append(_Target(pool=node.pool, online=online,
                               applied=reported.applied_revision if reported is not None else 0,
                               phase=reported.phase if reported is not None else "Pending",
                               stale=reported is not None and not online,
                               reason=reported.reason if reported is not None else ""))
    return targets


def rollout(comp: ComponentRecord, nodes: list[NodeRecord], assignments: list[AssignmentRecord]) -> dict[str, Any]:
    """The rollout of the component's current revision over its joined targets, as its summary counts it:
    ``desired``, ``updated``, ``ready``, ``failed``, ``offline`` and ``rollout`` (``complete``, ``failing``,
    ``progressing``, ``waiting for offline nodes`` or ``no targets``)."""
    joined = {n.name: n for n in nodes if n.standing == "joined"}
    targets = release_targets(assignments).get((comp.namespace, comp.name), [])
    counts = _rollout(_targets(comp, joined, targets), comp.revision)
    return {**counts, "rollout": _rollout_state(counts)}


def staged_words(rows: list[RolloutRow], components: list[ComponentRecord]) -> dict[tuple[str, str], str]:
    """A few words per component whose current revision a staged rollout governs ("batch 2/3", "paused at
    batch 1/3", "rolled back"), but one that completed (its counts say it)."""
    from .rollout import RolloutState, summary  # rollout imports nothing of this module; kept local anyway

    revisions = {(c.namespace, c.name): c.revision for c in components}
    words = {}
    for row in rows:
        try:
            state = RolloutState.from_row(row)
        except Exception:  # noqa: BLE001 - a row that does not parse is the dispatcher's to report
            continue
        current = revisions.get((row.namespace, row.name))
        if state.state != "complete" and current in (state.revision, state.rollback_revision):
            words[(row.namespace, row.name)] = summary(state)
    return words


def node_summary(node: NodeRecord) -> dict[str, Any]:
    """The summary of one node, as its record says."""
    status = node.status
    # With each release its health: the word ("" when healthy), its containers' restarts and its message (the
    # worst container's trouble, or what the node could not do).
    releases: list[dict[str, Any]] = [{"release": f"{r.namespace}/{r.release}", "revision": r.applied_revision,
                 "desired_revision": r.desired_revision, "phase": r.phase, "reason": r.reason,
                 "restarts": r.restarts, "message": r.message}
                for r in (status.releases if status else ())]
    conditions = {c.type: c.status for c in status.conditions} if status else {}
    readiness = {k: v for k, v in conditions.items() if k in READINESS_CONDITIONS}
    return {
        "node": node.name, "pool": node.pool, "online": node.presence == "online", "presence": node.presence,
        # Ready: the runtime can run pods. A wrong clock (ClockSynchronized=False) is shown, but the agent
        # corrects for it: it does not make the node not ready.
        "last_seen": node.last_seen, "ready": bool(readiness) and all(v == "True" for v in readiness.values()),
        "conditions": conditions, "agent_version": status.agent_version if status else "",
        "releases_total": len(releases), **_phase_counts(Counter(r["phase"] for r in releases)),
        "releases": releases,
    }


def build(nodes: list[NodeRecord], components: list[ComponentRecord],
          assignments: list[AssignmentRecord],
          staged: dict[tuple[str, str], str] | None = None,
          node_memo: dict[str, tuple[NodeRecord, dict[str, Any]]] | None = None) -> dict[str, dict[str, Any]]:
    """Every summary by topic, without ``observed_at`` (the publisher adds when each content last changed).
    ``staged``: the words of components a staged rollout governs, shown as their ``rollout``.
    ``node_memo`` (kept by the caller from one build to the next): each node's summary by the record it was
    made from; a node whose record is the very same object as last time (the store hands out one record per
    unchanged row) keeps the same summary object, unmade."""
    joined = [n for n in nodes if n.standing == "joined"]
    by_name = {n.name: n for n in joined}
    out: dict[str, dict[str, Any]] = {}

    all_phases: Counter[str] = Counter()
    pool_phases: dict[str, Counter[str]] = defaultdict(Counter)
    earlier = dict(node_memo or {})
    for node in joined:
        for r in node.status.releases if node.status else ():
            all_phases[r.phase] += 1
            pool_phases[node.pool][r.phase] += 1
        held = earlier.get(node.name)
        summary = held[1] if held is not None and held[0] is node else node_summary(node)
        out[node_topic(node.name)] = summary
        if node_memo is not None:
            node_memo[node.name] = (node, summary)
    if node_memo is not None:
        for gone in earlier.keys() - by_name.keys():
            del node_memo[gone]

    pools = sorted({n.pool for n in joined})
    components_of_pool: dict[str, set[str]] = defaultdict(set)
    assigned = release_targets(assignments)
    for comp in components:
        ref = f"{comp.namespace}/{comp.name}"
        targets = _targets(comp, by_name, assigned.get((comp.namespace, comp.name), []))
        for t in targets:
            components_of_pool[t.pool].add(ref)
        total = _rollout(targets, comp.revision)
        per_pool = {pool: _rollout([t for t in targets if t.pool == pool], comp.revision)
                    for pool in sorted({t.pool for t in targets})}
        out[component_topic(comp.namespace, comp.name)] = {
            "component": ref, "namespace": comp.namespace, "name": comp.name,
            "chart": comp.chart_name, "chart_version": comp.chart_version,
            "revision": comp.revision,
            # The revision every target has reached (0 before any has): Home Assistant's "installed".
            "installed_revision": min((t.applied for t in targets), default=0),
            **total, "rollout": (staged or {}).get((comp.namespace, comp.name)) or _rollout_state(total),
            "reasons": _reasons(targets),
            "pools": per_pool,
        }

    for pool in pools:
        members = [n for n in joined if n.pool == pool]
        online = sum(1 for n in members if n.presence == "online")
        out[pool_topic(pool)] = {
            "pool": pool, "nodes_total": len(members), "nodes_online": online, "nodes_offline": len(members) - online,
            "releases_total": sum(pool_phases[pool].values()), **_phase_counts(pool_phases[pool]),
            "components_total": len(components_of_pool[pool]), "components": sorted(components_of_pool[pool]),
        }

    online = sum(1 for n in joined if n.presence == "online")
    out[fleet_topic()] = {
        "fleet": "edgecollab", "nodes_total": len(joined), "nodes_online": online,
        "nodes_offline": len(joined) - online, "pools_total": len(pools), "components_total": len(components),
        "releases_total": sum(all_phases.values()), **_phase_counts(all_phases),
    }
    return out


@dataclass(frozen=True, slots=True)
class SummarySettings:
    # Passes run at most this often: a change shows within about this long.
    interval: float = 1.0
    # Topics one pass publishes at most; the rest wait for the next pass.
    max_per_pass: int = 2000
    # Fleet, pool and component summaries are published again after this long even if unchanged, so a
    # dashboard's "expire after" (3 x this) tells a live value from one the hub stopped updating.
    refresh: float = 60.0


@dataclass(slots=True)
class _Published:
    content: str  # canonical JSON without observed_at
    observed_at: str
    at: float = field(default=0.0)  # monotonic time it was last published
    summary: dict[str, Any] | None = field(default=None, repr=False)  # what ``content`` encodes


class SummaryPublisher:
    """Keeps the retained summaries in step with the store. Entered for the hub's life; ``changed()``
    schedules a pass."""

    def __init__(self, reports: ReportStore, component_store: ComponentStore, assignments: AssignmentStore,
                 publish: Publish, settings: SummarySettings = SummarySettings(),
                 *, extra: Callable[[dict[str, dict[str, Any]]], dict[str, bytes]] | None = None) -> None:
        self._reports = reports
        self._component_store = component_store
        self._assignments = assignments
        self._publish = publish
        self.settings = settings
        # More retained documents made from the same summaries (Home Assistant discovery), by topic.
        self._extra = extra
        self._published: dict[str, _Published] = {}
        self._extra_published: dict[str, bytes] = {}
        self._node_memo: dict[str, tuple[NodeRecord, dict[str, Any]]] = {}
        self._wake = asyncio.Event()
        self._task = OwnedTask("summary-publisher")
        self.latest: dict[str, dict[str, Any]] = {}  # the last computed summaries (metrics read them)
        # Every current summary with its observed_at, as the live stream shows them.
        self.current: dict[str, dict[str, Any]] = {}
        self._listeners: set[asyncio.Queue[tuple[str, dict[str, Any] | None] | None]] = set()
        self.passes = 0
        self._force = False

    async def __aenter__(self) -> SummaryPublisher:
        self._task.start(self._run())
        self._wake.set()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._task.stop()

    def changed(self) -> None:
        self._wake.set()

    @contextlib.contextmanager
    def listen(self, capacity: int = 10_000) -> Iterator[asyncio.Queue[tuple[str, dict[str, Any] | None] | None]]:
        """A queue of (topic, summary or None when it is gone) for every change from now on. A listener that
        falls ``capacity`` changes behind gets None and no more: it must start again from ``current``."""
        queue: asyncio.Queue[tuple[str, dict[str, Any] | None] | None] = asyncio.Queue(capacity)
        self._listeners.add(queue)
        try:
            yield queue
        finally:
            self._listeners.discard(queue)

    def _tell(self, topic: str, summary: dict[str, Any] | None) -> None:
        for queue in list(self._listeners):
            try:
                queue.put_nowait((topic, summary))
            except asyncio.QueueFull:
                self._listeners.discard(queue)
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                queue.put_nowait(None)

    def republish_all(self) -> None:
        """After a (re)connect: the broker may have lost its retained messages."""
        for entry in self._published.values():
            entry.at = 0.0
        self._extra_published.clear()
        self._force = True
        self._wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):  # the periodic refresh
                await asyncio.wait_for(self._wake.wait(), timeout=self.settings.refresh)
            self._wake.clear()
            started = time.monotonic()
            try:
                backlog = await self.publish_pass()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("Publishing summaries failed; trying again on the next change")
                backlog = False
            if backlog:
                self._wake.set()
            took = time.monotonic() - started
            # A pass reads and rebuilds every summary: on a fleet of thousands that is a good part of a
            # second, so passes are spaced to take at most PASS_SHARE of the hub's time (ingest comes first).
            await asyncio.sleep(max(0.0, max(self.settings.interval, took / PASS_SHARE) - took))

    async def publish_pass(self) -> bool:
        """Compute every summary and publish what changed; True if some wait for the next pass."""
        nodes = await self._reports.list_nodes(with_certificate=False)
        components = await self._component_store.list_components(with_spec=False)
        assignments = await self._assignments.list_assignments()
        summaries = build(nodes, components, assignments,
                          staged_words(await self._component_store.list_rollouts(), components), self._node_memo)
        self.latest = summaries
        self.passes += 1
        force, self._force = self._force, False
        clock = time.monotonic()
        due: list[tuple[str, bytes]] = []
        for topic, summary in summaries.items():
            entry = self._published.get(topic)
            # The very summary object published before (a node whose record did not change) is not encoded
            # again to find it unchanged: on a big fleet most nodes' are, on every pass.
            content = entry.content if entry is not None and entry.summary is summary \
                else json.dumps(summary, sort_keys=True, separators=(",", ":"))
            refresh = not topic.startswith(f"{SUMMARY_PREFIX}/nodes/") and entry is not None \
                and clock - entry.at >= self.settings.refresh
            if entry is not None:
                entry.summary = summary
            if entry is None or entry.content != content:
                entry = self._published[topic] = _Published(content=content, observed_at=now(), summary=summary)
                self.current[topic] = {**summary, "observed_at": entry.observed_at}
                self._tell(topic, self.current[topic])
            elif not (force or refresh or entry.at == 0.0):
                continue
            due.append((topic, json.dumps({**summary, "observed_at": entry.observed_at},
                                          separators=(",", ":")).encode()))
        gone = [t for t in self._published if t not in summaries]
        for topic in gone:
            if self.current.pop(topic, None) is not None:
                self._tell(topic, None)
        extra = self._extra(summaries) if self._extra else {}
        due += [(t, p) for t, p in extra.items() if force or self._extra_published.get(t) != p]
        gone += [t for t in self._extra_published if t not in extra]
        budget = self.settings.max_per_pass

        async def clear(topic: str) -> bool:
            if not await self._publish(topic, b""):
                return False
            self._published.pop(topic, None)
            self._extra_published.pop(topic, None)
            return True

        async def publish(item: tuple[str, bytes]) -> bool:
            topic, payload = item
            if not await self._publish(topic, payload):
                return False
            if topic in self._published:
                self._published[topic].at = time.monotonic()
            else:
                self._extra_published[topic] = payload
            return True

        await each_within(gone[:budget], clear, at_once=PUBLISH_WINDOW)
        budget -= min(len(gone), budget)
        sent = await each_within(due[:budget], publish, at_once=PUBLISH_WINDOW)
        if due[:budget] and not sent:
            return True  # not connected: the next connect publishes everything
        waiting = len(due) - sent + max(0, len(gone) - self.settings.max_per_pass)
        if waiting:
            logger.info("Published %d summaries; %d wait for the next pass (max_per_pass %d)", sent, waiting,
                        self.settings.max_per_pass)
        return waiting > 0
