"""The node policy: what this node lets a release's pods do. Set on the node, never by the hub.

Whoever can apply a chart through the hub decides what runs; only the node's
owner decides what running may mean. ``edgeagent join --policy FILE`` copies
a policy file into the state directory (``STATE/policy.yaml``, mode 0600);
``edgeagent run`` reads it from there (``run --policy FILE`` overrides it for
that run). Without a file the node uses the default policy below, the safe one.

The file (YAML; every key optional)::

    namespaces: [demo, monitoring]   # releases of other namespaces are refused (default: all)
    kinds: [Deployment, ConfigMap]   # kinds allowed to run (default: all the runtime runs)
    allow:                           # privileges allowed per namespace; "*" is every namespace
      monitoring: [hostNetwork, hostPID, root]
      "*": []
    limits:                          # how much one release may ask of the node (defaults below)
      podsPerNode: 50
      podsPerRelease: 20
      containersPerPod: 10
      volumesPerPod: 32
      envBytesPerPod: 262144

Limits bound what a manifest may ask for, whatever its privileges: an edge
device runs a few pods, and a 223-byte Deployment of ``replicas: 20000``
must not become 20,000 pods. ``podsPerRelease`` counts the pods a release's
workloads expand into (replicas of Deployments and StatefulSets, one per
DaemonSet, Job and Pod); ``podsPerNode`` counts them with every other
release's pods on the node; ``envBytesPerPod`` is the bytes of every
container's environment names and values together. A manifest over a limit
is refused (``ManifestRejected``) naming the limit, the number asked for and
where to raise it.

Privileges, each refused unless allowed for the release's namespace:

=============  ==============================================================
privileged     ``securityContext.privileged: true``, and podman's own
               ``io.podman.annotations.*`` pod annotations
capabilities   ``securityContext.capabilities.add`` (any capability)
hostPath       a ``hostPath`` volume (the chart's; the runtime's own subPath
               binds are not the chart's and are always allowed)
hostNetwork    ``spec.hostNetwork: true``
hostPID        ``spec.hostPID: true``
hostIPC        ``spec.hostIPC: true``
root           a container that may run as root (see below), or
               ``allowPrivilegeEscalation: true``
unconfined     seccomp or AppArmor profile ``Unconfined`` or ``Localhost``,
               ``seLinuxOptions``, ``procMount: Unmasked``, and the old
               seccomp/AppArmor annotations asking for anything but the default
=============  ==============================================================

"Root", precisely: a container runs as root unless its effective
``runAsUser`` (the container's ``securityContext.runAsUser``, else the pod's)
is a whole number above 0. ``runAsNonRoot: true`` alone does not count:
Kubernetes checks it against the image's user when the container starts, but
podman 4.3 ignores it, and the node cannot see the image's user before it
plays the pod; so such a container is refused with a message asking for a
``runAsUser``. Init containers are containers here too.

The checks are pure (a rendered object in, a message out): the runtime's plan
runs them before podman is asked anything, and a refusal is the runtime's
``ManifestRejected`` (the agent fails the revision once, with the message,
and waits for a new revision).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edgeprotocol.errors import EdgeError
from edgeprotocol.topics import check_name

__all__ = ["POLICY_FILE", "PRIVILEGES", "RUNNABLE_KINDS", "Limits", "NodePolicy", "PolicyError"]

POLICY_FILE = "policy.yaml"
PRIVILEGES = ("privileged", "capabilities", "hostPath", "hostNetwork", "hostPID", "hostIPC", "root", "unconfined")
# The kinds a runtime runs (pods, or what pods mount). Other kinds run nothing
# and stay warnings, whatever ``kinds`` says.
RUNNABLE_KINDS = ("Pod", "Deployment", "DaemonSet", "StatefulSet", "Job", "ConfigMap", "Secret",
                  "PersistentVolumeClaim")
_POD_KINDS = ("Pod", "Deployment", "DaemonSet", "StatefulSet", "Job")
# A policy file is a few lines; a bound keeps a wrong path (a disk image, a log) from being read whole.
_MAX_POLICY_BYTES = 64 * 1024
_PROFILE_TYPES_REFUSED = ("Unconfined", "Localhost")
_OLD_PROFILE_ANNOTATIONS = ("seccomp.security.alpha.kubernetes.io/", "container.seccomp.security.alpha.kubernetes.io/",
                            "container.apparmor.security.beta.kubernetes.io/")
_DEFAULT_PROFILES = ("runtime/default", "docker/default")


class PolicyError(EdgeError):
    """A policy file is missing, not YAML, or has a wrong key or value; the message names the key."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """How much one release may ask of the node (the policy file's ``limits``); defaults fit an edge device."""

    # A gateway or a shop's box runs a handful of pods; 50 leaves room for many
    # small releases while 20,000 replicas are refused before any is planned.
    pods_per_node: int = 50
    pods_per_release: int = 20
    # Sidecars and init containers of public charts stay well under 10.
    containers_per_pod: int = 10
    volumes_per_pod: int = 32
    # Kubernetes bounds nothing here, but the kernel gives a process 2 MiB for
    # its arguments and environment together; 256 KiB per pod is far above any chart.
    env_bytes_per_pod: int = 256 * 1024

    @classmethod
    def parse(cls, raw: Any, path: str) -> Limits:
        """The ``limits`` mapping of a policy file; raises PolicyError naming the key at fault."""
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise PolicyError(f"policy file {path}: limits must be a mapping of {', '.join(_LIMIT_KEYS)}")
        values: dict[str, int] = {}
        for key, value in raw.items():
            if key not in _LIMIT_KEYS:
                raise PolicyError(f"policy file {path}: limits: unknown key {key!r} "
                                  f"(known: {', '.join(_LIMIT_KEYS)})")
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise PolicyError(f"policy file {path}: limits.{key} {value!r} is not a whole number >= 1")
            values[_LIMIT_KEYS[key]] = value
        return cls(**values)

    def refusal(self, key: str, asked: int, where: str, policy_path: str) -> str:
        """Why asking for ``asked`` against the limit ``key`` (the file's name for it) is refused, or ""."""
        bound = getattr(self, _LIMIT_KEYS[key])
        if asked <= bound:
            return ""
        return (f"{where}: {asked} is over this node's limit {key} {bound} (raise it in {policy_path}: "
                f"limits: {{{key}: N}})")


# The policy file's key of each limit (camelCase, as Kubernetes names fields) -> Limits' field.
_LIMIT_KEYS = {"podsPerNode": "pods_per_node", "podsPerRelease": "pods_per_release",
               "containersPerPod": "containers_per_pod", "volumesPerPod": "volumes_per_pod",
               "envBytesPerPod": "env_bytes_per_pod"}


@dataclass(frozen=True, slots=True)
class NodePolicy:
    """What this node allows (see the module docstring). ``NodePolicy()`` is the default: the safe one."""

    namespaces: frozenset[str] | None = None  # None: every namespace
    kinds: frozenset[str] | None = None  # None: every kind in RUNNABLE_KINDS
    allow: Mapping[str, frozenset[str]] = field(default_factory=dict)  # namespace or "*" -> privileges
    limits: Limits = field(default_factory=Limits)
    # Where the policy lives, for messages that say how to change it.
    path: str = "STATE/policy.yaml"

    @classmethod
    def load(cls, path: Path, *, shown_as: Path | None = None) -> NodePolicy:
        """The policy in the file ``path``; raises PolicyError naming the file and the key at fault."""
        try:
            with path.open("rb") as fh:
                raw = fh.read(_MAX_POLICY_BYTES + 1)
        except OSError as exc:
            raise PolicyError(f"policy file {path}: {exc.strerror or exc}") from exc
        if len(raw) > _MAX_POLICY_BYTES:
            raise PolicyError(f"policy file {path}: larger than {_MAX_POLICY_BYTES} bytes; not a policy file")
        return cls.parse(raw.decode("utf-8", errors="replace"), path=str(shown_as or path))

    @classmethod
    def parse(cls, text: str, *, path: str = "STATE/policy.yaml") -> NodePolicy:
        """The policy ``text`` states; raises PolicyError naming ``path`` and the key at fault."""
        try:
            # A small node-owned file; the safe loader (no aliases expected, and none can hurt at 64 KiB).
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise PolicyError(f"policy file {path}: not YAML: {exc}") from exc
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise PolicyError(f"policy file {path}: must be a mapping with the keys namespaces, kinds, allow")
        unknown = sorted(str(k) for k in data if k not in ("namespaces", "kinds", "allow", "limits"))
        if unknown:
            raise PolicyError(f"policy file {path}: unknown key {unknown[0]!r} "
                              "(known: namespaces, kinds, allow, limits)")
        namespaces = None
        if data.get("namespaces") is not None:
            namespaces = frozenset(_names(data["namespaces"], path, "namespaces"))
        kinds = None
        if data.get("kinds") is not None:
            kinds = frozenset(_strings(data["kinds"], path, "kinds"))
            wrong = sorted(kinds - set(RUNNABLE_KINDS))
            if wrong:
                raise PolicyError(f"policy file {path}: kinds: {wrong[0]!r} is not a kind the node runs "
                                  f"(one of {', '.join(RUNNABLE_KINDS)})")
        allow: dict[str, frozenset[str]] = {}
        raw_allow = data.get("allow")
        if raw_allow is not None:
            if not isinstance(raw_allow, dict):
                raise PolicyError(f"policy file {path}: allow must map a namespace (or \"*\") to a list of "
                                  f"privileges ({', '.join(PRIVILEGES)})")
            for namespace, privileges in raw_allow.items():
                key = f"allow.{namespace}"
                if namespace != "*":
                    _names([namespace], path, "allow")
                granted = frozenset(_strings(privileges if privileges is not None else [], path, key))
                wrong = sorted(granted - set(PRIVILEGES))
                if wrong:
                    raise PolicyError(f"policy file {path}: {key}: unknown privilege {wrong[0]!r} "
                                      f"(one of {', '.join(PRIVILEGES)})")
                allow[str(namespace)] = granted
        return cls(namespaces=namespaces, kinds=kinds, allow=allow, limits=Limits.parse(data.get("limits"), path),
                   path=path)

    def allows(self, namespace: str, privilege: str) -> bool:
        """Whether pods of ``namespace`` may use ``privilege``."""
        return privilege in self.allow.get(namespace, frozenset()) or privilege in self.allow.get("*", frozenset())

    def summary(self) -> str:
        """The policy in one line, for ``edgeagent doctor`` and the agent's start log."""
        namespaces = "all" if self.namespaces is None else ", ".join(sorted(self.namespaces)) or "none"
        kinds = "all the runtime runs" if self.kinds is None else ", ".join(sorted(self.kinds)) or "none"
        granted = "; ".join(f"{ns}: {', '.join(sorted(p)) or 'nothing'}" for ns, p in sorted(self.allow.items())
                            if p)
        limits = ", ".join(f"{key} {getattr(self.limits, name)}" for key, name in _LIMIT_KEYS.items())
        return (f"namespaces {namespaces}; kinds {kinds}; allowed beyond the default: {granted or 'nothing'}; "
                f"limits: {limits} ({self.path})")

    # -- the checks (pure) -----------------------------------------------------

    def release_refusal(self, namespace: str, release: str) -> str:
        """Why a release of ``namespace`` may not run here, or ""."""
        if self.namespaces is not None and namespace not in self.namespaces:
            return (f"release {namespace}/{release}: namespace {namespace} is not allowed by this node's policy "
                    f"(namespaces: [{', '.join(sorted(self.namespaces))}] in {self.path})")
        return ""

    def object_refusal(self, doc: Mapping[str, Any], where: str, namespace: str) -> str:
        """Why the rendered object ``doc`` (called ``where`` in messages) may not run here, or ""."""
        kind = doc.get("kind")
        if self.kinds is not None and kind in RUNNABLE_KINDS and kind not in self.kinds:
            return (f"{where}: kind {kind} is not allowed by this node's policy "
                    f"(kinds: [{', '.join(sorted(self.kinds))}] in {self.path})")
        if kind not in _POD_KINDS:
            return ""
        pod = _pod_of(doc)
        if pod is None:
            return ""  # malformed: the plan refuses it with its own words
        meta, spec = pod
        for privilege, who, detail in _privileges_used(meta, spec, where):
            if not self.allows(namespace, privilege):
                label = "running as root" if privilege == "root" else privilege
                return (f"{who}: {label} ({detail}) is refused by this node's policy (allow it for namespace "
                        f"{namespace} in {self.path}: allow: {{{namespace}: [{privilege}]}})")
        return ""

    def hardens(self, namespace: str) -> bool:
        """Whether containers of ``namespace`` get ``allowPrivilegeEscalation: false`` (root not allowed)."""
        return not self.allows(namespace, "root")


def _strings(value: Any, path: str, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise PolicyError(f"policy file {path}: {key} must be a list of names")
    return list(value)


def _names(value: Any, path: str, key: str) -> list[str]:
    names = _strings(value, path, key)
    for name in names:
        try:
            check_name(name, "namespace")
        except ValueError as exc:
            raise PolicyError(f"policy file {path}: {key}: {exc}") from exc
    return names


def _pod_of(doc: Mapping[str, Any]) -> tuple[Mapping[str, Any], Mapping[str, Any]] | None:
    """(metadata, spec) of the pod a workload object runs, or None when the object is malformed."""
    holder: Any = doc
    if doc.get("kind") != "Pod":
        spec = doc.get("spec")
        holder = spec.get("template") if isinstance(spec, Mapping) else None
    if not isinstance(holder, Mapping):
        return None
    meta, spec = holder.get("metadata") or {}, holder.get("spec")
    if not isinstance(meta, Mapping) or not isinstance(spec, Mapping):
        return None
    return meta, spec


def _mapping(value: Any) -> Mapping[str, Any]:
    """``value`` when it is a mapping, else an empty one: malformed fields are the plan's to refuse."""
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _privileges_used(meta: Mapping[str, Any], spec: Mapping[str, Any], where: str
                     ) -> Iterator[tuple[str, str, str]]:
    """(privilege, who uses it, the field) for everything of the pod that needs a privilege, in a stable order."""
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key) is True:
            yield key, where, f"spec.{key}"
    for volume in _list(spec.get("volumes")):
        if isinstance(volume, Mapping) and volume.get("hostPath") is not None:
            path = _mapping(volume.get("hostPath")).get("path")
            yield "hostPath", f"{where} volume {volume.get('name')}", f"hostPath {path}"
    for key, value in _mapping(meta.get("annotations")).items():
        key = str(key)
        if key.startswith("io.podman.annotations."):
            yield "privileged", where, f"annotation {key}, one of podman's own"
        elif key.startswith(_OLD_PROFILE_ANNOTATIONS) and str(value) not in _DEFAULT_PROFILES:
            yield "unconfined", where, f"annotation {key}: {value}"
    pod_security = _mapping(spec.get("securityContext"))
    yield from _unconfined(pod_security, where, "spec.securityContext")
    containers = [*_list(spec.get("initContainers")), *_list(spec.get("containers")),
                  *_list(spec.get("ephemeralContainers"))]
    for container in containers:
        if not isinstance(container, Mapping):
            continue
        who = f"{where} container {container.get('name')}"
        security = _mapping(container.get("securityContext"))
        if security.get("privileged") is True:
            yield "privileged", who, "securityContext.privileged"
        added = _mapping(security.get("capabilities")).get("add")
        if added:
            names = ", ".join(str(c) for c in added) if isinstance(added, list) else str(added)
            yield "capabilities", who, f"securityContext.capabilities.add [{names}]"
        yield from _unconfined(security, who, "securityContext")
        if security.get("procMount") == "Unmasked":
            yield "unconfined", who, "securityContext.procMount Unmasked"
        user = security.get("runAsUser", pod_security.get("runAsUser"))
        non_root = security.get("runAsNonRoot", pod_security.get("runAsNonRoot"))
        if not (isinstance(user, int) and not isinstance(user, bool) and user > 0):
            if user is None and non_root is True:
                yield "root", who, ("runAsNonRoot without runAsUser: podman 4.3 does not check the image's user; "
                                    "set securityContext.runAsUser to a non-zero user id")
            else:
                shown = "unset" if user is None else repr(user)
                yield "root", who, f"runAsUser {shown}; set securityContext.runAsUser to a non-zero user id"
        elif security.get("allowPrivilegeEscalation") is True:
            yield "root", who, "securityContext.allowPrivilegeEscalation lets it become root"


def _unconfined(security: Mapping[str, Any], who: str, prefix: str) -> Iterator[tuple[str, str, str]]:
    for key in ("seccompProfile", "appArmorProfile"):
        kind = _mapping(security.get(key)).get("type")
        if kind in _PROFILE_TYPES_REFUSED:
            yield "unconfined", who, f"{prefix}.{key} {kind}"
    if security.get("seLinuxOptions"):
        yield "unconfined", who, f"{prefix}.seLinuxOptions"
