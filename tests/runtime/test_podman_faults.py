"""What observe says when pods change behind the runtime's back."""

from __future__ import annotations

import pytest

from edgeagent.runtime import Observation, ReleaseRef

from .helpers import PodmanNode, eventually, render_web

pytestmark = pytest.mark.timeout(60)

DEMO_WEB = ReleaseRef("demo", "web")


async def test_a_pod_removed_behind_the_runtimes_back_shows_as_missing_and_not_ready(node: PodmanNode) -> None:
    await node.runtime.apply(DEMO_WEB, render_web(), node.context)

    await node.podman("pod", "stop", "-t", "0", "demo.web-pod-0")
    await node.podman("pod", "rm", "demo.web-pod-0")

    seen = await node.runtime.observe(DEMO_WEB)
    assert (seen.ready, seen.total) == (0, 1)
    assert seen.pods[0].phase == "Missing"
    assert "demo.web-pod-0 (Missing)" in seen.message
    assert DEMO_WEB in await node.runtime.releases()  # still on record: the agent will re-apply


async def test_a_stopped_pod_shows_as_not_ready_and_reapplying_brings_it_back(node: PodmanNode) -> None:
    manifests = render_web()
    await node.runtime.apply(DEMO_WEB, manifests, node.context)
    before = await node.runtime.observe(DEMO_WEB)

    await node.podman("pod", "stop", "-t", "0", "demo.web-pod-0")
    stopped = await node.runtime.observe(DEMO_WEB)
    assert (stopped.ready, stopped.total) == (0, 1)
    # A Deployment's pod: its containers wait out their back-off, then the agent starts them again.
    assert stopped.pods[0].phase == "Waiting"
    assert [(c.state, c.reason, c.exit_code) for c in stopped.pods[0].containers] == [
        ("waiting", "CrashLoopBackOff", 137)]

    await node.runtime.apply(DEMO_WEB, manifests, node.context)
    after = await node.runtime.observe(DEMO_WEB)
    assert (after.ready, after.total) == (1, 1)
    assert after.pods[0].container_ids != before.pods[0].container_ids


async def test_observing_twice_shows_the_same_containers_and_start_times(node: PodmanNode) -> None:
    await node.runtime.apply(DEMO_WEB, render_web(), node.context)

    first = await node.runtime.observe(DEMO_WEB)
    second = await node.runtime.observe(DEMO_WEB)

    assert first == second
    assert first.pods[0].started_at


async def test_a_container_restarted_by_the_agent_keeps_its_id_and_shows_a_later_start_time(
    node: PodmanNode,
) -> None:
    await node.runtime.apply(DEMO_WEB, render_web(), node.context)
    before = await node.runtime.observe(DEMO_WEB)

    # The server's shell exits on SIGTERM; restartPolicy Always brings it back after the kubelet's 10 s back-off.
    # (the exec dies with the container it runs in, hence check=False)
    await node.podman("exec", "demo.web-pod-0-httpd", "kill", "-TERM", "1", check=False)

    async def restarted() -> Observation | None:
        seen = await node.runtime.observe(DEMO_WEB)
        return seen if seen.ready and seen.pods[0].started_at != before.pods[0].started_at else None

    after = await eventually(restarted, within=25, what="the container restarted and running again")
    assert after.pods[0].container_ids == before.pods[0].container_ids
    assert rfc3339_key(after.pods[0].started_at) > rfc3339_key(before.pods[0].started_at)
    [container] = after.pods[0].containers
    assert (container.restarts, container.exit_code, container.last_reason) == (1, 0, "Completed")


def rfc3339_key(value: str) -> tuple[str, str]:
    """podman's times trim trailing zeros from the fraction: pad them to compare."""
    head, _, fraction = value.rstrip("Z").partition(".")
    return head, fraction.ljust(9, "0")
