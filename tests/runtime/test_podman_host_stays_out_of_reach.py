"""A chart cannot reach the node's host (real podman, the default policy every real node starts with).

Each test is an attack an operator-token holder (or a compromised hub) tried: file names from ConfigMap
keys and ``items[].path``, a ``subPath`` through a link a pod made (the kubelet's CVE-2017-1002101), a
link swapped in while a container restarts, 20,000 replicas. A victim directory on the host, writable
by anyone, must stay empty, and a policy file must keep its digest.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
import yaml
from host_reach import CLAIM, PLANT_LINK, climb_to, digest, nobody_pod

from edgeagent.policy import NodePolicy
from edgeagent.runtime import ManifestRejected, PodmanRuntime, ReleaseRef, RuntimeApplyError
from edgeagent.runtime.host_mounts import detach_all
from edgeagent.runtime.podman_plan import build_plan
from edgeagent.runtime.podman_restarts import RestartSettings

from .helpers import DEMO_IMAGE, PodmanNode, eventually, render_web

pytestmark = pytest.mark.timeout(180)

NOBODY = "securityContext: {runAsUser: 65534}"


@pytest.fixture
def policy_file(node: PodmanNode) -> Path:
    """The node's policy file, in its state directory (the default policy, written out)."""
    path = node.settings.work_dir.parent / "policy.yaml"
    path.write_text("namespaces: [demo]\n")
    return path


def guarded(node: PodmanNode, policy_file: Path, *, restarts: RestartSettings | None = None) -> PodmanRuntime:
    """The node's runtime with its policy file's (default) policy, its state directory protected."""
    settings = dataclasses.replace(node.settings, policy=NodePolicy.load(policy_file),
                                   protected_paths=(node.settings.work_dir.parent, policy_file),
                                   restarts=restarts or node.settings.restarts)
    return PodmanRuntime(settings)


async def pods(node: PodmanNode) -> list[str]:
    return [p["Name"] for p in json.loads(await node.podman("pod", "ps", "--format", "json") or "[]")]


def configmap_pod(volume: str, data: str, *, kind: str = "ConfigMap") -> str:
    return f"""
apiVersion: v1
kind: {kind}
metadata: {{name: evil}}
{data}
---
apiVersion: v1
kind: Pod
metadata: {{name: reader}}
spec:
  securityContext: {{runAsUser: 65534}}
  containers:
  - {{name: c, image: {DEMO_IMAGE}, command: [sleep, "3600"], volumeMounts: [{{name: v, mountPath: /v}}]}}
  volumes: [{volume}]
"""


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ("key", r"^ConfigMap/evil: data: key '(\.\./)+.*' is not a valid key"),
        ("items", r"^Pod/reader: volume 'v': items\[0\]\.path: '(\.\./)+.*' must be a relative path without '\.\.'"),
        ("secret", r"^Secret/evil: stringData: key '(\.\./)+.*' is not a valid key"),
    ],
)
async def test_configmap_and_secret_file_names_never_leave_their_volume(
    node: PodmanNode, victim: Path, policy_file: Path, shape: str, message: str
) -> None:
    runtime = guarded(node, policy_file)
    before = digest(policy_file)
    if shape == "key":
        manifests = configmap_pod("{name: v, configMap: {name: evil}}",
                                  f"data: {{'{climb_to(victim / 'x')}': owned, '{climb_to(policy_file)}': "
                                  "'allow: {\"*\": [privileged, hostPath, root]}'}")
    elif shape == "items":
        manifests = configmap_pod(f"{{name: v, configMap: {{name: evil, items: [{{key: a, path: "
                                  f"'{climb_to(victim / 'x')}'}}]}}}}", "data: {a: owned}")
    else:
        manifests = configmap_pod("{name: v, secret: {secretName: evil}}",
                                  f"stringData: {{'{climb_to(victim / 'x')}': owned}}", kind="Secret")

    with pytest.raises(ManifestRejected, match=message):
        await runtime.apply(ReleaseRef("demo", "evil"), manifests, node.context)

    assert list(victim.iterdir()) == []
    assert digest(policy_file) == before
    assert await pods(node) == []


