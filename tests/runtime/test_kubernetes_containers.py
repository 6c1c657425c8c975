"""What the Kubernetes runtime reports of each container, from pods as the API server returns them (``kubectl get
pod -o json``): restarts, the waiting reason, the last termination, and what ``release_health`` makes of it.

Pure: no cluster, no client. The same pods against a real cluster are in test_kubernetes_cluster.py.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from edgeagent.release_health import release_health
from edgeagent.runtime.kubernetes_plan import (
    KubeObject,
    label_selector,
    last_lines,
    log_requests,
    observation_from,
    pod_state,
    workload_pods,
)
from edgeprotocol.messages import ContainerStatus

FINISHED = "2026-12-07T19:00:00Z"


def pod(name: str = "web-7d4b9c-x2x7k", *, containers: list[dict[str, Any]], phase: str = "Running",
        ready: bool = False, init: list[dict[str, Any]] | None = None, owner: str = "rs-uid",
        **meta: Any) -> dict[str, Any]:
    """A pod as the API server returns it: only the fields the runtime reads, spelled as the server spells them."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "demo", "uid": f"uid-{name}",
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9c",
                                          "uid": owner, "controller": True}], **meta},
        "status": {"phase": phase,
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                   "containerStatuses": containers, **({"initContainerStatuses": init} if init else {})},
    }


def crash_looping(name: str = "web", restarts: int = 4) -> dict[str, Any]:
    return {"name": name, "image": "busybox:1.36", "ready": False, "restartCount": restarts, "started": False,
            "containerID": "containerd://c4",
            "state": {"waiting": {"reason": "CrashLoopBackOff",
                                  "message": "back-off 1m20s restarting failed container=web"}},
            "lastState": {"terminated": {"exitCode": 3, "reason": "Error", "startedAt": "2026-12-07T18:59:59Z",
                                         "finishedAt": FINISHED, "containerID": "containerd://c3"}}}


def running(name: str = "web", *, ready: bool = True, restarts: int = 0) -> dict[str, Any]:
    return {"name": name, "image": "busybox:1.36", "ready": ready, "restartCount": restarts, "started": True,
            "containerID": f"containerd://{name}-1", "state": {"running": {"startedAt": "2026-12-07T18:00:00Z"}},
            "lastState": {}}


def waiting(reason: str, name: str = "web") -> dict[str, Any]:
    return {"name": name, "image": "registry.invalid/none:1", "ready": False, "restartCount": 0, "started": False,
            "state": {"waiting": {"reason": reason, "message": f"{reason} for the test"}}, "lastState": {}}


def test_a_crash_loop_shows_crashloopbackoff_the_exit_code_the_count_and_the_last_log() -> None:
    crashing = pod(containers=[crash_looping()])

    (request,) = log_requests(crashing)
    # The kubelet's "previous" container is lastState.terminated: the one that crashed.
    assert (request.pod, request.container, request.previous) == ("web-7d4b9c-x2x7k", "web", True)
    assert request.key == ("uid-web-7d4b9c-x2x7k", "web", 4, FINISHED)

    state = pod_state(crashing, {"web": "crashing"})
    assert (state.name, state.phase, state.ready) == ("web-7d4b9c-x2x7k", "Running", False)
    assert state.containers == (ContainerStatus(name="web", ready=False, restarts=4, state="waiting",
                                                reason="CrashLoopBackOff", exit_code=3, last_reason="Error",
                                                finished_at=FINISHED, last_log="crashing"),)

    health = release_health([state])
    assert (health.reason, health.restarts, health.failing) == ("CrashLoopBackOff", 4, True)
    assert health.message == ('pod web-7d4b9c-x2x7k container web: CrashLoopBackOff: exited 3 (Error), '
                              'restarted 4 times; last log: "crashing"')


def test_an_oom_killed_container_that_runs_again_is_still_oomkilled() -> None:
    oom = running(ready=True, restarts=1)
    oom["lastState"] = {"terminated": {"exitCode": 137, "reason": "OOMKilled", "finishedAt": FINISHED}}
    state = pod_state(pod(containers=[oom], ready=True))

    (container,) = state.containers
    assert (container.state, container.ready, container.restarts) == ("running", True, 1)
    assert (container.exit_code, container.last_reason, container.finished_at) == (137, "OOMKilled", FINISHED)
    assert [r.previous for r in log_requests(pod(containers=[oom]))] == [True]

    health = release_health([state])
    assert (health.reason, health.restarts) == ("OOMKilled", 1)
    assert health.message == "pod web-7d4b9c-x2x7k container web: OOMKilled: exited 137 (OOMKilled), restarted 1 time"


