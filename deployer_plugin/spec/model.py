"""The typed Component: what a validated spec is, and its document form.

Build a :class:`Component` with :func:`~deployer_plugin.spec.validation.parse_component`, which checks a
document and reports every problem; the classes here check only what keeps an object built in code
coherent. ``to_document`` writes each back as a document that parses to an equal object.
"""

from __future__ import annotations

import copy
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from edgeprotocol.topics import check_name

API_VERSION = "edgecollab.io/v1alpha1"
KIND = "Component"
DEFAULT_NAMESPACE = "default"
# Every node carries this label with its pool name, so a selector can use pools.
POOL_LABEL = "edgecollab.io/pool"
# spec.historyLimit: how many revisions of a component the hub keeps (its spec, chart and renders),
# the current one included; as ``helm upgrade --history-max``, but at least 1 (the current is always kept).
DEFAULT_HISTORY_LIMIT = 10
MAX_HISTORY_LIMIT = 1000

Operator = Literal["In", "NotIn", "Exists", "DoesNotExist"]
OPERATORS: tuple[Operator, ...] = get_args(Operator)

ON_FAILURE = ("Rollback", "Pause")
OFFLINE_NODES = ("Defer", "Skip", "Block")
DEFAULT_READY_WITHIN = 120.0
DEFAULT_MIN_READY_TIME = 0.0


@dataclass(frozen=True, slots=True)
class SelectorRequirement:
    """One ``matchExpressions`` entry of a label selector."""

    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.operator not in OPERATORS:
            raise ValueError(f"operator {self.operator!r} is not one of {', '.join(OPERATORS)}")
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"operator {self.operator} needs at least one value")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"operator {self.operator} takes no values")

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Kubernetes semantics: ``NotIn`` also matches a node without the label."""
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        if self.operator == "NotIn":
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels

    def to_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"key": self.key, "operator": self.operator}
        if self.values:
            doc["values"] = list(self.values)
        return doc


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A Kubernetes LabelSelector: every matchLabels pair and every expression must hold.

    An empty selector matches every node, as in Kubernetes; a spec may not
    give one (see :func:`parse_component`), but code may build one.
    """

    match_labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    match_expressions: tuple[SelectorRequirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(key) == value for key, value in self.match_labels.items()) and all(
            requirement.matches(labels) for requirement in self.match_expressions
        )

    def to_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        if self.match_labels:
            doc["matchLabels"] = dict(self.match_labels)
        if self.match_expressions:
            doc["matchExpressions"] = [r.to_document() for r in self.match_expressions]
        return doc


@dataclass(frozen=True, slots=True)
class EdgeTarget:
    """Which nodes run a component, and the values each pool overrides.

    A node is targeted when it is in one of ``node_pools`` (if any are given)
    and its labels match ``node_selector`` (if one is given).
    """

    node_pools: tuple[str, ...] = ()
    node_selector: LabelSelector | None = None
    pool_values: Mapping[str, dict[str, Any]] = field(default_factory=dict, hash=False)
    # spec.edge.rollout: None sends a change to every target at once.
    rollout: RolloutPolicy | None = None

    def to_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        if self.node_pools:
            doc["nodePools"] = list(self.node_pools)
        if self.node_selector is not None:
            doc["nodeSelector"] = self.node_selector.to_document()
        if self.pool_values:
            doc["poolValues"] = copy.deepcopy(dict(self.pool_values))
        if self.rollout is not None:
            doc["rollout"] = self.rollout.to_document()
        return doc


@dataclass(frozen=True, slots=True)
class RepoChart:
    """A chart in a Helm chart repository: ``{repo: URL, name: NAME, version: VERSION}``.

    ``version`` is an exact version (``1.2.3``) or a version constraint as
    ``helm install --version`` takes it (``^1.2``, ``>=1.0 <2``, ``1.2.x``),
    which resolves to the highest matching version in the repository's index
    (pre-releases only when the constraint names one).
    """

    repo: str
    name: str
    version: str

    def to_document(self) -> dict[str, str]:
        return {"repo": self.repo, "name": self.name, "version": self.version}

    def __str__(self) -> str:
        return f"{self.name} {self.version} from {self.repo}"


