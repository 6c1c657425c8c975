"""What the health words of a status mean, the same on every side: which fail a node at once, and a container's
trouble in a sentence.

The hub's health gate, its views and summaries, and ``edgectl`` judge a
release by what its node reported (``ReleaseStatus``: ``phase``, ``reason``,
``pods``); this module is the one place that says what counts as failing, so
none of them counts it its own way. ``describe`` is the sentence the agent
puts in a release's message for its worst container (``edgeagent.release_health``
sums a release up with these same rules), which ``edgectl describe node``
prints for every unhealthy container.
"""

from __future__ import annotations

import json

from .messages import FAILING_REASONS, ContainerStatus

__all__ = ["describe", "failing_reason", "rank", "release_failing"]


def release_failing(phase: str, reason: str) -> bool:
    """Whether a release as its node reported it has failed for good: its apply Failed, or a container is in a
    ``FAILING_REASONS`` state (crash loop, image that cannot be pulled, OOM kill), which no waiting makes right.
    The health gate fails a node on it as soon as it hears it."""
    return phase == "Failed" or reason in FAILING_REASONS


def failing_reason(container: ContainerStatus) -> str:
    """The ``FAILING_REASONS`` word of a container ("" for none): its waiting reason, or an OOM kill (one that
    was OOM-killed and restarted runs again, but is not healthy)."""
    if container.reason in FAILING_REASONS:
        return container.reason
    return "OOMKilled" if container.last_reason == "OOMKilled" else ""


def rank(container: ContainerStatus) -> int:
    """How bad a container's state is: 3 a failing reason, 2 waiting, 1 restarted or not ready, 0 healthy."""
    if failing_reason(container):
        return 3
    if container.state == "waiting":
        return 2
    if container.restarts or not container.ready:
        return 1
    return 0


def describe(pod: str, container: ContainerStatus) -> str:
    """One container's trouble in a sentence ("" for a healthy one), e.g.
    ``pod web-0 container web: CrashLoopBackOff: exited 3 (Error), restarted 4 times; last log: "crashing"``."""
    if not rank(container):
        return ""
    word = failing_reason(container) or container.reason or ("running" if container.ready else "not ready")
    text = f"pod {pod} container {container.name}: {word}"
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
