"""Rendering a component into manifest bundles with the real Helm engine.

A component renders once per *render key*, not once per node: ``""`` for the
base values, plus one key per pool that has ``poolValues``. Every node of a
pool without overrides shares the base render (see
:func:`deployer_plugin.placement.place`).

:func:`render_component` blocks on the Helm engine; the hub runs it with
``await asyncio.to_thread(render_component, component, archive, revision=n)``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import yaml
from helm_python import HelmError, HelmValuesError

from edgeprotocol.messages import Bundle

from .charts import open_chart
from .errors import RenderError
from .merge import deep_merge
from .spec import Component

logger = logging.getLogger(__name__)

BASE_KEY = ""
HOOK_ANNOTATION = "helm.sh/hook"

_DOCUMENT_SEPARATOR = re.compile(r"^---[ \t]*(?:#.*)?$", re.MULTILINE)
_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*\n)+")


def render_keys(component: Component) -> tuple[str, ...]:
    """Every key :func:`render_component` renders: ``""`` then the pools with overrides, sorted."""
    return (BASE_KEY, *sorted(component.edge.pool_values))


def render_key_for(component: Component, pool: str) -> str:
    """The render a node of ``pool`` gets: the pool's own if it has poolValues, else the base one."""
    return pool if pool in component.edge.pool_values else BASE_KEY


def values_for(component: Component, key: str) -> dict[str, Any]:
    """The values a render key renders with: spec.values, deep-merged with the pool's overrides."""
    if key == BASE_KEY:
        return deep_merge(component.values, {})
    return deep_merge(component.values, component.edge.pool_values[key])


def render_component(component: Component, archive: bytes, *, revision: int) -> dict[str, Bundle]:
    """Render ``component`` with its chart archive at ``revision``, once per render key.

    Each render uses release name = component name, namespace = component
    namespace, ``is_install=True``. Values are checked against the chart's
    ``values.schema.json`` first. The bundle holds the rendered documents as
    one multi-document YAML ordered by template path, without NOTES.txt,
    empty output, and test or other hook documents (the agent does not run
    Helm hooks). Blocks on the Helm engine.

    Raises:
        ChartError: if ``archive`` is not a chart.
        RenderError: if values break the schema, a template fails, or a
            template renders something that is not a Kubernetes object.
    """
    if isinstance(revision, bool) or not isinstance(revision, int) or revision < 1:
        raise ValueError(f"revision must be an integer of at least 1, not {revision!r}")
    with open_chart(archive) as chart:
        bundles: dict[str, Bundle] = {}
        for key in render_keys(component):
            values = values_for(component, key)
            where = {"component": f"{component.namespace}/{component.name}", "pool": key}
            try:
                chart.validate_schema(values)
            except HelmError as exc:
                raise RenderError(**where, detail=str(exc), what="values do not match the chart's values.schema.json") from exc
            try:
                rendered = chart.render(
                    values, name=component.name, namespace=component.namespace, revision=revision, is_install=True
                )
            except HelmValuesError as exc:
                raise RenderError(**where, detail=str(exc), what="Helm refused the values") from exc
            except HelmError as exc:
                raise RenderError(**where, detail=str(exc), what="template error") from exc
            bundles[key] = Bundle.of(join_manifests(rendered, **where))
    return bundles


def _is_skipped_template(path: str) -> bool:
    base = path.rsplit("/", 1)[-1]
    return base.endswith("NOTES.txt") or base.startswith("_") or "/templates/tests/" in f"/{path}"


def join_manifests(rendered: Mapping[str, str], *, component: str = "", pool: str = "") -> str:
    """Join Helm's ``{template path: text}`` output into one multi-document YAML.

    Documents appear in template path order, then in their order within a
    template, each under a ``# Source:`` comment as Helm prints them. NOTES.txt,
    partials, ``templates/tests/``, hook documents and empty documents are
    left out.

    Raises:
        RenderError: if a template renders invalid YAML or a document that is
            not a mapping (it could never be applied).
    """
    parts: list[str] = []
    hooks = 0
    for path in sorted(rendered):
        if _is_skipped_template(path):
            continue
        for text in _DOCUMENT_SEPARATOR.split(rendered[path]):
            if not text.strip():
                continue
            try:
                document = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise RenderError(component=component, pool=pool, detail=str(exc), what=f"{path} rendered invalid YAML") from exc
            if document is None:  # only comments
                continue
            if not isinstance(document, dict):
                raise RenderError(
                    component=component,
                    pool=pool,
                    detail=text.strip()[:200],
                    what=f"{path} rendered a document that is not a Kubernetes object",
                )
            metadata = document.get("metadata")
            annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
            if isinstance(annotations, dict) and HOOK_ANNOTATION in annotations:
                hooks += 1
                continue
            body = _LEADING_BLANK_LINES.sub("", text).rstrip()
            parts.append(f"---\n# Source: {path}\n{body}\n")
    if hooks:
        logger.info("Left %d Helm hook document(s) out of %s; edge agents do not run hooks", hooks, component or "a render")
    return "".join(parts)
