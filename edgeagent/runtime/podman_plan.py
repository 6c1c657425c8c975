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
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..policy import NodePolicy
from .base import EdgeRuntimeError, ManifestRejected, NodeContext, ReleaseRef
from .manifests import ALIAS_EXPANSION_LIMIT, dump_yaml_all, load_yaml_all, release_documents  # shared
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
    annotations: dict[str, str] = field(default_factory=dict)  # those podman refuses, kept here only
    # A Job's pod: runs to completion. Exited with code 0 it is done (ready),
    # not dead, so it is never "healed" by playing it again.
    job: bool = False


@dataclass(frozen=True, slots=True)
class Play:
    """One ``kube play`` of an apply: pods sharing one host-access mode, with every ConfigMap."""

    text: str
    host_network: bool = False  # played without --network (the pods use the host's)
    host_pid: bool = False  # played with containers.conf pidns = "host"
    pods: tuple[str, ...] = ()


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
    # Directories the runtime creates before playing (subPaths), mode 0777.
    make_dirs: set[str] = field(default_factory=set)
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
                out.append(env[name] if name in env else f"$({name})")
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
        value_from = item.get("valueFrom") if isinstance(item.get("valueFrom"), dict) else {}
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
    """Host paths a plan may bind: podman's volume directory and the release's files dir."""

    volume_path: str
    files_dir: str


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
    claims: Mapping[str, str] | None = None,
    job: bool = False,
    harden: bool = False,
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
    seed = {ENV_NODE_NAME: node.node, ENV_NODE_POOL: node.pool}
    probes: list[Probe] = []
    for container in [*inits, *containers]:
        if not isinstance(container, dict) or not isinstance(container.get("name"), str):
            raise ManifestRejected(f"{where}: every container needs a name")
        if not container.get("image"):
            raise ManifestRejected(f"{where}: container {container['name']!r} has no image")
        if any(container is c for c in containers):
            probes += probes_of_container(container, f"{podman_name}-{container['name']}", where, plan.warnings)
        for key in ("livenessProbe", "readinessProbe", "startupProbe"):
            container.pop(key, None)  # podman 4.3 mistranslates them: the agent runs them
        _expand_container(container, seed, release)
        _rewrite_env_refs(container, ref, where, release)
        if harden:
            # Root is not allowed here (the policy checked every container runs
            # as a non-zero user): a setuid binary in the image must not undo that.
            security = container.setdefault("securityContext", {})
            if isinstance(security, dict):
                security.setdefault("allowPrivilegeEscalation", False)
        _set_env(container, ENV_NODE_NAME, node.node)
        _set_env(container, ENV_NODE_POOL, node.pool)
        _keep_host_ports(container, where=where, network=network, host_net=host_network, plan=plan)

    empty_dirs = _rewrite_volumes(spec, [*inits, *containers], where=where, ref=ref, pod_name=pod_name,
                                  plan=plan, release=release, paths=paths, claims=claims or {})

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
        annotations=refused,
        job=job,
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": podman_name, "labels": labels, "annotations": annotations},
        "spec": spec,
    }


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
) -> list[str]:
    """Point the pod's volumes at their podman names and make subPath mounts work; its emptyDir volumes."""
    volumes = _optional_list(spec.get("volumes"), where, "spec.volumes")
    for name, claim in claims.items():
        volumes = [v for v in volumes if not (isinstance(v, dict) and v.get("name") == name)]
        volumes.append({"name": name, "persistentVolumeClaim": {"claimName": claim}})
    if volumes:
        spec["volumes"] = volumes
    empty_dirs: list[str] = []
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
                items = _volume_items(body, known[original], release.binary.get(f"{kind.lower()}/{original}", {}))
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
        for mount in _optional_list(container.get("volumeMounts"), where, f"container {container['name']!r}: "
                                    "volumeMounts"):
            if not isinstance(mount, dict) or not mount.get("subPath"):
                continue
            sub = str(mount.pop("subPath"))
            if sub.startswith("/") or ".." in sub.split("/"):
                raise ManifestRejected(f"{where}: container {container['name']!r}: subPath {sub!r} must be a "
                                       "relative path without '..'")
            source = sources.get(str(mount.get("name")))
            if source is None:
                raise ManifestRejected(f"{where}: container {container['name']!r}: subPath {sub!r} of volume "
                                       f"{mount.get('name')!r}: podman 4.3 cannot mount a part of that volume kind")
            if source[0] == "named":
                plan.create_volumes.add(source[1])
                host = f"{paths.volume_path}/{source[1]}/_data/{sub}"
                plan.make_dirs.add(host)
            elif source[0] == "host":
                host = f"{source[1].rstrip('/')}/{sub}"
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
    return empty_dirs


