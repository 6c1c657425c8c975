"""Node-local runtimes the agent applies releases to.

The agent talks to the ``Runtime`` protocol only; ``PodmanRuntime`` is the
runtime for nodes without Kubernetes, ``KubernetesRuntime`` the one for nodes
with their own cluster (k3s); it imports the ``kubernetes`` client only when
it first talks to the cluster. ``DryRunRuntime`` validates and records
releases without running them (rehearsals, benchmarks).
"""

from .base import (
    ApplyResult,
    EdgeRuntimeError,
    ManifestRejected,
    NodeContext,
    Observation,
    PodState,
    PreflightCheck,
    ReleaseRef,
    Runtime,
    RuntimeApplyError,
)
from .dryrun import DryRunRuntime, DryRunSettings
from .kubernetes import KubernetesRuntime, KubernetesSettings
from .podman import PodmanRuntime, PodmanSettings
from .podman_probes import ProbeSettings

__all__ = [
    "ApplyResult",
    "DryRunRuntime",
    "DryRunSettings",
    "EdgeRuntimeError",
    "KubernetesRuntime",
    "KubernetesSettings",
    "ManifestRejected",
    "NodeContext",
    "Observation",
    "PodState",
    "PodmanRuntime",
    "PodmanSettings",
    "PreflightCheck",
    "ProbeSettings",
    "ReleaseRef",
    "Runtime",
    "RuntimeApplyError",
]