@dataclass(frozen=True, slots=True)
class OciChart:
    """A chart in an OCI registry: ``oci://HOST[:PORT]/PATH/NAME`` at tag ``version`` (an exact version)."""

    oci: str  # oci://host/path/name, without the tag
    version: str

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.oci).netloc

    @property
    def repository(self) -> str:
        """The registry's repository name: ``path/name``."""
        return urllib.parse.urlsplit(self.oci).path.lstrip("/")

    @property
    def name(self) -> str:
        return self.repository.rpartition("/")[2]

    def to_document(self) -> str:
        return f"{self.oci}:{self.version}"

    def __str__(self) -> str:
        return self.to_document()


ChartRef = str | RepoChart | OciChart


@dataclass(frozen=True, slots=True)
class Batch:
    """One step of a staged rollout: nodes of ``pools``, or ``percent`` of the remaining targets, or ``count``
    of them (exactly one is set)."""

    pools: tuple[str, ...] = ()
    percent: float | None = None
    count: int | None = None

    def to_document(self) -> dict[str, Any]:
        if self.pools:
            return {"pools": list(self.pools)}
        if self.percent is not None:
            return {"percent": int(self.percent) if float(self.percent).is_integer() else self.percent}
        return {"count": self.count}


@dataclass(frozen=True, slots=True)
class RolloutPolicy:
    """``spec.edge.rollout``: batches in order, each gated on the health of its nodes.

    ``max_failures`` is a count (``"3"``-like ints) or a percent string (``"10%"``) of a batch's nodes.
    Durations are seconds."""

    batches: tuple[Batch, ...]
    ready_within: float = DEFAULT_READY_WITHIN
    min_ready_time: float = DEFAULT_MIN_READY_TIME
    max_failures: int | str = 0
    on_failure: str = "Rollback"
    offline_nodes: str = "Defer"

    def failures_allowed(self, batch_size: int) -> int:
        if isinstance(self.max_failures, str):
            return int(batch_size * float(self.max_failures.rstrip("%")) / 100.0)
        return self.max_failures

    def to_document(self) -> dict[str, Any]:
        return {"batches": [b.to_document() for b in self.batches],
                "healthGate": {"readyWithin": _duration_text(self.ready_within),
                               "minReadyTime": _duration_text(self.min_ready_time)},
                "maxFailures": self.max_failures, "onFailure": self.on_failure, "offlineNodes": self.offline_nodes}


def _duration_text(seconds: float) -> str:
    return f"{int(seconds)}s" if float(seconds).is_integer() else f"{int(round(seconds * 1000))}ms"


@dataclass(frozen=True, slots=True)
class Component:
    """A validated Component spec. Build one with :func:`parse_component`.

    ``chart_ref`` is the chart path as the spec wrote it (relative to the spec
    file), whose chart travels separately as archive bytes, or a chart
    repository or OCI reference (:class:`RepoChart`, :class:`OciChart`) the
    hub fetches.
    ``history_limit`` (``spec.historyLimit``) bounds the revisions the hub
    keeps; it is not part of the fingerprint (changing it alone makes no new
    revision). ``cluster_scoped`` (``spec.clusterScoped``) makes it a cluster
    component: the hub makes a new revision of it only for a higher chart
    version (see :func:`cluster_component_update_due`).
    """

    name: str
    namespace: str
    chart_ref: ChartRef
    values: dict[str, Any] = field(default_factory=dict, hash=False)
    edge: EdgeTarget = field(default_factory=EdgeTarget)
    history_limit: int = DEFAULT_HISTORY_LIMIT
    cluster_scoped: bool = False

    def __post_init__(self) -> None:
        check_name(self.name, "component name")
        check_name(self.namespace, "component namespace")

    @property
    def key(self) -> tuple[str, str]:
        """``(namespace, name)``: the release this component becomes."""
        return (self.namespace, self.name)

    @property
    def remote_chart(self) -> RepoChart | OciChart | None:
        """The chart repository or OCI reference, or None for a local chart."""
        return None if isinstance(self.chart_ref, str) else self.chart_ref

    def to_document(self) -> dict[str, Any]:
        """The spec as a plain document; ``parse_component`` reads it back to an equal Component.
        ``historyLimit`` is written only when it is not the default."""
        spec: dict[str, Any] = {
            "chart": self.chart_ref if isinstance(self.chart_ref, str) else self.chart_ref.to_document(),
            "values": copy.deepcopy(self.values),
            "edge": self.edge.to_document(),
        }
        if self.history_limit != DEFAULT_HISTORY_LIMIT:
            spec["historyLimit"] = self.history_limit
        if self.cluster_scoped:
            spec["clusterScoped"] = True
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": spec,
        }
