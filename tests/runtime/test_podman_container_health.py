"""The node sees what the kubelet sees (real podman): restarts with back-off, exit codes and reasons, OOM kills,
the last log lines, images that cannot be pulled, readiness; checked against what podman itself shows."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import pytest
import yaml

from edgeagent.release_health import release_health
from edgeagent.runtime import PodmanRuntime, ReleaseRef, RuntimeApplyError
from edgeagent.runtime.podman_restarts import RestartSettings

from .helpers import DEMO_IMAGE, PodmanNode, eventually

pytestmark = pytest.mark.timeout(180)


def deployment(name: str, command: str, *, memory: str | None = None, readiness: list[str] | None = None,
               image: str = DEMO_IMAGE) -> str:
    container: dict = {"name": "app", "image": image, "command": ["sh", "-c", command]}
    if memory:
        container["resources"] = {"limits": {"memory": memory}}
    if readiness:
        container["readinessProbe"] = {"exec": {"command": readiness}, "periodSeconds": 1}
    return yaml.safe_dump({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
                           "spec": {"template": {"spec": {"containers": [container]}}}})


def quick(node: PodmanNode, initial: float = 1.0) -> PodmanRuntime:
    """The node's runtime with a short back-off, so a test sees several restarts in seconds."""
    return PodmanRuntime(dataclasses.replace(node.settings, restarts=RestartSettings(initial=initial, cap=2 * initial,
                                                                                     tick=0.2)))


async def container(runtime: PodmanRuntime, ref: ReleaseRef):
    observation = await runtime.observe(ref)
    [pod] = observation.pods
    [status] = pod.containers
    return observation, status


async def test_a_crash_loop_is_restarted_with_back_off_and_reported_with_exit_code_reason_and_log(
    node: PodmanNode,
) -> None:
    ref = ReleaseRef("demo", "crash")
    async with quick(node) as runtime:
        await runtime.apply(ref, deployment("crash", "echo crashing; exit 3"), node.context)

        async def looping():
            _, status = await container(runtime, ref)
            return status if status.restarts >= 2 and status.reason == "CrashLoopBackOff" else None

        status = await eventually(looping, within=30, what="two restarts, in CrashLoopBackOff")
        observation, status = await container(runtime, ref)

    assert (status.name, status.exit_code, status.last_reason) == ("app", 3, "Error")
    assert status.last_log == "crashing" and not status.ready
    # podman's own record: every start printed one line, and the container ran restarts + 1 times.
    runs = (await node.podman("logs", "demo.crash-pod-0-app")).split()
    assert runs.count("crashing") in (status.restarts + 1, status.restarts + 2)  # one more may have begun
    health = release_health(observation.pods)
    assert health.reason == "CrashLoopBackOff" and health.failing
    assert health.message.startswith("pod demo.crash-pod-0 container app: CrashLoopBackOff: exited 3 (Error), "
                                     "restarted ")
    assert health.message.endswith('; last log: "crashing"')


async def test_the_default_back_off_keeps_a_crash_loop_from_burning_the_node(node: PodmanNode) -> None:
    """The kubelet's 10 s first back-off: in 6 s after its first exit, a crashing container is not started again."""
    ref = ReleaseRef("demo", "crash")
    async with PodmanRuntime(node.settings) as runtime:
        await runtime.apply(ref, deployment("crash", "echo crashing; exit 3"), node.context)
        await eventually(lambda: _waiting(runtime, ref), within=15, what="the container waiting out its back-off")
        started = time.monotonic()
        while time.monotonic() - started < 6:
            _, status = await container(runtime, ref)
            assert status.restarts == 0 and status.state == "waiting"
            await asyncio.sleep(1)
    assert (await node.podman("logs", "demo.crash-pod-0-app")).split().count("crashing") == 1


async def _waiting(runtime: PodmanRuntime, ref: ReleaseRef):
    """The container waiting out its back-off, with its last log lines noted (the keeper's pass after the exit;
    the waiting state shows from the exit on). Every container these tests wait on prints something."""
    _, status = await container(runtime, ref)
    waiting = status.state == "waiting" and status.reason == "CrashLoopBackOff"
    return status if waiting and status.last_log else None


async def test_a_container_killed_for_memory_is_reported_oom_killed(node: PodmanNode) -> None:
    ref = ReleaseRef("demo", "hog")
    async with quick(node, initial=5.0) as runtime:
        await runtime.apply(ref, deployment("hog", "echo filling; x=a; while true; do x=$x$x; done",
                                            memory="16Mi"), node.context)
        status = await eventually(lambda: _waiting(runtime, ref), within=30, what="the hog killed and waiting")
        observation, status = await container(runtime, ref)

    inspected = json.loads(await node.podman("container", "inspect", "demo.hog-pod-0-app", "--format", "json"))[0]
    assert inspected["State"]["ExitCode"] == status.exit_code == 137
    assert status.last_reason == "OOMKilled" and status.last_log == "filling"
    health = release_health(observation.pods)
    assert health.failing and health.message.startswith(
        "pod demo.hog-pod-0 container app: CrashLoopBackOff: exited 137 (OOMKilled)")


async def test_a_container_that_runs_a_while_then_exits_waits_its_back_off_and_counts_a_restart(
    node: PodmanNode,
) -> None:
    ref = ReleaseRef("demo", "brief")
    async with quick(node, initial=2.0) as runtime:
        await runtime.apply(ref, deployment("brief", "echo up; sleep 3; echo down; exit 1"), node.context)
        _, first = await eventually(lambda: _running(runtime, ref), within=15, what="running")
        assert first.ready and first.restarts == 0 and first.reason == ""
        await eventually(lambda: _waiting(runtime, ref), within=15, what="exited and waiting")
        _, status = await container(runtime, ref)
        assert (status.exit_code, status.last_reason, status.last_log) == (1, "Error", "up\ndown")

        async def restarted():
            _, s = await container(runtime, ref)
            return s if s.restarts == 1 and s.state == "running" else None

        again = await eventually(restarted, within=15, what="started again once")
    # Just started out of a crash loop: still a crash loop until it has run a back-off's length.
    assert again.reason == "CrashLoopBackOff"


async def _running(runtime: PodmanRuntime, ref: ReleaseRef):
    observation, status = await container(runtime, ref)
    return (observation, status) if status.state == "running" else None


async def test_an_image_that_is_not_on_the_node_and_cannot_be_pulled_is_err_image_pull_naming_it(
    node: PodmanNode,
) -> None:
    runtime = PodmanRuntime(node.settings)
    with pytest.raises(RuntimeApplyError, match=r"^image localhost/edgecollab-missing:1 is not on the node and "
                                                r"cannot be pulled") as refused:
        await runtime.apply(ReleaseRef("demo", "ghost"),
                            deployment("ghost", "true", image="localhost/edgecollab-missing:1"), node.context)
    assert refused.value.reason == "ErrImagePull"


async def test_a_readiness_probe_that_never_passes_keeps_the_container_not_ready_without_restarts(
    node: PodmanNode,
) -> None:
    ref = ReleaseRef("demo", "unready")
    async with quick(node) as runtime:
        await runtime.apply(ref, deployment("unready", "sleep 3600", readiness=["false"]), node.context)
        observation, status = await eventually(lambda: _running(runtime, ref), within=15, what="running")
        await asyncio.sleep(3)
        observation, status = await container(runtime, ref)
    assert status.state == "running" and not status.ready and status.restarts == 0
    assert observation.ready == 0
    assert release_health(observation.pods).message == "pod demo.unready-pod-0 container app: not ready"
