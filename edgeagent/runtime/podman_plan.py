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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from .base import EdgeRuntimeError, ManifestRejected, NodeContext, ReleaseRef

__all__ = [
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
    "build_plan",
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

# libyaml's parser and emitter where PyYAML was built with them (ten times
# faster on a large release), the pure-Python ones otherwise. Same safe subset
# of YAML either way.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SafeDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def load_yaml_all(text: str) -> list[Any]:
    """Every document of ``text`` (None for an empty one); raises yaml.YAMLError."""
    return list(yaml.load_all(text, Loader=_SafeLoader))  # noqa: S506 - a safe loader


def dump_yaml_all(docs: Iterable[Any]) -> str:
    """``docs`` as multi-document YAML, keys in their given order."""
    return yaml.dump_all(docs, Dumper=_SafeDumper, sort_keys=False)


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


@dataclass(slots=True)
class Plan:
    """What one apply will play."""

    text: str  # the YAML written to the work dir and played
    pods: dict[str, PlayedPod] = field(default_factory=dict)
    volumes: set[str] = field(default_factory=set)  # podman volume names the pods use
    warnings: list[str] = field(default_factory=list)
    digest: str = ""  # played_digest(text)

    def played(self) -> PlayedFile:
        """What ``parse_played`` will read back from ``text``, without parsing it."""
        return PlayedFile(digest=self.digest, pods=dict(self.pods), volumes=frozenset(self.volumes))


@dataclass(frozen=True, slots=True)
class PlayedFile:
    """A stored played file as observe, re-apply and remove need it."""

    digest: str  # played_digest of the file's text
    pods: dict[str, PlayedPod]  # keyed by podman pod name
    volumes: frozenset[str]  # podman volumes its pods use


_HEADER = (
    "# Played by edgecollab's podman runtime for release {ref}; do not edit.\n"
    "# The agent re-plays and removes the release from this file.\n"
)
# Written into every pod of a played file so the file alone tells observe and
# remove which manifest object a pod came from.
_SOURCE_ANNOTATION = "edgecollab.io/source"


def _cm_volume(namespace: str, name: str) -> str:
    return f"{namespace}.cm.{name}"


def _secret_volume(namespace: str, name: str) -> str:
    return f"{namespace}.secret.{name}"


def _pvc_volume(namespace: str, name: str) -> str:
    return f"{namespace}.pvc.{name}"


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


def _secret_to_configmap(doc: dict[str, Any], namespace: str, where: str) -> dict[str, Any]:
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
        "metadata": {"name": _secret_volume(namespace, name)},
        "data": data,
    }
    if binary:
        out["binaryData"] = binary
    return out


def _rewrite_env_refs(container: dict[str, Any], namespace: str, where: str) -> None:
    what = f"container {container['name']!r}"
    env = _optional_list(container.get("env"), where, f"{what}: env")
    values_from = [item.get("valueFrom") for item in env if isinstance(item, dict)]
    _rewrite_refs(values_from, "configMapKeyRef", "secretKeyRef", namespace)
    env_from = _optional_list(container.get("envFrom"), where, f"{what}: envFrom")
    _rewrite_refs(env_from, "configMapRef", "secretRef", namespace)


def _rewrite_refs(holders: list[Any], cm_key: str, secret_key: str, namespace: str) -> None:
    """Point ConfigMap references at their podman names; turn Secret references into ConfigMap ones."""
    for holder in holders:
        if not isinstance(holder, dict):
            continue
        if isinstance(holder.get(cm_key), dict):
            ref = holder[cm_key]
            ref["name"] = _cm_volume(namespace, str(ref.get("name", "")))
        if isinstance(holder.get(secret_key), dict):
            ref = holder.pop(secret_key)
            ref["name"] = _secret_volume(namespace, str(ref.get("name", "")))
            holder[cm_key] = ref


