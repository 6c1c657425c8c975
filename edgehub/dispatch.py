"""Dispatch: from components and nodes to the signed, retained assignment of each node.

``sync`` recomputes, for every node, which release at which revision it should
hold, writes the difference to the store's assignment table, then publishes
what changed. The table is the truth; MQTT is a delivery cache, so
``publish_all`` (on every broker connect) re-publishes the whole table.

Every node with the same render key (all of a pool's nodes, say) gets the
same render, so its wire form (gzip, then encrypted, then base64) is computed
once and shared by every assignment that carries it, in one publish and
across publishes: a ``Bundle`` keeps the wire form it made, and
``WireBundles`` keeps the bundles. Only the envelope, which names the node,
is encoded and signed per node, with the render's content key wrapped to the
node's bundle key inside it (``edgeprotocol.bundle_crypto``). A node that
joined without a bundle key (an agent older than bundle encryption) gets the
plain wire form instead, and the hub warns once per such node.

Placement needs only a component's targeting, never its values, which may be
megabytes: each spec is parsed once per revision, on a worker thread, and
what placement needs is kept (``Placements``), so a sync reads no specs at
all when nothing was applied. A resync re-publishes only what the node lacks
or holds an older revision of. After each sync the renders of deleted
components are pruned from the store (tombstones carry none), and so are the
renders of revisions beyond a component's ``spec.historyLimit`` that no
assignment names any more.

Every assignment is sealed for the node's current join generation, and only
nodes in standing ``joined`` are published to: a reset or revoked node keeps
its assignments in the table, its retained messages are cleared
(``withdraw_node``), and a re-join publishes them all again at the new
generation (``publish_node``). A release a node reports that the hub did not
assign to it (or holds only a tombstone below what the node reports) gets
a tombstone above the node's revision (``on_status``), so the node removes it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.public import PublicKey

from deployer_plugin import Component, NodeInfo, SpecError, parse_component, place
from edgekit.mqtt import PUBLISH_WINDOW
from edgekit.tasks import each_within
from edgeprotocol import bundle_crypto, topics
from edgeprotocol.errors import ProtocolError
from edgeprotocol.messages import MAX_ASSIGNMENT_BYTES, Assignment, Bundle, NodeStatus, now
from edgeprotocol.signing import seal

from .rollout import RolloutState, desired_revision
from .store.assignments import AssignmentRecord, AssignmentStore
from .store.components import ComponentRecord, ComponentStore, RolloutRow
from .store.enrollment import EnrollmentStore, JoinedNode

logger = logging.getLogger(__name__)

Publish = Callable[[str, bytes, bool], Awaitable[bool]]
RenderId = tuple[str, str, int, str]  # (namespace, release, revision, render key)

# Wire forms kept across publishes, by their compressed size. A render is stored
# once and never changes, so an entry cannot go stale; the bound only keeps
# memory flat. 64 MiB holds hundreds of typical renders (the example's is
# under 1 KiB on the wire; the protocol's ceiling is 4 MiB a message).
WIRE_CACHE_BYTES = 64 * 1024 * 1024
# A warning names at most this many nodes.
MAX_NAMED = 20
# The sealed bytes the publishes of the window (edgekit.mqtt.PUBLISH_WINDOW) may hold together.
WINDOW_BYTES = 64 * 1024 * 1024


def wire_bytes(bundle: Bundle) -> int:
    """What the cache counts of a render: its compressed size (each wire form made of it is about 4/3 of that)."""
    return len(bundle.packed())


class WireBundles:
    """Renders with their wire form made, most recently used last, within ``max_bytes`` of wire data."""

    def __init__(self, max_bytes: int = WIRE_CACHE_BYTES) -> None:
        self._max_bytes = max_bytes
        self._bytes = 0
        self._entries: OrderedDict[RenderId, Bundle] = OrderedDict()

    def get(self, render: RenderId) -> Bundle | None:
        found = self._entries.get(render)
        if found is not None:
            self._entries.move_to_end(render)
        return found

    def put(self, render: RenderId, bundle: Bundle) -> None:
        replaced = self._entries.pop(render, None)
        if replaced is not None:
            self._bytes -= wire_bytes(replaced)
        self._entries[render] = bundle
        self._bytes += wire_bytes(bundle)
        # Keep the newest even when it alone is over the bound: the publish
        # under way is about to use it.
        while self._bytes > self._max_bytes and len(self._entries) > 1:
            _, dropped = self._entries.popitem(last=False)
            self._bytes -= wire_bytes(dropped)
            logger.debug("Wire cache full (%d bytes); dropped the least recently used render", self._max_bytes)


def placement_of(component: Component) -> Component:
    """``component`` with only what placement reads: its targeting and which pools have values."""
    pools: dict[str, dict[str, Any]] = {pool: {} for pool in component.edge.pool_values}
    return dataclasses.replace(component, values={}, edge=dataclasses.replace(component.edge, pool_values=pools))


def _parse_placement(spec_json: str) -> Component:
    return placement_of(parse_component(json.loads(spec_json), source="store"))


class Placements:
    """What placement needs of each live component, by (namespace, name), for one revision and fingerprint."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], tuple[int, str, Component]] = {}

    def get(self, comp: ComponentRecord) -> Component | None:
        found = self._entries.get((comp.namespace, comp.name))
        if found is None or found[:2] != (comp.revision, comp.fingerprint):
            return None
        return found[2]

    def put(self, namespace: str, name: str, revision: int, fingerprint: str, component: Component) -> None:
        self._entries[(namespace, name)] = (revision, fingerprint, placement_of(component))

    def keep_only(self, live: set[tuple[str, str]]) -> None:
        for ident in [i for i in self._entries if i not in live]:
            del self._entries[ident]


