"""Rendered manifests -> the file ``podman kube play`` plays: the podman runtime's pure half.

What the rewrite does, kind by kind, and how names are prefixed, is described
in the docstring of ``edgeagent.runtime.podman``. Everything here is pure: it
reads no file and runs no podman, so the runtime calls it in a thread (YAML of
a large release takes a while even with libyaml) and tests call it directly.

Errors: every refusal of ``build_plan`` is ``ManifestRejected`` naming the
manifest object at fault (``Deployment/web: spec.replicas 'three' is not a
whole number >= 0``): the same manifests would be refused again, whatever the
node's state. ``parse_played`` raises plain ``EdgeRuntimeError`` for a stored
file that is not YAML (a damaged disk, not a bad release).
"""

from __future__ import annotations

import base64
import binascii
import copy
import functools
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..policy import NodePolicy
from .base import EdgeRuntimeError, ManifestRejected, NodeContext, ReleaseRef
from .manifests import ALIAS_EXPANSION_LIMIT, dump_yaml_all, load_yaml_all, release_documents  # shared
from .names import check_config_key, check_dns_label, check_relative_path
from .podman_probes import Probe, probes_of_container

__all__ = [
    "ALIAS_EXPANSION_LIMIT",
    "ENV_NODE_NAME",
    "ENV_NODE_POOL",
    "LABEL_NAMESPACE",
    "LABEL_NODE",
    "LABEL_POOL",
    "LABEL_RELEASE",
    "LABEL_RELEASE_NAME",
    "Plan",
    "PlayedFile",
    "PlayedPod",
    "Play",
    "SubpathMount",
    "build_plan",
    "expand_refs",
    "dump_yaml_all",
    "load_yaml_all",
    "parse_played",
    "played_digest",
    "release_label",
]

LABEL_NODE = "edgecollab.io/node"
LABEL_POOL = "edgecollab.io/pool"
LABEL_RELEASE = "edgecollab.io/release"
LABEL_NAMESPACE = "edgecollab.io/namespace"
LABEL_RELEASE_NAME = "edgecollab.io/release-name"
ENV_NODE_NAME = "EDGE_NODE_NAME"
ENV_NODE_POOL = "EDGE_NODE_POOL"

# A Kubernetes object name (DNS subdomain); also safe in podman pod, container
# and volume names once prefixed.
_OBJECT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_LABEL_VALUE_MAX = 63
# podman 4.3 refuses a Pod whose annotation values exceed 63 bytes (Go's len:
# UTF-8 bytes); keys and the total are not limited.
_ANNOTATION_VALUE_MAX = 63
HOOK_ANNOTATION = "helm.sh/hook"
# The kind of the played file's first document: what podman cannot be given
# (long annotations, probes, host access, claims) but the runtime needs back.
# podman 4.3 skips documents of kinds it does not know.
RECORD_KIND = "EdgecollabPodmanRecord"

# Why each kind podman cannot run is not run, for the release's warnings.
_NOT_RUN: dict[str, str] = {
    "Service": "podman has no cluster networking or service IPs; reach pods through hostPort or hostNetwork",
    "Ingress": "the node has no ingress controller",
    "IngressClass": "the node has no ingress controller",
    "ServiceAccount": "the node has no Kubernetes API, so no account tokens",
    "Role": "the node has no Kubernetes API to authorize",
    "RoleBinding": "the node has no Kubernetes API to authorize",
    "ClusterRole": "the node has no Kubernetes API to authorize",
    "ClusterRoleBinding": "the node has no Kubernetes API to authorize",
    "NetworkPolicy": "podman does not filter traffic between pods",
    "HorizontalPodAutoscaler": "nothing on the node scales pods",
    "PodDisruptionBudget": "nothing on the node evicts pods",
    "CustomResourceDefinition": "the node has no Kubernetes API to extend",
    "Namespace": "podman has no namespaces; the release's namespace prefixes every podman name instead",
    "CronJob": "CronJobs are not run on podman",
    "ReplicaSet": "run it as a Deployment",
    "StorageClass": "volumes are podman named volumes on the node's disk",
    "PersistentVolume": "volumes are podman named volumes on the node's disk",
    "LimitRange": "podman applies no namespace policies",
    "ResourceQuota": "podman applies no namespace policies",
    "PriorityClass": "podman does not schedule or preempt pods",
    "ValidatingWebhookConfiguration": "the node has no Kubernetes API to call webhooks",
    "MutatingWebhookConfiguration": "the node has no Kubernetes API to call webhooks",
    "APIService": "the node has no Kubernetes API to extend",
}

def played_digest(text: str) -> str:
    """The digest that identifies a played file's content (the runtime's cache key)."""
    return hashlib.sha256(text.encode()).hexdigest()


def release_label(ref: ReleaseRef) -> str:
    """The ``edgecollab.io/release`` label value of ``ref``: ``NAMESPACE.RELEASE``.

    A label value holds at most 63 characters; longer ones keep a prefix and end
    in a hash of the whole, so they stay unique.
    """
    value = f"{ref.namespace}.{ref.release}"
    if len(value) <= _LABEL_VALUE_MAX:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:10]
    return f"{value[: _LABEL_VALUE_MAX - 11]}-{digest}"


# --------------------------------------------------------------------------
# Manifests -> the file podman plays (pure functions, no podman involved)


@dataclass(slots=True)
class PlayedPod:
    """One pod of a played file, as observe and remove need it."""

    name: str  # podman pod name, namespace-prefixed
    source: str  # the manifest object it comes from, e.g. "Deployment/web"
    containers: tuple[str, ...]  # podman container names of the app containers
    init_containers: tuple[str, ...]  # podman container names of init containers
    grace: int  # terminationGracePeriodSeconds, 0 when unset
    images: tuple[str, ...] = ()  # images of all its containers
    probes: tuple[Probe, ...] = ()  # run by the agent (podman_probes), never given to podman
    host_network: bool = False
    host_pid: bool = False
    empty_dirs: tuple[str, ...] = ()  # podman volumes of its emptyDirs: wiped whenever the pod is recreated
    mounts: tuple[str, ...] = ()  # names of the subPath mounts it binds (SubpathMount.name)
    annotations: dict[str, str] = field(default_factory=dict)  # those podman refuses, kept here only
    # A Job's pod: runs to completion. Exited with code 0 it is done (ready),
    # not dead, so it is never "healed" by playing it again.
    job: bool = False
    # The pod's own restartPolicy. "Always" pods are played with "Never" and
    # their containers restarted by the agent with back-off (podman_restarts).
    restart_policy: str = "Always"


