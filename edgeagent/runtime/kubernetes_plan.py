"""Rendered manifests -> what the Kubernetes runtime applies, prunes and reports: its pure half.

Nothing here talks to a cluster: ``build_kube_plan`` parses a release's
manifests (through the shared safe loader, ``manifests.load_yaml_all``),
checks every object against the node's policy (the same checks the podman
plan runs, ``NodePolicy.object_refusal``), labels every object, sets the
namespace of namespaced objects that lack one, and sorts them in Helm's
install order. ``prune_plan`` says what an apply removes, ``workload_status``
and ``observation_from`` turn live objects into the runtime's ``Observation``;
``workload_pods``, ``pod_state`` and ``log_requests`` turn a workload's pods
into what the kubelet says of each container (restarts, waiting reason, last
termination), for ``edgeagent.release_health``.
The runtime (``edgeagent.runtime.kubernetes``) calls them in a thread; tests
call them directly over real rendered charts.

Errors: every refusal is ``ManifestRejected`` naming the object at fault
(``Deployment/web of demo/web: ...``): the same manifests would be refused
again whatever the cluster's state.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgeprotocol.messages import ContainerState, ContainerStatus

from ..policy import NodePolicy
from .base import ManifestRejected, NodeContext, Observation, PodState, ReleaseRef
from .manifests import release_documents

__all__ = [
    "CLUSTER_SCOPED_KINDS",
    "FIELD_MANAGER",
    "HOOK_ANNOTATION",
    "INSTALL_ORDER",
    "LABEL_MANAGED_BY",
    "LABEL_RELEASE",
    "LABEL_RELEASE_NAMESPACE",
    "LABEL_REVISION",
    "MANAGED_BY",
    "WORKLOAD_KINDS",
    "KubeObject",
    "KubePlan",
    "LogRequest",
    "ObjectKey",
    "WorkloadStatus",
    "build_kube_plan",
    "drifted",
    "hook_order",
    "install_sorted",
    "label_selector",
    "last_lines",
    "log_requests",
    "manifests_digest",
    "observation_from",
    "ownership_conflict",
    "pod_state",
    "pod_waiting",
    "prune_plan",
    "release_labels",
    "release_selector",
    "uninstall_sorted",
    "workload_pods",
    "workload_status",
]

LABEL_RELEASE = "edgecollab.io/release"
LABEL_RELEASE_NAMESPACE = "edgecollab.io/release-namespace"
LABEL_REVISION = "edgecollab.io/revision"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_NODE = "edgecollab.io/node"
LABEL_POOL = "edgecollab.io/pool"
MANAGED_BY = "edgecollab"
FIELD_MANAGER = "edgecollab"
HOOK_ANNOTATION = "helm.sh/hook"
ENV_NODE_NAME = "EDGE_NODE_NAME"
ENV_NODE_POOL = "EDGE_NODE_POOL"

# Helm's InstallOrder (pkg/releaseutil/kind_sorter.go). Kinds it does not know
# go after all of these, by kind name; uninstall is the exact reverse.
INSTALL_ORDER: tuple[str, ...] = (
    "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodSecurityPolicy", "PodDisruptionBudget",
    "ServiceAccount", "Secret", "SecretList", "ConfigMap", "StorageClass", "PersistentVolume",
    "PersistentVolumeClaim", "CustomResourceDefinition", "ClusterRole", "ClusterRoleList", "ClusterRoleBinding",
    "ClusterRoleBindingList", "Role", "RoleList", "RoleBinding", "RoleBindingList", "Service", "DaemonSet", "Pod",
    "ReplicationController", "ReplicaSet", "Deployment", "HorizontalPodAutoscaler", "StatefulSet", "Job",
    "CronJob", "IngressClass", "Ingress", "APIService",
)
_ORDER = {kind: index for index, kind in enumerate(INSTALL_ORDER)}

# Built-in kinds that live outside any namespace. Custom kinds: their
# CustomResourceDefinition's spec.scope (in the release), else the cluster's
# discovery (the ``scope`` callback), else namespaced.
CLUSTER_SCOPED_KINDS = frozenset({
    "Namespace", "Node", "PersistentVolume", "StorageClass", "CustomResourceDefinition", "ClusterRole",
    "ClusterRoleBinding", "PriorityClass", "IngressClass", "APIService", "PodSecurityPolicy", "RuntimeClass",
    "CSIDriver", "CSINode", "VolumeAttachment", "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration",
    "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "CertificateSigningRequest", "FlowSchema",
    "PriorityLevelConfiguration", "ClusterRoleList", "ClusterRoleBindingList",
})
# The kinds whose status says whether the release runs (one PodState each).
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "Pod")
_POD_TEMPLATE_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet", "ReplicationController")


@dataclass(frozen=True, slots=True, order=True)
class ObjectKey:
    """What identifies an object across revisions: API group (not version), kind, namespace ("" if none), name."""

    group: str
    kind: str
    namespace: str
    name: str

    @classmethod
    def of(cls, api_version: str, kind: str, namespace: str | None, name: str) -> ObjectKey:
        group = api_version.rpartition("/")[0] if "/" in api_version else ""
        return cls(group, kind, namespace or "", name)

    def __str__(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}" if self.namespace else f"{self.kind}/{self.name}"


@dataclass(frozen=True, slots=True)
class KubeObject:
    """One object as the runtime applies it: ``body`` is labelled and has its namespace set."""

    api_version: str
    kind: str
    namespace: str | None  # None: cluster-scoped
    name: str
    body: dict[str, Any]
    source: str  # how messages name it: "Deployment/web"

    @property
    def key(self) -> ObjectKey:
        return ObjectKey.of(self.api_version, self.kind, self.namespace, self.name)

    def to_record(self) -> dict[str, Any]:
        return {"apiVersion": self.api_version, "kind": self.kind, "namespace": self.namespace, "name": self.name,
                "source": self.source, "body": self.body}

    @classmethod
    def from_record(cls, item: Mapping[str, Any]) -> KubeObject:
        return cls(api_version=str(item["apiVersion"]), kind=str(item["kind"]), namespace=item.get("namespace"),
                   name=str(item["name"]), body=dict(item["body"]), source=str(item.get("source", "")))


@dataclass(slots=True)
class KubePlan:
    """What an apply of one release does: objects in install order, hooks, namespaces to create."""

    objects: list[KubeObject] = field(default_factory=list)
    # Helm hooks (helm.sh/hook), untouched apart from labels and namespace; run by event.
    hooks: list[KubeObject] = field(default_factory=list)
    # Namespaces objects go into that the release does not define itself: created when missing.
    namespaces: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Digest of the manifests and the node context: an unchanged one re-applies the same revision.
    digest: str = ""

    @property
    def keys(self) -> list[ObjectKey]:
        return [o.key for o in self.objects]


@dataclass(frozen=True, slots=True)
class WorkloadStatus:
    """What a workload object's own status says: ``phase`` is a short word, ``message`` why it is not ready."""

    ready: bool
    phase: str
    message: str = ""


