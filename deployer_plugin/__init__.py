"""The component-deployer plugin: Component specs, Helm rendering and placement.

- :mod:`.spec` parses and validates Component specs (and spec files) and
  fingerprints them to decide when a new revision is due;
- :mod:`.charts` packages charts and fingerprints their content;
- :mod:`.render` renders a component with the real Helm engine, once per
  render key (the base values, and each pool with ``poolValues``);
- :mod:`.placement` decides which nodes get which render.

Errors (see :mod:`.errors`)::

    EdgeError                  (edgeprotocol.errors)
      SpecError                a spec that cannot be deployed; names the field
        ChartError             the chart is missing, not a chart, or a bad archive
        RenderError            a schema violation or a template error

Everything here is synchronous. The functions that use the Helm engine block
in C (:func:`load_component_file`, :func:`package_chart`,
:func:`render_component`, :meth:`ChartArchive.from_bytes`), and
:func:`chart_fingerprint` inflates an archive: async callers run them in a
worker thread (``await asyncio.to_thread(...)``). Parsing and placement are
pure and fast.

This package imports nothing from edgehub, edgeagent or edgectl; they import it.
"""

from .charts import ChartArchive, chart_fingerprint, package_chart
from .errors import ChartError, RenderError, SpecError
from .merge import deep_merge
from .placement import NodeInfo, place, targets
from .render import BASE_KEY, join_manifests, render_component, render_key_for, render_keys, values_for
from .spec import (
    API_VERSION,
    DEFAULT_NAMESPACE,
    KIND,
    OPERATORS,
    POOL_LABEL,
    Component,
    EdgeTarget,
    LabelSelector,
    SelectorRequirement,
    component_fingerprint,
    load_component_file,
    parse_component,
    read_component_document,
    resolve_chart_path,
)

__all__ = [
    "API_VERSION",
    "BASE_KEY",
    "DEFAULT_NAMESPACE",
    "KIND",
    "OPERATORS",
    "POOL_LABEL",
    "ChartArchive",
    "ChartError",
    "Component",
    "EdgeTarget",
    "LabelSelector",
    "NodeInfo",
    "RenderError",
    "SelectorRequirement",
    "SpecError",
    "chart_fingerprint",
    "component_fingerprint",
    "deep_merge",
    "join_manifests",
    "load_component_file",
    "package_chart",
    "parse_component",
    "place",
    "read_component_document",
    "render_component",
    "render_key_for",
    "render_keys",
    "resolve_chart_path",
    "targets",
    "values_for",
]
