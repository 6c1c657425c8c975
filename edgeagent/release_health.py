"""A release's health in one word and one sentence, from what its containers do: pure, every runtime's.

The runtimes report each container as the kubelet would show it
(``edgeprotocol.messages.ContainerStatus``); this module sums that up for the
release's status:

- ``restarts``: every container's restarts together. The hub's health gate
  restarts a node's clock whenever it grows;
- ``reason``: the worst container's word. A ``FAILING_REASONS`` word
  (CrashLoopBackOff, ImagePullBackOff, OOMKilled, ...) wins over any other, and a
  waiting reason over a terminated one; "" when every container is healthy;
- ``message``: the container it is about, in the words of the issue that
  asked for it::

      pod web-0 container web: CrashLoopBackOff: exited 3 (Error), restarted 4 times; last log: "crashing"

A container counts as failing by its last termination too: one that was
OOM-killed and restarted runs again, but the release is not healthy.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from edgeprotocol.messages import FAILING_REASONS, ContainerStatus, PodStatus

from .runtime.base import PodState

__all__ = ["ReleaseHealth", "release_health"]


@dataclass(frozen=True, slots=True)
class ReleaseHealth:
    """What the release's status says of its containers (see the module docstring)."""

    reason: str = ""
    restarts: int = 0
    message: str = ""
    pods: tuple[PodStatus, ...] = ()

    @property
    def failing(self) -> bool:
        """Whether no waiting makes this release healthy: the gate fails a node on it at once."""
        return self.reason in FAILING_REASONS


def _failing_reason(container: ContainerStatus) -> str:
    """The ``FAILING_REASONS`` word of a container ("" for none): its waiting reason, or an OOM kill."""
    if container.reason in FAILING_REASONS:
        return container.reason
    return "OOMKilled" if container.last_reason == "OOMKilled" else ""


def _rank(container: ContainerStatus) -> int:
    """How bad a container's state is: 3 a failing reason, 2 waiting, 1 restarted or not ready, 0 healthy."""
    if _failing_reason(container):
        return 3
    if container.state == "waiting":
        return 2
    if container.restarts or not container.ready:
        return 1
    return 0


def describe(pod: str, container: ContainerStatus) -> str:
    """One container's trouble in a sentence ("" for a healthy one)."""
    if not _rank(container):
        return ""
    text = f"pod {pod} container {container.name}: {_failing_reason(container) or container.reason or 'not ready'}"
    details = []
    if container.exit_code is not None:
        how = container.last_reason or ("Completed" if container.exit_code == 0 else "Error")
        details.append(f"exited {container.exit_code} ({how})")
    if container.restarts:
        details.append(f"restarted {container.restarts} time{'s' if container.restarts != 1 else ''}")
    if details:
        text += ": " + ", ".join(details)
    if container.last_log.strip():
        text += f"; last log: {json.dumps(container.last_log.strip(), ensure_ascii=False)}"
    return text


def release_health(pods: Iterable[PodState]) -> ReleaseHealth:
    """The release's health from its pods' containers."""
    detailed = tuple(PodStatus(name=p.name, containers=p.containers) for p in pods if p.containers)
    restarts = sum(c.restarts for p in detailed for c in p.containers)
    worst: tuple[int, str, ContainerStatus] | None = None
    for pod in detailed:
        for container in pod.containers:
            rank = _rank(container)
            if rank and (worst is None or rank > worst[0]):
                worst = (rank, pod.name, container)
    if worst is None:
        return ReleaseHealth(restarts=restarts, pods=detailed)
    _, pod_name, container = worst
    reason = _failing_reason(container) or (container.reason if container.state == "waiting" else "")
    return ReleaseHealth(reason=reason, restarts=restarts, message=describe(pod_name, container), pods=detailed)
