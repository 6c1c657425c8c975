"""KubernetesRuntime against the session's real API server (``control_plane``: kube-apiserver, controller-manager,
scheduler and a kwok node on loopback; kwok makes pods ready, no container runs).

What the API server was asked, and in which order, is read from its audit log (``kube_checks.AuditLog``); what it
holds, through it, as kubectl would show it. Every test works in a namespace of its own (and a CRD group of its
own) and removes them.

kwok has no kubelet: what a kubelet reports of a crash-looping container or an image it cannot pull is written
into the pod's status here, the way the kubelet writes it (``report_containers``); no container log can be read
(the API server finds no kubelet to ask), so the lines of a log are covered by test_kubernetes_containers.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kube_checks import (
    WIDGETS_CHART,
    AuditLog,
    client,
    delete,
    deleted,
    labels,
    live,
    remove_test_objects,
    render_chart,
    unique_name,
    widget_group,
)

from edgeagent.release_health import release_health
from edgeagent.runtime import (
    EdgeRuntimeError,
    ManifestRejected,
    NodeContext,
    Observation,
    ReleaseRef,
    Runtime,
    RuntimeApplyError,
)
from edgeagent.runtime.kubernetes import KubernetesRuntime, KubernetesSettings
from edgesim.faults import LinkProxy

pytestmark = pytest.mark.timeout(120)

NODE = NodeContext(node="edge-1", pool="shanghai")
NOBODY = {"runAsUser": 65534, "runAsNonRoot": True}


@pytest.fixture
def namespace(kubeconfig: Path) -> Iterator[str]:
    name = unique_name("ec-rt")
    yield name
    remove_test_objects(kubeconfig, name)


@pytest.fixture
async def runtime(tmp_path: Path, kubeconfig: Path) -> AsyncIterator[KubernetesRuntime]:
    rt = KubernetesRuntime(KubernetesSettings(work_dir=tmp_path / "k8s", kubeconfig=kubeconfig))
    async with rt:
        yield rt


def doc(kind: str, name: str, api: str = "v1", **fields: Any) -> dict[str, Any]:
    return {"apiVersion": api, "kind": kind, "metadata": {"name": name}, **fields}


def manifests(*docs: dict[str, Any]) -> str:
    return yaml.safe_dump_all(docs)


def deployment(name: str, *, deadline: int = 600, **pod: Any) -> dict[str, Any]:
    return doc("Deployment", name, "apps/v1", spec={
        "replicas": 1, "progressDeadlineSeconds": deadline, "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}},
                     "spec": {"securityContext": NOBODY, **pod,
                              "containers": [{"name": "c", "image": "localhost/edgecollab-busybox:1"}]}}})


async def observe_until(runtime: KubernetesRuntime, ref: ReleaseRef, done: Any, *, timeout: float = 30,
                        what: str) -> Observation:
    deadline = time.monotonic() + timeout
    while True:
        seen = await runtime.observe(ref)
        if done(seen):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout:.0f} s; last observation: {seen}")
        await asyncio.sleep(0.5)


def ready(seen: Observation) -> bool:
    return seen.total > 0 and seen.ready == seen.total


# -- apply, upgrade, drift, remove --------------------------------------------------------


async def test_a_release_is_applied_in_helms_order_upgraded_with_pruning_repaired_and_removed_in_reverse(
    runtime: KubernetesRuntime, namespace: str, kubeconfig: Path, control_plane: Any,
) -> None:
    assert isinstance(runtime, Runtime)
    ref, group = ReleaseRef(namespace, "shop"), widget_group(namespace)
    crd = f"widgets.{group}"
    audit = AuditLog(control_plane.audit_log)
    values = {"group": group, "hooks": False}
    v1 = render_chart(WIDGETS_CHART, name="shop", namespace=namespace, values=values, revision=4)
    with pytest.raises(ValueError, match="the hub's revision"):
        await runtime.apply(ref, v1, NODE)

    mark = audit.mark()
    # A fresh work directory given the hub's revision 4: the objects say 4, not the node's first apply.
    await runtime.apply(ref, v1, NODE, revision=4)

    writes = audit.writes(mark, namespace=namespace, names=frozenset({namespace, crd}))
    # Helm's order; the Widget only once its CustomResourceDefinition is Established (else the API server would
    # not serve it at all); every object by server-side apply under the field manager edgecollab.
    assert [str(w) for w in writes] == [
        f"create namespaces/{namespace}", "patch configmaps/shop-config", "patch configmaps/shop-extra",
        f"patch customresourcedefinitions/{crd}", "patch deployments/shop-web", "patch widgets/shop"]
    assert {w.field_manager for w in writes if w.verb == "patch"} == {"edgecollab"}
    web = live(kubeconfig, "apps/v1", "Deployment", "shop-web", namespace)
    assert any(m["manager"] == "edgecollab" and m["operation"] == "Apply" for m in web["metadata"]["managedFields"])
    widget = live(kubeconfig, f"{group}/v1", "Widget", "shop", namespace)
    assert widget["spec"] == {"size": 3}
    for obj in (web, widget, live(kubeconfig, "apiextensions.k8s.io/v1", "CustomResourceDefinition", crd)):
        assert {k: v for k, v in labels(obj).items() if k.startswith(("edgecollab.io/", "app.kubernetes.io/m"))} == {
            "edgecollab.io/release": "shop", "edgecollab.io/release-namespace": namespace,
            "edgecollab.io/revision": "4", "app.kubernetes.io/managed-by": "edgecollab",
            "edgecollab.io/node": "edge-1", "edgecollab.io/pool": "shanghai"}
    await observe_until(runtime, ref, ready, what="the Deployment ready (kwok)")

    # The upgrade drops shop-extra: deleted after everything else is applied.
    mark = audit.mark()
    v2 = render_chart(WIDGETS_CHART, name="shop", namespace=namespace, revision=5,
                      values={**values, "extraConfig": False, "widget": {"size": 4}})
    await runtime.apply(ref, v2, NODE, revision=5)
    writes = audit.writes(mark, namespace=namespace, names=frozenset({crd}))
    assert [str(w) for w in writes] == [
        "patch configmaps/shop-config", f"patch customresourcedefinitions/{crd}", "patch deployments/shop-web",
        "patch widgets/shop", "delete configmaps/shop-extra"]
    assert live(kubeconfig, "v1", "ConfigMap", "shop-extra", namespace) is None
    assert live(kubeconfig, f"{group}/v1", "Widget", "shop", namespace)["spec"] == {"size": 4}
    assert labels(live(kubeconfig, "v1", "ConfigMap", "shop-config", namespace))["edgecollab.io/revision"] == "5"

    # Someone deletes the Deployment and edits the ConfigMap: observe applies both again from the record.
    delete(kubeconfig, "apps/v1", "Deployment", "shop-web", namespace)
    client(kubeconfig).resources.get(api_version="v1", kind="ConfigMap").patch(
        name="shop-config", namespace=namespace, body={"data": {"message": "edited by hand"}},
        content_type="application/merge-patch+json")
    seen = await runtime.observe(ref)
    assert "restored from the stored revision: ConfigMap/shop-config (data.message changed), " \
           "Deployment/shop-web (deleted)" in seen.message
    assert live(kubeconfig, "v1", "ConfigMap", "shop-config", namespace)["data"] == {"message": "hello from a widget"}
    await observe_until(runtime, ref, ready, what="the restored Deployment ready")
    # The chart spells its requests 0.5 and 65536Ki, the API server 500m and 64Mi: the same, so nothing is
    # applied again on later passes.
    mark = audit.mark()
    for _ in range(2):
        assert "restored" not in (await runtime.observe(ref)).message
    assert audit.writes(mark, namespace=namespace) == []

    # Removal deletes in the reverse order; the namespace stays (as with helm --create-namespace).
    mark = audit.mark()
    await runtime.remove(ref, NODE)
    assert [str(w) for w in audit.writes(mark, namespace=namespace, names=frozenset({crd}))] == [
        "delete widgets/shop", "delete deployments/shop-web", f"delete customresourcedefinitions/{crd}",
        "delete configmaps/shop-config"]
    for api, kind, name, ns in (("apps/v1", "Deployment", "shop-web", namespace),
                                ("v1", "ConfigMap", "shop-config", namespace),
                                ("apiextensions.k8s.io/v1", "CustomResourceDefinition", crd, None)):
        assert deleted(live(kubeconfig, api, kind, name, ns)), f"{kind}/{name} left behind"
    assert live(kubeconfig, "v1", "Namespace", namespace) is not None
    assert not runtime.record_file(ref).exists()
    assert (await runtime.observe(ref)).total == 0


async def test_objects_of_another_release_or_outside_edgecollab_are_not_taken_over(
    runtime: KubernetesRuntime, namespace: str, kubeconfig: Path,
) -> None:
    await runtime.apply(ReleaseRef(namespace, "other"), manifests(doc("ConfigMap", "shared")), NODE, revision=1)
    client(kubeconfig).resources.get(api_version="v1", kind="ConfigMap").create(
        namespace=namespace, body=doc("ConfigMap", "handmade", data={"mine": "yes"}))
    ref = ReleaseRef(namespace, "web")

    with pytest.raises(RuntimeApplyError, match=f"ConfigMap/shared .* belongs to release {namespace}/other; "
                                                "not replaced"):
        await runtime.apply(ref, manifests(doc("ConfigMap", "shared")), NODE, revision=1)
    with pytest.raises(RuntimeApplyError, match="edgecollab does not manage it"):
        await runtime.apply(ref, manifests(doc("ConfigMap", "handmade")), NODE, revision=1)

    assert labels(live(kubeconfig, "v1", "ConfigMap", "shared", namespace))["edgecollab.io/release"] == "other"
    handmade = live(kubeconfig, "v1", "ConfigMap", "handmade", namespace)
    assert handmade["data"] == {"mine": "yes"} and not labels(handmade)


async def test_an_object_the_api_server_refuses_rejects_the_revision_and_a_later_one_still_prunes(
    runtime: KubernetesRuntime, namespace: str, kubeconfig: Path,
) -> None:
    ref = ReleaseRef(namespace, "web")
    await runtime.apply(ref, manifests(doc("ConfigMap", "a"), doc("ConfigMap", "b")), NODE, revision=1)

    # 422: a value the API server finds invalid.
    with pytest.raises(ManifestRejected, match=r"ConfigMap/c .* the API server refused it: .*a valid config key"):
        await runtime.apply(ref, manifests(doc("ConfigMap", "a"), doc("ConfigMap", "c", data={"bad key!": "x"})),
                            NODE, revision=2)
    # A field the kind does not have, a value of the wrong type: the server answers 500 to a server-side apply of
    # them, and applying them again cannot succeed either.
    typo = doc("ConfigMap", "d", dta={"a": "b"})
    with pytest.raises(ManifestRejected, match=r"ConfigMap/d .*\.dta: field not declared in schema"):
        await runtime.apply(ref, manifests(doc("ConfigMap", "a"), typo), NODE, revision=3)
    wrong = deployment("e")
    wrong["spec"]["replicas"] = "two"
    with pytest.raises(ManifestRejected, match=r"Deployment/e .*\.spec\.replicas: expected numeric"):
        await runtime.apply(ref, manifests(wrong), NODE, revision=4)

    # The failed applies journaled "b" as still to prune: the next good revision removes it.
    await runtime.apply(ref, manifests(doc("ConfigMap", "a")), NODE, revision=5)
    assert live(kubeconfig, "v1", "ConfigMap", "b", namespace) is None
    assert labels(live(kubeconfig, "v1", "ConfigMap", "a", namespace))["edgecollab.io/revision"] == "5"


@pytest.mark.parametrize("pod", [{"hostNetwork": True}, {"hostPID": True}], ids=["hostNetwork", "hostPID"])
async def test_the_node_policy_refuses_with_podmans_words_before_the_cluster_is_touched(
    runtime: KubernetesRuntime, namespace: str, kubeconfig: Path, control_plane: Any, pod: dict[str, Any],
) -> None:
    from edgeagent.runtime.podman_plan import build_plan

    ref = ReleaseRef(namespace, "web")
    text = manifests(doc("ConfigMap", "a"), deployment("web", **pod))
    with pytest.raises(ManifestRejected) as on_podman:
        build_plan(ref, text, NODE)
    mark = AuditLog(control_plane.audit_log).mark()

    with pytest.raises(ManifestRejected) as refused:
        await runtime.apply(ref, text, NODE, revision=1)

    assert str(refused.value) == str(on_podman.value)
    assert "is refused by this node's policy" in str(refused.value)
    assert AuditLog(control_plane.audit_log).writes(mark, namespace=namespace, names=frozenset({namespace})) == []
    assert live(kubeconfig, "v1", "Namespace", namespace) is None


async def test_a_cluster_that_stops_answering_is_a_runtime_error_within_the_request_timeout(
    tmp_path: Path, namespace: str, control_plane: Any,
) -> None:
    port = int(control_plane.server.rpartition(":")[2])
    proxy = LinkProxy(port, name="apiserver", scheme="https").start()
    kubeconfig = yaml.safe_load(control_plane.kubeconfig.read_text())
    kubeconfig["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
    proxied = tmp_path / "proxied.kubeconfig"
    proxied.write_text(yaml.safe_dump(kubeconfig))
    rt = KubernetesRuntime(KubernetesSettings(work_dir=tmp_path / "k8s", kubeconfig=proxied, request_timeout=1))
    ref = ReleaseRef(namespace, "web")
    try:
        async with rt:
            await rt.apply(ref, manifests(doc("ConfigMap", "a")), NODE, revision=1)
            # Nothing answers: every call gives up within its bound, as an error of the runtime.
            proxy.cut()
            started = time.monotonic()
            with pytest.raises(EdgeRuntimeError, match=f"the Kubernetes API at https://127.0.0.1:{proxy.port}"):
                await rt.observe(ref)
            assert time.monotonic() - started < 1 * 2 + 5 + 1
            # Refused outright (the API server restarting): at once.
            proxy.close()
            with pytest.raises(RuntimeApplyError, match="Connection refused"):
                await rt.apply(ref, manifests(doc("ConfigMap", "b")), NODE, revision=2)
            with pytest.raises(RuntimeApplyError, match="removal failed"):
                await rt.remove(ref, NODE)
    finally:
        proxy.close()


# -- what the workloads say --------------------------------------------------------------


def report_containers(kubeconfig: Path, pod: dict[str, Any], statuses: list[dict[str, Any]]) -> None:
    """Write ``statuses`` into the pod's status as its kubelet would (kwok, which plays the kubelet here, set the
    pod ready once and leaves it alone since it has an IP)."""
    meta = pod["metadata"]
    client(kubeconfig).resources.get(api_version="v1", kind="Pod").status.patch(
        name=meta["name"], namespace=meta["namespace"], content_type="application/merge-patch+json",
        body={"status": {"conditions": [{"type": "Ready", "status": "False"}], "containerStatuses": statuses}})


def pods_of(kubeconfig: Path, namespace: str, app: str) -> list[dict[str, Any]]:
    found = client(kubeconfig).resources.get(api_version="v1", kind="Pod").get(
        namespace=namespace, label_selector=f"app={app}").to_dict()["items"]
    return [p for p in found if (p.get("status") or {}).get("podIP")]


async def test_a_crash_loop_and_an_image_that_cannot_be_pulled_are_reported_in_the_kubelets_words(
    runtime: KubernetesRuntime, namespace: str, kubeconfig: Path,
) -> None:
    ref = ReleaseRef(namespace, "web")
    await runtime.apply(ref, manifests(deployment("crasher"), deployment("puller")), NODE, revision=1)
    await observe_until(runtime, ref, ready, what="both Deployments ready (kwok)")
    (crasher,) = pods_of(kubeconfig, namespace, "crasher")
    (puller,) = pods_of(kubeconfig, namespace, "puller")
    # A bare pod with the crasher's labels is nobody's pod of the release.
    client(kubeconfig).resources.get(api_version="v1", kind="Pod").create(namespace=namespace, body={
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "handmade", "labels": {"app": "crasher"}},
        "spec": {"securityContext": NOBODY, "containers": [{"name": "c", "image": "x"}]}})
    reads: list[tuple[str, int]] = []
    real_log_tail = runtime._log_tail

    def counted(request: Any) -> str:
        reads.append((request.pod, request.key[2]))
        return real_log_tail(request)

    runtime._log_tail = counted  # type: ignore[method-assign]

    def crash(restarts: int, finished: str) -> dict[str, Any]:
        return {"name": "c", "image": "busybox", "imageID": "", "ready": False, "restartCount": restarts,
                "started": False, "containerID": f"containerd://{restarts}",
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed"}},
                "lastState": {"terminated": {"exitCode": 3, "reason": "Error", "finishedAt": finished,
                                             "startedAt": "2026-12-07T18:59:59Z"}}}

    report_containers(kubeconfig, crasher, [crash(4, "2026-12-07T19:00:00Z")])
    report_containers(kubeconfig, puller, [{"name": "c", "image": "registry.invalid/none:1", "imageID": "",
                                            "ready": False, "restartCount": 0, "started": False,
                                            "state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}},
                                            "lastState": {}}])

    seen = await observe_until(runtime, ref, lambda s: s.ready == 0, what="both Deployments unavailable")

    assert [p.name for p in seen.pods] == ["Deployment/crasher", "Deployment/puller", crasher["metadata"]["name"],
                                           puller["metadata"]["name"]]
    assert (seen.ready, seen.total) == (0, 2) and seen.failed == ()
    assert "Deployment/puller (Progressing: 0/1 replicas available" in seen.message
    by_pod = {p.name: p for p in seen.pods}
    (crashing,) = by_pod[crasher["metadata"]["name"]].containers
    assert (crashing.state, crashing.reason, crashing.restarts, crashing.exit_code, crashing.last_reason) == (
        "waiting", "CrashLoopBackOff", 4, 3, "Error")
    (pulling,) = by_pod[puller["metadata"]["name"]].containers
    assert (pulling.state, pulling.reason, pulling.restarts) == ("waiting", "ErrImagePull", 0)
    health = release_health(seen.pods)
    assert health.failing and health.restarts == 4
    assert health.message.startswith(f"pod {crasher['metadata']['name']} container c: CrashLoopBackOff: exited 3 "
                                     "(Error), restarted 4 times")
    # There is no kubelet to give the crashed container's log: the API server's refusal leaves it out, and the
    # same termination is not asked for again.
    assert "last log" not in health.message
    assert reads == [(crasher["metadata"]["name"], 4)]
    await runtime.observe(ref)
    assert reads == [(crasher["metadata"]["name"], 4)]
    # It crashed once more: that termination's log is asked for.
    report_containers(kubeconfig, crasher, [crash(5, "2026-12-07T19:01:20Z")])
    assert release_health((await runtime.observe(ref)).pods).restarts == 5
    assert reads[-1] == (crasher["metadata"]["name"], 5) and len(reads) == 2


async def test_a_deployment_no_node_can_take_is_failed_naming_its_unschedulable_pod(
    runtime: KubernetesRuntime, namespace: str,
) -> None:
    ref = ReleaseRef(namespace, "web")
    await runtime.apply(ref, manifests(deployment("stuck", deadline=1, nodeSelector={"edgecollab.io/none": "x"})),
                        NODE, revision=1)

    seen = await observe_until(runtime, ref, lambda s: s.failed, what="the Deployment past its progress deadline")

    assert seen.failed == ("Deployment/stuck",) and (seen.ready, seen.total) == (0, 1)
    assert "Deployment/stuck (Failed: ProgressDeadlineExceeded: " in seen.message
    assert "Unschedulable: 0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector" \
        in seen.message
    # The pod has no container yet: its health says nothing is failing.
    (pod,) = seen.pods[1:]
    assert pod.phase == "Pending" and pod.containers == ()
    assert release_health(seen.pods).reason == ""


# -- an account with fewer rights ------------------------------------------------------------


@pytest.fixture
def limited_kubeconfig(tmp_path: Path, kubeconfig: Path, namespace: str, control_plane: Any) -> Iterator[Path]:
    """A service account that may apply and delete workloads but not list pods or read their logs, and a
    kubeconfig with its token (what an agent given fewer rights than the agent chart's defaults has)."""
    from kubernetes import client as k8s

    dynamic = client(kubeconfig)
    role = unique_name("ec-test-limited")
    dynamic.resources.get(api_version="v1", kind="Namespace").create(body=doc("Namespace", namespace))
    dynamic.resources.get(api_version="v1", kind="ServiceAccount").create(
        namespace=namespace, body=doc("ServiceAccount", "agent"))
    everything = ["get", "list", "watch", "create", "update", "patch", "delete"]
    dynamic.resources.get(api_version="rbac.authorization.k8s.io/v1", kind="ClusterRole").create(body=doc(
        "ClusterRole", role, "rbac.authorization.k8s.io/v1", rules=[
            {"apiGroups": [""], "resources": ["configmaps", "secrets"], "verbs": everything},
            {"apiGroups": ["apps"], "resources": ["deployments", "replicasets"], "verbs": everything},
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "create"]}]))
    dynamic.resources.get(api_version="rbac.authorization.k8s.io/v1", kind="ClusterRoleBinding").create(body=doc(
        "ClusterRoleBinding", role, "rbac.authorization.k8s.io/v1",
        roleRef={"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        subjects=[{"kind": "ServiceAccount", "name": "agent", "namespace": namespace}]))
    token = k8s.CoreV1Api(dynamic.client).create_namespaced_service_account_token(
        "agent", namespace, k8s.AuthenticationV1TokenRequest(spec=k8s.V1TokenRequestSpec(
            audiences=[], expiration_seconds=600))).status.token
    path = tmp_path / "limited.kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "agent",
        "clusters": [{"name": "c", "cluster": {"server": control_plane.server,
                                               "certificate-authority": str(control_plane.ca_file)}}],
        "users": [{"name": "agent", "user": {"token": token}}],
        "contexts": [{"name": "agent", "context": {"cluster": "c", "user": "agent"}}]}))
    yield path
    delete(kubeconfig, "rbac.authorization.k8s.io/v1", "ClusterRoleBinding", role)
    delete(kubeconfig, "rbac.authorization.k8s.io/v1", "ClusterRole", role)


