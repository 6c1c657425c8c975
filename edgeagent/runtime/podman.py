"""The podman runtime: a release's manifests run as pods through ``podman kube play``.

How a release becomes pods
--------------------------
``apply`` parses the rendered manifests, rewrites them into a file podman 4.3
plays reliably, stores that exact file as ``WORK_DIR/NAMESPACE/RELEASE.yaml``
(mode 0600: it may hold Secret data) and runs ``podman kube play --replace
[--network N] FILE``. What the rewrite does, kind by kind:

=====================  ====================================================
Pod                    played as is (plus the injections below)
Deployment             expanded into ``spec.replicas`` Pods (default 1) named
                       ``NAME-pod-0`` .. ``NAME-pod-{n-1}``, restartPolicy
                       Always. podman 4.3 would do the same expansion
                       itself; podman 5 runs one pod ``NAME-pod`` whatever the
                       count ("Limiting replica count to 1"). Expanding here
                       keeps names and counts the same on every podman, and
                       ``total`` honest.
DaemonSet              one Pod ``NAME-pod-0`` (one node, one pod). podman 4.3
                       ignores DaemonSets silently (support came later).
ConfigMap              kept; podman uses it for ``env``/``envFrom`` and mounts
                       it through a podman volume named after it.
Secret                 turned into a ConfigMap (and secretKeyRef / secretRef /
                       secret volumes into their ConfigMap forms). podman
                       4.3's own Secret support is broken: it stores the
                       Secret as YAML and reads it back as JSON, and secret
                       volumes crash ``kube play``.
PersistentVolumeClaim  dropped from the file; the claim's name becomes a
                       podman named volume, created on first use and kept
                       across re-applies (podman 4.3 refuses to re-play a PVC
                       whose volume exists, even with ``--replace``).
anything else          not applied, and reported in ``ApplyResult.warnings``
                       (``"Service/web: kind not supported by podman, not
                       applied"``); never silently dropped.
=====================  ====================================================

Into every pod the runtime injects the labels ``edgecollab.io/node``,
``edgecollab.io/pool``, ``edgecollab.io/release`` (``NAMESPACE.RELEASE``, cut to
63 characters with a hash suffix when longer), ``edgecollab.io/namespace`` and
``edgecollab.io/release-name`` (the last two let ``releases()`` name a release
from its pods alone), and into every container (init containers included) the
environment variables ``EDGE_NODE_NAME`` and ``EDGE_NODE_POOL``.

Names: podman has no namespaces
-------------------------------
Every name podman stores is prefixed with the release's namespace and a dot:
pod ``web-pod-0`` of namespace ``demo`` is the podman pod ``demo.web-pod-0``
(its containers ``demo.web-pod-0-CONTAINER``). Volumes carry the kind as well,
since ConfigMaps, Secrets and claims share podman's one volume namespace:
``demo.cm.NAME``, ``demo.secret.NAME``, ``demo.pvc.NAME``. A namespace is a DNS
label and holds no dot, so the text before the first dot always is the
namespace and two namespaces never clash. Two releases of one namespace that
define the same pod clash as they would in Kubernetes: the second apply fails
with RuntimeApplyError instead of replacing the other release's pod.

Re-applying and removing
------------------------
Re-playing recreates every pod of the release, even when nothing changed: the
agent re-applies a release only when its rendered manifests changed (it compares
digests), so a reconnect restarts nothing. Before the new file is played, every
pod the release runs is stopped and removed by the runtime itself, the ones the
new manifests no longer have included; volumes the new file no longer uses are
removed after it. A failed play leaves the new file stored: ``observe`` then
reports what the release asks for against what really runs, and ``remove``
cleans up whatever the failed play left behind.

Pods are stopped with ``podman pod stop -t GRACE`` (GRACE being the pod's
``terminationGracePeriodSeconds``, 0 when unset) and then removed. podman 4.3
itself is harsher: ``kube down`` and ``kube play --replace`` stop with timeout 0
(SIGKILL at once) whatever the manifest says, and kube play does not carry
``terminationGracePeriodSeconds`` into the containers (their stop timeout stays
podman's 10 s), so a PID 1 that ignores SIGTERM, like busybox httpd, makes a
plain ``podman pod stop`` wait 10 s. The example chart runs its server under
``sh -c 'trap "exit 0" TERM; httpd ... & wait'`` for that reason.

Ports: in Kubernetes a ``containerPort`` alone publishes nothing, but podman
4.3 publishes it on the host (0.0.0.0), so only ports with a ``hostPort`` are
kept; with ``network`` ``none`` those cannot work and are reported as warnings.
Init containers are passed through; podman 4.3 sometimes fails removing a
finished init container ("cannot remove container ... as it is running"), which
fails the apply with that message.

An apply costs two podman calls the first time (``pod ps``, ``kube play``) and
four when the release already runs (``pod stop`` and ``pod rm`` in between),
plus a ``volume rm`` when volumes fell out of use.

Observing
---------
``observe`` costs two podman calls: ``pod ps`` filtered by the release label,
then one ``container inspect`` of the pods' containers for their states and
exact start times. ``total`` is the number of pods in the stored file.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .base import (
    ApplyResult,
    EdgeRuntimeError,
    NodeContext,
    Observation,
    PodState,
    PreflightCheck,
    ReleaseRef,
    RuntimeApplyError,
)

__all__ = [
    "DEMO_IMAGE_CHANGES",
    "ENV_NODE_NAME",
    "ENV_NODE_POOL",
    "LABEL_NAMESPACE",
    "LABEL_NODE",
    "LABEL_POOL",
    "LABEL_RELEASE",
    "LABEL_RELEASE_NAME",
    "PodmanRuntime",
    "PodmanSettings",
    "release_label",
]

logger = logging.getLogger(__name__)

LABEL_NODE = "edgecollab.io/node"
LABEL_POOL = "edgecollab.io/pool"
LABEL_RELEASE = "edgecollab.io/release"
LABEL_NAMESPACE = "edgecollab.io/namespace"
LABEL_RELEASE_NAME = "edgecollab.io/release-name"
ENV_NODE_NAME = "EDGE_NODE_NAME"
ENV_NODE_POOL = "EDGE_NODE_POOL"

# What `podman import` needs to make the busybox root filesystem of
# scripts/build-demo-image.sh a usable image: without PATH, `podman exec NAME sh`
# finds no shell.
DEMO_IMAGE_CHANGES: tuple[str, ...] = ("ENV=PATH=/bin", 'CMD ["/bin/sh"]')

# A Kubernetes object name (DNS subdomain); also safe in podman pod, container
# and volume names once prefixed.
_OBJECT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_LABEL_VALUE_MAX = 63
# podman 4.3 reports a failed pod as "encountered while bringing up pod NAME: why".
_BRINGING_UP = re.compile(r"bringing up pod ([^\s:]+)")
_ZERO_TIME = "0001-01-01T00:00:00Z"
# Pause between stopping pods and removing them, in seconds (see _remove_pods):
# conmon's exit cleanup takes well under 0.1 s; 0.2 s leaves a margin.
_SETTLE_SECONDS = 0.2
# Pods the preflight creates carry this label, so a leftover from an agent
# killed mid-check is recognisable (and removed by the next check).
_PREFLIGHT_LABEL = "edgecollab.io/preflight"
# podman errors whose cure is known, and the hint the preflight adds to them.
_PREFLIGHT_HINTS: tuple[tuple[str, str], ...] = (
    ("cannot run '", "install podman (Debian: apt-get install podman catatonit)"),
    ("catatonit", "podman builds its pause image from catatonit: install it (Debian: apt-get install catatonit)"),
    ("error setting rlimit", "this machine refuses podman's default ulimits: give the agent a containers.conf "
                             "with runtime = \"runc\" and default_ulimits at the host's (--containers-conf; "
                             "see the README)"),
    ("cgroups in hybrid mode", "crun cannot run on hybrid cgroups: select runc in a containers.conf "
                               "(--containers-conf; see the README)"),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class PodmanSettings:
    """How the agent reaches podman on this node.

    Defaults are podman's own: on an ordinary machine only ``work_dir`` needs
    setting.
    """

    # Where the runtime keeps the exact YAML it played per release
    # (WORK_DIR/NAMESPACE/RELEASE.yaml); removal and re-apply read it back. It
    # must survive agent restarts, so it belongs in the agent's state directory.
    work_dir: Path
    # The podman executable, looked up on PATH unless a path is given.
    binary: str = "podman"
    # podman's --root (image and container storage); None: podman's default
    # (/var/lib/containers/storage as root). Set to run several simulated nodes
    # on one machine, each with its own storage.
    root: Path | None = None
    # podman's --runroot (runtime state, normally on tmpfs); None: podman's default.
    runroot: Path | None = None
    # podman's --tmpdir (libpod state such as exit files); None: podman's
    # default (/run/libpod). Only simulated nodes sharing a machine need it.
    tmpdir: Path | None = None
    # A containers.conf given to the podman subprocesses (only to them) through
    # CONTAINERS_CONF; None: podman reads its usual files. For machines whose
    # defaults do not work (e.g. crun on hybrid cgroups: runtime = "runc").
    containers_conf: Path | None = None
    # Passed as `kube play --network VALUE` (e.g. "none", "host", a network
    # name); None: podman's default bridge network.
    network: str | None = None
    # Seconds any single podman call may take before it is killed and the
    # operation fails. kube play of a large release with local images takes a
    # few seconds; 120 s leaves room for a slow disk without hanging the agent.
    command_timeout: float = 120.0

    def __post_init__(self) -> None:
        for name in ("work_dir", "root", "runroot", "tmpdir", "containers_conf"):
            value = getattr(self, name)
            if value is not None:
                # Absolute: podman's helpers (conmon) run from other directories.
                object.__setattr__(self, name, Path(value).absolute())
        if not self.binary:
            raise ValueError("PodmanSettings.binary must not be empty")
        if self.network is not None and not self.network:
            raise ValueError("PodmanSettings.network must be None or a non-empty string")
        if not self.command_timeout > 0:
            raise ValueError("PodmanSettings.command_timeout must be a positive number of seconds")

    def global_args(self) -> list[str]:
        """podman's global flags for these settings (storage locations)."""
        args: list[str] = []
        if self.root is not None:
            args += ["--root", str(self.root)]
        if self.runroot is not None:
            args += ["--runroot", str(self.runroot)]
        if self.tmpdir is not None:
            args += ["--tmpdir", str(self.tmpdir)]
        return args


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
class _PlayedPod:
    """One pod of a played file, as observe and remove need it."""

    name: str  # podman pod name, namespace-prefixed
    source: str  # the manifest object it comes from, e.g. "Deployment/web"
    containers: tuple[str, ...]  # podman container names of the app containers
    init_containers: tuple[str, ...]  # podman container names of init containers
    grace: int  # terminationGracePeriodSeconds, 0 when unset
    images: tuple[str, ...] = ()  # images of all its containers