# -- labels and order ---------------------------------------------------------


def release_labels(ref: ReleaseRef, revision: int) -> dict[str, str]:
    """The labels every object of ``ref`` carries at ``revision``."""
    return {LABEL_RELEASE: ref.release, LABEL_RELEASE_NAMESPACE: ref.namespace, LABEL_REVISION: str(revision),
            LABEL_MANAGED_BY: MANAGED_BY}


def release_selector(ref: ReleaseRef) -> str:
    """A label selector for every object of ``ref`` (whatever its revision)."""
    return f"{LABEL_RELEASE}={ref.release},{LABEL_RELEASE_NAMESPACE}={ref.namespace},{LABEL_MANAGED_BY}={MANAGED_BY}"


def _kind_rank(kind: str) -> tuple[int, str]:
    return (_ORDER[kind], "") if kind in _ORDER else (len(_ORDER), kind)


def install_sorted(objects: Iterable[KubeObject]) -> list[KubeObject]:
    """``objects`` in Helm's install order; stable within a kind, unknown kinds last by kind name."""
    return sorted(objects, key=lambda o: _kind_rank(o.kind))


def uninstall_sorted(objects: Iterable[KubeObject]) -> list[KubeObject]:
    """``objects`` in uninstall order: the exact reverse of the install order."""
    return list(reversed(install_sorted(objects)))


def hook_order(hooks: Iterable[KubeObject], event: str) -> list[KubeObject]:
    """The hooks of ``event`` (``pre-install``, ...) in Helm's order: weight, then kind, then name."""
    chosen = [h for h in hooks if event in _hook_events(h.body)]

    def weight(h: KubeObject) -> int:
        raw = ((h.body.get("metadata") or {}).get("annotations") or {}).get("helm.sh/hook-weight", "0")
        try:
            return int(str(raw).strip())
        except ValueError:
            return 0

    return sorted(chosen, key=lambda h: (weight(h), _kind_rank(h.kind), h.name))


