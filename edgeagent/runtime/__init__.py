"""Node-local runtimes the agent applies releases to.

The agent talks to the ``Runtime`` protocol only; ``PodmanRuntime`` is the
runtime for nodes without Kubernetes.
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
from .podman import PodmanRuntime, PodmanSettings
from .podman_probes import ProbeSettings

__all__ = [
    "ApplyResult",
    "EdgeRuntimeError",
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