@dataclass(frozen=True, slots=True)
class Play:
    """One ``kube play`` of an apply: pods sharing one host-access mode, with every ConfigMap."""

    text: str
    host_network: bool = False  # played without --network (the pods use the host's)
    host_pid: bool = False  # played with containers.conf pidns = "host"
    pods: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SubpathMount:
    """A part of a volume a container mounts by ``subPath``: bound by the runtime, never by path.

    ``kind`` is ``volume`` (``root`` a podman volume of the release) or ``host``
    (``root`` a hostPath the policy allowed). A pod may write symbolic links
    into a volume, and a bind by path follows them (the kubelet's
    CVE-2017-1002101), so the runtime resolves ``path`` beneath the root one
    component at a time without following links, binds what it opened by its
    file descriptor onto ``MOUNTS_DIR/NAME``, and podman binds that: a link a
    pod makes later changes nothing, on any restart.
    """

    kind: str
    root: str
    path: str

    @property
    def name(self) -> str:
        """The mount point's name in the release's mounts dir: the same for the same part of the same root."""
        key = "\0".join((self.kind, self.root, self.path))
        return f"{self.kind}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


@dataclass(slots=True)
class Plan:
    """What one apply will play."""

    text: str  # the YAML written to the work dir and played
    pods: dict[str, PlayedPod] = field(default_factory=dict)
    volumes: set[str] = field(default_factory=set)  # podman volume names the pods use
    warnings: list[str] = field(default_factory=list)
    digest: str = ""  # played_digest(text)
    plays: list[Play] = field(default_factory=list)  # the kube play calls, in order
    # StatefulSet claims (podman volume names): kept when a scale-down stops
    # using them, as Kubernetes keeps the PVCs; removed with the release.
    claims: set[str] = field(default_factory=set)
    # Named volumes the runtime creates (labelled) before playing: claims and
    # volumes a subPath mounts from (a subPath needs the volume's directory).
    create_volumes: set[str] = field(default_factory=set)
    # subPath mounts the runtime binds before playing, by SubpathMount.name.
    subpath_mounts: dict[str, SubpathMount] = field(default_factory=dict)
    # Files the runtime writes under the release's files dir before playing:
    # ConfigMap/Secret keys mounted by subPath. relative path -> (content, mode)
    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    # Helm hook documents (a helm.sh/hook annotation): not played, returned untouched.
    hooks: list[dict[str, Any]] = field(default_factory=list)

    def played(self) -> PlayedFile:
        """What ``parse_played`` will read back from ``text``, without parsing it."""
        return PlayedFile(digest=self.digest, pods=dict(self.pods), volumes=frozenset(self.volumes),
                          claims=frozenset(self.claims))


@dataclass(frozen=True, slots=True)
class PlayedFile:
    """A stored played file as observe, re-apply and remove need it."""

    digest: str  # played_digest of the file's text
    pods: dict[str, PlayedPod]  # keyed by podman pod name
    volumes: frozenset[str]  # podman volumes its pods use (claims excepted)
    claims: frozenset[str] = frozenset()  # StatefulSet claims its pods use

    @property
    def probes(self) -> tuple[Probe, ...]:
        return tuple(p for pod in self.pods.values() for p in pod.probes)


_HEADER = (
    "# Played by edgecollab's podman runtime for release {ref}; do not edit.\n"
    "# The agent re-plays and removes the release from this file.\n"
)
# Written into every pod of a played file so the file alone tells observe and
# remove which manifest object a pod came from.
_SOURCE_ANNOTATION = "edgecollab.io/source"


# Every podman volume of a release is named NAMESPACE.RELEASE.KIND.NAME: a
# namespace and a release are DNS labels (no dot), so the prefix up to the
# second dot is the release's alone and two releases never share a volume.


def _cm_volume(ref: ReleaseRef, name: str) -> str:
    return f"{ref.namespace}.{ref.release}.cm.{name}"


def _secret_volume(ref: ReleaseRef, name: str) -> str:
    return f"{ref.namespace}.{ref.release}.secret.{name}"


def _pvc_volume(ref: ReleaseRef, name: str) -> str:
    return f"{ref.namespace}.{ref.release}.pvc.{name}"


def _empty_dir_volume(ref: ReleaseRef, pod_name: str, volume: str) -> str:
    return f"{ref.namespace}.{ref.release}.empty.{pod_name}.{volume}"


# A volume's name in a pod (a DNS label in Kubernetes): it becomes part of
# podman volume names and of host paths, so nothing else is accepted.
_VOLUME_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _describe(doc: Any, index: int) -> str:
    """``Kind/name`` of a manifest for messages, or its position when it has none."""
    if isinstance(doc, Mapping):
        kind = doc.get("kind")
        meta = doc.get("metadata")
        name = meta.get("name") if isinstance(meta, Mapping) else None
        if isinstance(kind, str) and isinstance(name, str):
            return f"{kind}/{name}"
        if isinstance(kind, str):
            return f"{kind} (document {index})"
    return f"document {index}"


