"""The last check before ``kube play``: what a plan binds and writes stays where the release may reach.

``build_plan`` checks names, keys and paths as it rewrites manifests, and the
node's policy checks privileges; this module checks the outcome as a whole,
whatever produced it (a planner bug, a field nobody foresaw), on the very
documents podman will be given:

- every host path a pod binds lies in the release's files dir or mounts dir,
  or is a hostPath the policy allows for the release's namespace;
- no bind, allowed or not, holds or lies in a protected path: the node's
  state directory, its policy file, podman's storage;
- every podman volume and ConfigMap a pod uses is the release's own
  (``NAMESPACE.RELEASE.``), every ConfigMap key and ``items`` path is one
  podman can only write inside its volume, and no ``subPath`` is left for
  podman to resolve;
- every file the runtime writes lies in the files dir, every subPath mount
  comes from the release's own volume or an allowed hostPath.

A plan that fails is refused with ``ManifestRejected`` naming what it would
have reached. Reads the host's links (``realpath``) but changes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..policy import NodePolicy
from .base import ManifestRejected, ReleaseRef
from .manifests import load_yaml_all
from .names import check_config_key, check_relative_path
from .podman_plan import Plan

__all__ = ["Confinement", "check_confinement"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Confinement:
    """Where one release's pods may reach on the host, and what they never may."""

    files_dir: str
    mounts_dir: str
    # Never inside (nor holding) a bind: the state directory, the policy file,
    # podman's storage (graph root, run root, volumes).
    protected: tuple[str, ...]


def check_confinement(plan: Plan, ref: ReleaseRef, confinement: Confinement, policy: NodePolicy) -> None:
    """Refuse (ManifestRejected) a plan that would reach past ``confinement``; see the module docstring."""
    prefix = f"{ref.namespace}.{ref.release}."
    host_allowed = policy.allows(ref.namespace, "hostPath")
    where = f"release {ref}: the plan"
    for relative in plan.files:
        check_relative_path(relative, f"{where}: file to write")
        _require_beneath(os.path.join(confinement.files_dir, relative), (confinement.files_dir,),
                         f"{where}: file {relative!r}")
    for name, mount in plan.subpath_mounts.items():
        check_relative_path(mount.path, f"{where}: subPath mount {name}")
        if mount.kind == "volume":
            if not mount.root.startswith(prefix):
                raise ManifestRejected(f"{where}: subPath mount {name} is of podman volume {mount.root!r}, which is "
                                       "not the release's")
        elif mount.kind == "host" and host_allowed and mount.root.startswith("/") and "\0" not in mount.root:
            _require_apart(mount.root, confinement.protected, f"{where}: subPath mount {name} of hostPath")
        else:
            raise ManifestRejected(f"{where}: subPath mount {name} of {mount.kind} {mount.root!r} is not allowed")
    for play in plan.plays:
        for doc in load_yaml_all(play.text):
            if isinstance(doc, dict) and doc.get("kind") == "Pod":
                _check_pod(doc, prefix, confinement, host_allowed, where)
            elif isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
                _check_configmap(doc, prefix, where)


def _check_configmap(doc: Mapping[str, Any], prefix: str, where: str) -> None:
    name = str(_mapping(doc.get("metadata")).get("name", ""))
    if not name.startswith(prefix):
        raise ManifestRejected(f"{where}: ConfigMap {name!r} is not the release's")
    for field in ("data", "binaryData"):
        for key in _mapping(doc.get(field)):
            check_config_key(key, f"{where}: ConfigMap {name}: {field}")


def _check_pod(doc: Mapping[str, Any], prefix: str, confinement: Confinement, host_allowed: bool,
               where: str) -> None:
    spec = _mapping(doc.get("spec"))
    pod = f"{where}: pod {_mapping(doc.get('metadata')).get('name')}"
    release_dirs = (confinement.files_dir, confinement.mounts_dir)
    for volume in _list(spec.get("volumes")):
        volume = _mapping(volume)
        what = f"{pod} volume {volume.get('name')}"
        if "hostPath" in volume:
            path = str(_mapping(volume["hostPath"]).get("path", ""))
            if not path.startswith("/") or any(p in (".", "..") for p in path.split("/")) or "\0" in path:
                raise ManifestRejected(f"{what}: host path {path!r} is not an absolute, normal path")
            if _beneath(path, release_dirs):
                continue
            if not host_allowed:
                raise ManifestRejected(f"{what}: binds {path}, outside the release's files and mounts, and the "
                                       "node's policy allows no hostPath")
            _require_apart(path, confinement.protected, what)
        for key, field in (("persistentVolumeClaim", "claimName"), ("configMap", "name")):
            if key in volume:
                name = str(_mapping(volume[key]).get(field, ""))
                if not name.startswith(prefix):
                    raise ManifestRejected(f"{what}: {key} {name!r} is not the release's")
        for index, item in enumerate(_list(_mapping(volume.get("configMap")).get("items"))):
            check_relative_path(_mapping(item).get("path"), f"{what}: items[{index}].path")
    containers = [*_list(spec.get("initContainers")), *_list(spec.get("containers")),
                  *_list(spec.get("ephemeralContainers"))]
    for container in containers:
        for mount in _list(_mapping(container).get("volumeMounts")):
            if any(_mapping(mount).get(key) for key in ("subPath", "subPathExpr")):
                raise ManifestRejected(f"{pod}: a subPath is left for podman to resolve by path")


def _require_apart(path: str, protected: Iterable[str], what: str) -> None:
    """Refuse ``path`` when it (links resolved) holds, is, or lies in a protected path."""
    real = os.path.realpath(path)
    for guarded in protected:
        guarded_real = os.path.realpath(guarded)
        if _beneath(real, (guarded_real,)) or _beneath(guarded_real, (real,)):
            raise ManifestRejected(f"{what}: {path} would expose {guarded} (the node's state or podman's storage) "
                                   "to the pod; refused whatever the policy allows")


def _require_beneath(path: str, roots: tuple[str, ...], what: str) -> None:
    if not _beneath(os.path.normpath(path), roots):
        raise ManifestRejected(f"{what}: {path} lies outside {', '.join(roots)}")


def _beneath(path: str, roots: Iterable[str]) -> bool:
    """Whether ``path`` is one of ``roots`` or lies under one (plain string paths, already normal)."""
    path = path.rstrip("/") or "/"
    for root in roots:
        root = root.rstrip("/") or "/"
        if path == root or path.startswith(root if root == "/" else root + "/"):
            return True
    return False


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