@pytest.mark.parametrize("reason", ["ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError"])
def test_a_container_that_cannot_start_shows_the_kubelets_reason(reason: str) -> None:
    stuck = pod(containers=[waiting(reason)], phase="Pending")

    state = pod_state(stuck)
    assert state.phase == "Pending"
    assert state.containers == (ContainerStatus(name="web", ready=False, restarts=0, state="waiting",
                                                reason=reason),)
    assert log_requests(stuck) == []  # it never ran: no log to read
    health = release_health([state])
    assert (health.reason, health.failing) == (reason, True)
    assert health.message == f"pod web-7d4b9c-x2x7k container web: {reason}"


def test_a_running_ready_container_is_healthy() -> None:
    state = pod_state(pod(containers=[running()], ready=True))

    assert state.ready and state.started_at == "2026-12-07T18:00:00Z"
    assert state.container_ids == ("containerd://web-1",)
    assert state.containers == (ContainerStatus(name="web", ready=True, restarts=0, state="running"),)
    health = release_health([state])
    assert (health.reason, health.restarts, health.message, health.failing) == ("", 0, "", False)


def test_a_running_container_whose_readiness_probe_fails_is_not_ready_without_a_failing_reason() -> None:
    state = pod_state(pod(containers=[running(ready=False)]))

    (container,) = state.containers
    assert (container.state, container.ready, container.reason) == ("running", False, "")
    health = release_health([state])
    # Not ready is not a failure by itself: the gate waits it out up to readyWithin.
    assert (health.reason, health.failing) == ("", False)
    assert health.message == "pod web-7d4b9c-x2x7k container web: not ready"


def test_a_failing_init_container_is_reported_a_completed_one_is_not() -> None:
    done = {"name": "migrate", "ready": True, "restartCount": 0,
            "state": {"terminated": {"exitCode": 0, "reason": "Completed", "finishedAt": FINISHED}}}
    failing = crash_looping("wait-for-db", restarts=2)
    app = waiting("PodInitializing")
    stuck = pod(containers=[app], init=[done, failing], phase="Pending")

    state = pod_state(stuck, {"wait-for-db": "db: connection refused"})
    assert [c.name for c in state.containers] == ["wait-for-db", "web"]
    health = release_health([state])
    assert health.reason == "CrashLoopBackOff"
    assert health.message.startswith("pod web-7d4b9c-x2x7k container wait-for-db: CrashLoopBackOff: exited 3")
    assert health.message.endswith('last log: "db: connection refused"')

    initialising = pod(containers=[app], init=[done, {**waiting("PodInitializing", "second"), "lastState": {}}])
    assert [c.name for c in pod_state(initialising).containers] == ["web"]