def _require_mapping(value: Any, where: str, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ManifestRejected(f"{where}: {what} must be a mapping")
    return value


def _optional_mapping(value: Any, where: str, what: str) -> dict[str, Any]:
    """``value``, or an empty mapping when it is unset."""
    return {} if value is None else _require_mapping(value, where, what)


def _optional_list(value: Any, where: str, what: str) -> list[Any]:
    """``value``, or an empty list when it is unset."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ManifestRejected(f"{where}: {what} must be a list")
    return value


def _object_name(doc: dict[str, Any], where: str) -> str:
    meta = _require_mapping(doc.get("metadata"), where, "metadata")
    name = meta.get("name")
    if not isinstance(name, str) or not _OBJECT_NAME.match(name):
        raise ManifestRejected(f"{where}: metadata.name {name!r} is not a valid object name")
    return name


def _secret_to_configmap(doc: dict[str, Any], ref: ReleaseRef, where: str) -> dict[str, Any]:
    """A Secret as the ConfigMap podman 4.3 can use: same keys, decoded values."""
    name = _object_name(doc, where)
    data: dict[str, str] = {}
    binary: dict[str, str] = {}
    raw = doc.get("data") or {}
    if not isinstance(raw, dict):
        raise ManifestRejected(f"{where}: data must be a mapping")
    for key, value in raw.items():
        try:
            decoded = base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ManifestRejected(f"{where}: data key {key!r} is not valid base64") from exc
        try:
            data[str(key)] = decoded.decode("utf-8")
        except UnicodeDecodeError:
            binary[str(key)] = str(value)
    string_data = doc.get("stringData") or {}
    if not isinstance(string_data, dict):
        raise ManifestRejected(f"{where}: stringData must be a mapping")
    for key, value in string_data.items():
        data[str(key)] = str(value)
        binary.pop(str(key), None)
    out: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": _secret_volume(ref, name)},
        "data": data,
    }
    if binary:
        out["binaryData"] = binary
    return out


@dataclass(slots=True)
class _Release:
    """What the whole release holds that its pods refer to (the first pass over the documents)."""

    configmaps: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> data (text keys)
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> decoded data (text keys)
    binary: dict[str, dict[str, bytes]] = field(default_factory=dict)  # "cm/NAME" or "secret/NAME" -> key -> bytes


def expand_refs(text: str, env: Mapping[str, str]) -> str:
    """``text`` with ``$(NAME)`` replaced from ``env`` as the kubelet does.

    ``$$`` is an escaped ``$``; an unknown name, or an unclosed ``$(``, stays as
    written.
    """
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char != "$" or i + 1 >= n:
            out.append(char)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            close = text.find(")", i + 2)
            if close < 0:
                out.append("$(")
                i += 2
            else:
                name = text[i + 2 : close]
                out.append(env.get(name, f"$({name})"))
                i = close + 1
        else:
            out.append("$" + nxt)
            i += 2
    return "".join(out)


def _expand_container(container: dict[str, Any], seed: Mapping[str, str], release: _Release) -> None:
    """Expand ``$(VAR)`` in env values, command and args as the kubelet does, at plan time."""
    known: dict[str, str] = dict(seed)
    for source in container.get("envFrom") or ():
        if not isinstance(source, dict):
            continue
        prefix = str(source.get("prefix") or "")
        data = None
        if isinstance(source.get("configMapRef"), dict):
            data = release.configmaps.get(str(source["configMapRef"].get("name")))
        elif isinstance(source.get("secretRef"), dict):
            data = release.secrets.get(str(source["secretRef"].get("name")))
        for key, value in (data or {}).items():
            known[prefix + key] = value
    for item in container.get("env") or ():
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            continue
        if "value" in item and item["value"] is not None:
            item["value"] = expand_refs(str(item["value"]), known)
            known[item["name"]] = item["value"]
            continue
        value_from = item.get("valueFrom")
        if not isinstance(value_from, dict):
            value_from = {}
        resolved = None
        if isinstance(value_from.get("configMapKeyRef"), dict):
            ref = value_from["configMapKeyRef"]
            resolved = release.configmaps.get(str(ref.get("name")), {}).get(str(ref.get("key")))
        elif isinstance(value_from.get("secretKeyRef"), dict):
            ref = value_from["secretKeyRef"]
            resolved = release.secrets.get(str(ref.get("name")), {}).get(str(ref.get("key")))
        if resolved is not None:
            known[item["name"]] = resolved
    known.update(seed)  # the node's identity wins, as in the env itself
    for key in ("command", "args"):
        if isinstance(container.get(key), list):
            container[key] = [expand_refs(str(arg), known) for arg in container[key]]


def _rewrite_env_refs(container: dict[str, Any], ref: ReleaseRef, where: str, release: _Release) -> None:
    what = f"container {container['name']!r}"
    env = _optional_list(container.get("env"), where, f"{what}: env")
    values_from = [item.get("valueFrom") for item in env if isinstance(item, dict)]
    _check_refs(values_from, "configMapKeyRef", "secretKeyRef", release, f"{where}: {what}: env")
    _rewrite_refs(values_from, "configMapKeyRef", "secretKeyRef", ref)
    env_from = _optional_list(container.get("envFrom"), where, f"{what}: envFrom")
    _check_refs(env_from, "configMapRef", "secretRef", release, f"{where}: {what}: envFrom")
    _rewrite_refs(env_from, "configMapRef", "secretRef", ref)


def _check_refs(holders: list[Any], cm_key: str, secret_key: str, release: _Release, where: str) -> None:
    """Refuse a reference to a ConfigMap or Secret the release does not hold (and that is not optional)."""
    for holder in holders:
        if not isinstance(holder, dict):
            continue
        for key, kind, known in ((cm_key, "ConfigMap", release.configmaps), (secret_key, "Secret", release.secrets)):
            ref = holder.get(key)
            if isinstance(ref, dict) and str(ref.get("name", "")) not in known and not ref.get("optional"):
                raise ManifestRejected(
                    f"{where}: {kind} {ref.get('name')!r} is not part of the release; podman has no cluster to "
                    "find it in (render it into the release, or mark the reference optional)"
                )


def _rewrite_refs(holders: list[Any], cm_key: str, secret_key: str, release: ReleaseRef) -> None:
    """Point ConfigMap references at their podman names; turn Secret references into ConfigMap ones."""
    for holder in holders:
        if not isinstance(holder, dict):
            continue
        if isinstance(holder.get(cm_key), dict):
            ref = holder[cm_key]
            ref["name"] = _cm_volume(release, str(ref.get("name", "")))
        if isinstance(holder.get(secret_key), dict):
            ref = holder.pop(secret_key)
            ref["name"] = _secret_volume(release, str(ref.get("name", "")))
            holder[cm_key] = ref


def _set_env(container: dict[str, Any], name: str, value: str) -> None:
    env = container.get("env")
    if not isinstance(env, list):
        env = []
    env = [e for e in env if not (isinstance(e, dict) and e.get("name") == name)]
    env.append({"name": name, "value": value})
    container["env"] = env


@dataclass(frozen=True, slots=True, kw_only=True)
class _Paths:
    """Host paths a plan may bind: the release's files dir and its dir of subPath mounts."""

    files_dir: str
    mounts_dir: str


def _prepare_pod(
    pod_name: str,
    template: dict[str, Any],
    *,
    source: str,
    ref: ReleaseRef,
    node: NodeContext,
    restart_always: bool,
    network: str | None,
    plan: Plan,
    release: _Release,
    paths: _Paths,
    policy: NodePolicy,
    claims: Mapping[str, str] | None = None,
    job: bool = False,
) -> dict[str, Any]:
    """One Pod document for podman from a pod template (or a Pod), injections done.

    ``claims`` maps volume names to StatefulSet claim names (``volumeClaimTemplates``).
    """
    where = f"{source} (pod {pod_name})" if source.split("/", 1)[-1] != pod_name else source
    template = copy.deepcopy(template)
    meta = template.get("metadata") or {}
    if not isinstance(meta, dict):
        raise ManifestRejected(f"{where}: metadata must be a mapping")
    spec = _require_mapping(template.get("spec"), where, "spec")
    podman_name = f"{ref.namespace}.{pod_name}"
    if podman_name in plan.pods:
        raise ManifestRejected(f"{where}: more than one pod of the release is named {pod_name!r}")

    labels = {str(k): str(v) for k, v in _optional_mapping(meta.get("labels"), where, "metadata.labels").items()}
    labels.update(
        {
            LABEL_NODE: node.node,
            LABEL_POOL: node.pool,
            LABEL_RELEASE: release_label(ref),
            LABEL_NAMESPACE: ref.namespace,
            LABEL_RELEASE_NAME: ref.release,
        }
    )
    annotations = {
        str(k): str(v) for k, v in _optional_mapping(meta.get("annotations"), where, "metadata.annotations").items()
    }
    annotations[_SOURCE_ANNOTATION] = source
    # podman 4.3 refuses the whole pod for one annotation value over 63 bytes
    # (checksum/config: <sha256> in most charts): those stay in the record only.
    refused = {k: v for k, v in annotations.items() if len(v.encode()) > _ANNOTATION_VALUE_MAX}
    for key in refused:
        del annotations[key]

    if restart_always and not spec.get("restartPolicy"):
        spec["restartPolicy"] = "Always"
    # Kubernetes' default for every pod but a Job's. podman would restart an
    # Always container the instant it exits, for ever: the agent restarts it
    # instead, with the kubelet's back-off (podman_restarts).
    restart_policy = str(spec.get("restartPolicy") or "Always")
    if restart_policy == "Always":
        spec["restartPolicy"] = "Never"
    host_network, host_pid = spec.get("hostNetwork") is True, spec.get("hostPID") is True
    if not spec.get("hostname") and not host_network:
        # As in Kubernetes, the pod's hostname is its own name; podman would use
        # the namespace-prefixed one, which can exceed a hostname's 63 characters.
        spec["hostname"] = pod_name[:63].rstrip("-.")
    if host_network:
        plan.warnings.append(f"{where}: runs with the host's network (hostNetwork): its ports are the node's")
    if host_pid:
        plan.warnings.append(f"{where}: runs in the host's PID namespace (hostPID): it sees every process "
                             "of the node")
    _warn_dropped_fields(spec, where, plan)

    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        raise ManifestRejected(f"{where}: spec.containers must list at least one container")
    inits = spec.get("initContainers") or []
    if not isinstance(inits, list):
        raise ManifestRejected(f"{where}: spec.initContainers must be a list")
    ephemeral = _optional_list(spec.pop("ephemeralContainers", None), where, "spec.ephemeralContainers")
    if ephemeral:
        # Checked like the others (a name or path in them is as hostile), then
        # dropped: they are added to running pods for debugging, never created with one.
        for container in ephemeral:
            _check_container_names(container, where)
        plan.warnings.append(f"{where}: spec.ephemeralContainers not run (podman has no ephemeral containers)")
    limits = policy.limits
    refusal = limits.refusal("containersPerPod", len(inits) + len(containers), f"{where}: containers",
                             policy.path)
    if refusal:
        raise ManifestRejected(refusal)
    seed = {ENV_NODE_NAME: node.node, ENV_NODE_POOL: node.pool}
    probes: list[Probe] = []
    env_bytes = 0
    pod_security = _optional_mapping(spec.get("securityContext"), where, "spec.securityContext")
    for container in [*inits, *containers]:
        _check_container_names(container, where)
        if not container.get("image"):
            raise ManifestRejected(f"{where}: container {container['name']!r} has no image")
        if any(container is c for c in containers):
            probes += probes_of_container(container, f"{podman_name}-{container['name']}", where, plan.warnings)
        for key in ("livenessProbe", "readinessProbe", "startupProbe"):
            container.pop(key, None)  # podman 4.3 mistranslates them: the agent runs them
        _expand_container(container, seed, release)
        _rewrite_env_refs(container, ref, where, release)
        if policy.hardens(ref.namespace):
            _harden(container, pod_security, where)
        _set_env(container, ENV_NODE_NAME, node.node)
        _set_env(container, ENV_NODE_POOL, node.pool)
        env_bytes += _env_bytes(container, release)
        _keep_host_ports(container, where=where, network=network, host_net=host_network, plan=plan)

    refusal = limits.refusal("envBytesPerPod", env_bytes, f"{where}: environment bytes", policy.path)
    if refusal:
        raise ManifestRejected(refusal)
    empty_dirs, mounts = _rewrite_volumes(spec, [*inits, *containers], where=where, ref=ref, pod_name=pod_name,
                                          plan=plan, release=release, paths=paths, claims=claims or {},
                                          policy=policy)

    grace = spec.get("terminationGracePeriodSeconds")
    plan.pods[podman_name] = PlayedPod(
        name=podman_name,
        source=source,
        containers=tuple(f"{podman_name}-{c['name']}" for c in containers),
        init_containers=tuple(f"{podman_name}-{c['name']}" for c in inits),
        grace=grace if isinstance(grace, int) and grace > 0 else 0,
        images=tuple(str(c["image"]) for c in [*inits, *containers]),
        probes=tuple(probes),
        host_network=host_network,
        host_pid=host_pid,
        empty_dirs=tuple(empty_dirs),
        mounts=tuple(mounts),
        annotations=refused,
        job=job,
        restart_policy=restart_policy,
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": podman_name, "labels": labels, "annotations": annotations},
        "spec": spec,
    }


def _env_bytes(container: dict[str, Any], release: _Release) -> int:
    """The bytes of ``container``'s environment: its names and values, and what envFrom brings in."""
    total = sum(len(str(e.get("name", ""))) + len(str(e.get("value") or "")) for e in container.get("env") or ()
                if isinstance(e, dict))
    for source in container.get("envFrom") or ():
        if not isinstance(source, dict):
            continue
        data: Mapping[str, str] = {}
        if isinstance(source.get("configMapRef"), dict):
            data = release.configmaps.get(str(source["configMapRef"].get("name")), {})
        elif isinstance(source.get("secretRef"), dict):
            data = release.secrets.get(str(source["secretRef"].get("name")), {})
        total += sum(len(k) + len(v) for k, v in data.items())
    return total


def _check_container_names(container: Any, where: str) -> None:
    """A container's name and its mounts' names and paths, as the API server would check them."""
    if not isinstance(container, dict) or not isinstance(container.get("name"), str):
        raise ManifestRejected(f"{where}: every container needs a name")
    what = f"{where}: container {container['name']!r}"
    check_dns_label(container["name"], f"{where}: container")
    for mount in _optional_list(container.get("volumeMounts"), where, f"container {container['name']!r}: "
                                "volumeMounts"):
        if not isinstance(mount, dict):
            raise ManifestRejected(f"{what}: volumeMounts must list mappings")
        check_dns_label(mount.get("name"), f"{what}: volumeMounts")
        for key in ("subPath", "subPathExpr"):
            if mount.get(key) not in (None, ""):
                check_relative_path(mount[key], f"{what}: volumeMounts {mount['name']}: {key}")


def _harden(container: dict[str, Any], pod_security: Mapping[str, Any], where: str) -> None:
    """What a container of a namespace not allowed root gets: no way up, and no root group.

    The policy checked it runs as a non-zero user. A setuid binary in the
    image must not undo that (no_new_privs), and without a group of its own
    the container would run with group 0, writing root-group files into its
    volumes: its group becomes its user's number, as the pod's
    ``runAsGroup`` would say, unless the pod or the container set one.
    """
    security = container.setdefault("securityContext", {})
    if not isinstance(security, dict):
        raise ManifestRejected(f"{where}: container {container['name']!r}: securityContext must be a mapping")
    security.setdefault("allowPrivilegeEscalation", False)
    if security.get("runAsGroup") is None and pod_security.get("runAsGroup") is None:
        user = security.get("runAsUser", pod_security.get("runAsUser"))
        if isinstance(user, int) and not isinstance(user, bool) and user > 0:
            security["runAsGroup"] = user


def _warn_dropped_fields(spec: dict[str, Any], where: str, plan: Plan) -> None:
    """Warn about pod fields podman 4.3 drops without a word."""
    account = spec.get("serviceAccountName") or spec.get("serviceAccount")
    if account and account != "default":
        plan.warnings.append(f"{where}: serviceAccountName {account!r} ignored: the node has no Kubernetes API, "
                             "so no account token is mounted")
    security = spec.get("securityContext")
    if isinstance(security, dict) and security.get("fsGroup") is not None:
        plan.warnings.append(f"{where}: securityContext.fsGroup {security['fsGroup']} ignored: podman 4.3 does not "
                             "give volumes to a group; a non-root container may not write to its volumes")


def _rewrite_volumes(
    spec: dict[str, Any],
    containers: list[dict[str, Any]],
    *,
    where: str,
    ref: ReleaseRef,
    pod_name: str,
    plan: Plan,
    release: _Release,
    paths: _Paths,
    claims: Mapping[str, str],
    policy: NodePolicy,
) -> tuple[list[str], list[str]]:
    """Point the pod's volumes at their podman names and make subPath mounts work.

    Returns the pod's emptyDir volumes and the names of its subPath mounts.
    """
    volumes = _optional_list(spec.get("volumes"), where, "spec.volumes")
    for name, claim in claims.items():
        volumes = [v for v in volumes if not (isinstance(v, dict) and v.get("name") == name)]
        volumes.append({"name": name, "persistentVolumeClaim": {"claimName": claim}})
    refusal = policy.limits.refusal("volumesPerPod", len(volumes), f"{where}: volumes", policy.path)
    if refusal:
        raise ManifestRejected(refusal)
    if volumes:
        spec["volumes"] = volumes
    empty_dirs: list[str] = []
    mounts: list[str] = []
    # What each pod volume became, for subPath mounts: ("named", podman volume)
    # or ("host", path) or ("files", podman cm volume name, key -> (bytes, mode)).
    sources: dict[str, tuple[Any, ...]] = {}
    for volume in volumes:
        if not isinstance(volume, dict):
            continue
        vname = str(volume.get("name", ""))
        if not _VOLUME_NAME.match(vname):
            raise ManifestRejected(f"{where}: volume name {vname!r} is not a valid name (a DNS label)")
        if isinstance(volume.get("configMap"), dict) or isinstance(volume.get("secret"), dict):
            secret = isinstance(volume.get("secret"), dict)
            body = volume["secret"] if secret else volume["configMap"]
            original = str(body.get("secretName" if secret else "name", ""))
            known = release.secrets if secret else release.configmaps
            kind = "Secret" if secret else "ConfigMap"
            if original not in known:
                if body.get("optional"):
                    plan.warnings.append(f"{where}: volume {vname!r}: optional {kind} {original!r} is not part of "
                                         "the release; mounted empty")
                    volume.clear()
                    volume.update({"name": vname, "emptyDir": {}})
                else:
                    raise ManifestRejected(
                        f"{where}: volume {vname!r} names {kind} {original!r}, which is not part of the release; "
                        "podman has no cluster to find it in"
                    )
            else:
                name = (_secret_volume if secret else _cm_volume)(ref, original)
                items = _volume_items(body, known[original], release.binary.get(f"{kind.lower()}/{original}", {}),
                                      f"{where}: volume {vname!r}")
                if secret:
                    volume.pop("secret")
                    body.pop("secretName", None)
                    volume["configMap"] = {"name": name, **body}
                else:
                    body["name"] = name
                plan.volumes.add(name)
                sources[vname] = ("files", name, items)
                continue
        if isinstance(volume.get("emptyDir"), dict):
            medium = volume["emptyDir"].get("medium")
            if medium:
                plan.warnings.append(f"{where}: volume {vname!r}: emptyDir medium {medium!r} ignored; "
                                     "it is a podman volume on the node's disk")
            name = _empty_dir_volume(ref, pod_name, vname)
            volume.pop("emptyDir")
            volume["persistentVolumeClaim"] = {"claimName": name}
            empty_dirs.append(name)
            plan.volumes.add(name)
            sources[vname] = ("named", name)
        elif isinstance(volume.get("persistentVolumeClaim"), dict):
            claim = volume["persistentVolumeClaim"]
            original = str(claim.get("claimName", ""))
            if not _OBJECT_NAME.match(original):
                raise ManifestRejected(f"{where}: volume {vname!r}: claimName {original!r} is not a valid object name")
            name = _pvc_volume(ref, original)
            claim["claimName"] = name
            if vname in claims:
                plan.claims.add(name)
                plan.create_volumes.add(name)
            else:
                plan.volumes.add(name)
            sources[vname] = ("named", name)
        elif isinstance(volume.get("hostPath"), dict):
            sources[vname] = ("host", str(volume["hostPath"].get("path", "")))

    extra: list[dict[str, Any]] = []
    for container in containers:
        what = f"{where}: container {container['name']!r}"
        env = {str(e["name"]): str(e["value"]) for e in container.get("env") or ()
               if isinstance(e, dict) and isinstance(e.get("value"), str)}
        for mount in _optional_list(container.get("volumeMounts"), where, f"container {container['name']!r}: "
                                    "volumeMounts"):
            sub = _sub_path(mount, env, what)
            if sub is None:
                continue
            source = sources.get(str(mount.get("name")))
            if source is None:
                raise ManifestRejected(f"{what}: subPath {sub!r} of volume {mount.get('name')!r}: podman 4.3 cannot "
                                       "mount a part of that volume kind")
            if source[0] in ("named", "host"):
                if source[0] == "named":
                    plan.create_volumes.add(source[1])
                part = SubpathMount(kind="volume" if source[0] == "named" else "host", root=source[1], path=sub)
                plan.subpath_mounts[part.name] = part
                mounts.append(part.name)
                host = f"{paths.mounts_dir}/{part.name}"
            else:
                _, cm_name, items = source
                if sub not in items:
                    raise ManifestRejected(f"{where}: container {container['name']!r}: subPath {sub!r}: no such key "
                                           f"in volume {mount.get('name')!r}")
                relative = f"{cm_name}/{sub}"
                plan.files[relative] = items[sub]
                host = f"{paths.files_dir}/{relative}"
            sub_volume = f"{mount['name']}-sub-{hashlib.sha256(host.encode()).hexdigest()[:8]}"
            mount["name"] = sub_volume
            if all(v["name"] != sub_volume for v in extra):
                extra.append({"name": sub_volume, "hostPath": {"path": host}})
    if extra:
        spec["volumes"] = [*volumes, *extra]
    return empty_dirs, list(dict.fromkeys(mounts))


def _sub_path(mount: dict[str, Any], env: Mapping[str, str], what: str) -> str | None:
    """The part of its volume ``mount`` asks for (``subPath``, or ``subPathExpr`` expanded from the container's
    environment as the kubelet does), taken out of the mount: podman is never given either; None: the whole."""
    sub = mount.pop("subPath", None)
    expression = mount.pop("subPathExpr", None)
    if sub and expression:
        raise ManifestRejected(f"{what}: volumeMounts {mount.get('name')}: subPath and subPathExpr are mutually "
                               "exclusive")
    if expression:
        sub = expand_refs(str(expression), env)
        where = f"{what}: volumeMounts {mount.get('name')}: subPathExpr {expression!r} expands to"
    else:
        where = f"{what}: volumeMounts {mount.get('name')}: subPath"
    if not sub:
        return None
    return check_relative_path(sub, where)


def _volume_items(body: Mapping[str, Any], data: Mapping[str, str], binary: Mapping[str, bytes], where: str
                  ) -> dict[str, tuple[bytes, int]]:
    """The files a ConfigMap/Secret volume shows: path -> (content, mode), honouring items and modes."""
    default = body.get("defaultMode")
    default = default if isinstance(default, int) else 0o644
    contents = {k: v.encode() for k, v in data.items()} | dict(binary)
    items = body.get("items")
    if not isinstance(items, list):
        return {key: (value, default) for key, value in contents.items()}
    out: dict[str, tuple[bytes, int]] = {}
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ManifestRejected(f"{where}: items[{index}] must be a mapping")
        key = check_config_key(item.get("key"), f"{where}: items[{index}].key")
        path = check_relative_path(item.get("path"), f"{where}: items[{index}].path")
        if key in contents:
            mode = item.get("mode")
            out[path] = (contents[key], mode if isinstance(mode, int) else default)
    return out


def _keep_host_ports(
    container: dict[str, Any], *, where: str, network: str | None, host_net: bool, plan: Plan
) -> None:
    """Keep only the ports podman should publish: those with a hostPort.

    In Kubernetes a containerPort alone publishes nothing, but podman 4.3's
    kube play publishes it on the host (0.0.0.0:containerPort), which would
    expose the pod and make two releases, or two simulated nodes, clash on the
    port. Inside the pod every port is reachable anyway. Without a pod network
    (``none``, ``host``) podman refuses any port mapping, so hostPorts go too:
    reported for ``none``, where they cannot work, silent for ``host``, where the
    port is the host's already.
    """
    ports = _optional_list(container.get("ports"), where, f"container {container.get('name')!r}: ports")
    kept = [p for p in ports if isinstance(p, dict) and p.get("hostPort")]
    if kept and (host_net or network in ("none", "host")):
        if network == "none" and not host_net:
            numbers = ", ".join(str(p["hostPort"]) for p in kept)
            plan.warnings.append(
                f"{where}: container {container.get('name')!r}: hostPort {numbers} not published "
                "(the node's pods run with network none)"
            )
        kept = []
    if kept:
        container["ports"] = kept
    else:
        container.pop("ports", None)


def _check_pod_count(plan: Plan, count: int, where: str, policy: NodePolicy) -> None:
    """Refuse ``count`` more pods when the release would then be over the policy's podsPerRelease.

    Checked before a single pod is planned: a 223-byte Deployment may ask
    for 20,000 replicas.
    """
    refusal = policy.limits.refusal("podsPerRelease", len(plan.pods) + count, f"{where}: pods of the release",
                                    policy.path)
    if refusal:
        raise ManifestRejected(refusal)


def _replicas(doc: dict[str, Any], where: str) -> int:
    spec = _require_mapping(doc.get("spec"), where, "spec")
    replicas = spec.get("replicas", 1)
    if replicas is None:
        replicas = 1
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        raise ManifestRejected(f"{where}: spec.replicas {replicas!r} is not a whole number >= 0")
    return replicas


def _pod_template(doc: dict[str, Any], where: str) -> dict[str, Any]:
    spec = _require_mapping(doc.get("spec"), where, "spec")
    return _require_mapping(spec.get("template"), where, "spec.template")


def _is_hook(doc: Any) -> bool:
    meta = doc.get("metadata") if isinstance(doc, dict) else None
    annotations = meta.get("annotations") if isinstance(meta, dict) else None
    return isinstance(annotations, dict) and HOOK_ANNOTATION in annotations


def build_plan(
    ref: ReleaseRef,
    manifests: str,
    node: NodeContext,
    *,
    network: str | None = None,
    files_dir: str | None = None,
    mounts_dir: str | None = None,
    policy: NodePolicy | None = None,
) -> Plan:
    """Turn a release's rendered manifests into the file podman plays.

    ``files_dir`` is the directory the runtime writes the release's subPath
    files into (``plan.files``) and ``mounts_dir`` the one it binds subPath
    mounts onto (``plan.subpath_mounts``); both only appear in the played file
    when a mount has a subPath. Pure: reads nothing and runs nothing, but
    takes a while on a large release (call it in a thread from async code).
    Raises ManifestRejected naming the manifest at fault: a name, key or path
    Kubernetes would refuse, anything over the policy's limits, and anything
    ``policy`` (the node's; None: the default, safe one) refuses, hooks
    included. Helm hook documents are not played: they are returned in
    ``plan.hooks`` untouched.
    """
    policy, docs = release_documents(ref, manifests, policy)

    plan = Plan(text="")
    paths = _Paths(files_dir=(files_dir or f"/{ref.namespace}/{ref.release}.d").rstrip("/"),
                   mounts_dir=(mounts_dir or f"/{ref.namespace}/{ref.release}.mounts").rstrip("/"))
    release = _Release()
    for index, doc in enumerate(docs, start=1):
        where = _describe(doc, index)
        if not isinstance(doc, dict) or not isinstance(doc.get("kind"), str):
            raise ManifestRejected(f"{where} of {ref}: not a Kubernetes object (no kind)")
        try:
            refusal = policy.object_refusal(doc, where, ref.namespace)
        except (AttributeError, KeyError, TypeError, ValueError, RecursionError) as exc:
            raise ManifestRejected(f"{where}: malformed object ({type(exc).__name__}: {exc})") from exc
        if refusal:
            raise ManifestRejected(refusal)
        if _is_hook(doc):
            plan.hooks.append(doc)
        else:
            try:
                _collect(doc, where, release)
            except (AttributeError, KeyError, TypeError, ValueError, RecursionError) as exc:
                raise ManifestRejected(f"{where}: malformed object ({type(exc).__name__}: {exc})") from exc

    configmaps: list[dict[str, Any]] = []
    pods: list[dict[str, Any]] = []
    for index, doc in enumerate(docs, start=1):
        if _is_hook(doc):
            continue
        where = _describe(doc, index)
        try:
            _add_object(doc, where, ref=ref, node=node, network=network, plan=plan, configmaps=configmaps,
                        pods=pods, release=release, paths=paths, policy=policy)
        except (AttributeError, KeyError, TypeError, ValueError, RecursionError) as exc:
            # A field of a type the checks did not foresee: still the
            # manifest's fault, and applying it again would fail the same way.
            raise ManifestRejected(f"{where}: malformed object ({type(exc).__name__}: {exc})") from exc
    plan.warnings = list(dict.fromkeys(plan.warnings))  # one per template, not one per replica
    # The runtime creates every volume of the release itself, labelled with the
    # release, before podman plays: what is not labelled as the release's is
    # never mounted, replaced or removed for it.
    plan.create_volumes |= plan.volumes | plan.claims

    try:
        body = dump_yaml_all([_record(ref, plan), *configmaps, *pods]) if pods else ""
        groups: dict[tuple[bool, bool], list[dict[str, Any]]] = {}
        for pod in pods:
            played = plan.pods[pod["metadata"]["name"]]
            groups.setdefault((played.host_network, played.host_pid), []).append(pod)
        for (host_network, host_pid), members in sorted(groups.items()):
            plan.plays.append(Play(text=dump_yaml_all([*configmaps, *members]), host_network=host_network,
                                   host_pid=host_pid, pods=tuple(p["metadata"]["name"] for p in members)))
    except (yaml.YAMLError, RecursionError) as exc:
        raise ManifestRejected(f"manifests of {ref}: cannot be written back as YAML: {exc}") from exc
    plan.text = _HEADER.format(ref=ref) + body
    plan.digest = played_digest(plan.text)
    return plan


def _record(ref: ReleaseRef, plan: Plan) -> dict[str, Any]:
    """The played file's first document: what podman is not given but the runtime needs back."""
    pods: dict[str, Any] = {}
    for name, pod in plan.pods.items():
        entry: dict[str, Any] = {"source": pod.source}
        if pod.annotations:
            entry["annotations"] = dict(pod.annotations)
        if pod.probes:
            entry["probes"] = [p.to_record() for p in pod.probes]
        if pod.host_network:
            entry["hostNetwork"] = True
        if pod.host_pid:
            entry["hostPID"] = True
        if pod.empty_dirs:
            entry["emptyDirs"] = list(pod.empty_dirs)
        if pod.mounts:
            entry["mounts"] = list(pod.mounts)
        if pod.job:
            entry["job"] = True
        if pod.restart_policy != "Always":
            entry["restartPolicy"] = pod.restart_policy
        pods[name] = entry
    return {
        "apiVersion": "edgecollab.io/v1",
        "kind": RECORD_KIND,
        "metadata": {"name": f"{ref.namespace}.{ref.release}"},
        "pods": pods,
        "claims": sorted(plan.claims),
    }


def _collect(doc: dict[str, Any], where: str, release: _Release) -> None:
    """Note the release's ConfigMaps and Secrets (first pass): pods may refer to them from anywhere."""
    kind = doc["kind"]
    if kind not in ("ConfigMap", "Secret"):
        return
    name = _object_name(doc, where)
    for field_name in ("data", "binaryData", "stringData"):
        for key in _optional_mapping(doc.get(field_name), where, field_name):
            check_config_key(key, f"{where}: {field_name}")
    if kind == "ConfigMap":
        data = _optional_mapping(doc.get("data"), where, "data")
        release.configmaps[name] = {str(k): str(v) for k, v in data.items()}
        binary = _optional_mapping(doc.get("binaryData"), where, "binaryData")
        release.binary[f"configmap/{name}"] = {str(k): _b64(v, where, k) for k, v in binary.items()}
        return
    cm = _secret_to_configmap(doc, ReleaseRef("x", "x"), where)
    release.secrets[name] = dict(cm["data"])
    release.binary[f"secret/{name}"] = {k: _b64(v, where, k) for k, v in (cm.get("binaryData") or {}).items()}


def _b64(value: Any, where: str, key: Any) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ManifestRejected(f"{where}: binary key {key!r} is not valid base64") from exc


def _add_object(
    doc: dict[str, Any],
    where: str,
    *,
    ref: ReleaseRef,
    node: NodeContext,
    network: str | None,
    plan: Plan,
    configmaps: list[dict[str, Any]],
    pods: list[dict[str, Any]],
    release: _Release,
    paths: _Paths,
    policy: NodePolicy,
) -> None:
    """Add what one manifest object becomes to ``configmaps``, ``pods`` and ``plan``."""
    kind = doc["kind"]
    if kind == "List":
        plan.warnings.append(f"{where}: not run on podman (kind List is not supported; render its items)")
        return
    name = _object_name(doc, where)
    own_ns = doc["metadata"].get("namespace")
    if own_ns not in (None, "", ref.namespace):
        plan.warnings.append(
            f"{where}: namespace {own_ns!r} ignored, applied in the release's namespace {ref.namespace!r}"
        )
    prepare_pod = functools.partial(_prepare_pod, source=where, ref=ref, node=node, network=network, plan=plan,
                                    release=release, paths=paths, policy=policy)
    if kind in ("Pod", "Deployment", "DaemonSet"):
        if kind == "Pod":
            _check_pod_count(plan, 1, where, policy)
            template, restart_always, instances = doc, False, [name]
        else:
            template, restart_always = _pod_template(doc, where), True
            count = _replicas(doc, where) if kind == "Deployment" else 1
            _check_pod_count(plan, count, where, policy)
            instances = [f"{name}-pod-{i}" for i in range(count)]
        for pod_name in instances:
            pods.append(prepare_pod(pod_name, template, restart_always=restart_always))
    elif kind == "StatefulSet":
        template = _pod_template(doc, where)
        templates = _optional_list(doc["spec"].get("volumeClaimTemplates"), where, "spec.volumeClaimTemplates")
        claim_names = [_object_name(t, f"{where}: volumeClaimTemplates") for t in templates]
        count = _replicas(doc, where)
        _check_pod_count(plan, count, where, policy)
        for ordinal in range(count):
            pod_name = f"{name}-{ordinal}"
            claims = {claim: f"{claim}-{name}-{ordinal}" for claim in claim_names}
            pods.append(prepare_pod(pod_name, template, restart_always=True, claims=claims))
    elif kind == "Job":
        template = _pod_template(doc, where)
        restart = _require_mapping(template.get("spec"), where, "spec.template.spec").get("restartPolicy") or "Never"
        if restart not in ("Never", "OnFailure"):
            raise ManifestRejected(f"{where}: spec.template.spec.restartPolicy {restart!r} must be Never or OnFailure "
                                   "(as Kubernetes requires of a Job)")
        template = {**template, "spec": {**template["spec"], "restartPolicy": restart}}
        for field_name in ("completions", "parallelism"):
            count = doc["spec"].get(field_name)
            if isinstance(count, int) and count > 1:
                plan.warnings.append(f"{where}: spec.{field_name} {count}: podman runs the Job's pod once")
        _check_pod_count(plan, 1, where, policy)
        pods.append(prepare_pod(f"{name}-pod-0", template, restart_always=False, job=True))
    elif kind == "ConfigMap":
        cm = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": _cm_volume(ref, name)},
        }
        for key in ("data", "binaryData"):
            if doc.get(key) is not None:
                cm[key] = {str(k): str(v) for k, v in _require_mapping(doc[key], where, key).items()}
        configmaps.append(cm)
    elif kind == "Secret":
        configmaps.append(_secret_to_configmap(doc, ref, where))
    elif kind == "PersistentVolumeClaim":
        pass  # becomes a named volume when a pod mounts it (see edgeagent.runtime.podman)
    else:
        why = _NOT_RUN.get(kind)
        if why is None:
            why = ("a custom resource: the node has no Kubernetes API, so no operator acts on it"
                   if "." in str(doc.get("apiVersion", "")).split("/")[0] else "podman cannot run this kind")
        plan.warnings.append(f"{where}: not run on podman ({why})")


def parse_played(text: str, where: str) -> PlayedFile:
    """Read back a file this runtime played: its pods (keyed by podman pod name) and volumes.

    One YAML parse; call it in a thread from async code. Raises EdgeRuntimeError
    when the stored file is not YAML or not a file this runtime wrote.
    """
    try:
        docs = load_yaml_all(text)
    except (yaml.YAMLError, ManifestRejected) as exc:
        raise EdgeRuntimeError(f"{where}: the stored played file is not YAML this runtime wrote: {exc}") from exc
    pods: dict[str, PlayedPod] = {}
    volumes: set[str] = set()
    claims: set[str] = set()
    try:
        record = next((d for d in docs if isinstance(d, dict) and d.get("kind") == RECORD_KIND), {}) or {}
        extras = record.get("pods") or {}
        claims = {str(c) for c in record.get("claims") or ()}
        for doc in docs:
            if not isinstance(doc, dict) or doc.get("kind") != "Pod":
                continue
            meta = doc.get("metadata") or {}
            spec = doc.get("spec") or {}
            name = str(meta.get("name"))
            extra = extras.get(name) or {}
            grace = spec.get("terminationGracePeriodSeconds")
            containers = list(spec.get("containers") or ())
            inits = list(spec.get("initContainers") or ())
            source = extra.get("source") or (meta.get("annotations") or {}).get(_SOURCE_ANNOTATION, f"Pod/{name}")
            pods[name] = PlayedPod(
                name=name,
                source=str(source),
                containers=tuple(f"{name}-{c.get('name')}" for c in containers),
                init_containers=tuple(f"{name}-{c.get('name')}" for c in inits),
                grace=grace if isinstance(grace, int) and grace > 0 else 0,
                images=tuple(str(c.get("image")) for c in [*inits, *containers]),
                probes=tuple(Probe.from_record(p) for p in extra.get("probes") or ()),
                host_network=bool(extra.get("hostNetwork")),
                host_pid=bool(extra.get("hostPID")),
                empty_dirs=tuple(str(v) for v in extra.get("emptyDirs") or ()),
                mounts=tuple(str(v) for v in extra.get("mounts") or ()),
                annotations={str(k): str(v) for k, v in (extra.get("annotations") or {}).items()},
                job=bool(extra.get("job")),
                restart_policy=str(extra.get("restartPolicy") or "Always"),
            )
            for volume in spec.get("volumes") or ():
                if not isinstance(volume, dict):
                    continue
                if isinstance(volume.get("configMap"), dict):
                    volumes.add(str(volume["configMap"].get("name")))
                elif isinstance(volume.get("persistentVolumeClaim"), dict):
                    volumes.add(str(volume["persistentVolumeClaim"].get("claimName")))
    except (AttributeError, TypeError, KeyError, ValueError) as exc:
        raise EdgeRuntimeError(f"{where}: the stored played file was not written by this runtime: {exc}") from exc
    return PlayedFile(digest=played_digest(text), pods=pods, volumes=frozenset(volumes - claims),
                      claims=frozenset(claims))