def _hook_events(body: Mapping[str, Any]) -> set[str]:
    raw = ((body.get("metadata") or {}).get("annotations") or {}).get(HOOK_ANNOTATION, "")
    return {part.strip() for part in str(raw).split(",") if part.strip()}


def prune_plan(previous: Iterable[KubeObject], current: Iterable[KubeObject]) -> list[KubeObject]:
    """The objects of ``previous`` that ``current`` no longer holds, in uninstall order.

    Compared by (API group, kind, namespace, name): a Deployment whose
    apiVersion moved from ``apps/v1beta2`` to ``apps/v1`` is the same object.
    """
    keep = {o.key for o in current}
    seen: set[ObjectKey] = set()
    gone = []
    for obj in previous:
        if obj.key not in keep and obj.key not in seen:
            seen.add(obj.key)
            gone.append(obj)
    return uninstall_sorted(gone)


def ownership_conflict(live: Mapping[str, Any] | None, ref: ReleaseRef) -> str:
    """Why the live object ``live`` may not be taken over by ``ref`` ("" when it may: absent, or ours)."""
    if not live:
        return ""
    labels = (live.get("metadata") or {}).get("labels") or {}
    if labels.get(LABEL_MANAGED_BY) != MANAGED_BY:
        return "it exists and edgecollab does not manage it (no app.kubernetes.io/managed-by=edgecollab label)"
    owner = (labels.get(LABEL_RELEASE_NAMESPACE), labels.get(LABEL_RELEASE))
    if owner != (ref.namespace, ref.release):
        return f"it belongs to release {owner[0]}/{owner[1]}"
    return ""


# -- the plan ------------------------------------------------------------------


def _mapping_at(doc: dict[str, Any], key: str) -> dict[str, Any]:
    """``doc[key]`` when it is a mapping, else an empty one."""
    value = doc.get(key)
    return value if isinstance(value, dict) else {}


def _describe(doc: Any, index: int) -> str:
    if isinstance(doc, dict):
        meta = _mapping_at(doc, "metadata")
        return f"{doc.get('kind', '?')}/{meta.get('name', '?')}"
    return f"document {index}"


def _crd_scopes(docs: Sequence[Any]) -> dict[tuple[str, str], bool]:
    """(group, kind) -> namespaced, for the CustomResourceDefinitions the release itself holds."""
    scopes: dict[tuple[str, str], bool] = {}
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
            spec = _mapping_at(doc, "spec")
            names = _mapping_at(spec, "names")
            if spec.get("group") and names.get("kind"):
                scopes[(str(spec["group"]), str(names["kind"]))] = spec.get("scope", "Namespaced") != "Cluster"
    return scopes


def _inject_node(body: dict[str, Any], node: NodeContext, harden: bool) -> None:
    """Node identity into every container's env; no privilege escalation where root is not allowed."""
    spec = body.get("spec")
    if body.get("kind") != "Pod":
        template = spec.get("template") if isinstance(spec, dict) else None
        if body.get("kind") == "CronJob" and isinstance(spec, dict):
            job = spec.get("jobTemplate")
            template = (job.get("spec") or {}).get("template") if isinstance(job, dict) else None
        spec = template.get("spec") if isinstance(template, dict) else None
    if not isinstance(spec, dict):
        return
    for key in ("initContainers", "containers"):
        for container in spec.get(key) or ():
            if not isinstance(container, dict):
                continue
            env = container.setdefault("env", [])
            if isinstance(env, list):
                names = {e.get("name") for e in env if isinstance(e, dict)}
                for name, value in ((ENV_NODE_NAME, node.node), (ENV_NODE_POOL, node.pool)):
                    if name not in names:
                        env.append({"name": name, "value": value})
            if harden:
                security = container.setdefault("securityContext", {})
                if isinstance(security, dict):
                    security.setdefault("allowPrivilegeEscalation", False)