def _status_follow_up(status: NodeStatus, assigned: list[AssignmentRecord]
                      ) -> tuple[list[AssignmentRecord], list[AssignmentRecord]]:
    """What a node's report asks of the hub, given the node's assignments: (tombstones it has carried
    out, to forget; tombstones to send for releases it reports that the hub did not assign to it, or
    holds only a tombstone of below the revision the node reports; a tombstone at it is the one the
    node is carrying out)."""
    reported = {(r.namespace, r.release): r for r in status.releases if r.phase != "Removed"}
    held = {(a.namespace, a.release): a for a in assigned}
    done = [a for key, a in held.items() if a.kind == "tombstone" and key not in reported]
    unassigned = [
        AssignmentRecord(
            node=status.node, namespace=r.namespace, release=r.release, kind="tombstone",
            revision=max(r.desired_revision, r.applied_revision, held[key].revision if key in held else 0) + 1,
        )
        for key, r in reported.items()
        # A release being removed is on its way out already.
        if r.phase != "Removing" and (key not in held or (
            held[key].kind == "tombstone" and held[key].revision < r.desired_revision))
    ]
    return done, unassigned


@dataclass(frozen=True, slots=True)
class SyncReport:
    changed: int
    published: int


class Dispatcher:
    def __init__(self, enrollment: EnrollmentStore, component_store: ComponentStore, assignments: AssignmentStore,
                 key: Ed25519PrivateKey, publish: Publish,
                 on_published: Callable[[str, str, str, int], None] | None = None) -> None:
        self._enrollment = enrollment
        self._component_store = component_store
        self._assignments = assignments
        self._key = key
        self._publish = publish
        # Told (node, namespace, release, revision) of every release assignment published (metrics).
        self._on_published = on_published
        # Applies, joins and status reports all call sync; one at a time keeps
        # the read-compare-write of the assignment table consistent.
        self._lock = asyncio.Lock()
        self._wire = WireBundles()
        self._placements = Placements()
        # Nodes already warned about: they joined without a bundle key.
        self._unencrypted: set[str] = set()

    def remember(self, component: Component, *, revision: int, fingerprint: str) -> None:
        """Keep the placement of a component just stored, so the next sync need not read its spec back."""
        self._placements.put(component.namespace, component.name, revision, fingerprint, component)

    async def _placement(self, comp: ComponentRecord) -> Component | None:
        """The component's targeting at its stored revision; None (logged) when its stored spec is refused."""
        found = self._placements.get(comp)
        if found is not None:
            return found
        record = await self._component_store.get_component(comp.namespace, comp.name)
        if record is None or record.spec_json is None or (record.revision, record.fingerprint) != (
                comp.revision, comp.fingerprint):
            return None  # changed since it was listed: the sync that change makes places it
        try:
            # Validating megabytes of values takes a while: not on the event loop.
            placement = await asyncio.to_thread(_parse_placement, record.spec_json)
        except (SpecError, ValueError) as exc:
            logger.error("Stored spec of %s/%s revision %d does not parse (%s); its assignments are left as they are",
                         comp.namespace, comp.name, comp.revision, exc)
            return None
        self._placements.put(comp.namespace, comp.name, comp.revision, comp.fingerprint, placement)
        return placement

    async def sync(self, *, node: str | None = None) -> SyncReport:
        """Bring the assignment table (and the broker) in line with components and nodes; with ``node``,
        only that node's assignments (a join changes no other node's placement)."""
        async with self._lock:
            components = await self._component_store.list_components(include_deleted=True, with_spec=False)
            if node is None:
                records = await self._enrollment.list_nodes(with_certificate=False)
            else:
                record = await self._enrollment.get_node(node)
                records = [record] if record is not None else []
            nodes = [NodeInfo(name=n.name, pool=n.pool, labels=n.labels) for n in records]
            current = {(a.node, a.namespace, a.release): a for a in await self._assignments.list_assignments(node=node)}
            by_release = {(c.namespace, c.name): c for c in components}
            live = {(c.namespace, c.name) for c in components if not c.deleted}
            self._placements.keep_only(live)

            rollouts = {(r.namespace, r.name): r for r in await self._component_store.list_rollouts()}

            desired: dict[tuple[str, str, str], AssignmentRecord] = {}
            unplaced: set[tuple[str, str]] = set()
            for comp in components:
                if comp.deleted:
                    continue
                placement = await self._placement(comp)
                if placement is None:
                    unplaced.add((comp.namespace, comp.name))
                    continue
                row = rollouts.get((comp.namespace, comp.name))
                staged = self._rollout_state(row) if row is not None else None
                kept: dict[int, set[str]] = {}  # render keys stored of older revisions, read once a sync
                for target, key in place(placement, nodes).items():
                    ident = (target, comp.namespace, comp.name)
                    revision = comp.revision
                    if staged is not None:
                        held = current.get(ident)
                        held_revision = held.revision if held is not None and held.kind == "release" else 0
                        revision = desired_revision(staged, target, current=comp.revision, held=held_revision)
                        if revision != comp.revision and held is not None and revision == held_revision:
                            desired[ident] = held  # keeps what it holds while the rollout has not reached it
                            continue
                        if revision != comp.revision:
                            if revision not in kept:
                                kept[revision] = set(await self._component_store.get_renders(
                                    comp.namespace, comp.name, revision))
                            if key not in kept[revision]:
                                key = key if not kept[revision] else min(kept[revision])
                                if not kept[revision]:
                                    revision, key = comp.revision, key
                    desired[ident] = AssignmentRecord(
                        node=target, namespace=comp.namespace, release=comp.name,
                        revision=revision, kind="release", render_key=key,
                    )
            for ident, held in current.items():
                if ident in desired or held.kind == "tombstone" or ident[1:] in unplaced:
                    continue
                owner = by_release.get(ident[1:])
                revision = max(owner.revision if owner else 0, held.revision + 1)
                desired[ident] = AssignmentRecord(
                    node=held.node, namespace=held.namespace, release=held.release,
                    revision=revision, kind="tombstone",
                )
            for ident, held in current.items():
                desired.setdefault(ident, held)

            changed = [a for ident, a in desired.items() if current.get(ident) != a]
            await self._assignments.update_assignments(changed)
            published = await self._publish_records(changed, by_release)
            if changed:
                logger.info("Dispatch: %d assignments changed, %d published", len(changed), published)
            # Cheap when there is nothing to prune (one query over deleted components, one over renders).
            await self._component_store.prune_deleted()
            # Renders of revisions pruned by spec.historyLimit that a node was still assigned until now.
            await self._component_store.prune_history()
            return SyncReport(changed=len(changed), published=published)

    def _rollout_state(self, row: RolloutRow) -> RolloutState | None:
        try:
            return RolloutState.from_row(row)
        except (SpecError, ValueError, TypeError, KeyError) as exc:
            logger.error("Stored rollout of %s does not parse (%s); the component goes to every target at once",
                         getattr(row, "name", "?"), exc)
            return None

    async def publish_all(self) -> int:
        """Re-publish every assignment (the broker may have lost its retained messages)."""
        async with self._lock:
            components = {(c.namespace, c.name): c for c in await self._component_store.list_components(
                include_deleted=True, with_spec=False)}
            return await self._publish_records(await self._assignments.list_assignments(), components)

    async def publish_node(self, node: str, *, held: Mapping[str, int] | None = None) -> int:
        """Re-publish the node's assignments; with ``held`` ("namespace/release" -> revision, as a
        Resync says), only those it lacks or holds an older revision of."""
        async with self._lock:
            records = await self._assignments.list_assignments(node=node)
            if held is not None:
                records = [a for a in records if held.get(f"{a.namespace}/{a.release}", 0) < a.revision]
            if not records:
                return 0
            components = {(c.namespace, c.name): c for c in await self._component_store.list_components(
                include_deleted=True, with_spec=False)}
            return await self._publish_records(records, components)

    async def publish_nodes(self, requests: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
        """Answer many resyncs (node -> what it holds, as in ``publish_node``): one read, no lock, finds the
        nodes that lack anything (after a broker restart, usually none); what each was sent, by node."""
        lacking = {a.node for a in await self._assignments.list_assignments(nodes=requests)
                   if requests[a.node].get(f"{a.namespace}/{a.release}", 0) < a.revision}
        return {node: await self.publish_node(node, held=requests[node]) if node in lacking else 0
                for node in sorted(requests)}

    async def withdraw_node(self, node: str) -> int:
        """Clear the broker's retained assignments of ``node`` (reset or revoked); its table rows stay."""
        async with self._lock:
            records = await self._assignments.list_assignments(node=node)
            for a in records:
                await self._publish(topics.assignment(a.node, a.namespace, a.release), b"", True)
            return len(records)

    async def on_statuses(self, statuses: list[NodeStatus]) -> None:
        """``on_status`` for many reports: one read, no lock, tells which nodes need anything (few do)."""
        latest = {status.node: status for status in statuses}
        held: dict[str, list[AssignmentRecord]] = {node: [] for node in latest}
        for a in await self._assignments.list_assignments(nodes=latest):
            held[a.node].append(a)
        for node, status in latest.items():
            done, unassigned = _status_follow_up(status, held[node])
            if done or unassigned:
                await self.on_status(status)  # under the lock, from a fresh read

    async def on_status(self, status: NodeStatus) -> None:
        """Forget tombstones the node has carried out (it no longer reports the release), and tombstone
        what it reports but was not assigned (``_status_follow_up``)."""
        async with self._lock:
            done, unassigned = _status_follow_up(status, await self._assignments.list_assignments(node=status.node))
            if not done and not unassigned:
                return
            await self._assignments.update_assignments(unassigned, [(a.node, a.namespace, a.release) for a in done])
            for a in done:
                # An empty retained message clears the broker's copy.
                await self._publish(topics.assignment(a.node, a.namespace, a.release), b"", True)
            if done:
                logger.info("Node %s removed %d release(s); cleared their tombstones", status.node, len(done))
            if unassigned:
                components = {(c.namespace, c.name): c for c in await self._component_store.list_components(
                    include_deleted=True, with_spec=False)}
                await self._publish_records(unassigned, components)
                logger.warning("Node %s reports %d release(s) the hub did not assign to it (%s); sent tombstones",
                               status.node, len(unassigned),
                               ", ".join(f"{a.namespace}/{a.release}" for a in unassigned[:5])
                               + (", ..." if len(unassigned) > 5 else ""))

    async def _publish_records(
        self, records: list[AssignmentRecord], components: dict[tuple[str, str], ComponentRecord]
    ) -> int:
        """Seal and publish each record to its node, keeping a window of publishes unacknowledged at once
        (one at a time, each waiting for its acknowledgement, a fleet's rollout is a fleet of round trips)."""
        # Read under the dispatcher's lock, like the records: a node reset or
        # revoked meanwhile is withdrawn (under the lock) after this publish.
        joined = await self._enrollment.joined_nodes(names={r.node for r in records}) if records else {}
        newly_plain: list[str] = []  # nodes without a bundle key not warned about before
        ready: list[tuple[AssignmentRecord, JoinedNode, Bundle | None]] = []
        for rec in records:
            target = joined.get(rec.node)
            if target is None:
                continue  # reset or revoked: kept in the table, published again when the name re-joins
            bundle = None
            if rec.kind == "release":
                bundle = await self._encoded_render((rec.namespace, rec.release, rec.revision, rec.render_key))
                if bundle is None:
                    logger.error("No render stored for %s/%s revision %d key %r; not publishing to %s",
                                 rec.namespace, rec.release, rec.revision, rec.render_key, rec.node)
                    continue
            ready.append((rec, target, bundle))
        largest = max((wire_bytes(b) for _, _, b in ready if b is not None), default=0)
        # Each publish in the window holds its sealed payload (about 4/3 of the wire form) until acknowledged.
        window = max(1, min(PUBLISH_WINDOW, WINDOW_BYTES // max(1, largest * 4 // 3)))

        async def publish_one(item: tuple[AssignmentRecord, JoinedNode, Bundle | None]) -> bool:
            rec, target, bundle = item
            payload = self._seal(rec, target, bundle, components, newly_plain)
            if payload is None or not await self._publish(
                    topics.assignment(rec.node, rec.namespace, rec.release), payload, True):
                return False
            if self._on_published is not None and rec.kind == "release":
                self._on_published(rec.node, rec.namespace, rec.release, rec.revision)
            return True

        published = await each_within(ready, publish_one, at_once=min(window, len(ready)))
        if newly_plain:
            # One line per publish, each node in it once: a fleet of older agents is not a thousand lines.
            shown = ", ".join(newly_plain[:MAX_NAMED]) + (", ..." if len(newly_plain) > MAX_NAMED else "")
            logger.warning("%d node(s) joined without a bundle key (agents older than bundle encryption): %s; their "
                           "bundles are sent unencrypted, and whoever reads their topics on the broker reads their "
                           "Secrets ('edgectl get nodes -o json' says \"bundles\": \"plain\"). Upgrade each one's "
                           "agent, then 'edgectl node reset NAME' and join it again", len(newly_plain), shown)
        return published

    def _seal(self, rec: AssignmentRecord, target: JoinedNode, bundle: Bundle | None,
              components: dict[tuple[str, str], ComponentRecord], newly_plain: list[str]) -> bytes | None:
        """The signed assignment for ``target``, its bundle's key wrapped to the node; None (logged) when
        the node's stored bundle key cannot be wrapped to."""
        comp = components.get((rec.namespace, rec.release))
        assignment = Assignment(
            node=rec.node, namespace=rec.namespace, release=rec.release, revision=rec.revision,
            kind=rec.kind,
            issued_at=now(),
            chart={"name": comp.chart_name, "version": comp.chart_version} if comp else {},
            bundle=bundle,
            generation=target.generation,
        )
        try:
            bundle_to = self._bundle_to(rec.node, target, newly_plain) if bundle is not None else None
            sealed = seal(assignment, self._key, bundle_to=bundle_to)
        except ProtocolError as exc:  # a stored bundle key the hub cannot wrap to (checked at join)
            logger.error("Cannot encrypt %s/%s to node %s (%s); not publishing to it until it joins again",
                         rec.namespace, rec.release, rec.node, exc)
            return None
        if len(sealed) > MAX_ASSIGNMENT_BYTES:
            # Renders are bounded so that this cannot happen; were it to, the broker (max_packet_size) would
            # disconnect the hub for it on every reconnect's republish.
            logger.error("The assignment of %s/%s to node %s is %d bytes, over the %d the broker takes; not published",
                         rec.namespace, rec.release, rec.node, len(sealed), MAX_ASSIGNMENT_BYTES)
            return None
        return sealed

    def _bundle_to(self, node: str, target: JoinedNode, newly_plain: list[str]) -> PublicKey | None:
        """The key ``node``'s bundles are encrypted to; None for a node without one (added to ``newly_plain``
        the first time, to be warned about)."""
        if target.bundle_key:
            self._unencrypted.discard(node)
            return bundle_crypto.load_public_key(target.bundle_key)
        if node not in self._unencrypted:
            self._unencrypted.add(node)
            newly_plain.append(node)
        return None

    async def _encoded_render(self, render: RenderId) -> Bundle | None:
        """The stored render, compressed once for every node and publish that needs it."""
        bundle = self._wire.get(render)
        if bundle is None:
            bundle = await self._component_store.get_render(*render)
            if bundle is not None:
                self._wire.put(render, bundle)  # put() compresses it
        return bundle
