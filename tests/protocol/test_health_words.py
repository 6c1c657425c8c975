"""What a container's health words mean (edgeprotocol.health): the gate's "failing", and the sentence every side
prints about a container, which the agent puts in a release's message (edgeagent.release_health uses these)."""

from __future__ import annotations

from edgeprotocol.health import describe, failing_reason, release_failing
from edgeprotocol.messages import FAILING_REASONS, ContainerStatus

CONTAINERS = [
    ContainerStatus(name="web", ready=True),
    ContainerStatus(name="web", ready=False, restarts=4, state="waiting", reason="CrashLoopBackOff", exit_code=3,
                    last_reason="Error", last_log="crashing\n"),
    ContainerStatus(name="web", ready=True, restarts=1, exit_code=137, last_reason="OOMKilled"),
    ContainerStatus(name="web", state="waiting", reason="ImagePullBackOff"),
    ContainerStatus(name="web", state="waiting", reason="ContainerCreating"),
    ContainerStatus(name="web", ready=True, restarts=1, exit_code=0, last_reason="Completed"),
    ContainerStatus(name="web", ready=False),
]


def test_a_containers_trouble_in_a_sentence():
    sentences = [describe("web-0", c) for c in CONTAINERS]
    assert sentences == [
        "",
        'pod web-0 container web: CrashLoopBackOff: exited 3 (Error), restarted 4 times; last log: "crashing"',
        "pod web-0 container web: OOMKilled: exited 137 (OOMKilled), restarted 1 time",
        "pod web-0 container web: ImagePullBackOff",
        "pod web-0 container web: ContainerCreating",
        "pod web-0 container web: running: exited 0 (Completed), restarted 1 time",
        "pod web-0 container web: not ready",
    ]
    assert [failing_reason(c) for c in CONTAINERS] == ["", "CrashLoopBackOff", "OOMKilled", "ImagePullBackOff",
                                                       "", "", ""]


def test_what_fails_a_node_at_once():
    assert all(release_failing("Degraded", reason) for reason in FAILING_REASONS)
    assert release_failing("Failed", "") and release_failing("Deployed", "OOMKilled")
    assert not release_failing("Degraded", "") and not release_failing("Applying", "ContainerCreating")
    assert not release_failing("Deployed", "")