def build_kube_plan(
    ref: ReleaseRef,
    manifests: str,
    node: NodeContext,
    *,
    revision: int = 1,
    policy: NodePolicy | None = None,
    scope: Callable[[str, str], bool | None] | None = None,
) -> KubePlan:
    """Turn a release's rendered manifests into what the runtime applies (see the module docstring).

    ``scope(apiVersion, kind)`` says whether a kind the plan does not know is
    namespaced (None: unknown, taken as namespaced); the runtime answers from
    the cluster's discovery. Raises ManifestRejected naming the object at fault.
    """
    policy, docs = release_documents(ref, manifests, policy)
    expanded: list[Any] = []
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            expanded.extend(i for i in doc["items"] if i is not None)  # as kubectl and Helm apply a List
        else:
            expanded.append(doc)
    crd_scopes = _crd_scopes(expanded)
    labels = release_labels(ref, revision)
    plan = KubePlan()
    seen: dict[ObjectKey, str] = {}
    defined_namespaces: set[str] = set()
    for index, doc in enumerate(expanded, start=1):
        where = _describe(doc, index)
        if not isinstance(doc, dict) or not isinstance(doc.get("kind"), str) or not doc.get("kind"):
            raise ManifestRejected(f"{where} of {ref}: not a Kubernetes object (no kind)")
        api_version = doc.get("apiVersion")
        if not isinstance(api_version, str) or not api_version:
            raise ManifestRejected(f"{where} of {ref}: no apiVersion")
        meta = doc.get("metadata")
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
            raise ManifestRejected(f"{where} of {ref}: metadata.name is missing")
        kind, name = doc["kind"], meta["name"]
        group = api_version.rpartition("/")[0]
        namespaced = kind not in CLUSTER_SCOPED_KINDS
        if (group, kind) in crd_scopes:
            namespaced = crd_scopes[(group, kind)]
        elif namespaced and scope is not None and kind not in _ORDER:
            answer = scope(api_version, kind)
            namespaced = True if answer is None else answer
        own_ns = meta.get("namespace")
        if own_ns is not None and not isinstance(own_ns, str):
            raise ManifestRejected(f"{where} of {ref}: metadata.namespace is not a string")
        namespace = (own_ns or ref.namespace) if namespaced else None
        if namespace is not None and namespace != ref.namespace:
            refusal = policy.release_refusal(namespace, ref.release)
            if refusal:
                raise ManifestRejected(f"{where}: {refusal}")
        try:
            refusal = policy.object_refusal(doc, where, namespace or ref.namespace)
        except (AttributeError, KeyError, TypeError, ValueError, RecursionError) as exc:
            raise ManifestRejected(f"{where}: malformed object ({type(exc).__name__}: {exc})") from exc
        if refusal:
            raise ManifestRejected(refusal)
        body = copy.deepcopy(doc)
        body_meta = body["metadata"]
        if namespace is not None:
            body_meta["namespace"] = namespace
        else:
            body_meta.pop("namespace", None)
        own_labels = body_meta.get("labels")
        if own_labels is not None and not isinstance(own_labels, dict):
            raise ManifestRejected(f"{where} of {ref}: metadata.labels is not a mapping")
        body_meta["labels"] = {**(own_labels or {}), **labels, LABEL_NODE: node.node, LABEL_POOL: node.pool}
        try:
            _inject_node(body, node, policy.hardens(namespace or ref.namespace))
        except (AttributeError, TypeError) as exc:
            raise ManifestRejected(f"{where}: malformed object ({type(exc).__name__}: {exc})") from exc
        obj = KubeObject(api_version=api_version, kind=kind, namespace=namespace, name=name, body=body,
                         source=where)
        if HOOK_ANNOTATION in (meta.get("annotations") or {}):
            plan.hooks.append(obj)
            continue
        if obj.key in seen:
            raise ManifestRejected(f"{where} of {ref}: defined twice (as {seen[obj.key]} too)")
        seen[obj.key] = where
        if kind == "Namespace":
            defined_namespaces.add(name)
        plan.objects.append(obj)
    plan.objects = install_sorted(plan.objects)
    wanted = {o.namespace for o in [*plan.objects, *plan.hooks] if o.namespace} | {ref.namespace}
    plan.namespaces = sorted(wanted - defined_namespaces)
    for obj in plan.objects:
        if obj.kind == "CronJob":
            plan.warnings.append(f"{obj.source}: the cluster schedules it; its runs are not counted in the "
                                 "release's status")
    plan.digest = manifests_digest(manifests, node)
    return plan


def manifests_digest(manifests: str, node: NodeContext) -> str:
    """What identifies an apply's input: the same digest re-applies the same revision."""
    return hashlib.sha256(json.dumps([manifests, node.node, node.pool]).encode()).hexdigest()


# -- status ---------------------------------------------------------------------