def _set_env(container: dict[str, Any], name: str, value: str) -> None:
    env = container.get("env")
    if not isinstance(env, list):
        env = []
    env = [e for e in env if not (isinstance(e, dict) and e.get("name") == name)]
    env.append({"name": name, "value": value})
    container["env"] = env


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
) -> dict[str, Any]:
    """One Pod document for podman from a pod template (or a Pod), injections done."""
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

    if restart_always and not spec.get("restartPolicy"):
        spec["restartPolicy"] = "Always"
    if not spec.get("hostname") and not spec.get("hostNetwork"):
        # As in Kubernetes, the pod's hostname is its own name; podman would use
        # the namespace-prefixed one, which can exceed a hostname's 63 characters.
        spec["hostname"] = pod_name[:63].rstrip("-.")

    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        raise ManifestRejected(f"{where}: spec.containers must list at least one container")
    inits = spec.get("initContainers") or []
    if not isinstance(inits, list):
        raise ManifestRejected(f"{where}: spec.initContainers must be a list")
    for container in [*inits, *containers]:
        if not isinstance(container, dict) or not isinstance(container.get("name"), str):
            raise ManifestRejected(f"{where}: every container needs a name")
        if not container.get("image"):
            raise ManifestRejected(f"{where}: container {container['name']!r} has no image")
        _rewrite_env_refs(container, ref.namespace, where)
        _set_env(container, ENV_NODE_NAME, node.node)
        _set_env(container, ENV_NODE_POOL, node.pool)
        _keep_host_ports(container, where=where, network=network, host_net=bool(spec.get("hostNetwork")), plan=plan)

    for volume in _optional_list(spec.get("volumes"), where, "spec.volumes"):
        if not isinstance(volume, dict):
            continue
        if isinstance(volume.get("configMap"), dict):
            name = _cm_volume(ref.namespace, str(volume["configMap"].get("name", "")))
            volume["configMap"]["name"] = name
            plan.volumes.add(name)
        elif isinstance(volume.get("secret"), dict):
            secret = volume.pop("secret")
            name = _secret_volume(ref.namespace, str(secret.pop("secretName", "")))
            volume["configMap"] = {"name": name, **secret}
            plan.volumes.add(name)
        elif isinstance(volume.get("persistentVolumeClaim"), dict):
            claim = volume["persistentVolumeClaim"]
            name = _pvc_volume(ref.namespace, str(claim.get("claimName", "")))
            claim["claimName"] = name
            plan.volumes.add(name)

    grace = spec.get("terminationGracePeriodSeconds")
    plan.pods[podman_name] = PlayedPod(
        name=podman_name,
        source=source,
        containers=tuple(f"{podman_name}-{c['name']}" for c in containers),
        init_containers=tuple(f"{podman_name}-{c['name']}" for c in inits),
        grace=grace if isinstance(grace, int) and grace > 0 else 0,
        images=tuple(str(c["image"]) for c in [*inits, *containers]),
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": podman_name, "labels": labels, "annotations": annotations},
        "spec": spec,
    }


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


