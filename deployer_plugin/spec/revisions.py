"""When a Component makes a new revision due: its fingerprint, and a cluster component's version rule."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .model import Component


def cluster_component_update_due(installed_version: str, declared_version: str) -> bool:
    """Whether a cluster component (``spec.clusterScoped: true``) at chart ``installed_version`` is
    upgraded to a spec declaring chart ``declared_version``: only for a higher version (semantic
    versioning; a version that does not parse is compared as text, and never counts as higher when
    equal). Otherwise the installed release is left alone."""
    import semantic_version  # a hub dependency; importing deployer_plugin needs none

    try:
        return semantic_version.Version.coerce(declared_version.strip().lstrip("vV")) > \
            semantic_version.Version.coerce(installed_version.strip().lstrip("vV"))
    except ValueError:
        return declared_version != installed_version and declared_version > installed_version


def component_fingerprint(component: Component, chart_fingerprint: str) -> str:
    """A ``sha256:`` digest of everything that makes a new revision due.

    It covers the chart's content (pass :func:`~deployer_plugin.charts.chart_fingerprint`),
    the values, the per-pool values and the targeting. It ignores what does
    not change a deployment: mapping key order, the order of nodePools, of
    selector expressions and of their values, and the chart's path.
    """
    selector = component.edge.node_selector
    canonical: dict[str, Any] = {
        "chart": chart_fingerprint,
        "name": component.name,
        "namespace": component.namespace,
        "values": component.values,
        "nodePools": sorted(set(component.edge.node_pools)),
        "poolValues": component.edge.pool_values,
        "nodeSelector": None
        if selector is None
        else {
            "matchLabels": dict(selector.match_labels),
            "matchExpressions": sorted(
                {json.dumps([r.key, r.operator, sorted(set(r.values))]) for r in selector.match_expressions}
            ),
        },
    }
    if component.cluster_scoped:  # only when set: fingerprints of other components stay as they were
        canonical["clusterScoped"] = True
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()