PLANTER = yaml.safe_dump(nobody_pod("planter", PLANT_LINK, [{"name": "data", "mountPath": "/data"}], CLAIM))


async def test_a_subpath_through_a_link_a_pod_made_is_refused_naming_it(
    node: PodmanNode, victim: Path, policy_file: Path
) -> None:
    runtime = guarded(node, policy_file)
    ref = ReleaseRef("demo", "cve")
    # Revision 1, as nobody, leaves x/y -> / in its claim.
    await runtime.apply(ref, PLANTER, node.context)
    await eventually(lambda: _shows(node, "demo.planter-c", "ls -l /data/x", "y -> /"), within=30,
                     what="the pod made its link")

    # Revision 2 mounts the claim's x/y: bound by path, that was the host's /.
    mounter = yaml.safe_dump(nobody_pod("mounter", f"touch /host/{str(victim).lstrip('/')}/owned; sleep 3600",
                                        [{"name": "data", "mountPath": "/host", "subPath": "x/y"}], CLAIM))
    with pytest.raises(RuntimeApplyError, match=r"subPath 'x/y' of volume demo\.cve\.pvc\.data: .*/x/y is a "
                                                r"symbolic link; refused"):
        await runtime.apply(ref, mounter, node.context)

    assert list(victim.iterdir()) == []
    assert "demo.mounter" not in await pods(node)


async def _shows(node: PodmanNode, container: str, command: str, text: str) -> bool | None:
    """True once ``command`` run in ``container`` prints ``text`` (None before: for ``eventually``)."""
    out = await node.podman("exec", container, "sh", "-c", command, check=False)
    return True if text in out else None


SWAP = f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: swap}}
spec:
  template:
    spec:
      securityContext: {{runAsUser: 65534}}
      containers:
      - name: swapper
        image: {DEMO_IMAGE}
        command: [sh, -c, 'sleep 2; mv /all/x/y /all/x/was-y; ln -s / /all/x/y; touch /all/swapped; sleep 3600']
        volumeMounts: [{{name: data, mountPath: /all}}]
      - name: victim
        image: {DEMO_IMAGE}
        command: [sh, -c, 'date >> /part/starts; touch /part/VICTIM/owned 2>/dev/null; sleep 1; exit 1']
        volumeMounts: [{{name: data, mountPath: /part, subPath: x/y}}]
      volumes: [{{name: data, persistentVolumeClaim: {{claimName: data}}}}]
"""


async def test_a_link_swapped_in_while_a_container_restarts_changes_nothing_it_sees(
    node: PodmanNode, victim: Path, policy_file: Path
) -> None:
    """One container swaps its sibling's subPath for a link to / while the sibling crash-loops: every restart
    of the sibling still sees the directory it was given, never the host's root."""
    # Restarts a second apart (the kubelet's back-off is 10 s, doubling): the same restarts, sooner. Entered:
    # the agent restarts the containers (podman is told restartPolicy Never).
    async with guarded(node, policy_file, restarts=RestartSettings(initial=1.0, cap=1.0, tick=0.2)) as runtime:
        ref = ReleaseRef("demo", "swap")
        # Revision 1, as nobody, makes x/y in its claim: a plain directory, its own.
        await runtime.apply(ref, PLANTER.replace(PLANT_LINK, "mkdir -p /data/x/y; sleep 3600"), node.context)
        await eventually(lambda: _shows(node, "demo.planter-c", "ls /data/x", "y"), within=30, what="x/y made")
        await runtime.apply(ref, SWAP.replace("VICTIM", str(victim).lstrip("/")), node.context)
        await eventually(lambda: _shows(node, "demo.swap-pod-0-swapper", "ls /all", "swapped"), within=30,
                         what="the link swapped in")
        swapped_at = time.monotonic()
        restarts_then = await _restarts(runtime, ref)
        await eventually(lambda: _more_restarts(runtime, ref, restarts_then + 2), within=30,
                         what="two restarts of the victim container after the swap")

    assert list(victim.iterdir()) == []
    # Every start wrote into the directory it was given, the restarts after the swap too.
    starts = (await node.podman("exec", "demo.swap-pod-0-swapper", "cat", "/all/x/was-y/starts")).splitlines()
    assert len(starts) >= 3, starts
    assert time.monotonic() - swapped_at < 60