@dataclass(slots=True)
class _Plan:
    """What one apply will play."""

    text: str  # the YAML written to the work dir and played
    pods: dict[str, _PlayedPod] = field(default_factory=dict)
    volumes: set[str] = field(default_factory=set)  # podman volume names the pods use
    warnings: list[str] = field(default_factory=list)


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
        raise RuntimeApplyError(f"{where}: {what} must be a mapping")
    return value


def _object_name(doc: dict[str, Any], where: str) -> str:
    meta = _require_mapping(doc.get("metadata"), where, "metadata")
    name = meta.get("name")
    if not isinstance(name, str) or not _OBJECT_NAME.match(name):
        raise RuntimeApplyError(f"{where}: metadata.name {name!r} is not a valid object name")
    return name


def _secret_to_configmap(doc: dict[str, Any], namespace: str, where: str) -> dict[str, Any]:
    """A Secret as the ConfigMap podman 4.3 can use: same keys, decoded values."""
    name = _object_name(doc, where)
    data: dict[str, str] = {}
    binary: dict[str, str] = {}
    raw = doc.get("data") or {}
    if not isinstance(raw, dict):
        raise RuntimeApplyError(f"{where}: data must be a mapping")
    for key, value in raw.items():
        try:
            decoded = base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RuntimeApplyError(f"{where}: data key {key!r} is not valid base64") from exc
        try:
            data[str(key)] = decoded.decode("utf-8")
        except UnicodeDecodeError:
            binary[str(key)] = str(value)
    string_data = doc.get("stringData") or {}
    if not isinstance(string_data, dict):
        raise RuntimeApplyError(f"{where}: stringData must be a mapping")
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


