"""KubernetesRuntime against a real cluster (a k3d cluster, say): apply, upgrade with pruning, drift repair of a
deleted Deployment, uninstall, the status of a failing Deployment, and what the kubelet says of the containers of
a crash-looping one and of one whose image cannot be pulled.

Runs only when KUBECONFIG names a cluster's kubeconfig; skipped with that reason otherwise. Every test works in
a namespace of its own and removes it.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from edgeagent.release_health import release_health
from edgeagent.runtime import NodeContext, ReleaseRef
from edgeagent.runtime.kubernetes import KubernetesRuntime, KubernetesSettings

pytestmark = [
    pytest.mark.skipif(not os.environ.get("KUBECONFIG"), reason="no cluster: set KUBECONFIG to a k3d cluster's "
                                                                "kubeconfig"),
    pytest.mark.timeout(300),
]

NODE = NodeContext(node="edge-1", pool="shanghai")
IMAGE = os.environ.get("EDGECOLLAB_K8S_TEST_IMAGE", "busybox:1.36")


def deployment(name: str, *, image: str = IMAGE, deadline: int = 600,
               script: str = "trap 'exit 0' TERM; sleep 3600 & wait") -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 1, "progressDeadlineSeconds": deadline, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": {
                         "securityContext": {"runAsUser": 65534},
                         "containers": [{"name": "c", "image": image, "command": ["sh", "-c", script]}]}}}}


def configmap(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}}


def manifests(*docs: dict) -> str:
    return yaml.safe_dump_all(docs)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[KubernetesRuntime, ReleaseRef]]:
    pytest.importorskip("kubernetes", reason="the kubernetes client (pip install 'edgecollab[k8s]')")
    ref = ReleaseRef(f"ec-test-{uuid.uuid4().hex[:8]}", "web")
    runtime = KubernetesRuntime(KubernetesSettings(work_dir=tmp_path / "k8s",
                                                   kubeconfig=Path(os.environ["KUBECONFIG"])))
    async with runtime:
        checks = await runtime.preflight()
        assert all(c.ok for c in checks), checks
        try:
            yield runtime, ref
        finally:
            await runtime.remove(ref, NODE)
            namespace = await runtime._call(runtime._connect)
            await runtime._call(lambda: namespace.resources.get(api_version="v1", kind="Namespace").delete(
                name=ref.namespace))


async def wait_ready(runtime: KubernetesRuntime, ref: ReleaseRef, timeout: float = 180) -> None:
    for _ in range(int(timeout)):
        seen = await runtime.observe(ref)
        if seen.total and seen.ready == seen.total:
            return
        await asyncio.sleep(1)
    raise AssertionError(f"{ref} not ready: {seen}")


async def live(runtime: KubernetesRuntime, kind: str, namespace: str, name: str) -> dict | None:
    api_version = "apps/v1" if kind == "Deployment" else "v1"
    from edgeagent.runtime.kubernetes_plan import KubeObject

    return await runtime._call(runtime._get, KubeObject(api_version, kind, namespace, name, {}, f"{kind}/{name}"))


async def test_apply_upgrade_with_pruning_drift_repair_and_uninstall(cluster) -> None:
    runtime, ref = cluster
    await runtime.apply(ref, manifests(configmap("old"), configmap("conf"), deployment("web")), NODE)
    await wait_ready(runtime, ref)
    found = await live(runtime, "Deployment", ref.namespace, "web")
    assert found["metadata"]["labels"]["edgecollab.io/revision"] == "1"
    assert any(m["manager"] == "edgecollab" and m["operation"] == "Apply" for m in found["metadata"]["managedFields"])

    await runtime.apply(ref, manifests(configmap("conf"), deployment("web")), NODE)
    assert await live(runtime, "ConfigMap", ref.namespace, "old") is None
    assert (await live(runtime, "ConfigMap", ref.namespace, "conf"))["metadata"]["labels"][
        "edgecollab.io/revision"] == "2"

    deployments = (await runtime._call(runtime._connect)).resources.get(api_version="apps/v1", kind="Deployment")
    await runtime._call(lambda: deployments.delete(name="web", namespace=ref.namespace))
    seen = await runtime.observe(ref)
    assert "Deployment/web (deleted)" in seen.message
    await wait_ready(runtime, ref)

    await runtime.remove(ref, NODE)
    assert await live(runtime, "Deployment", ref.namespace, "web") is None
    assert await live(runtime, "ConfigMap", ref.namespace, "conf") is None


async def test_a_failing_deployment_is_named_in_the_status(cluster) -> None:
    runtime, ref = cluster
    await runtime.apply(ref, manifests(deployment("broken", image="edgecollab.invalid/none:1", deadline=10)), NODE)
    for _ in range(120):
        seen = await runtime.observe(ref)
        if seen.pods and seen.pods[0].phase == "Failed":
            break
        await asyncio.sleep(1)
    assert (seen.ready, seen.total) == (0, 1)
    assert "Deployment/broken (Failed: ProgressDeadlineExceeded" in seen.message
    # The pod says why, in the kubelet's words.
    (pod,) = seen.pods[1:]
    assert pod.name.startswith("broken-") and pod.phase == "Pending"
    (container,) = pod.containers
    assert (container.name, container.state, container.restarts) == ("c", "waiting", 0)
    health = release_health(seen.pods)
    assert health.reason in ("ErrImagePull", "ImagePullBackOff") and health.failing
    assert health.message == f"pod {pod.name} container c: {health.reason}"


async def test_a_crash_looping_deployment_reports_crashloopbackoff_with_restarts_exit_code_and_log(cluster) -> None:
    runtime, ref = cluster
    await runtime.apply(ref, manifests(deployment("crasher", script="echo crashing; exit 3")), NODE)
    # The kubelet's back-off: restarts after 10 s, then 20 s, then 40 s.
    for _ in range(180):
        seen = await runtime.observe(ref)
        health = release_health(seen.pods)
        if health.reason == "CrashLoopBackOff" and health.restarts >= 2 and "last log" in health.message:
            break
        await asyncio.sleep(1)
    assert seen.pods[0].name == "Deployment/crasher" and seen.total == 1
    (pod,) = seen.pods[1:]
    assert pod.name.startswith("crasher-") and not pod.ready
    (container,) = pod.containers
    assert (container.name, container.ready, container.exit_code, container.last_reason) == ("c", False, 3, "Error")
    assert container.restarts >= 2 and container.finished_at
    assert container.last_log == "crashing"
    assert health.failing and health.restarts == container.restarts
    assert health.message == (f"pod {pod.name} container c: CrashLoopBackOff: exited 3 (Error), restarted "
                              f"{container.restarts} times; last log: \"crashing\"")