def _conditions(obj: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    found = ((obj.get("status") or {}).get("conditions")) or []
    return {str(c.get("type")): c for c in found if isinstance(c, Mapping)}


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _stale(obj: Mapping[str, Any]) -> bool:
    """The controller has not yet seen the object's latest spec."""
    generation = _int((obj.get("metadata") or {}).get("generation"), 0)
    observed = _int((obj.get("status") or {}).get("observedGeneration"), -1)
    return generation > 0 and observed < generation


def workload_status(obj: Mapping[str, Any]) -> WorkloadStatus:
    """What a live workload object (Deployment, StatefulSet, DaemonSet, Job, Pod, as JSON) says of itself."""
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    conditions = _conditions(obj)
    if kind == "Deployment":
        wanted = _int(spec.get("replicas"), 1)
        available = _int(status.get("availableReplicas"))
        updated = _int(status.get("updatedReplicas"))
        progressing = conditions.get("Progressing") or {}
        if progressing.get("status") == "False" and progressing.get("reason") == "ProgressDeadlineExceeded":
            return WorkloadStatus(False, "Failed", f"{progressing.get('reason')}: {progressing.get('message', '')}"
                                  .rstrip(": "))
        replica_failure = conditions.get("ReplicaFailure") or {}
        if replica_failure.get("status") == "True":
            return WorkloadStatus(False, "Failed", f"ReplicaFailure: {replica_failure.get('message', '')}")
        if _stale(obj):
            return WorkloadStatus(False, "Progressing", "the controller has not seen the latest spec yet")
        if available >= wanted and updated >= wanted and (conditions.get("Available") or {}).get("status") != "False":
            return WorkloadStatus(True, "Available")
        return WorkloadStatus(False, "Progressing", f"{available}/{wanted} replicas available, {updated} updated")
    if kind == "StatefulSet":
        wanted = _int(spec.get("replicas"), 1)
        ready = _int(status.get("readyReplicas"))
        if _stale(obj):
            return WorkloadStatus(False, "Progressing", "the controller has not seen the latest spec yet")
        update_revision = status.get("updateRevision")
        if ready >= wanted and (not update_revision or update_revision == status.get("currentRevision")
                                or wanted == 0):
            return WorkloadStatus(True, "Available")
        return WorkloadStatus(False, "Progressing", f"{ready}/{wanted} replicas ready")
    if kind == "DaemonSet":
        desired = _int(status.get("desiredNumberScheduled"))
        ready = _int(status.get("numberReady"))
        if _stale(obj):
            return WorkloadStatus(False, "Progressing", "the controller has not seen the latest spec yet")
        if ready >= desired and _int(status.get("updatedNumberScheduled"), desired) >= desired:
            return WorkloadStatus(True, "Available", "" if desired else "no node matches it (0 pods scheduled)")
        return WorkloadStatus(False, "Progressing", f"{ready}/{desired} pods ready")
    if kind == "Job":
        if (conditions.get("Complete") or {}).get("status") == "True":
            return WorkloadStatus(True, "Complete")
        failed = conditions.get("Failed") or {}
        if failed.get("status") == "True":
            return WorkloadStatus(False, "Failed", f"{failed.get('reason', 'Failed')}: {failed.get('message', '')}"
                                  .rstrip(": "))
        return WorkloadStatus(False, "Running", f"{_int(status.get('succeeded'))} succeeded, "
                                                f"{_int(status.get('failed'))} failed so far")
    if kind == "Pod":
        phase = str(status.get("phase") or "Pending")
        if phase == "Succeeded":
            return WorkloadStatus(True, "Succeeded")
        if phase == "Failed":
            return WorkloadStatus(False, "Failed", str(status.get("message") or status.get("reason") or ""))
        if phase == "Running" and (conditions.get("Ready") or {}).get("status") == "True":
            return WorkloadStatus(True, "Running")
        waiting = [((c.get("state") or {}).get("waiting") or {}) for c in status.get("containerStatuses") or ()]
        why = next((f"{w.get('reason')}: {w.get('message', '')}".rstrip(": ") for w in waiting if w.get("reason")), "")
        return WorkloadStatus(False, phase, why or "not ready")
    return WorkloadStatus(True, "Present")


def observation_from(expected: Sequence[KubeObject], live: Mapping[ObjectKey, Mapping[str, Any] | None], *,
                     repaired: Sequence[str] = (),
                     pods: Mapping[ObjectKey, Sequence[PodState]] | None = None,
                     waiting: Mapping[ObjectKey, str] | None = None) -> Observation:
    """The release's Observation: one PodState per workload object it holds, named ``Kind/name``, then its pods.

    ``live`` maps each expected object's key to its live JSON (None: missing).
    ``ready`` and ``total`` count the workloads only, whose own status says
    whether they run (a Job once complete); the message names every one that
    does not, and why. ``repaired`` names objects the runtime has just restored
    (drift repair).

    ``pods`` maps a workload's key to its pods (``pod_state``): they follow the
    workloads in ``Observation.pods``, named as the pod (``web-5d4f9c-x2x7k``),
    with the pod's phase (Pending, Running, Failed) and each container as the
    kubelet shows it. The workload entries carry no containers, so
    ``release_health`` counts each container once and names the pod it is in.

    ``waiting`` maps a workload's key to why its pods wait (``pod_waiting``:
    the scheduler's word, ``Unschedulable``), added to its entry in the
    message when it is not ready. A workload whose own status says it
    ``Failed`` (``workload_status``) is named in ``Observation.failed``.
    """
    states: list[PodState] = []
    lagging: list[str] = []
    failed: list[str] = []
    for obj in expected:
        if obj.kind not in WORKLOAD_KINDS:
            continue
        name = obj.source if obj.namespace in (None, obj.body.get("metadata", {}).get("namespace")) else str(obj.key)
        found = live.get(obj.key)
        if found is None:
            states.append(PodState(name, "Missing", False, (), ""))
            lagging.append(f"{name} (Missing)")
            continue
        verdict = workload_status(found)
        meta = found.get("metadata") or {}
        states.append(PodState(name, verdict.phase, verdict.ready, (str(meta.get("uid", "")),),
                               str(meta.get("creationTimestamp", ""))))
        if not verdict.ready:
            why = "; ".join(w for w in (verdict.message, (waiting or {}).get(obj.key, "")) if w)
            lagging.append(f"{name} ({verdict.phase}{': ' + why if why else ''})")
            if verdict.phase == "Failed":
                failed.append(name)
    ready = sum(1 for s in states if s.ready)
    total = len(states)
    parts = []
    if lagging:
        parts.append(f"{len(lagging)} of {total} workloads not ready: {', '.join(lagging)}")
    if repaired:
        parts.append(f"restored from the stored revision: {', '.join(repaired)}")
    for obj in expected:
        states.extend((pods or {}).get(obj.key, ()))
    return Observation(ready=ready, total=total, pods=tuple(states), message="; ".join(parts), failed=tuple(failed))


# -- pods and containers ----------------------------------------------------------
#
# What the kubelet says of each container of a release's pods, in its own
# fields: ``restartCount``, ``ready``, ``state.waiting.reason`` (CrashLoopBackOff,
# ErrImagePull, ImagePullBackOff, CreateContainerConfigError, ...),
# ``state.terminated`` and ``lastState.terminated`` (exit code, reason: Error,
# OOMKilled, Completed; finishedAt). Pods are the API's JSON (camelCase, as the
# dynamic client's ``to_dict()`` and ``ApiClient.sanitize_for_serialization``
# give them).

# The lines of a container's log a status carries (ContainerStatus cuts them to MAX_LAST_LOG characters).
LOG_LINES = 3
# What one log read may bring back at most: three lines of a chatty container must not cost megabytes.
LOG_BYTES = 16 * 1024
# An init container waiting with one of these has not had its turn yet: nothing is wrong with it.
_NOT_STARTED = frozenset({"", "PodInitializing", "ContainerCreating"})


@dataclass(frozen=True, slots=True)
class LogRequest:
    """The last lines of one container's log to read: its last abnormal termination.

    ``previous`` is the kubelet's word: True reads the container of
    ``lastState.terminated`` (the one before the current), False the current
    one, for a container that is terminated now and was not restarted. ``key``
    changes with every new termination (pod UID, container, restartCount,
    finishedAt): the runtime reads each termination's log once.
    """

    namespace: str
    pod: str
    container: str
    previous: bool
    key: tuple[str, str, int, str]


def label_selector(selector: Any) -> str | None:
    """A LabelSelector (``spec.selector``: matchLabels, matchExpressions) as a ``label_selector`` string.

    None when there is none or it cannot be written as one (an unknown
    operator): an empty string would select every pod of the namespace.
    """
    if not isinstance(selector, Mapping):
        return None
    terms = [f"{key}={value}" for key, value in sorted((selector.get("matchLabels") or {}).items())]
    for expression in selector.get("matchExpressions") or ():
        if not isinstance(expression, Mapping) or not expression.get("key"):
            return None
        key, operator = str(expression["key"]), expression.get("operator")
        values = ",".join(str(v) for v in expression.get("values") or ())
        if operator == "In":
            terms.append(f"{key} in ({values})")
        elif operator == "NotIn":
            terms.append(f"{key} notin ({values})")
        elif operator == "Exists":
            terms.append(key)
        elif operator == "DoesNotExist":
            terms.append(f"!{key}")
        else:
            return None
    return ",".join(terms) or None


def _owned_by(obj: Mapping[str, Any], owners: set[str]) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or ()
    return any(isinstance(r, Mapping) and r.get("uid") in owners for r in refs)


def _reported(pod: Mapping[str, Any]) -> bool:
    """Whether a pod's containers say anything of the release's health now.

    A pod being deleted (an old ReplicaSet's, during a rollout) stops with
    exit codes that are no failure; a Succeeded pod (a Job's) did its work.
    """
    return not (pod.get("metadata") or {}).get("deletionTimestamp") and \
        (pod.get("status") or {}).get("phase") != "Succeeded"


def workload_pods(workload: Mapping[str, Any], pods: Iterable[Mapping[str, Any]],
                  replicasets: Iterable[Mapping[str, Any]] = ()) -> list[Mapping[str, Any]]:
    """The pods of ``pods`` that belong to the live ``workload``, by name; itself for a Pod.

    ``pods`` (and a Deployment's ``replicasets``) are what its label selector
    lists; selectors of different workloads may overlap, so a pod counts only
    when its owner is the workload (a Deployment's: one of its ReplicaSets).
    Pods being deleted and Succeeded pods are left out (``_reported``).
    """
    if workload.get("kind") == "Pod":
        return [workload] if _reported(workload) else []
    owners = {str((workload.get("metadata") or {}).get("uid") or "")} - {""}
    if workload.get("kind") == "Deployment":
        owners = {str((rs.get("metadata") or {}).get("uid")) for rs in replicasets if _owned_by(rs, owners)}
    mine = [p for p in pods if owners and _owned_by(p, owners) and _reported(p)]
    return sorted(mine, key=lambda p: str((p.get("metadata") or {}).get("name", "")))


def pod_waiting(pods: Iterable[Mapping[str, Any]]) -> str:
    """Why the first of ``pods`` the scheduler could not place waits, in its words ("" when every one was placed):
    ``pod web-5d4f9c-x2x7k Unschedulable: 0/1 nodes are available: 1 node(s) didn't match Pod's node
    affinity/selector. ...``. Such a pod has no containers yet, so nothing else says why."""
    for pod in pods:
        scheduled = _conditions(pod).get("PodScheduled") or {}
        if scheduled.get("status") == "False":
            name = (pod.get("metadata") or {}).get("name", "?")
            message = str(scheduled.get("message") or "").strip()
            return f"pod {name} {scheduled.get('reason') or 'not scheduled'}{': ' + message if message else ''}"
    return ""


def _init_failing(raw: Mapping[str, Any]) -> bool:
    """Whether an init container is failing: restarted, waiting for a reason of its own, or exited non-zero.

    An init container that completed, runs now or has not had its turn says
    nothing the app containers do not (they wait with PodInitializing); one
    that fails is the only place the pod's trouble shows.
    """
    if _int(raw.get("restartCount")) > 0:
        return True
    state = raw.get("state") or {}
    waiting, terminated = state.get("waiting"), state.get("terminated")
    if waiting is not None and str(waiting.get("reason") or "") not in _NOT_STARTED:
        return True
    return terminated is not None and _int(terminated.get("exitCode")) != 0


def _statuses(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The container statuses a pod reports: failing init containers first (they block the rest), then its app
    containers."""
    status = pod.get("status") or {}
    init = [c for c in status.get("initContainerStatuses") or () if isinstance(c, Mapping) and _init_failing(c)]
    return [*init, *(c for c in status.get("containerStatuses") or () if isinstance(c, Mapping))]


def _termination(raw: Mapping[str, Any]) -> tuple[Mapping[str, Any], bool]:
    """The container's latest termination and whether it is the kubelet's ``previous`` container.

    A container terminated now (not restarted, or not yet) is its own latest
    termination; otherwise ``lastState.terminated``, the container before.
    """
    now = (raw.get("state") or {}).get("terminated")
    if now is not None:
        return now, False
    return (raw.get("lastState") or {}).get("terminated") or {}, True


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _container(raw: Mapping[str, Any], log: str) -> ContainerStatus:
    state = raw.get("state") or {}
    word: ContainerState
    if state.get("running") is not None:
        word, reason = "running", ""
    elif state.get("terminated") is not None:
        word, reason = "terminated", str(state["terminated"].get("reason") or "")
    else:  # waiting, or no state yet: the kubelet has not started it
        word, reason = "waiting", str((state.get("waiting") or {}).get("reason") or "")
    terminated, _ = _termination(raw)
    exit_code = terminated.get("exitCode")
    return ContainerStatus(
        name=str(raw.get("name") or "?"), ready=raw.get("ready") is True, restarts=_int(raw.get("restartCount")),
        state=word, reason=reason,
        exit_code=exit_code if isinstance(exit_code, int) and not isinstance(exit_code, bool) else None,
        last_reason=str(terminated.get("reason") or ""), finished_at=_text(terminated.get("finishedAt")),
        last_log=log)


def log_requests(pod: Mapping[str, Any]) -> list[LogRequest]:
    """The logs worth reading for ``pod``: each reported container whose latest termination was abnormal.

    Abnormal: a non-zero exit code or a reason other than Completed
    (OOMKilled, Error, ContainerCannotRun), or any exit of a container in
    CrashLoopBackOff (a Deployment's container that exits 0 restarts all the same).
    """
    meta = pod.get("metadata") or {}
    wanted = []
    for raw in _statuses(pod):
        terminated, previous = _termination(raw)
        if not terminated:
            continue
        waiting = ((raw.get("state") or {}).get("waiting") or {}).get("reason")
        clean = _int(terminated.get("exitCode")) == 0 and str(terminated.get("reason") or "Completed") == "Completed"
        if clean and waiting != "CrashLoopBackOff":
            continue
        name = str(raw.get("name") or "?")
        wanted.append(LogRequest(
            namespace=str(meta.get("namespace") or ""), pod=str(meta.get("name") or ""), container=name,
            previous=previous,
            key=(str(meta.get("uid") or ""), name, _int(raw.get("restartCount")), _text(terminated.get("finishedAt")))))
    return wanted


def last_lines(text: str, lines: int = LOG_LINES) -> str:
    """The last ``lines`` non-empty lines of a log, as one string."""
    kept = [line.rstrip() for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def pod_state(pod: Mapping[str, Any], logs: Mapping[str, str] | None = None) -> PodState:
    """One pod as the Observation holds it: its phase, Ready condition and containers (``ContainerStatus``).

    ``logs`` maps a container's name to the last lines of its log when it last
    terminated abnormally (``log_requests`` says which). ``container_ids``
    change whenever a container is restarted; ``started_at`` is the latest
    start of any of its containers.
    """
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    raws = _statuses(pod)
    started = [_text(((r.get("state") or {}).get("running") or {}).get("startedAt")) for r in raws]
    return PodState(
        name=str(meta.get("name") or "?"), phase=str(status.get("phase") or "Pending"),
        ready=(_conditions(pod).get("Ready") or {}).get("status") == "True",
        container_ids=tuple(str(r["containerID"]) for r in raws if r.get("containerID")),
        started_at=max(started, default=""),
        containers=tuple(_container(r, (logs or {}).get(str(r.get("name") or "?"), "")) for r in raws))


def drifted(desired: Mapping[str, Any], live: Any, path: str = "") -> str:
    """The first field of ``desired`` (what we applied) that ``live`` lacks or holds otherwise ("" if none).

    Fields the server adds (defaults, status) are ignored; a scalar compares as
    text (``"1"`` and ``1``, ``500m`` spelled the same). Lists compare item by
    item and must be as long.
    """
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return path or "."
        for key, value in desired.items():
            if path == "" and key in ("status", "stringData"):
                continue  # the server's own, and folded into data by the server
            where = f"{path}.{key}" if path else str(key)
            if key not in live:
                if value in (None, {}, [], ""):
                    continue
                return where
            found = drifted(value, live[key], where)
            if found:
                return found
        return ""
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            return path
        for index, (want, have) in enumerate(zip(desired, live, strict=True)):
            found = drifted(want, have, f"{path}[{index}]")
            if found:
                return found
        return ""
    if desired is None:
        return ""
    if str(desired) != str(live) and not (isinstance(desired, bool) and str(desired).lower() == str(live).lower()):
        return path
    return ""
