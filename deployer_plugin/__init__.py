"""The component-deployer plugin: Component specs, Helm rendering and placement.

- :mod:`.spec` parses and validates Component specs (and spec files) and
  fingerprints them to decide when a new revision is due;
- :mod:`.charts` packages charts, fingerprints their content and refuses
  what ``helm install`` refuses about a chart itself;
- :mod:`.render` renders a component with the real Helm engine, once per
  render key (the base values, and each pool with ``poolValues``), as an
  install or an upgrade, keeping generated values across revisions;
- :mod:`.placement` decides which nodes get which render.

Errors (see :mod:`.errors`)::

    EdgeError                  (edgeprotocol.errors)
      SpecError                a spec that cannot be deployed; names the field
        ChartError             the chart is missing, not a chart, or a bad archive
          ChartRefused         a dependency missing from charts/, or an unmet kubeVersion
        RenderError            a schema violation, a template error, or not a Kubernetes object

Everything here is synchronous. The functions that use the Helm engine block
in C (:func:`load_component_file`, :func:`package_chart`,
:func:`render_release`, :func:`render_component`, :meth:`ChartArchive.from_bytes`), and
:func:`chart_fingerprint` inflates an archive: async callers run them in a
worker thread (``await asyncio.to_thread(...)``). Parsing and placement are
pure and fast.

This package imports nothing from edgehub, edgeagent or edgectl; they import it.
"""

from .charts import (
    ChartArchive,
    chart_fingerprint,
    check_installable,
    engine_kube_version,
    kube_version_satisfies,
    package_chart,
)
from .errors import ChartError, ChartRefused, RenderError, SpecError
from .merge import deep_merge
from .placement import NodeInfo, place, targets
from .render import (
    BASE_KEY,
    RenderedRelease,
    join_manifests,
    render_component,
    render_key_for,
    render_keys,
    render_release,
    values_for,
)
from .spec import (
    API_VERSION,
    DEFAULT_HISTORY_LIMIT,
    DEFAULT_NAMESPACE,
    KIND,
    MAX_HISTORY_LIMIT,
    OPERATORS,
    POOL_LABEL,
    Batch,
    ChartRef,
    Component,
    EdgeTarget,
    LabelSelector,
    OciChart,
    RepoChart,
    RolloutPolicy,
    SelectorRequirement,
    cluster_component_update_due,
    component_fingerprint,
    load_component_file,
    parse_component,
    parse_rollout_policy,
    read_component_document,
    resolve_chart_path,
)

__all__ = [
    "API_VERSION",
    "BASE_KEY",
    "Batch",
    "DEFAULT_HISTORY_LIMIT",
    "DEFAULT_NAMESPACE",
    "KIND",
    "MAX_HISTORY_LIMIT",
    "OPERATORS",
    "POOL_LABEL",
    "ChartArchive",
    "ChartError",
    "ChartRefused",
    "ChartRef",
    "Component",
    "EdgeTarget",
    "LabelSelector",
    "RolloutPolicy",
    "NodeInfo",
    "OciChart",
    "RenderError",
    "RenderedRelease",
    "RepoChart",
    "SelectorRequirement",
    "SpecError",
    "chart_fingerprint",
    "cluster_component_update_due",
    "check_installable",
    "component_fingerprint",
    "deep_merge",
    "engine_kube_version",
    "join_manifests",
    "kube_version_satisfies",
    "load_component_file",
    "package_chart",
    "parse_component",
    "parse_rollout_policy",
    "place",
    "read_component_document",
    "render_component",
    "render_key_for",
    "render_keys",
    "render_release",
    "resolve_chart_path",
    "targets",
    "values_for",
]