def test_a_container_terminated_now_has_its_log_read_from_the_current_instance() -> None:
    # A Job's pod (restartPolicy Never): not restarted, so the kubelet's "previous" container does not exist.
    failed = {"name": "task", "ready": False, "restartCount": 0,
              "state": {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": FINISHED}}, "lastState": {}}
    job_pod = pod("task-x7", containers=[failed], phase="Failed")

    (request,) = log_requests(job_pod)
    assert request.previous is False
    (container,) = pod_state(job_pod).containers
    assert (container.state, container.reason, container.exit_code, container.last_reason) == \
        ("terminated", "Error", 1, "Error")
    # A clean exit that is not a crash loop: nothing to read.
    clean = copy.deepcopy(failed)
    clean["state"]["terminated"].update(exitCode=0, reason="Completed")
    assert log_requests(pod("task-x8", containers=[clean])) == []


def test_a_deployments_pods_are_those_of_its_own_replicasets() -> None:
    deployment = {"kind": "Deployment", "metadata": {"name": "web", "namespace": "demo", "uid": "d1"}}
    replicasets = [
        {"metadata": {"name": "web-new", "uid": "rs-new", "ownerReferences": [{"uid": "d1"}]}},
        {"metadata": {"name": "web-old", "uid": "rs-old", "ownerReferences": [{"uid": "d1"}]}},
        {"metadata": {"name": "other", "uid": "rs-other", "ownerReferences": [{"uid": "d2"}]}},
    ]
    pods = [pod("web-new-b", containers=[running()], owner="rs-new"),
            pod("web-new-a", containers=[crash_looping()], owner="rs-new"),
            pod("web-old-a", containers=[running()], owner="rs-old", deletionTimestamp="2026-12-07T19:00:01Z"),
            pod("other-a", containers=[crash_looping()], owner="rs-other")]  # the same labels, another owner

    mine = workload_pods(deployment, pods, replicasets)
    # Another Deployment's pods are not this one's; one being deleted during a rollout says nothing of its health.
    assert [p["metadata"]["name"] for p in mine] == ["web-new-a", "web-new-b"]
    statefulset = {"kind": "StatefulSet", "metadata": {"name": "db", "uid": "s1"}}
    done = pod("db-0", containers=[running()], owner="s1", phase="Succeeded")
    assert workload_pods(statefulset, [pod("db-1", containers=[running()], owner="s1"), done]) == \
        [pod("db-1", containers=[running()], owner="s1")]


def test_a_label_selector_is_written_as_the_api_reads_it() -> None:
    assert label_selector({"matchLabels": {"app": "web", "tier": "front"},
                           "matchExpressions": [{"key": "env", "operator": "In", "values": ["a", "b"]},
                                                {"key": "canary", "operator": "DoesNotExist"},
                                                {"key": "zone", "operator": "Exists"}]}) == \
        "app=web,tier=front,env in (a,b),!canary,zone"
    # An empty selector would list every pod of the namespace: none instead.
    assert label_selector({}) is None and label_selector(None) is None
    assert label_selector({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}) is None


def test_the_last_lines_of_a_log_are_its_last_three_non_empty_lines() -> None:
    assert last_lines("starting\nloading\n\nconfig missing\ncrashing\n\n") == "loading\nconfig missing\ncrashing"
    assert last_lines("") == ""


def test_a_crash_looping_deployment_is_degraded_by_its_workload_and_crashloopbackoff_by_its_pods() -> None:
    body = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "demo"}}
    web = KubeObject("apps/v1", "Deployment", "demo", "web", body, "Deployment/web")
    config = KubeObject("v1", "ConfigMap", "demo", "conf", {}, "ConfigMap/conf")
    live = {web.key: {"kind": "Deployment", "metadata": {"name": "web", "uid": "d1", "generation": 1},
                      "spec": {"replicas": 1},
                      "status": {"observedGeneration": 1, "updatedReplicas": 1, "unavailableReplicas": 1}},
            config.key: {"kind": "ConfigMap"}}
    crashing = pod_state(pod(containers=[crash_looping()]), {"web": "crashing"})

    seen = observation_from([config, web], live, pods={web.key: [crashing]})

    # The workload is counted as before; its pod follows it, with the containers.
    assert (seen.ready, seen.total) == (0, 1)
    assert [(p.name, p.phase) for p in seen.pods] == [("Deployment/web", "Progressing"),
                                                      ("web-7d4b9c-x2x7k", "Running")]
    assert seen.message == "1 of 1 workloads not ready: Deployment/web (Progressing: 0/1 replicas available, " \
                           "1 updated)"
    health = release_health(seen.pods)
    assert (health.reason, health.restarts) == ("CrashLoopBackOff", 4)
    assert [p.name for p in health.pods] == ["web-7d4b9c-x2x7k"]  # the workload entry holds no containers


def test_the_mapping_reads_the_fields_as_the_kubernetes_client_serializes_them() -> None:
    client = pytest.importorskip("kubernetes.client", reason="the kubernetes client (the k8s extra)")
    from datetime import UTC, datetime

    finished = datetime(2026, 12, 7, 19, 0, tzinfo=UTC)
    model = client.V1Pod(
        api_version="v1", kind="Pod",
        metadata=client.V1ObjectMeta(name="web-0", namespace="demo", uid="u0"),
        status=client.V1PodStatus(phase="Running", container_statuses=[client.V1ContainerStatus(
            name="web", image="busybox:1.36", image_id="", ready=False, restart_count=4,
            state=client.V1ContainerState(waiting=client.V1ContainerStateWaiting(reason="CrashLoopBackOff")),
            last_state=client.V1ContainerState(terminated=client.V1ContainerStateTerminated(
                exit_code=3, reason="Error", finished_at=finished)))]))
    as_json = client.ApiClient().sanitize_for_serialization(model)

    (container,) = pod_state(as_json).containers
    assert (container.restarts, container.reason, container.exit_code, container.last_reason) == \
        (4, "CrashLoopBackOff", 3, "Error")
    assert datetime.fromisoformat(container.finished_at) == finished
    assert [r.previous for r in log_requests(as_json)] == [True]
