"""Applying and deleting components: validate, render, store, dispatch.

``Components`` is what the HTTP API calls; it speaks in component documents,
chart archives and outcomes, never in requests or responses. Refusals are
raised from the hub's error tree (:mod:`edgehub.errors`): a spec or chart that
does not validate or render is a ``SpecRefused`` (the deployer's ``SpecError``
chained), a lost race with another apply a ``ConcurrentChange``, a component
that does not exist a ``NotFound``, no free render slot a ``RendererBusy``.

A rollback (``rollback``) takes the spec and chart of a kept revision and goes
the apply's way from there: rendered again as an upgrade of the current
revision, stored as a new revision (origin ``rollback to N``), dispatched.

Rendering runs in worker processes bounded in time and output
(:mod:`edgehub.renderer`); parsing and fingerprinting a spec, which may hold
megabytes of values, run on a thread. Nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from deployer_plugin import (
    ChartArchive,
    Component,
    RenderError,
    SpecError,
    cluster_component_update_due,
    component_fingerprint,
    parse_component,
)
from deployer_plugin.chart_repos import ChartFetcher
from edgeprotocol.messages import Bundle

from .chart_sources import ChartSources
from .dispatch import Dispatcher
from .errors import ConcurrentChange, NotFound, SpecRefused
from .rollout import RolloutState, begin
from .store import ComponentRecord, HubStore, Replaced
from .summaries import rollout

if TYPE_CHECKING:
    from .renderer import Renderer

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplyOutcome:
    """What an apply did. ``changed`` is False when the stored revision already matched."""

    component: str  # namespace/name
    revision: int
    changed: bool
    # The component did not exist (or was deleted) before this apply.
    created: bool = False
    # Nodes that are assigned the release now (only counted when changed).
    targets: int = 0
    warnings: tuple[str, ...] = ()
    # The chart's NOTES.txt rendered for this revision (base values); "" when it has none.
    notes: str = ""
    # A rollback: the revision whose spec and chart the new revision took.
    rolled_back_to: int = 0


class Components:
    """The hub's component service, shared by every request."""

    def __init__(self, store: HubStore, dispatcher: Dispatcher, renderer: Renderer,
                 charts: ChartSources | None = None) -> None:
        self._store = store
        self._dispatcher = dispatcher
        self._renderer = renderer
        self._charts = charts or ChartSources(ChartFetcher())

    async def apply(self, document: dict[str, Any], archive: bytes | None, *, origin: str = "apply") -> ApplyOutcome:
        """Store a new revision of a component unless it is unchanged, then dispatch it.

        ``document`` is a Component spec as a mapping, ``archive`` its packaged
        chart, or None when ``spec.chart`` names a chart repository or OCI
        reference, which is fetched (:mod:`edgehub.chart_sources`); ``origin`` is
        what the history says made the revision. Raises SpecRefused (nothing
        stored; a chart that cannot be fetched too), BadRequest (an archive that
        does not fit the spec) or ConcurrentChange (RendererBusy among them). A
        change of ``spec.historyLimit`` alone makes no revision: it is taken (and
        the history pruned to it) and the answer is "unchanged".
        """
        component = await self._parse(document)
        try:
            archive, chart_warnings = await self._charts.archive_for(component, archive)
        except SpecError as exc:
            raise SpecRefused(exc, context=f"component {component.namespace}/{component.name}") from exc
        chart = await self._open_chart(component, archive)
        fingerprint = await asyncio.to_thread(component_fingerprint, component, chart.fingerprint)
        existing = await self._store.get_component(component.namespace, component.name)
        live = existing is not None and not existing.deleted
        if existing is not None and live and existing.fingerprint == fingerprint:
            stored_policy = (existing.spec.get("spec", {}).get("edge", {}).get("rollout")
                             if existing.spec_json else None)
            new_policy = component.edge.rollout.to_document() if component.edge.rollout else None
            if existing.history_limit != component.history_limit or stored_policy != new_policy:
                await self._store.set_history_limit(
                    component.namespace, component.name, spec=await asyncio.to_thread(component.to_document),
                    history_limit=component.history_limit, revision=existing.revision)
                logger.info("Component %s/%s keeps %d revision(s) now", component.namespace, component.name,
                            component.history_limit)
            return ApplyOutcome(component=f"{component.namespace}/{component.name}", revision=existing.revision,
                                changed=False)
        if (existing is not None and live and component.cluster_scoped
                and existing.spec.get("spec", {}).get("clusterScoped")
                and not cluster_component_update_due(existing.chart_version, chart.version)):
            # A cluster component is upgraded only for a higher chart version; otherwise it is left alone
            # (nodes without it get the installed revision by dispatch, as any target does).
            logger.info("Cluster component %s/%s left at revision %d: chart %s is not above the installed %s",
                        component.namespace, component.name, existing.revision, chart.version,
                        existing.chart_version)
            return ApplyOutcome(component=f"{component.namespace}/{component.name}", revision=existing.revision,
                                changed=False, warnings=(f"cluster component: chart version {chart.version} is not "
                                                         f"above the installed {existing.chart_version}; left alone",))
        return await self._store_revision(component, chart, archive, fingerprint, existing, origin=origin,
                                          chart_warnings=chart_warnings)

    async def rollback(self, namespace: str, name: str, to_revision: int | None = None, *,
                       rollout: RolloutState | None = None, origin: str = "") -> ApplyOutcome:
        """Make a new revision from revision ``to_revision`` (default: the one before the current), as
        ``helm rollback`` does: its spec and chart, rendered again as an upgrade of the current revision,
        then dispatched. The revisions after ``to_revision`` become ``rolled back``.

        Raises NotFound (no such component, deleted, or no such revision kept; a pruned one says so) and
        ConcurrentChange (the current revision, a deletion, or a revision whose spec was dropped).
        """
        ident = f"{namespace}/{name}"
        existing = await self._store.get_component(namespace, name)
        if existing is None:
            raise NotFound(f"component {ident} not found")
        if existing.deleted:
            raise NotFound(f"component {ident} not found: it was deleted at revision {existing.revision} "
                           "(apply it again; its history is kept)")
        target = existing.revision - 1 if to_revision is None else to_revision
        if target == existing.revision:
            raise ConcurrentChange(f"revision {target} is the current revision of {ident}; nothing to roll back to")
        if target < 1 and to_revision is None:
            raise ConcurrentChange(f"component {ident} is at its first revision; nothing to roll back to")
        window = await self._store.revision_window(namespace, name)
        if target < 1 or target > existing.revision:
            raise NotFound(f"revision {target} of component {ident} not found: it has revisions "
                           f"{window.oldest} to {existing.revision}")
        record = await self._store.get_revision(namespace, name, target)
        if record is None:
            raise NotFound(f"revision {target} of component {ident} was pruned: spec.historyLimit keeps "
                           f"{existing.history_limit} revision(s), now {window.oldest} to {existing.revision}")
        if record.status == "deleted":
            raise ConcurrentChange(f"revision {target} of {ident} is the deletion of the component; nothing to "
                                   "roll back to (give --to-revision an earlier one)")
        archive = await self._store.get_chart(record.chart_digest) if record.has_spec else None
        if archive is None or record.spec_json is None:
            raise ConcurrentChange(f"revision {target} of {ident} has no spec and chart any more: they were dropped "
                                   "when the component was deleted")
        component = await self._parse(record.spec)
        chart = await self._open_chart(component, archive)
        fingerprint = await asyncio.to_thread(component_fingerprint, component, chart.fingerprint)
        outcome = await self._store_revision(component, chart, archive, fingerprint, existing,
                                             origin=origin or f"rollback to {target}", rolled_back_to=target,
                                             rolled_back_rollout=rollout)
        logger.info("Component %s rolled back to revision %d (now revision %d)", ident, target, outcome.revision)
        return dataclasses.replace(outcome, rolled_back_to=target)

    async def _parse(self, document: dict[str, Any]) -> Component:
        try:
            # Values may be megabytes: validating them is no work for the event loop.
            return await asyncio.to_thread(parse_component, document, source="request")
        except SpecError as exc:
            raise SpecRefused(exc) from exc

    async def _open_chart(self, component: Component, archive: bytes) -> ChartArchive:
        try:
            # The Helm engine is a blocking native call: keep it off the event loop.
            return await asyncio.to_thread(ChartArchive.from_bytes, archive)
        except SpecError as exc:
            raise SpecRefused(exc, context=f"component {component.namespace}/{component.name}") from exc

    async def _replaced_status(self, existing: ComponentRecord) -> Replaced:
        """What the current revision becomes when it is replaced: failed when a target reports it failing (Failed,
        or a crash loop, an image it cannot pull, an OOM kill: the summary's ``failed`` count)."""
        counts = rollout(existing, await self._store.list_nodes(with_certificate=False),
                         await self._store.list_assignments())
        return "failed" if counts["failed"] else "superseded"

    async def _store_revision(self, component: Component, chart: ChartArchive, archive: bytes, fingerprint: str,
                              existing: ComponentRecord | None, *, origin: str,
                              rolled_back_to: int | None = None, chart_warnings: tuple[str, ...] = (),
                              rolled_back_rollout: RolloutState | None = None) -> ApplyOutcome:
        """Render ``component`` as the next revision (an upgrade of a live one), store it, dispatch it.

        With ``spec.edge.rollout`` (and a live revision to replace) the revision starts a staged rollout;
        ``rolled_back_rollout`` is the rollout an automatic rollback ends (the new revision goes to the
        nodes that took the bad one)."""
        ident = f"{component.namespace}/{component.name}"
        live = existing is not None and not existing.deleted
        revision = (existing.revision if existing else 0) + 1
        # A live component is upgraded, and keeps the values its chart generated
        # from the previous revision's renders; a new or deleted one is installed afresh.
        previous: dict[str, Bundle] = {}
        replaced: Replaced = "superseded"
        if existing is not None and live:
            previous = await self._store.get_renders(component.namespace, component.name, existing.revision)
            replaced = await self._replaced_status(existing)
        try:
            # A worker process, killed past the time bound (see edgehub.renderer).
            rendered = await self._renderer.render(
                component, archive, revision=revision, previous=previous, upgrade=live
            )
        except SpecError as exc:
            # A RenderError names the component already; a refused chart does not.
            raise SpecRefused(exc, context="" if isinstance(exc, RenderError) else f"component {ident}") from exc
        renders = rendered.bundles
        if rolled_back_rollout is not None:
            staged = rolled_back_rollout.copy()
            staged.state, staged.rollback_revision, staged.updated_at = "rolled back", revision, time.time()
        elif live and component.edge.rollout is not None:
            assert existing is not None
            prior_row = await self._store.get_rollout(component.namespace, component.name)
            staged = begin(component.namespace, component.name, revision, component.edge.rollout,
                           live_revision=existing.revision,
                           prior=RolloutState.from_row(prior_row) if prior_row else None, now=time.time())
        else:
            staged = None  # no policy, or a first revision (nothing to go back to): every target at once
        await self._store.save_component(
            namespace=component.namespace, name=component.name, spec=await asyncio.to_thread(component.to_document),
            chart_archive=archive, chart_name=chart.name, chart_version=chart.version,
            fingerprint=fingerprint, revision=revision, renders=renders, origin=origin,
            history_limit=component.history_limit, replaced=replaced, rolled_back_to=rolled_back_to,
            rollout=staged.to_row() if staged is not None else None,
        )
        logger.info("Component %s is now at revision %d (%s)", ident, revision, origin)
        self._dispatcher.remember(component, revision=revision, fingerprint=fingerprint)
        await self._dispatcher.sync()
        targets = sum(1 for a in await self._store.list_assignments()
                      if (a.namespace, a.release) == (component.namespace, component.name) and a.kind == "release")
        pools = {n.pool for n in await self._store.list_nodes(with_status=False, with_certificate=False)}
        return ApplyOutcome(
            component=ident, revision=revision, changed=True, created=not live, targets=targets,
            warnings=(*chart_warnings, *rendered.warnings,
                      *(f"pool {p!r} has no nodes yet" for p in component.edge.node_pools if p not in pools)),
            notes=rendered.notes,
        )

    async def delete(self, namespace: str, name: str) -> int:
        """Mark a component deleted and tombstone it on every node; returns the deleting revision."""
        existing = await self._store.get_component(namespace, name)
        replaced: Replaced = "superseded"
        if existing is not None and not existing.deleted:
            replaced = await self._replaced_status(existing)
        revision = await self._store.delete_component(namespace, name, replaced=replaced)
        if revision is None:
            raise NotFound(f"component {namespace}/{name} not found")
        logger.info("Component %s/%s deleted (revision %d)", namespace, name, revision)
        await self._dispatcher.sync()
        return revision
