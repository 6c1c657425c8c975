"""Applying a release: what runs afterwards, checked through podman itself."""

from __future__ import annotations

import json

import pytest

from edgeagent.runtime import ManifestRejected, ReleaseRef, RuntimeApplyError

from .helpers import PodmanNode, render_web

pytestmark = pytest.mark.timeout(60)

DEMO_WEB = ReleaseRef("demo", "web")


async def container_env(node: PodmanNode, container: str) -> dict[str, str]:
    raw = json.loads(await node.podman("inspect", container, "--format", "{{json .Config.Env}}"))
    return dict(item.split("=", 1) for item in raw)


async def test_applying_the_web_chart_serves_the_message_with_node_identity_and_values_in_env(
    node: PodmanNode,
) -> None:
    manifests = render_web({"message": "hello from edgecollab", "greeting": "ni hao shanghai"})

    result = await node.runtime.apply(DEMO_WEB, manifests, node.context)

    assert result.warnings == ()
    assert await node.fetch("demo.web-pod-0-httpd") == "hello from edgecollab\n"
    env = await container_env(node, "demo.web-pod-0-httpd")
    assert env["EDGE_NODE_NAME"] == "edge-1"
    assert env["EDGE_NODE_POOL"] == "shanghai"
    assert env["GREETING"] == "ni hao shanghai"
    labels = json.loads(await node.podman("pod", "inspect", "demo.web-pod-0", "--format", "{{json .Labels}}"))
    assert labels["edgecollab.io/node"] == "edge-1"
    assert labels["edgecollab.io/pool"] == "shanghai"
    assert labels["edgecollab.io/release"] == "demo.web"
    assert labels["edgecollab.io/namespace"] == "demo"
    assert await node.podman("exec", "demo.web-pod-0-httpd", "hostname") == "web-pod-0\n"


async def test_observe_reports_the_ready_pod_with_its_container_ids_and_start_time(node: PodmanNode) -> None:
    await node.runtime.apply(DEMO_WEB, render_web(), node.context)

    seen = await node.runtime.observe(DEMO_WEB)

    assert (seen.ready, seen.total) == (1, 1)
    (pod,) = seen.pods
    assert pod.name == "demo.web-pod-0"
    assert pod.ready and pod.phase == "Running"
    running = (await node.podman("ps", "--no-trunc", "--filter", "name=demo.web-pod-0-httpd", "--format",
                                 "{{.ID}}")).split()
    assert pod.container_ids == tuple(running)
    started = (await node.podman("inspect", running[0], "--format", "{{.State.StartedAt}}")).strip()
    assert pod.started_at.startswith(started[:19].replace(" ", "T"))
    assert seen.message == ""


async def test_kinds_podman_cannot_run_are_reported_as_warnings_and_the_rest_still_runs(node: PodmanNode) -> None:
    manifests = render_web({"service": {"enabled": True}})

    result = await node.runtime.apply(DEMO_WEB, manifests, node.context)

    assert result.warnings == ("Service/web: not run on podman (podman has no cluster networking or service IPs; "
                               "reach pods through hostPort or hostNetwork)",)
    assert (await node.runtime.observe(DEMO_WEB)).ready == 1


async def test_an_image_missing_with_pull_policy_never_fails_naming_the_deployment(node: PodmanNode) -> None:
    manifests = render_web({"image": {"repository": "localhost/not-here", "tag": "1"}})

    with pytest.raises(RuntimeApplyError) as failure:
        await node.runtime.apply(DEMO_WEB, manifests, node.context)

    assert "Deployment/web" in str(failure.value)
    assert "image not known" in str(failure.value)
    assert "image not known" in str(failure.value.__cause__)  # podman's own words, chained
    assert not isinstance(failure.value, ManifestRejected)  # the image may be loaded later
    seen = await node.runtime.observe(DEMO_WEB)
    assert (seen.ready, seen.total) == (0, 1)
    assert "not ready" in seen.message


async def test_invalid_yaml_is_rejected_before_podman_is_asked(node: PodmanNode) -> None:
    with pytest.raises(ManifestRejected, match="invalid YAML"):
        await node.runtime.apply(DEMO_WEB, "kind: Pod\nmetadata: {name: [oops\n", node.context)

    assert not node.runtime.played_file(DEMO_WEB).exists()
    assert await node.runtime.releases() == set()