def _volume_items(body: Mapping[str, Any], data: Mapping[str, str], binary: Mapping[str, bytes]
                  ) -> dict[str, tuple[bytes, int]]:
    """The files a ConfigMap/Secret volume shows: path -> (content, mode), honouring items and modes."""
    default = body.get("defaultMode")
    default = default if isinstance(default, int) else 0o644
    contents = {k: v.encode() for k, v in data.items()} | dict(binary)
    items = body.get("items")
    if not isinstance(items, list):
        return {key: (value, default) for key, value in contents.items()}
    out: dict[str, tuple[bytes, int]] = {}
    for item in items:
        if isinstance(item, dict) and str(item.get("key")) in contents:
            mode = item.get("mode")
            out[str(item.get("path") or item["key"])] = (contents[str(item["key"])],
                                                         mode if isinstance(mode, int) else default)
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
    volume_path: str = "/var/lib/containers/storage/volumes",
    files_dir: str | None = None,
    policy: NodePolicy | None = None,
) -> Plan:
    """Turn a release's rendered manifests into the file podman plays.

    ``volume_path`` is podman's directory of named volumes (``podman info``'s
    Store.VolumePath) and ``files_dir`` the directory the runtime writes the
    release's subPath files into (``plan.files``); both only appear in the
    played file when a mount has a subPath. Pure: reads nothing and runs
    nothing, but takes a while on a large release (call it in a thread from
    async code). Raises ManifestRejected naming the manifest at fault, and
    for anything ``policy`` (the node's; None: the default, safe one) refuses,
    hooks included. Helm hook documents are not played: they are returned in
    ``plan.hooks`` untouched.
    """
    policy, docs = release_documents(ref, manifests, policy)

    plan = Plan(text="")
    paths = _Paths(volume_path=volume_path.rstrip("/"), files_dir=files_dir or f"/{ref.namespace}/{ref.release}.d")
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
                        pods=pods, release=release, paths=paths, harden=policy.hardens(ref.namespace))
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
        if pod.job:
            entry["job"] = True
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
    harden: bool,
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
    common = {"source": where, "ref": ref, "node": node, "network": network, "plan": plan, "release": release,
              "paths": paths, "harden": harden}
    if kind in ("Pod", "Deployment", "DaemonSet"):
        if kind == "Pod":
            template, restart_always, instances = doc, False, [name]
        else:
            template, restart_always = _pod_template(doc, where), True
            count = _replicas(doc, where) if kind == "Deployment" else 1
            instances = [f"{name}-pod-{i}" for i in range(count)]
        for pod_name in instances:
            pods.append(_prepare_pod(pod_name, template, restart_always=restart_always, **common))
    elif kind == "StatefulSet":
        template = _pod_template(doc, where)
        templates = _optional_list(doc["spec"].get("volumeClaimTemplates"), where, "spec.volumeClaimTemplates")
        claim_names = [_object_name(t, f"{where}: volumeClaimTemplates") for t in templates]
        for ordinal in range(_replicas(doc, where)):
            pod_name = f"{name}-{ordinal}"
            claims = {claim: f"{claim}-{name}-{ordinal}" for claim in claim_names}
            pods.append(_prepare_pod(pod_name, template, restart_always=True, claims=claims, **common))
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
        pods.append(_prepare_pod(f"{name}-pod-0", template, restart_always=False, job=True, **common))
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
                annotations={str(k): str(v) for k, v in (extra.get("annotations") or {}).items()},
                job=bool(extra.get("job")),
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