async def test_an_account_that_may_not_list_pods_is_warned_about_and_still_reports_its_workloads(
    tmp_path: Path, namespace: str, limited_kubeconfig: Path,
) -> None:
    rt = KubernetesRuntime(KubernetesSettings(work_dir=tmp_path / "k8s", kubeconfig=limited_kubeconfig))
    ref = ReleaseRef(namespace, "web")
    async with rt:
        (api, permissions, storage) = await rt.preflight()
        assert api.ok and api.detail.startswith("Kubernetes v1.36.")
        assert (permissions.ok, permissions.warning) == (True, True)
        assert "not list pods, get pods/log" in permissions.detail and storage.ok

        await rt.apply(ref, manifests(deployment("web")), NODE, revision=1)
        seen = await observe_until(rt, ref, ready, what="the Deployment ready (kwok)")

    assert [p.name for p in seen.pods] == ["Deployment/web"]
    assert release_health(seen.pods).reason == ""


async def test_preflight_without_a_cluster_says_so(tmp_path: Path) -> None:
    rt = KubernetesRuntime(KubernetesSettings(work_dir=tmp_path / "k8s", kubeconfig=tmp_path / "missing"))
    checks = await rt.preflight()
    assert [(c.name, c.ok) for c in checks] == [("kubernetes", False), ("permissions", False), ("storage", True)]
    assert checks[0].reason == "KubernetesUnreachable" and "no usable Kubernetes configuration" in checks[0].detail


