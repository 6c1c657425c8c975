"""Component specs: the typed model, validation, revision fingerprints and spec files.

A Component is one Helm release targeted at edge nodes::

    apiVersion: edgecollab.io/v1alpha1
    kind: Component
    metadata: {name: web, namespace: demo}
    spec:
      chart: ./chart                  # or {path: ./chart}; a directory or a .tgz
      # or a chart repository:  {repo: https://charts.example.com, name: web, version: 1.2.3}
      # or an OCI registry:     oci://registry.example.com/charts/web:1.2.3
      #                         (or {oci: oci://registry.example.com/charts/web, version: 1.2.3})
      values: {message: hi}
      edge:
        nodePools: [shanghai]
        nodeSelector:
          matchLabels: {tier: store}
          matchExpressions: [{key: zone, operator: In, values: [east]}]
        poolValues:
          shanghai: {greeting: "ni hao"}
        rollout:                      # optional: staged, health-gated rollout (docs/rollouts.md)
          batches: [{pools: [canary]}, {percent: 50}, {percent: 100}]   # or {count: N}
          healthGate: {readyWithin: 2m, minReadyTime: 10s}
          maxFailures: 0              # a count or "10%" per batch
          onFailure: Rollback         # or Pause
          offlineNodes: Defer         # or Skip, Block
      historyLimit: 10                # revisions the hub keeps (1 to 1000; default 10)
      clusterScoped: false            # true: a cluster component (one release per node, installed when
                                      # absent, upgraded only for a higher chart version; docs/deployer.md)

- :mod:`.model`: the typed :class:`Component` and its parts, and their document form;
- :mod:`.validation`: :func:`parse_component`, which checks a document and names the field of each problem;
- :mod:`.revisions`: :func:`component_fingerprint` and :func:`cluster_component_update_due`, which decide
  when a new revision is due;
- :mod:`.loading`: spec files (``edgectl apply -f``): one YAML document, and its local chart packaged.

A local chart travels with the apply request as an archive; a chart repository or OCI reference
(:class:`RepoChart`, :class:`OciChart`) is fetched by the hub (:mod:`deployer_plugin.chart_repos`).
"""

from .loading import load_component_file, read_component_document, resolve_chart_path
from .model import (
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
)
from .revisions import cluster_component_update_due, component_fingerprint
from .validation import parse_component, parse_rollout_policy

__all__ = [
    "API_VERSION",
    "DEFAULT_HISTORY_LIMIT",
    "DEFAULT_NAMESPACE",
    "KIND",
    "MAX_HISTORY_LIMIT",
    "OPERATORS",
    "POOL_LABEL",
    "Batch",
    "ChartRef",
    "Component",
    "EdgeTarget",
    "LabelSelector",
    "OciChart",
    "RepoChart",
    "RolloutPolicy",
    "SelectorRequirement",
    "cluster_component_update_due",
    "component_fingerprint",
    "load_component_file",
    "parse_component",
    "parse_rollout_policy",
    "read_component_document",
    "resolve_chart_path",
]