def build_plan(ref: ReleaseRef, manifests: str, node: NodeContext, *, network: str | None = None) -> Plan:
    """Turn a release's rendered manifests into the file podman plays.

    Pure: reads nothing and runs nothing, but takes a while on a large release
    (call it in a thread from async code). Raises ManifestRejected naming the
    manifest at fault.
    """
    try:
        docs = [d for d in load_yaml_all(manifests) if d is not None]
    except yaml.YAMLError as exc:
        raise ManifestRejected(f"manifests of {ref}: invalid YAML: {exc}") from exc

    plan = Plan(text="")
    configmaps: list[dict[str, Any]] = []
    pods: list[dict[str, Any]] = []
    for index, doc in enumerate(docs, start=1):
        where = _describe(doc, index)
        if not isinstance(doc, dict) or not isinstance(doc.get("kind"), str):
            raise ManifestRejected(f"{where} of {ref}: not a Kubernetes object (no kind)")
        try:
            _add_object(doc, where, ref=ref, node=node, network=network, plan=plan, configmaps=configmaps, pods=pods)
        except (AttributeError, KeyError, TypeError, ValueError, RecursionError) as exc:
            # A field of a type the checks did not foresee: still the
            # manifest's fault, and applying it again would fail the same way.
            raise ManifestRejected(f"{where}: malformed object ({type(exc).__name__}: {exc})") from exc

    try:
        body = dump_yaml_all([*configmaps, *pods]) if pods else ""
    except (yaml.YAMLError, RecursionError) as exc:
        raise ManifestRejected(f"manifests of {ref}: cannot be written back as YAML: {exc}") from exc
    plan.text = _HEADER.format(ref=ref) + body
    plan.digest = played_digest(plan.text)
    return plan


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
) -> None:
    """Add what one manifest object becomes to ``configmaps``, ``pods`` and ``plan``."""
    kind = doc["kind"]
    if kind == "List":
        plan.warnings.append(f"{where}: kind List is not supported, not applied; render its items")
        return
    name = _object_name(doc, where)
    own_ns = doc["metadata"].get("namespace")
    if own_ns not in (None, "", ref.namespace):
        plan.warnings.append(
            f"{where}: namespace {own_ns!r} ignored, applied in the release's namespace {ref.namespace!r}"
        )
    if kind in ("Pod", "Deployment", "DaemonSet"):
        if kind == "Pod":
            template, restart_always, instances = doc, False, [name]
        else:
            template, restart_always = _pod_template(doc, where), True
            count = _replicas(doc, where) if kind == "Deployment" else 1
            instances = [f"{name}-pod-{i}" for i in range(count)]
        for pod_name in instances:
            pods.append(_prepare_pod(pod_name, template, source=where, ref=ref, node=node,
                                     restart_always=restart_always, network=network, plan=plan))
    elif kind == "ConfigMap":
        cm = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": _cm_volume(ref.namespace, name)},
        }
        for key in ("data", "binaryData"):
            if doc.get(key) is not None:
                cm[key] = {str(k): str(v) for k, v in _require_mapping(doc[key], where, key).items()}
        configmaps.append(cm)
    elif kind == "Secret":
        configmaps.append(_secret_to_configmap(doc, ref.namespace, where))
    elif kind == "PersistentVolumeClaim":
        pass  # becomes a named volume when a pod mounts it (see edgeagent.runtime.podman)
    else:
        plan.warnings.append(f"{where}: kind not supported by podman, not applied")


def parse_played(text: str, where: str) -> PlayedFile:
    """Read back a file this runtime played: its pods (keyed by podman pod name) and volumes.

    One YAML parse; call it in a thread from async code. Raises EdgeRuntimeError
    when the stored file is not YAML or not a file this runtime wrote.
    """
    try:
        docs = load_yaml_all(text)
    except yaml.YAMLError as exc:
        raise EdgeRuntimeError(f"{where}: the stored played file is not YAML: {exc}") from exc
    pods: dict[str, PlayedPod] = {}
    volumes: set[str] = set()
    try:
        for doc in docs:
            if not isinstance(doc, dict) or doc.get("kind") != "Pod":
                continue
            meta = doc.get("metadata") or {}
            spec = doc.get("spec") or {}
            name = str(meta.get("name"))
            grace = spec.get("terminationGracePeriodSeconds")
            containers = list(spec.get("containers") or ())
            inits = list(spec.get("initContainers") or ())
            pods[name] = PlayedPod(
                name=name,
                source=str((meta.get("annotations") or {}).get(_SOURCE_ANNOTATION, f"Pod/{name}")),
                containers=tuple(f"{name}-{c.get('name')}" for c in containers),
                init_containers=tuple(f"{name}-{c.get('name')}" for c in inits),
                grace=grace if isinstance(grace, int) and grace > 0 else 0,
                images=tuple(str(c.get("image")) for c in [*inits, *containers]),
            )
            for volume in spec.get("volumes") or ():
                if not isinstance(volume, dict):
                    continue
                if isinstance(volume.get("configMap"), dict):
                    volumes.add(str(volume["configMap"].get("name")))
                elif isinstance(volume.get("persistentVolumeClaim"), dict):
                    volumes.add(str(volume["persistentVolumeClaim"].get("claimName")))
    except (AttributeError, TypeError) as exc:
        raise EdgeRuntimeError(f"{where}: the stored played file was not written by this runtime: {exc}") from exc
    return PlayedFile(digest=played_digest(text), pods=pods, volumes=frozenset(volumes))
