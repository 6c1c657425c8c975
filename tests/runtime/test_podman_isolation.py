"""Releases are isolated from each other and from the host (real podman): the default policy runs the
example chart as nobody and refuses root, and two releases of one namespace never see, replace or remove
each other's ConfigMaps and volumes."""

from __future__ import annotations

import dataclasses
import json

import pytest

from edgeagent.policy import NodePolicy
from edgeagent.runtime import ManifestRejected, PodmanRuntime, ReleaseRef, RuntimeApplyError

from .helpers import DEMO_IMAGE, PodmanNode, render_web

pytestmark = pytest.mark.timeout(120)


def guarded(node: PodmanNode) -> PodmanRuntime:
    """The node's runtime with the default policy, the one every real node starts with."""
    return PodmanRuntime(dataclasses.replace(node.settings, policy=NodePolicy()))


async def test_the_example_chart_runs_as_nobody_under_the_default_policy(node: PodmanNode) -> None:
    runtime = guarded(node)
    ref = ReleaseRef("demo", "web")

    await runtime.apply(ref, render_web(), node.context)

    assert await node.podman("exec", "demo.web-pod-0-httpd", "id", "-u") == "65534\n"
    # No way back to root through a setuid binary: no_new_privs is set.
    status = await node.podman("exec", "demo.web-pod-0-httpd", "cat", "/proc/1/status")
    assert "NoNewPrivs:\t1" in status
    assert await node.fetch("demo.web-pod-0-httpd") == "hello from edgecollab\n"
    assert (await runtime.observe(ref)).ready == 1


async def test_a_root_chart_is_refused_before_podman_runs_anything(node: PodmanNode) -> None:
    runtime = guarded(node)
    ref = ReleaseRef("demo", "takeover")
    manifests = f"""
apiVersion: v1
kind: Pod
metadata: {{name: takeover}}
spec:
  containers:
  - {{name: c, image: {DEMO_IMAGE}, command: [sleep, "3600"], securityContext: {{privileged: true}}}}
  volumes: [{{name: host, hostPath: {{path: /}}}}]
"""
    with pytest.raises(ManifestRejected, match=r"^Pod/takeover volume host: hostPath \(hostPath /\) is refused"):
        await runtime.apply(ref, manifests, node.context)
    assert json.loads(await node.podman("pod", "ps", "--format", "json") or "[]") == []


def two_release_chart(release: str) -> str:
    """A ConfigMap ``config`` and a claim ``data`` (the same names in every release), mounted by one pod."""
    return f"""
apiVersion: v1
kind: ConfigMap
metadata: {{name: config}}
data: {{owner: {release}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: data}}
spec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 1Gi}}}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: {release}-app}}
spec:
  terminationGracePeriodSeconds: 1
  securityContext: {{runAsUser: 65534, runAsNonRoot: true}}
  containers:
  - name: c
    image: {DEMO_IMAGE}
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
    volumeMounts: [{{name: config, mountPath: /config}}, {{name: data, mountPath: /data}}]
  volumes:
  - {{name: config, configMap: {{name: config}}}}
  - {{name: data, persistentVolumeClaim: {{claimName: data}}}}
"""


async def volumes(node: PodmanNode) -> dict[str, str]:
    listed = json.loads(await node.podman("volume", "ls", "--format", "json") or "[]")
    return {v["Name"]: (v.get("Labels") or {}).get("edgecollab.io/release", "") for v in listed}


async def test_two_releases_of_one_namespace_see_only_their_own_configmap_and_claim(node: PodmanNode) -> None:
    runtime = guarded(node)
    first, second = ReleaseRef("demo", "first"), ReleaseRef("demo", "second")
    await runtime.apply(first, two_release_chart("first"), node.context)
    await node.podman("exec", "demo.first-app-c", "sh", "-c", "echo first-data > /data/file")
    await runtime.apply(second, two_release_chart("second"), node.context)

    assert await node.podman("exec", "demo.first-app-c", "cat", "/config/owner") == "first"
    assert await node.podman("exec", "demo.second-app-c", "cat", "/config/owner") == "second"
    assert await node.podman("exec", "demo.second-app-c", "ls", "-A", "/data") == ""
    await node.podman("exec", "demo.second-app-c", "sh", "-c", "echo second-data >> /data/file")
    assert await node.podman("exec", "demo.first-app-c", "cat", "/data/file") == "first-data\n"
    assert {name: owner for name, owner in (await volumes(node)).items() if name.startswith("demo.")} == {
        "demo.first.cm.config": "demo.first", "demo.first.pvc.data": "demo.first",
        "demo.second.cm.config": "demo.second", "demo.second.pvc.data": "demo.second",
    }

    await runtime.remove(second)

    assert await node.podman("exec", "demo.first-app-c", "cat", "/data/file") == "first-data\n"
    assert await node.podman("exec", "demo.first-app-c", "cat", "/config/owner") == "first"
    assert sorted(n for n in await volumes(node) if n.startswith("demo.")) == [
        "demo.first.cm.config", "demo.first.pvc.data"]


async def test_a_volume_not_labelled_as_the_releases_is_never_mounted_or_removed(node: PodmanNode) -> None:
    ref = ReleaseRef("demo", "first")
    await node.podman("volume", "create", "demo.first.pvc.data")  # made by someone else, no release label
    await node.podman("volume", "create", "--label", "edgecollab.io/release=demo.other", "demo.first.cm.config")

    with pytest.raises(RuntimeApplyError, match=r"podman volume demo.first.cm.config already exists and belongs "
                                                r"to release demo.other; not mounted"):
        await guarded(node).apply(ref, two_release_chart("first"), node.context)
    await guarded(node).remove(ref)

    assert {"demo.first.pvc.data", "demo.first.cm.config"} <= set(await volumes(node))
