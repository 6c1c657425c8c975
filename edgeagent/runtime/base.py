"""The runtime interface: how the agent applies a release to the node it runs on.

A runtime turns a release's rendered manifests into workloads on the node
(``apply``), takes them away again (``remove``), and says what runs now
(``observe``, ``releases``). The agent's reconcile loop is the only caller; it
never imports a concrete runtime's internals.

Errors a runtime raises on purpose::

    EdgeError                     (edgeprotocol.errors)
      EdgeRuntimeError            the runtime could not do what was asked: its
                                  tool is missing, failed or timed out
        RuntimeApplyError         the runtime refused or failed a manifest; the
                                  message names the object and says why
          ManifestRejected        the manifests themselves can never run here
                                  (not YAML, no kind, a bad field): applying the
                                  same manifests again cannot succeed, so the
                                  agent fails the revision once and waits for
                                  a new one
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from edgeprotocol.errors import EdgeError
from edgeprotocol.messages import ConditionType, ContainerStatus
from edgeprotocol.topics import check_name

__all__ = [
    "ApplyResult",
    "EdgeRuntimeError",
    "ManifestRejected",
    "NodeContext",
    "Observation",
    "PodState",
    "PreflightCheck",
    "ReleaseRef",
    "Runtime",
    "RuntimeApplyError",
]


class EdgeRuntimeError(EdgeError):
    """A runtime call failed: the tool is missing, broken or did not answer in time."""


class RuntimeApplyError(EdgeRuntimeError):
    """The runtime refused or failed a manifest; the message names the object and why.

    ``reason`` is the kubelet's word for it when there is one (``ErrImagePull``:
    an image is not on the node and cannot be pulled; ``CreateContainerError``:
    the runtime refused to create a container); "" otherwise.
    """

    def __init__(self, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class ManifestRejected(RuntimeApplyError):
    """The manifests can never run on this runtime, whatever the node's state: a deterministic refusal."""


@dataclass(frozen=True, slots=True)
class ReleaseRef:
    """One release on a node: the Helm release ``release`` in ``namespace``.

    Both parts are DNS labels (the protocol's name rule), so ``str(ref)``
    (``"namespace/release"``) is unambiguous and both are safe in podman names,
    label values and file names.
    """

    namespace: str
    release: str

    def __post_init__(self) -> None:
        check_name(self.namespace, "namespace")
        check_name(self.release, "release")

    def __str__(self) -> str:
        return f"{self.namespace}/{self.release}"


@dataclass(frozen=True, slots=True)
class NodeContext:
    """Who the node is: injected into every workload at apply time, not at render time."""

    node: str
    pool: str

    def __post_init__(self) -> None:
        check_name(self.node, "node")
        check_name(self.pool, "pool")


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What an apply did beside running the workloads.

    ``warnings`` lists every manifest the runtime did not apply and why, e.g.
    ``"Service/web: kind not supported by podman, not applied"``.
    """

    warnings: tuple[str, ...] = ()
    # One line per Helm hook the apply ran ("pre-install hook Job/x succeeded in 1.2 s").
    hooks: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PodState:
    """One pod of a release as the runtime sees it now.

    ``phase`` is the runtime's word for the pod (podman: ``Running``,
    ``Degraded``, ``Exited``, ``Created``, ... or ``Missing`` for a pod the
    manifests ask for that does not exist). ``ready`` is true when every
    (non-init) container of the pod runs. ``container_ids`` and ``started_at``
    (RFC 3339, the latest start of any of its containers, empty if none ever
    started) change when a container is recreated or restarted: compare them to
    prove a pod was left alone.
    """

    name: str
    phase: str
    ready: bool
    container_ids: tuple[str, ...]
    started_at: str
    # Each app container as the kubelet would show it (restarts, state, reason,
    # last exit code and log): what the release's health is judged by.
    containers: tuple[ContainerStatus, ...] = ()


@dataclass(frozen=True, slots=True)
class Observation:
    """What runs now for a release.

    ``total`` is the number of pods the release's manifests ask for, ``ready``
    how many of those have all their containers running; ``pods`` holds one
    state per pod asked for (missing ones included) plus any leftover pod the
    runtime still holds for the release. ``message`` explains a shortfall.
    ``failed`` names the workloads whose own controller has given up on them
    (a Deployment past its ``progressDeadlineSeconds``, a Job out of retries):
    no waiting makes those ready, so the release is Degraded at once rather
    than after the agent's ready timeout.
    """

    ready: int
    total: int
    pods: tuple[PodState, ...]
    message: str = ""
    failed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PreflightCheck:
    """One thing a node needs before it can run releases, checked now.

    ``name`` is short and stable (``podman``, ``storage``, ``pod``);
    ``detail`` says what was found, or what failed and what to do about it.
    ``condition`` is the node condition the check feeds (None: doctor only),
    ``reason`` the CamelCase reason that condition takes when this check fails.
    ``warning``: passed, but something needs looking at soon (doctor says ``WARN``).
    """

    name: str
    ok: bool
    detail: str
    condition: ConditionType | None = None
    reason: str = ""
    warning: bool = False


@runtime_checkable
class Runtime(Protocol):
    """A node-local workload runtime (podman, a local Kubernetes, ...).

    An async context manager: the agent enters it for its whole life, so the
    runtime can own background work (probes, say). Entering must not fail for
    a broken node: ``preflight`` reports that.
    """

    name: str

    async def __aenter__(self) -> Runtime: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    async def apply(self, ref: ReleaseRef, manifests: str, node: NodeContext, *,
                    revision: int | None = None) -> ApplyResult:
        """Make the node run exactly ``manifests`` (multi-document YAML) for ``ref``.

        Objects the previous apply of ``ref`` created and ``manifests`` no longer
        holds are removed. Raises RuntimeApplyError naming the object at fault.
        ``revision`` is the hub's revision number of ``manifests`` (the agent
        always gives it): a runtime that labels what it applies with the
        revision (kubernetes) uses this one, never a count of its own.
        """
        ...

    async def remove(self, ref: ReleaseRef, node: NodeContext | None = None) -> None:
        """Remove everything the runtime holds for ``ref``; an unknown release is fine.

        ``node`` is who the node is, for the release's delete hooks.
        """
        ...

    async def observe(self, ref: ReleaseRef) -> Observation:
        """Report what runs now for ``ref``."""
        ...

    async def releases(self) -> set[ReleaseRef]:
        """Every release the runtime currently holds anything for."""
        ...

    async def preflight(self) -> tuple[PreflightCheck, ...]:
        """Check, for real, that this node can run pods: one result per check, in order.

        Never raises for a broken node: a failure is a check with ``ok`` false
        whose detail carries the tool's own error.
        """
        ...


def writable_work_dir(path: Path) -> str:
    """What is wrong with ``path`` as a runtime's work directory (created when missing), or "" (blocks)."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        probe = path / f".edgecollab-probe-{os.getpid()}"
        probe.write_bytes(b"probe")
        probe.unlink()
    except OSError as exc:
        return f"{path} is not writable: {exc.strerror or exc}"
    if shutil.disk_usage(path).free < 1 << 20:
        return f"{path}: less than 1 MiB free"
    return ""