async def _restarts(runtime: PodmanRuntime, ref: ReleaseRef) -> int:
    """The victim container's restarts as the runtime reports them (the agent restarts it, not podman)."""
    observed = await runtime.observe(ref)
    return next(c.restarts for p in observed.pods for c in p.containers if c.name == "victim")


async def _more_restarts(runtime: PodmanRuntime, ref: ReleaseRef, at_least: int) -> bool | None:
    return True if await _restarts(runtime, ref) >= at_least else None


def test_replicas_past_the_nodes_limit_are_refused_before_any_pod_is_planned() -> None:
    from edgeagent.runtime import NodeContext

    manifests = f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: flood}}
spec:
  replicas: 20000
  template:
    spec:
      containers: [{{name: c, image: {DEMO_IMAGE}, {NOBODY}}}]
"""
    started = time.monotonic()
    with pytest.raises(ManifestRejected, match=r"^Deployment/flood: pods of the release: 20000 is over this node's "
                                               r"limit podsPerRelease 20 \(raise it in .*: limits: "
                                               r"\{podsPerRelease: N\}\)"):
        build_plan(ReleaseRef("demo", "flood"), manifests, NodeContext(node="n", pool="p"), policy=NodePolicy())
    assert time.monotonic() - started < 1.0


async def test_pods_past_the_nodes_limit_across_releases_are_refused(node: PodmanNode, policy_file: Path) -> None:
    policy_file.write_text("namespaces: [demo]\nlimits: {podsPerNode: 3}\n")
    runtime = guarded(node, policy_file)
    web = render_web()
    await runtime.apply(ReleaseRef("demo", "one"), web.replace("replicas: 1", "replicas: 2"), node.context)
    with pytest.raises(RuntimeApplyError, match=r"^release demo/two: pods on the node with this release's 2: 4 is "
                                                r"over this node's limit podsPerNode 3"):
        await runtime.apply(ReleaseRef("demo", "two"), web.replace("replicas: 1", "replicas: 2"), node.context)
    assert sorted(await pods(node)) == ["demo.web-pod-0", "demo.web-pod-1"]


async def test_containers_run_with_their_users_group_not_root_s(node: PodmanNode, policy_file: Path) -> None:
    """A user the image does not know (so no group of its own there) runs with group 4321, not 0."""
    runtime = guarded(node, policy_file)
    manifests = f"""
apiVersion: v1
kind: Pod
metadata: {{name: ids}}
spec:
  securityContext: {{runAsUser: 4321}}
  containers: [{{name: c, image: {DEMO_IMAGE}, command: [sleep, "3600"]}}]
"""
    await runtime.apply(ReleaseRef("demo", "ids"), manifests, node.context)
    assert await node.podman("exec", "demo.ids-c", "id", "-u") == "4321\n"
    assert await node.podman("exec", "demo.ids-c", "id", "-g") == "4321\n"


async def test_a_pod_whose_subpath_binds_are_gone_is_reported_dead_and_a_new_apply_binds_them_again(
    node: PodmanNode, policy_file: Path
) -> None:
    """A reboot drops the runtime's binds while podman may start the pod again: observe must not count it."""
    runtime = guarded(node, policy_file)
    ref = ReleaseRef("demo", "parts")
    manifests = yaml.safe_dump(nobody_pod("planter", "sleep 3600",
                                          [{"name": "data", "mountPath": "/data", "subPath": "part"}], CLAIM))
    await runtime.apply(ref, manifests, node.context)
    assert (await runtime.observe(ref)).ready == 1

    detach_all(runtime.mounts_dir(ref))  # what a reboot does to them

    observed = await runtime.observe(ref)
    assert observed.ready == 0 and [p.phase for p in observed.pods] == ["Unmounted"]
    assert "its subPath mounts are gone" in observed.message
    await runtime.apply(ref, manifests, node.context)
    assert (await runtime.observe(ref)).ready == 1
    assert await node.podman("exec", "demo.planter-c", "sh", "-c", "touch /data/made && echo ok") == "ok\n"
