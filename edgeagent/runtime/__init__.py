"""Node-local runtimes the agent applies releases to.

The agent talks to the ``Runtime`` protocol only; ``PodmanRuntime`` is the
runtime for nodes without Kubernetes, ``KubernetesRuntime`` the one for nodes
with their own cluster (k3s); it imports the ``kubernetes`` client only when
it first talks to the cluster. ``DryRunRuntime`` validates and records
releases without running them (rehearsals, benchmarks). The Kubernetes and
dry-run runtimes are imported on first use (``__getattr__`` below), so a
podman node never loads the Kubernetes runtime's modules (nor the plan the
dry-run runtime checks releases with).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from .dryrun import DryRunRuntime, DryRunSettings
    from .kubernetes import KubernetesRuntime, KubernetesSettings

# Names imported on first use: what each costs in memory is paid only by the nodes that use it.
_LAZY = {"KubernetesRuntime": ".kubernetes", "KubernetesSettings": ".kubernetes",
         "DryRunRuntime": ".dryrun", "DryRunSettings": ".dryrun"}

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


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