async def test_a_manifest_without_containers_fails_naming_the_object(node: PodmanNode) -> None:
    bad = "apiVersion: v1\nkind: Pod\nmetadata: {name: empty}\nspec: {containers: []}\n"

    with pytest.raises(ManifestRejected, match=r"^Pod/empty: spec.containers"):
        await node.runtime.apply(DEMO_WEB, bad, node.context)


async def test_applying_the_same_manifests_twice_leaves_the_pod_running(node: PodmanNode) -> None:
    manifests = render_web()
    await node.runtime.apply(DEMO_WEB, manifests, node.context)

    await node.runtime.apply(DEMO_WEB, manifests, node.context)

    seen = await node.runtime.observe(DEMO_WEB)
    assert (seen.ready, seen.total) == (1, 1)
    assert await node.fetch("demo.web-pod-0-httpd") == "hello from edgecollab\n"


async def test_a_new_revision_replaces_the_page_and_removes_pods_it_no_longer_has(node: PodmanNode) -> None:
    await node.runtime.apply(DEMO_WEB, render_web({"replicas": 2}), node.context)
    assert (await node.runtime.observe(DEMO_WEB)).total == 2

    await node.runtime.apply(DEMO_WEB, render_web({"replicas": 1, "message": "revision 2"}), node.context)

    seen = await node.runtime.observe(DEMO_WEB)
    assert (seen.ready, seen.total) == (1, 1)
    assert [p.name for p in seen.pods] == ["demo.web-pod-0"]
    assert (await node.podman("pod", "ps", "--format", "{{.Name}}")).split() == ["demo.web-pod-0"]
    assert await node.fetch("demo.web-pod-0-httpd") == "revision 2\n"


async def test_deployment_replicas_run_as_that_many_pods(node: PodmanNode) -> None:
    await node.runtime.apply(DEMO_WEB, render_web({"replicas": 3}), node.context)

    seen = await node.runtime.observe(DEMO_WEB)

    assert (seen.ready, seen.total) == (3, 3)
    assert [p.name for p in seen.pods] == ["demo.web-pod-0", "demo.web-pod-1", "demo.web-pod-2"]
    assert len({p.container_ids for p in seen.pods}) == 3


async def test_a_daemonset_runs_one_pod_on_the_node(node: PodmanNode) -> None:
    daemonset = """
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent-sidecar}
spec:
  selector: {matchLabels: {app: sidecar}}
  template:
    metadata: {labels: {app: sidecar}}
    spec:
      containers:
      - name: main
        image: localhost/edgecollab-busybox:1
        imagePullPolicy: Never
        command: ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
"""
    ref = ReleaseRef("ops", "sidecar")

    await node.runtime.apply(ref, daemonset, node.context)

    seen = await node.runtime.observe(ref)
    assert (seen.ready, seen.total) == (1, 1)
    assert seen.pods[0].name == "ops.agent-sidecar-pod-0"


async def test_secrets_reach_containers_as_env_and_files(node: PodmanNode) -> None:
    manifests = """
apiVersion: v1
kind: Secret
metadata: {name: creds}
data: {token: czNjcjN0}          # "s3cr3t"
stringData: {user: edge}
---
apiVersion: v1
kind: Pod
metadata: {name: reader}
spec:
  containers:
  - name: main
    image: localhost/edgecollab-busybox:1
    imagePullPolicy: Never
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
    env:
    - name: TOKEN
      valueFrom: {secretKeyRef: {name: creds, key: token}}
    volumeMounts: [{name: creds, mountPath: /creds}]
  volumes:
  - name: creds
    secret: {secretName: creds}
"""
    ref = ReleaseRef("demo", "reader")

    await node.runtime.apply(ref, manifests, node.context)

    env = await container_env(node, "demo.reader-main")
    assert env["TOKEN"] == "s3cr3t"
    assert await node.podman("exec", "demo.reader-main", "cat", "/creds/user") == "edge"
    assert node.runtime.played_file(ref).stat().st_mode & 0o077 == 0