def _rewrite_env_refs(container: dict[str, Any], namespace: str) -> None:
    values_from = [env.get("valueFrom") for env in container.get("env") or () if isinstance(env, dict)]
    _rewrite_refs(values_from, "configMapKeyRef", "secretKeyRef", namespace)
    _rewrite_refs(list(container.get("envFrom") or ()), "configMapRef", "secretRef", namespace)


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
    plan: _Plan,
) -> dict[str, Any]:
    """One Pod document for podman from a pod template (or a Pod), injections done."""
    where = f"{source} (pod {pod_name})" if source.split("/", 1)[-1] != pod_name else source
    template = copy.deepcopy(template)
    meta = template.get("metadata") or {}
    if not isinstance(meta, dict):
        raise RuntimeApplyError(f"{where}: metadata must be a mapping")
    spec = _require_mapping(template.get("spec"), where, "spec")
    podman_name = f"{ref.namespace}.{pod_name}"
    if podman_name in plan.pods:
        raise RuntimeApplyError(f"{where}: more than one pod of the release is named {pod_name!r}")

    labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    labels.update(
        {
            LABEL_NODE: node.node,
            LABEL_POOL: node.pool,
            LABEL_RELEASE: release_label(ref),
            LABEL_NAMESPACE: ref.namespace,
            LABEL_RELEASE_NAME: ref.release,
        }
    )
    annotations = {str(k): str(v) for k, v in (meta.get("annotations") or {}).items()}
    annotations[_SOURCE_ANNOTATION] = source

    if restart_always and not spec.get("restartPolicy"):
        spec["restartPolicy"] = "Always"
    if not spec.get("hostname") and not spec.get("hostNetwork"):
        # As in Kubernetes, the pod's hostname is its own name; podman would use
        # the namespace-prefixed one, which can exceed a hostname's 63 characters.
        spec["hostname"] = pod_name[:63].rstrip("-.")

    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        raise RuntimeApplyError(f"{where}: spec.containers must list at least one container")
    inits = spec.get("initContainers") or []
    if not isinstance(inits, list):
        raise RuntimeApplyError(f"{where}: spec.initContainers must be a list")
    for container in [*inits, *containers]:
        if not isinstance(container, dict) or not isinstance(container.get("name"), str):
            raise RuntimeApplyError(f"{where}: every container needs a name")
        if not container.get("image"):
            raise RuntimeApplyError(f"{where}: container {container['name']!r} has no image")
        _rewrite_env_refs(container, ref.namespace)
        _set_env(container, ENV_NODE_NAME, node.node)
        _set_env(container, ENV_NODE_POOL, node.pool)
        _keep_host_ports(container, where=where, network=network, host_net=bool(spec.get("hostNetwork")), plan=plan)

    for volume in spec.get("volumes") or ():
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
    plan.pods[podman_name] = _PlayedPod(
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
    container: dict[str, Any], *, where: str, network: str | None, host_net: bool, plan: _Plan
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
    ports = container.get("ports")
    if not isinstance(ports, list):
        container.pop("ports", None)
        return
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
        raise RuntimeApplyError(f"{where}: spec.replicas {replicas!r} is not a whole number >= 0")
    return replicas


def _pod_template(doc: dict[str, Any], where: str) -> dict[str, Any]:
    spec = _require_mapping(doc.get("spec"), where, "spec")
    return _require_mapping(spec.get("template"), where, "spec.template")


def build_plan(ref: ReleaseRef, manifests: str, node: NodeContext, *, network: str | None = None) -> _Plan:
    """Turn a release's rendered manifests into the file podman plays.

    Pure: reads nothing and runs nothing. Raises RuntimeApplyError naming the
    manifest at fault.
    """
    try:
        docs = [d for d in yaml.safe_load_all(manifests) if d is not None]
    except yaml.YAMLError as exc:
        raise RuntimeApplyError(f"manifests of {ref}: invalid YAML: {exc}") from exc

    plan = _Plan(text="")
    configmaps: list[dict[str, Any]] = []
    pods: list[dict[str, Any]] = []
    for index, doc in enumerate(docs, start=1):
        where = _describe(doc, index)
        if not isinstance(doc, dict) or not isinstance(doc.get("kind"), str):
            raise RuntimeApplyError(f"{where} of {ref}: not a Kubernetes object (no kind)")
        kind = doc["kind"]
        if kind == "List":
            plan.warnings.append(f"{where}: kind List is not supported, not applied; render its items")
            continue
        name = _object_name(doc, where)
        meta = doc["metadata"]
        own_ns = meta.get("namespace")
        if own_ns not in (None, "", ref.namespace):
            plan.warnings.append(
                f"{where}: namespace {own_ns!r} ignored, applied in the release's namespace {ref.namespace!r}"
            )
        if kind == "Pod":
            pods.append(
                _prepare_pod(
                    name,
                    doc,
                    source=where,
                    ref=ref,
                    node=node,
                    restart_always=False,
                    network=network,
                    plan=plan,
                )
            )
        elif kind in ("Deployment", "DaemonSet"):
            template = _pod_template(doc, where)
            count = _replicas(doc, where) if kind == "Deployment" else 1
            for i in range(count):
                pods.append(
                    _prepare_pod(
                        f"{name}-pod-{i}",
                        template,
                        source=where,
                        ref=ref,
                        node=node,
                        restart_always=True,
                        network=network,
                        plan=plan,
                    )
                )
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
            pass  # becomes a named volume when a pod mounts it (see the module docstring)
        else:
            plan.warnings.append(f"{where}: kind not supported by podman, not applied")

    body = yaml.safe_dump_all([*configmaps, *pods], sort_keys=False) if pods else ""
    plan.text = _HEADER.format(ref=ref) + body
    return plan


def _parse_played(text: str, where: str) -> dict[str, _PlayedPod]:
    """The pods of a file this runtime played, keyed by podman pod name."""
    pods: dict[str, _PlayedPod] = {}
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise EdgeRuntimeError(f"{where}: the stored played file is not YAML: {exc}") from exc
    for doc in docs:
        if not isinstance(doc, dict) or doc.get("kind") != "Pod":
            continue
        meta = doc.get("metadata") or {}
        spec = doc.get("spec") or {}
        name = str(meta.get("name"))
        grace = spec.get("terminationGracePeriodSeconds")
        pods[name] = _PlayedPod(
            name=name,
            source=str((meta.get("annotations") or {}).get(_SOURCE_ANNOTATION, f"Pod/{name}")),
            containers=tuple(f"{name}-{c.get('name')}" for c in spec.get("containers") or ()),
            init_containers=tuple(f"{name}-{c.get('name')}" for c in spec.get("initContainers") or ()),
            grace=grace if isinstance(grace, int) and grace > 0 else 0,
        )
    return pods


def _played_volumes(text: str) -> set[str]:
    volumes: set[str] = set()
    with contextlib.suppress(yaml.YAMLError):
        for doc in yaml.safe_load_all(text):
            if not isinstance(doc, dict) or doc.get("kind") != "Pod":
                continue
            for volume in (doc.get("spec") or {}).get("volumes") or ():
                if not isinstance(volume, dict):
                    continue
                if isinstance(volume.get("configMap"), dict):
                    volumes.add(str(volume["configMap"].get("name")))
                elif isinstance(volume.get("persistentVolumeClaim"), dict):
                    volumes.add(str(volume["persistentVolumeClaim"].get("claimName")))
    return volumes


def _time_key(value: str) -> tuple[str, str]:
    """Sort key for podman's RFC 3339 times, whose fractions vary in length."""
    head, _, rest = value.partition(".")
    fraction = rest.rstrip("Z").split("+")[0].split("-")[0]
    return head, fraction.ljust(9, "0")


# --------------------------------------------------------------------------
# Running podman


class _PodmanFailed(Exception):
    """podman exited non-zero or timed out; carries its stderr for chaining."""

    def __init__(self, argv: Sequence[str], returncode: int | None, stderr: str, *, command: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()
        self.command = command  # e.g. "kube play", for messages
        status = "timed out" if returncode is None else f"exited {returncode}"
        super().__init__(f"{' '.join(self.argv)} {status}: {self.stderr}")


@dataclass(frozen=True, slots=True)
class _Completed:
    returncode: int
    stdout: str
    stderr: str


class PodmanRuntime:
    """The ``Runtime`` that runs releases as podman pods (see the module docstring).

    Usable as an async context manager, which checks on entry that podman
    answers; the methods also work without entering it.
    """

    name = "podman"

    def __init__(self, settings: PodmanSettings) -> None:
        self.settings = settings
        self._env = dict(os.environ)
        if settings.containers_conf is not None:
            self._env["CONTAINERS_CONF"] = str(settings.containers_conf)
        # One lock per release: applies and removals of one release never
        # interleave, while a slow release never holds up the others.
        self._locks: dict[ReleaseRef, asyncio.Lock] = {}
        self._entered = False

    def __repr__(self) -> str:
        return f"PodmanRuntime(root={self.settings.root}, work_dir={self.settings.work_dir})"

    async def __aenter__(self) -> PodmanRuntime:
        if self._entered:
            raise RuntimeError("this PodmanRuntime is already entered; use one `async with` at a time")
        self._entered = True
        try:
            await self.version()
        except BaseException:
            self._entered = False
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        # Nothing to release: every podman call is awaited by its caller.
        self._entered = False

    # -- podman calls ---------------------------------------------------------

    async def _run(self, *args: str, check: bool = True) -> _Completed:
        """Run podman with the node's global flags; never blocks the event loop.

        Raises _PodmanFailed on a non-zero exit (when ``check``) and on timeout,
        after killing podman; EdgeRuntimeError when podman cannot be started.
        """
        argv = [self.settings.binary, *self.settings.global_args(), *args]
        logger.debug("Running %s", " ".join(argv))
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._env,
            )
        except OSError as exc:
            raise EdgeRuntimeError(f"cannot run {self.settings.binary!r}: {exc}") from exc
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(), self.settings.command_timeout)
        except TimeoutError:
            logger.warning(
                "podman %s did not finish within %.0f s; killing it",
                " ".join(args[:2]),
                self.settings.command_timeout,
            )
            raise _PodmanFailed(
                argv, None, f"no answer within {self.settings.command_timeout:.0f} s", command=" ".join(args[:2])
            ) from None
        finally:
            if proc.returncode is None:
                # Timed out or cancelled: do not leave podman running behind us.
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(Exception):
                    await asyncio.shield(proc.wait())
        result = _Completed(proc.returncode or 0, stdout.decode(errors="replace"), stderr.decode(errors="replace"))
        if check and result.returncode != 0:
            raise _PodmanFailed(argv, result.returncode, result.stderr or result.stdout, command=" ".join(args[:2]))
        return result

    async def _json(self, *args: str, what: str) -> Any:
        try:
            result = await self._run(*args)
        except _PodmanFailed as exc:
            raise EdgeRuntimeError(f"podman could not {what}: {exc.stderr}") from exc
        return _loads(result.stdout, what)

    async def version(self) -> str:
        """podman's version; raises EdgeRuntimeError when podman does not answer."""
        try:
            result = await self._run("version", "--format", "{{.Client.Version}}")
        except _PodmanFailed as exc:
            raise EdgeRuntimeError(f"podman does not work here: {exc.stderr}") from exc
        return result.stdout.strip()

    async def preflight(self) -> tuple[PreflightCheck, ...]:
        """Check that podman can run pods on this node: podman, storage, OCI runtime, a real pod.

        The pod check creates, starts and removes an empty pod, which is what
        fails when podman cannot build its pause image (catatonit missing) or
        its OCI runtime cannot start a container here. About half a second.
        """
        checks: list[PreflightCheck] = []
        # A storage root given in the settings is checked before podman runs:
        # podman itself fails to start on a root it cannot create.
        storage = await self._storage_check(self.settings.root) if self.settings.root else None

        def failed_from(index: int, why: str) -> tuple[PreflightCheck, ...]:
            # Checks that could not run feed no condition: what they would
            # have shown is unknown, not failed.
            skipped = [PreflightCheck(name, False, f"not checked: {why}") for name in ("storage", "oci-runtime", "pod")]
            if storage is not None:
                skipped[0] = storage
            return (*checks, *skipped[index:])

        try:
            version = await self.version()
        except EdgeRuntimeError as exc:
            missing = isinstance(exc.__cause__, OSError) or "cannot run" in str(exc)
            checks.append(PreflightCheck("podman", False, _with_hint(str(exc)), "RuntimeReady",
                                         "PodmanMissing" if missing else "PodmanBroken"))
            return failed_from(0, "podman does not run")
        checks.append(PreflightCheck("podman", True, f"podman {version} ({self.settings.binary})", "RuntimeReady"))

        try:
            info = await self._json("info", "--format", "json", what="describe itself (podman info)")
        except EdgeRuntimeError as exc:
            checks.append(storage or PreflightCheck("storage", False, _with_hint(str(exc)), "StorageReady",
                                                    "StorageUnusable"))
            return failed_from(1, "podman info failed")
        if storage is None:
            graph_root = ((info or {}).get("store") or {}).get("graphRoot") or "/var/lib/containers/storage"
            storage = await self._storage_check(Path(str(graph_root)))
        checks.append(storage)

        oci = ((info or {}).get("host") or {}).get("ociRuntime") or {}
        oci_path = str(oci.get("path") or "")
        oci_version = str(oci.get("version") or "").splitlines()[0:1]
        if oci_path and os.access(oci_path, os.X_OK):
            checks.append(PreflightCheck("oci-runtime", True,
                                         f"{oci.get('name', '?')} at {oci_path}"
                                         + (f" ({oci_version[0]})" if oci_version else ""), "RuntimeReady"))
        else:
            checks.append(PreflightCheck("oci-runtime", False,
                                         f"podman's OCI runtime {oci.get('name') or '?'} is not executable at "
                                         f"{oci_path or '(no path)'}: install runc or crun",
                                         "RuntimeReady", "OciRuntimeMissing"))

        checks.append(await self._probe_pod())
        return tuple(checks)

    @staticmethod
    async def _storage_check(root: Path) -> PreflightCheck:
        problem, free = await asyncio.to_thread(_probe_writable, root)  # file I/O off the loop
        if problem:
            return PreflightCheck("storage", False, problem, "StorageReady", "StorageNotWritable")
        return PreflightCheck("storage", True, f"{root} writable, {free / 2**30:.1f} GiB free", "StorageReady")

    async def _probe_pod(self) -> PreflightCheck:
        """Create, start and remove an empty pod on the node's network setting."""
        with contextlib.suppress(_PodmanFailed, EdgeRuntimeError):
            await self._run("pod", "rm", "--force", "--ignore", "--time", "0",
                            *[p.get("Name", "") for p in await self._pods(f"label={_PREFLIGHT_LABEL}")
                              if p.get("Name")])
        name = f"edgecollab-preflight-{os.urandom(4).hex()}"
        create = ["pod", "create", "--name", name, "--label", f"{_PREFLIGHT_LABEL}=1"]
        if self.settings.network:
            create += ["--network", self.settings.network]
        step = "create"
        try:
            await self._run(*create)
            step = "start"
            await self._run("pod", "start", name)
        except _PodmanFailed as exc:
            return PreflightCheck("pod", False, _with_hint(f"podman pod {step} failed: {_last_error(exc.stderr)}"),
                                  "RuntimeReady", "PodCreateFailed" if step == "create" else "PodStartFailed")
        finally:
            with contextlib.suppress(_PodmanFailed, EdgeRuntimeError):
                await self._run("pod", "rm", "--force", "--ignore", "--time", "0", name)
        return PreflightCheck("pod", True, "created, started and removed a pod", "RuntimeReady")

    async def _pods(self, *filters: str) -> list[dict[str, Any]]:
        args = ["pod", "ps", "--no-trunc", "--format", "json"]
        for item in filters:
            args += ["--filter", item]
        return list(await self._json(*args, what="list pods") or [])

    async def _remove_pods(self, pods: Iterable[tuple[str, int]]) -> None:
        """Stop pods (each within its grace period, in seconds), then remove them.

        Missing pods are fine. Stopping first and removing a moment later, rather
        than one ``pod rm --force``, is deliberate: with the cgroupfs manager
        each container's conmon still runs its exit cleanup right after the
        container dies, and a removal racing it waits ~3 s on the pod's busy
        cgroup (seen with podman 4.3 in one of five removals).
        """
        by_grace: dict[int, list[str]] = {}
        for name, grace in pods:
            by_grace.setdefault(min(grace, int(self.settings.command_timeout // 2)), []).append(name)
        if not by_grace:
            return
        for grace, names in sorted(by_grace.items()):
            await self._run("pod", "stop", "--ignore", "--time", str(grace), *sorted(names))
        await asyncio.sleep(_SETTLE_SECONDS)
        every = sorted(name for names in by_grace.values() for name in names)
        await self._run("pod", "rm", "--force", "--ignore", "--time", "0", *every)

    async def _remove_volumes(self, names: Iterable[str]) -> None:
        names = sorted(names)
        if names:
            # --force also ignores volumes that do not exist.
            await self._run("volume", "rm", "--force", *names)

    # -- the work dir -----------------------------------------------------------

    def played_file(self, ref: ReleaseRef) -> Path:
        """Where the YAML last played for ``ref`` is kept."""
        return self.settings.work_dir / ref.namespace / f"{ref.release}.yaml"

    def _lock(self, ref: ReleaseRef) -> asyncio.Lock:
        return self._locks.setdefault(ref, asyncio.Lock())

    # -- the Runtime interface --------------------------------------------------

    async def apply(self, ref: ReleaseRef, manifests: str, node: NodeContext) -> ApplyResult:
        """Play ``manifests`` for ``ref`` (see the module docstring for what that means)."""
        plan = build_plan(ref, manifests, node, network=self.settings.network)
        for warning in plan.warnings:
            logger.warning("Release %s: %s", ref, warning)
        path = self.played_file(ref)
        async with self._lock(ref):
            old_text = await asyncio.to_thread(_read_text, path)  # file I/O off the loop
            old_volumes = _played_volumes(old_text) if old_text else set()
            label = release_label(ref)
            try:
                existing = await self._pods()
            except EdgeRuntimeError as exc:
                raise RuntimeApplyError(f"release {ref}: {exc}") from exc.__cause__

            try:
                old_pods = _parse_played(old_text, str(path)) if old_text else {}
            except EdgeRuntimeError as exc:
                logger.warning("Release %s: %s; stopping its old pods without grace", ref, exc)
                old_pods = {}
            # Every pod the release runs now goes before the new file is played:
            # those it no longer has, and those --replace would recreate, which
            # podman 4.3 would kill without their grace period.
            ours: list[tuple[str, int]] = []
            for pod in existing:
                pod_name = pod.get("Name", "")
                owner = (pod.get("Labels") or {}).get(LABEL_RELEASE)
                if pod_name in plan.pods and owner != label:
                    who = f"release {owner}" if owner else "something outside edgecollab"
                    raise RuntimeApplyError(
                        f"{plan.pods[pod_name].source}: podman pod {pod_name} already exists and "
                        f"belongs to {who}; not replaced"
                    )
                if owner == label:
                    played = old_pods.get(pod_name)
                    ours.append((pod_name, played.grace if played else 0))

            await asyncio.to_thread(_write_private, path, plan.text)  # file I/O off the loop
            try:
                if ours:
                    gone = [name for name, _ in ours if name not in plan.pods]
                    if gone:
                        logger.info("Release %s: removing pods it no longer has: %s", ref, gone)
                    await self._remove_pods(ours)
                if plan.pods:
                    args = ["kube", "play", "--replace"]
                    if self.settings.network:
                        args += ["--network", self.settings.network]
                    await self._run(*args, str(path))
                unused = old_volumes - plan.volumes
                if unused:
                    await self._remove_volumes(unused)
            except _PodmanFailed as exc:
                raise RuntimeApplyError(_explain_play_failure(ref, plan, exc)) from exc
        logger.info("Release %s applied: %d pods, %d warnings", ref, len(plan.pods), len(plan.warnings))
        return ApplyResult(warnings=tuple(plan.warnings))

    async def remove(self, ref: ReleaseRef) -> None:
        """Remove the release's pods and volumes and forget its played file; idempotent."""
        path = self.played_file(ref)
        async with self._lock(ref):
            text = await asyncio.to_thread(_read_text, path)  # file I/O off the loop
            try:
                played = _parse_played(text, str(path)) if text else {}
            except EdgeRuntimeError as exc:
                logger.warning("Release %s: %s; removing its pods by label", ref, exc)
                played = {}
            volumes = _played_volumes(text) if text else set()
            try:
                # The played file names what this runtime made; the label also
                # catches pods the file does not know (a lost work dir).
                labelled = await self._pods(f"label={LABEL_RELEASE}={release_label(ref)}")
                doomed = {name: pod.grace for name, pod in played.items()}
                for pod in labelled:
                    doomed.setdefault(pod.get("Name", ""), 0)
                doomed.pop("", None)
                if doomed:
                    await self._remove_pods(doomed.items())
                await self._remove_volumes(volumes)
            except (_PodmanFailed, EdgeRuntimeError) as exc:
                stderr = exc.stderr if isinstance(exc, _PodmanFailed) else str(exc)
                raise RuntimeApplyError(f"release {ref}: removal failed: {stderr}") from exc
            await asyncio.to_thread(_forget, path)  # file I/O off the loop
        logger.info("Release %s removed (%d pods, %d volumes)", ref, len(doomed), len(volumes))

    async def observe(self, ref: ReleaseRef) -> Observation:
        """What runs now for ``ref``: two podman calls (pods, then their containers)."""
        path = self.played_file(ref)
        text = await asyncio.to_thread(_read_text, path)  # file I/O off the loop
        expected = _parse_played(text, str(path)) if text else {}
        pods = await self._pods(f"label={LABEL_RELEASE}={release_label(ref)}")

        infra = {p.get("InfraId") for p in pods}
        ids = [c["Id"] for p in pods for c in p.get("Containers") or () if c.get("Id") not in infra]
        details = await self._inspect(ids) if ids else {}

        states: list[PodState] = []
        found = {p.get("Name", ""): p for p in pods}
        for pod_name in sorted(set(expected) | set(found)):
            pod = found.get(pod_name)
            if pod is None:
                states.append(PodState(pod_name, "Missing", False, (), ""))
                continue
            played = expected.get(pod_name)
            inits = set(played.init_containers) if played else set()
            members = [
                c
                for c in pod.get("Containers") or ()
                if c.get("Id") != pod.get("InfraId") and c.get("Names") not in inits
            ]
            members.sort(key=lambda c: c.get("Names", ""))
            infos = [details.get(c["Id"]) for c in members]
            ready = bool(members) and all(info is not None and _is_running(info) for info in infos)
            starts = [
                info["State"]["StartedAt"]
                for info in infos
                if info and info.get("State", {}).get("StartedAt") not in (None, "", _ZERO_TIME)
            ]
            states.append(
                PodState(
                    name=pod_name,
                    phase=str(pod.get("Status", "Unknown")),
                    ready=ready,
                    container_ids=tuple(c["Id"] for c in members),
                    started_at=max(starts, key=_time_key) if starts else "",
                )
            )

        counted = [s for s in states if s.name in expected] if text else states
        ready = sum(1 for s in counted if s.ready)
        message = ""
        if not text and found:
            message = f"no played manifests on record for {ref}; counting the pods found"
        elif ready < len(counted):
            lagging = ", ".join(f"{s.name} ({s.phase})" for s in counted if not s.ready)
            message = f"{len(counted) - ready} of {len(counted)} pods not ready: {lagging}"
        extra = [s.name for s in states if text and s.name not in expected]
        if extra:
            message = (message + "; " if message else "") + f"leftover pods: {', '.join(extra)}"
        return Observation(ready=ready, total=len(counted), pods=tuple(states), message=message)

    async def _inspect(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """``container inspect`` by ID; a container removed meanwhile is simply absent."""
        result = await self._run("container", "inspect", "--format", "json", *ids, check=False)
        try:
            items = _loads(result.stdout, "inspect containers") if result.stdout.strip() else []
        except EdgeRuntimeError:
            items = []
        if result.returncode != 0 and not items:
            if "no such" in result.stderr:
                return {}
            raise EdgeRuntimeError(f"podman could not inspect containers: {result.stderr.strip()}")
        return {item["Id"]: item for item in items or () if isinstance(item, dict) and "Id" in item}

    async def releases(self) -> set[ReleaseRef]:
        """Releases with a played file in the work dir or a labelled pod in podman."""
        found = await asyncio.to_thread(_releases_on_disk, self.settings.work_dir)  # file I/O off the loop
        for pod in await self._pods(f"label={LABEL_NAMESPACE}"):
            labels = pod.get("Labels") or {}
            with contextlib.suppress(ValueError, TypeError):
                found.add(ReleaseRef(labels.get(LABEL_NAMESPACE), labels.get(LABEL_RELEASE_NAME)))
        return found

    async def import_image(
        self,
        tar_path: str | os.PathLike[str],
        reference: str,
        *,
        changes: Sequence[str] = DEMO_IMAGE_CHANGES,
    ) -> None:
        """Side-load a root filesystem tar as image ``reference``; nothing if it exists.

        ``changes`` are passed as ``podman import --change``; the default suits
        the busybox tar of scripts/build-demo-image.sh.
        """
        exists = await self._run("image", "exists", reference, check=False)
        if exists.returncode == 0:
            return
        if exists.returncode != 1:
            raise EdgeRuntimeError(f"podman could not check image {reference}: {exists.stderr.strip()}")
        args = ["import", "--quiet"]
        for change in changes:
            args += ["--change", change]
        try:
            await self._run(*args, os.fspath(tar_path), reference)
        except _PodmanFailed as exc:
            raise EdgeRuntimeError(f"podman could not import {tar_path} as {reference}: {exc.stderr}") from exc
        logger.info("Imported %s as %s", tar_path, reference)


# --------------------------------------------------------------------------
# Helpers


def _loads(text: str, what: str) -> Any:
    try:
        return json.loads(text) if text.strip() else None
    except json.JSONDecodeError as exc:
        raise EdgeRuntimeError(f"podman's answer to {what} is not JSON: {text[:200]!r}") from exc


def _is_running(info: Mapping[str, Any]) -> bool:
    state = info.get("State") or {}
    health = (state.get("Health") or {}).get("Status") or ""
    return state.get("Status") == "running" and health != "unhealthy"


def _explain_play_failure(ref: ReleaseRef, plan: _Plan, exc: _PodmanFailed) -> str:
    """A RuntimeApplyError message naming the manifest object podman choked on."""
    reason = _last_error(exc.stderr) if exc.stderr else str(exc)
    if exc.returncode is None:
        return f"release {ref}: podman {exc.command} gave {reason}; killed"
    match = _BRINGING_UP.search(exc.stderr)
    culprit = plan.pods.get(match.group(1)) if match else None
    if culprit is None:  # podman does not always name the pod: look for its name or image
        culprit = next((p for p in plan.pods.values() if p.name in exc.stderr), None)
    if culprit is None:
        culprit = next((p for p in plan.pods.values() if any(i in exc.stderr for i in p.images)), None)
    if culprit is not None:
        return f"{culprit.source} (podman pod {culprit.name}) of release {ref}: {reason}"
    return f"release {ref}: podman {exc.command} failed: {reason}"


def _last_error(stderr: str) -> str:
    """podman's own error line(s), without the noise around them."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line.removeprefix("Error: ") for line in lines if line.startswith("Error: ")]
    return "; ".join(errors) or (lines[-1] if lines else "no error output")


def _with_hint(text: str) -> str:
    hints = [hint for needle, hint in _PREFLIGHT_HINTS if needle in text]
    return f"{text} (hint: {hints[0]})" if hints else text


def _probe_writable(root: Path) -> tuple[str, int]:
    """("", free bytes) when ``root`` (or where podman would create it) takes a file; else (why, 0)."""
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"storage root {root}: {existing} is not a directory", 0
    probe = existing / f".edgecollab-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"probe")
        probe.unlink()
    except OSError as exc:
        return f"storage root {root} is not writable: {exc.strerror or exc} ({existing})", 0
    return "", shutil.disk_usage(existing).free


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` atomically, readable by the agent only (it may hold Secret data)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _forget(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    with contextlib.suppress(OSError):
        path.parent.rmdir()  # only when empty


def _releases_on_disk(work_dir: Path) -> set[ReleaseRef]:
    found: set[ReleaseRef] = set()
    if not work_dir.is_dir():
        return found
    for path in work_dir.glob("*/*.yaml"):
        with contextlib.suppress(ValueError):
            found.add(ReleaseRef(path.parent.name, path.stem))
    return found
