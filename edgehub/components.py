"""Applying and deleting components: validate, render, store, dispatch.

``Components`` is what the HTTP API calls; it speaks in component documents,
chart archives and outcomes, never in requests or responses. Refusals are
raised from the hub's error tree (:mod:`edgehub.errors`): a spec or chart that
does not validate or render is a ``SpecRefused`` (the deployer's ``SpecError``
chained), a lost race with another apply a ``ConcurrentChange``, a component
that does not exist a ``NotFound``, no free render slot a ``RendererBusy``.

Rendering runs in worker processes bounded in time and output
(:mod:`edgehub.renderer`); parsing and fingerprinting a spec, which may hold
megabytes of values, run on a thread. Nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from deployer_plugin import (
    ChartArchive,
    Component,
    RenderError,
    SpecError,
    component_fingerprint,
    parse_component,
)
from deployer_plugin.chart_repos import ChartFetcher
from edgeprotocol.messages import Bundle

from .chart_sources import ChartSources
from .dispatch import Dispatcher
from .errors import NotFound, SpecRefused
from .store import HubStore

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


class Components:
    """The hub's component service, shared by every request."""

    def __init__(self, store: HubStore, dispatcher: Dispatcher, renderer: Renderer,
                 charts: ChartSources | None = None) -> None:
        self._store = store
        self._dispatcher = dispatcher
        self._renderer = renderer
        self._charts = charts or ChartSources(ChartFetcher())

    async def apply(self, document: dict[str, Any], archive: bytes | None) -> ApplyOutcome:
        """Store a new revision of a component unless it is unchanged, then dispatch it.

        ``document`` is a Component spec as a mapping, ``archive`` its packaged
        chart, or None when ``spec.chart`` names a chart repository or OCI
        reference, which is fetched (:mod:`edgehub.chart_sources`). Raises
        SpecRefused (nothing stored; a chart that cannot be fetched too),
        BadRequest (an archive that does not fit the spec) or
        ConcurrentChange (RendererBusy among them).
        """
        try:
            # Values may be megabytes: validating them is no work for the event loop.
            component: Component = await asyncio.to_thread(parse_component, document, source="request")
        except SpecError as exc:
            raise SpecRefused(exc) from exc
        ident = f"{component.namespace}/{component.name}"
        try:
            archive, chart_warnings = await self._charts.archive_for(component, archive)
            # The Helm engine is a blocking native call: keep it off the event loop.
            chart = await asyncio.to_thread(ChartArchive.from_bytes, archive)
        except SpecError as exc:
            raise SpecRefused(exc, context=f"component {ident}") from exc
        fingerprint = await asyncio.to_thread(component_fingerprint, component, chart.fingerprint)
        existing = await self._store.get_component(component.namespace, component.name)
        live = existing is not None and not existing.deleted
        if existing is not None and live and existing.fingerprint == fingerprint:
            return ApplyOutcome(component=ident, revision=existing.revision, changed=False)
        revision = (existing.revision if existing else 0) + 1
        # A live component is upgraded, and keeps the values its chart generated
        # from the previous revision's renders; a new or deleted one is installed afresh.
        previous: dict[str, Bundle] = {}
        if existing is not None and live:
            previous = await self._store.get_renders(component.namespace, component.name, existing.revision)
        try:
            # A worker process, killed past the time bound (see edgehub.renderer).
            rendered = await self._renderer.render(
                component, archive, revision=revision, previous=previous, upgrade=live
            )
        except SpecError as exc:
            # A RenderError names the component already; a refused chart does not.
            raise SpecRefused(exc, context="" if isinstance(exc, RenderError) else f"component {ident}") from exc
        renders = rendered.bundles
        await self._store.save_component(
            namespace=component.namespace, name=component.name, spec=await asyncio.to_thread(component.to_document),
            chart_archive=archive, chart_name=chart.name, chart_version=chart.version,
            fingerprint=fingerprint, revision=revision, renders=renders,
        )
        logger.info("Component %s is now at revision %d", ident, revision)
        self._dispatcher.remember(component, revision=revision, fingerprint=fingerprint)
        await self._dispatcher.sync()
        targets = sum(1 for a in await self._store.list_assignments()
                      if (a.namespace, a.release) == (component.namespace, component.name) and a.kind == "release")
        pools = {n.pool for n in await self._store.list_nodes(with_status=False)}
        return ApplyOutcome(
            component=ident, revision=revision, changed=True, created=not live, targets=targets,
            warnings=(*chart_warnings, *rendered.warnings,
                      *(f"pool {p!r} has no nodes yet" for p in component.edge.node_pools if p not in pools)),
            notes=rendered.notes,
        )

    async def delete(self, namespace: str, name: str) -> int:
        """Mark a component deleted and tombstone it on every node; returns the deleting revision."""
        revision = await self._store.delete_component(namespace, name)
        if revision is None:
            raise NotFound(f"component {namespace}/{name} not found")
        logger.info("Component %s/%s deleted (revision %d)", namespace, name, revision)
        await self._dispatcher.sync()
        return revision
