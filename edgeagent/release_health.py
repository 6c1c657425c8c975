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

from collections.abc import Iterable
from dataclasses import dataclass

from edgeprotocol.health import describe, failing_reason, rank
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


def release_health(pods: Iterable[PodState]) -> ReleaseHealth:
    """The release's health from its pods' containers."""
    detailed = tuple(PodStatus(name=p.name, containers=p.containers) for p in pods if p.containers)
    restarts = sum(c.restarts for p in detailed for c in p.containers)
    worst: tuple[int, str, ContainerStatus] | None = None
    for pod in detailed:
        for container in pod.containers:
            badness = rank(container)
            if badness and (worst is None or badness > worst[0]):
                worst = (badness, pod.name, container)
    if worst is None:
        return ReleaseHealth(restarts=restarts, pods=detailed)
    _, pod_name, container = worst
    reason = failing_reason(container) or (container.reason if container.state == "waiting" else "")
    return ReleaseHealth(reason=reason, restarts=restarts, message=describe(pod_name, container), pods=detailed)