async def test_preflight_of_the_session_cluster_passes_with_every_right(runtime: KubernetesRuntime) -> None:
    checks = await runtime.preflight()
    assert [(c.name, c.ok, c.warning) for c in checks] == [("kubernetes", True, False), ("permissions", True, False),
                                                          ("storage", True, False)]


def test_the_runtime_chosen_at_join_is_what_run_uses_unless_told_otherwise(tmp_path: Path) -> None:
    from edgeagent.cli import UsageError, build_parser, runtime_from_args, save_runtime
    from edgeagent.runtime import PodmanRuntime

    def chosen(*flags: str) -> object:
        return runtime_from_args(build_parser().parse_args(["run", "--state-dir", str(tmp_path), *flags]), tmp_path)

    assert isinstance(chosen(), PodmanRuntime)  # the default
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    save_runtime(tmp_path, "kubernetes", kubeconfig)
    stored = chosen()
    assert isinstance(stored, KubernetesRuntime) and stored.settings.kubeconfig == kubeconfig
    assert stored.name == "kubernetes" and stored.settings.work_dir == tmp_path / "kubernetes"
    assert isinstance(chosen("--runtime", "podman"), PodmanRuntime)
    with pytest.raises(UsageError, match="no such file"):
        chosen("--kubeconfig", str(tmp_path / "nope"))
    with pytest.raises(UsageError, match="--kubeconfig is for --runtime kubernetes"):
        chosen("--runtime", "podman", "--kubeconfig", str(kubeconfig))
