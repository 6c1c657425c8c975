"""KubernetesRuntime's own logic (order, pruning, ownership, drift repair, removal, record, what it reports of
each container) against an in-memory stand-in for the dynamic client: no cluster. The real API server is in
test_kubernetes_cluster.py."""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edgeagent.release_health import release_health
from edgeagent.runtime import ManifestRejected, NodeContext, ReleaseRef, Runtime, RuntimeApplyError
from edgeagent.runtime.kubernetes import KubernetesRuntime, KubernetesSettings

pytest.importorskip("kubernetes", reason="the kubernetes client (the k8s extra) raises the API's errors")
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic.exceptions import ForbiddenError, NotFoundError, UnprocessibleEntityError

NODE = NodeContext(node="edge-1", pool="shanghai")
REF = ReleaseRef("demo", "web")
CLUSTER = {"Namespace", "CustomResourceDefinition", "ClusterRole"}


class Obj(dict):
    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(dict(self))


class FakeResource:
    def __init__(self, cluster: FakeCluster, api_version: str, kind: str) -> None:
        self.cluster, self.api_version, self.kind = cluster, api_version, kind
        self.namespaced = kind not in CLUSTER

    def get(self, name: str | None = None, namespace: str | None = None, label_selector: str = "", **_: Any) -> Obj:
        if name is None:
            if self.kind in self.cluster.forbidden:
                raise ForbiddenError(ApiException(status=403, reason="Forbidden"))
            return Obj(items=[o for (k, ns, _m), o in self.cluster.objects.items()
                              if k == self.kind and namespace in (None, ns) and selected(o, label_selector)])
        found = self.cluster.objects.get((self.kind, namespace, name))
        if found is None:
            raise NotFoundError(ApiException(status=404, reason="Not Found"))
        return Obj(found)

    def delete(self, name: str, namespace: str | None = None, **_: Any) -> None:
        self.cluster.log.append(("delete", self.kind, name))
        if self.cluster.objects.pop((self.kind, namespace, name), None) is None:
            raise NotFoundError(ApiException(status=404, reason="Not Found"))

    def create(self, body: dict[str, Any], **_: Any) -> Obj:
        self.cluster.log.append(("create", self.kind, body["metadata"]["name"]))
        self.cluster.objects[(self.kind, body["metadata"].get("namespace"), body["metadata"]["name"])] = body
        return Obj(body)


def selected(obj: dict[str, Any], selector: str) -> bool:
    """The API server's label selector, for the terms the runtime writes here: ``key=value`` and ``key``."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, selector.split(",")):
        key, equals, value = term.partition("=")
        if (labels.get(key) != value) if equals else (key not in labels):
            return False
    return True


class FakeResources:
    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster

    def get(self, api_version: str, kind: str) -> FakeResource:
        return FakeResource(self.cluster, api_version, kind)

    def invalidate_cache(self) -> None:
        self.cluster.log.append(("discovery", "", ""))


class FakeCluster:
    """What the runtime uses of kubernetes.dynamic.DynamicClient; objects by (kind, namespace, name)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str | None, str], dict[str, Any]] = {}
        self.log: list[tuple[str, str, str]] = []
        self.resources = FakeResources(self)
        self.refuse: str = ""
        self.forbidden: set[str] = set()  # kinds the account may not list

    def server_side_apply(self, resource: FakeResource, body: dict[str, Any], name: str, namespace: str | None,
                          field_manager: str, force_conflicts: bool, **_: Any) -> Obj:
        assert (field_manager, force_conflicts) == ("edgecollab", True)
        if name == self.refuse:
            raise UnprocessibleEntityError(ApiException(status=422, reason="Invalid"))
        self.log.append(("apply", resource.kind, name))
        live = copy.deepcopy(body)
        if resource.kind == "CustomResourceDefinition":
            live["status"] = {"conditions": [{"type": "Established", "status": "True"}]}
        self.objects[(resource.kind, namespace, name)] = live
        return Obj(live)


class FakeLog:
    """What ``read_namespaced_pod_log(..., _preload_content=False)`` returns: urllib3's unread response."""

    def __init__(self, data: bytes) -> None:
        self.data, self.released = data, False

    def release_conn(self) -> None:
        self.released = True


class FakeCore:
    """What the runtime uses of CoreV1Api: container logs, by (pod, container, previous)."""

    def __init__(self) -> None:
        self.logs: dict[tuple[str, str, bool], str] = {}
        self.calls: list[dict[str, Any]] = []
        self.fail: Exception | None = None
        self.hang: threading.Event | None = None

    def read_namespaced_pod_log(self, name: str, namespace: str, **kwargs: Any) -> FakeLog:
        self.calls.append({"pod": name, "namespace": namespace, "thread": threading.current_thread(), **kwargs})
        if self.hang is not None:
            self.hang.wait(30)
        if self.fail is not None:
            raise self.fail
        text = self.logs[(name, kwargs["container"], kwargs["previous"])]
        return FakeLog("".join(text.splitlines(keepends=True)[-kwargs["tail_lines"]:]).encode())


def runtime(tmp_path: Path, cluster: FakeCluster, **settings: Any) -> KubernetesRuntime:
    rt = KubernetesRuntime(KubernetesSettings(work_dir=tmp_path / "k8s", **settings))
    rt._dynamic = cluster
    return rt


def doc(kind: str, name: str, api: str = "v1", **extra: Any) -> str:
    import yaml

    return yaml.safe_dump({"apiVersion": api, "kind": kind, "metadata": {"name": name}, **extra}) + "---\n"


DEPLOY = {"replicas": 1, "template": {"spec": {"securityContext": {"runAsUser": 1000},
                                                "containers": [{"name": "c", "image": "busybox"}]}}}


async def test_apply_upgrade_prune_drift_and_remove(tmp_path: Path) -> None:
    cluster = FakeCluster()
    rt = runtime(tmp_path, cluster)
    assert isinstance(rt, Runtime)
    crd = doc("CustomResourceDefinition", "widgets.example.com", "apiextensions.k8s.io/v1",
              spec={"group": "example.com", "scope": "Namespaced", "names": {"kind": "Widget"}})
    v1 = (doc("Deployment", "web", "apps/v1", spec=DEPLOY) + doc("Widget", "w", "example.com/v1") + crd
          + doc("ConfigMap", "old") + doc("ConfigMap", "conf"))

    await rt.apply(REF, v1, NODE)

    applied = [(kind, name) for op, kind, name in cluster.log if op in ("apply", "create", "discovery")]
    assert applied == [("Namespace", "demo"), ("ConfigMap", "old"), ("ConfigMap", "conf"),
                       ("CustomResourceDefinition", "widgets.example.com"), ("", ""), ("Deployment", "web"),
                       ("Widget", "w")]
    labels = cluster.objects[("Deployment", "demo", "web")]["metadata"]["labels"]
    assert labels["edgecollab.io/revision"] == "1" and labels["edgecollab.io/release"] == "web"
    assert await rt.releases() >= {REF}

    cluster.log.clear()
    await rt.apply(REF, v1, NODE)  # the same manifests: the same revision
    assert cluster.objects[("ConfigMap", "demo", "conf")]["metadata"]["labels"]["edgecollab.io/revision"] == "1"

    v2 = doc("Deployment", "web", "apps/v1", spec=DEPLOY) + doc("ConfigMap", "conf", data={"a": "b"})
    cluster.log.clear()
    await rt.apply(REF, v2, NODE)
    assert [e for e in cluster.log if e[0] == "delete"] == [("delete", "Widget", "w"),
                                                            ("delete", "CustomResourceDefinition",
                                                             "widgets.example.com"),
                                                            ("delete", "ConfigMap", "old")]
    assert cluster.objects[("ConfigMap", "demo", "conf")]["metadata"]["labels"]["edgecollab.io/revision"] == "2"

    # Drift: a deleted Deployment and an edited ConfigMap come back from the stored revision.
    del cluster.objects[("Deployment", "demo", "web")]
    cluster.objects[("ConfigMap", "demo", "conf")]["data"] = {"a": "edited"}
    seen = await rt.observe(REF)
    assert cluster.objects[("ConfigMap", "demo", "conf")]["data"] == {"a": "b"}
    assert ("Deployment", "demo", "web") in cluster.objects
    assert "restored from the stored revision: ConfigMap/conf (data.a changed), Deployment/web (deleted)" \
        in seen.message
    assert (seen.ready, seen.total) == (0, 1)

    cluster.log.clear()
    await rt.remove(REF, NODE)
    assert [e for e in cluster.log if e[0] == "delete"] == [("delete", "Deployment", "web"),
                                                            ("delete", "ConfigMap", "conf")]
    assert ("Namespace", None, "demo") in cluster.objects  # namespaces stay, as with helm --create-namespace
    assert not rt.record_file(REF).exists()
    assert (await rt.observe(REF)).total == 0


async def test_objects_of_another_release_or_outside_edgecollab_are_not_taken_over(tmp_path: Path) -> None:
    cluster = FakeCluster()
    rt = runtime(tmp_path, cluster)
    await rt.apply(ReleaseRef("demo", "other"), doc("ConfigMap", "shared"), NODE)
    cluster.objects[("ConfigMap", "demo", "handmade")] = {"metadata": {"name": "handmade"}}

    with pytest.raises(RuntimeApplyError, match="ConfigMap/shared .* belongs to release demo/other; not replaced"):
        await rt.apply(REF, doc("ConfigMap", "shared"), NODE)
    with pytest.raises(RuntimeApplyError, match="edgecollab does not manage it"):
        await rt.apply(REF, doc("ConfigMap", "handmade"), NODE)
    assert cluster.objects[("ConfigMap", "demo", "handmade")] == {"metadata": {"name": "handmade"}}


async def test_an_object_the_api_server_finds_invalid_rejects_the_revision_and_a_crash_still_prunes(
    tmp_path: Path,
) -> None:
    cluster = FakeCluster()
    rt = runtime(tmp_path, cluster)
    await rt.apply(REF, doc("ConfigMap", "a") + doc("ConfigMap", "b"), NODE)
    cluster.refuse = "c"
    with pytest.raises(ManifestRejected, match="ConfigMap/c .* the API server refused it"):
        await rt.apply(REF, doc("ConfigMap", "a") + doc("ConfigMap", "c"), NODE)
    # The failed apply journaled "b" as still to prune: the next good revision removes it.
    cluster.refuse = ""
    await rt.apply(REF, doc("ConfigMap", "a"), NODE)
    assert ("ConfigMap", "demo", "b") not in cluster.objects


async def test_the_node_policy_refuses_before_the_cluster_is_touched(tmp_path: Path) -> None:
    cluster = FakeCluster()
    rt = runtime(tmp_path, cluster)
    privileged = {"template": {"spec": {"hostNetwork": True, "securityContext": {"runAsUser": 1000},
                                         "containers": [{"name": "c", "image": "busybox"}]}}}
    with pytest.raises(ManifestRejected, match="hostNetwork"):
        await rt.apply(REF, doc("DaemonSet", "x", "apps/v1", spec=privileged), NODE)
    assert cluster.log == []


async def test_preflight_without_a_cluster_says_so(tmp_path: Path) -> None:
    rt = KubernetesRuntime(KubernetesSettings(work_dir=tmp_path / "k8s", kubeconfig=tmp_path / "missing"))
    checks = await rt.preflight()
    assert [(c.name, c.ok) for c in checks] == [("kubernetes", False), ("permissions", False), ("storage", True)]
    assert checks[0].reason == "KubernetesUnreachable" and "no usable Kubernetes configuration" in checks[0].detail


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


async def test_a_cluster_that_stops_answering_is_a_runtime_error_not_a_crash(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from urllib3.exceptions import MaxRetryError

    from edgeagent.runtime import EdgeRuntimeError

    cluster = FakeCluster()
    rt = runtime(tmp_path, cluster)
    await rt.apply(REF, doc("ConfigMap", "a"), NODE)

    def down(*_: Any, **__: Any) -> None:
        raise MaxRetryError(None, "/api", "connection refused")

    monkeypatch.setattr(FakeResource, "get", down)
    with pytest.raises(EdgeRuntimeError, match="connection refused"):
        await rt.observe(REF)
    with pytest.raises(RuntimeApplyError, match="connection refused"):
        await rt.apply(REF, doc("ConfigMap", "b"), NODE)
    with pytest.raises(RuntimeApplyError, match="removal failed"):
        await rt.remove(REF, NODE)


# -- what observe reports of each container ----------------------------------------------

WEB = {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
       "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"securityContext": {"runAsUser": 1000},
                             "containers": [{"name": "c", "image": "busybox",
                                             "command": ["sh", "-c", "echo crashing; exit 3"]}]}}}
POD = "web-5d4f9c-x2x7k"


def crash(restarts: int, finished: str) -> dict[str, Any]:
    """The container status of a crash-looping container, as the kubelet reports it."""
    return {"name": "c", "ready": False, "restartCount": restarts, "image": "busybox",
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}},
            "lastState": {"terminated": {"exitCode": 3, "reason": "Error", "finishedAt": finished}}}


async def crash_looping_deployment(tmp_path: Path, **settings: Any) -> tuple[KubernetesRuntime, FakeCluster, FakeCore]:
    """The Deployment ``web`` applied, with the ReplicaSet and the crash-looping pod its controller made."""
    cluster, core = FakeCluster(), FakeCore()
    rt = runtime(tmp_path, cluster, **settings)
    rt._core = core
    await rt.apply(REF, doc("Deployment", "web", "apps/v1", spec=WEB), NODE)
    cluster.objects[("Deployment", "demo", "web")]["metadata"]["uid"] = "d1"  # what the API server assigns
    cluster.objects[("ReplicaSet", "demo", "web-5d4f9c")] = {
        "kind": "ReplicaSet", "metadata": {"name": "web-5d4f9c", "namespace": "demo", "uid": "rs1",
                                           "labels": {"app": "web", "pod-template-hash": "5d4f9c"},
                                           "ownerReferences": [{"kind": "Deployment", "uid": "d1"}]}}
    cluster.objects[("Pod", "demo", POD)] = {
        "kind": "Pod", "metadata": {"name": POD, "namespace": "demo", "uid": "p1",
                                    "labels": {"app": "web", "pod-template-hash": "5d4f9c"},
                                    "ownerReferences": [{"kind": "ReplicaSet", "uid": "rs1"}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}],
                   "containerStatuses": [crash(4, "2026-12-07T19:00:00Z")]}}
    # Someone else's pod with the same labels: not the release's.
    cluster.objects[("Pod", "demo", "handmade")] = {
        "kind": "Pod", "metadata": {"name": "handmade", "namespace": "demo", "uid": "p9", "labels": {"app": "web"}},
        "status": {"phase": "Running", "containerStatuses": [crash(9, "2026-12-07T18:00:00Z")]}}
    core.logs[(POD, "c", True)] = "starting\nloading config\nconfig missing\ncrashing\n"
    return rt, cluster, core


async def test_a_crash_looping_deployment_reports_crashloopbackoff_with_its_exit_code_restarts_and_log(
    tmp_path: Path,
) -> None:
    rt, cluster, core = await crash_looping_deployment(tmp_path)

    seen = await rt.observe(REF)

    assert (seen.ready, seen.total) == (0, 1)  # the workload, as before
    assert [p.name for p in seen.pods] == ["Deployment/web", POD]
    assert "Deployment/web (Progressing" in seen.message
    health = release_health(seen.pods)
    assert (health.reason, health.restarts) == ("CrashLoopBackOff", 4)
    assert health.message == (f"pod {POD} container c: CrashLoopBackOff: exited 3 (Error), restarted 4 times; "
                              'last log: "loading config\\nconfig missing\\ncrashing"')
    (call,) = core.calls
    # The crashed instance is the kubelet's "previous" one; the read is bounded and off the event loop.
    assert (call["pod"], call["namespace"], call["container"], call["previous"]) == (POD, "demo", "c", True)
    assert call["tail_lines"] == 3 and call["limit_bytes"] > 0 and call["_request_timeout"] == 5.0
    assert call["thread"] is not threading.main_thread()

    # The same termination: its log is not read again.
    await rt.observe(REF)
    assert len(core.calls) == 1
    # It crashed once more: the new termination's log is read.
    cluster.objects[("Pod", "demo", POD)]["status"]["containerStatuses"] = [crash(5, "2026-12-07T19:01:20Z")]
    core.logs[(POD, "c", True)] = "crashing again\n"
    health = release_health((await rt.observe(REF)).pods)
    assert len(core.calls) == 2 and health.restarts == 5 and health.message.endswith('last log: "crashing again"')


async def test_a_log_that_cannot_be_read_never_fails_observe(tmp_path: Path) -> None:
    rt, _cluster, core = await crash_looping_deployment(tmp_path, log_timeout=0.2)

    # The API answers no (the previous container was already removed): not asked again for this termination.
    core.fail = ApiException(status=400, reason="Bad Request")
    health = release_health((await rt.observe(REF)).pods)
    assert (health.reason, health.restarts) == ("CrashLoopBackOff", 4) and "last log" not in health.message
    await rt.observe(REF)
    assert len(core.calls) == 1

    # A kubelet that does not answer: observe goes on without the log, and asks again on the next pass.
    rt._logs.clear()
    core.fail, core.hang = None, threading.Event()
    try:
        started = time.monotonic()
        health = release_health((await rt.observe(REF)).pods)
        assert time.monotonic() - started < 3
        assert health.reason == "CrashLoopBackOff" and "last log" not in health.message
        assert len(core.calls) == 2
    finally:
        core.hang.set()
    await asyncio.sleep(0)
    core.hang = None
    health = release_health((await rt.observe(REF)).pods)
    assert len(core.calls) == 3 and health.message.endswith('last log: "loading config\\nconfig missing\\ncrashing"')


async def test_an_account_that_may_not_list_pods_still_reports_its_workloads(tmp_path: Path) -> None:
    rt, cluster, core = await crash_looping_deployment(tmp_path)
    cluster.forbidden = {"Pod"}

    seen = await rt.observe(REF)

    assert (seen.ready, seen.total) == (0, 1) and [p.name for p in seen.pods] == ["Deployment/web"]
    assert release_health(seen.pods).reason == "" and core.calls == []


async def test_preflight_warns_when_the_account_may_not_read_pods_or_their_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster = FakeCluster()
    rt = runtime(tmp_path, cluster)
    monkeypatch.setattr(rt, "_version", lambda: "v1.31.4+k3s1")

    def review(self: FakeResource, body: dict[str, Any], **_: Any) -> Obj:
        attributes = body["spec"]["resourceAttributes"]
        return Obj(status={"allowed": attributes.get("subresource") != "log"})

    monkeypatch.setattr(FakeResource, "create", review)
    (_, permissions, _) = await rt.preflight()
    assert (permissions.ok, permissions.warning) == (True, True)
    assert "not get pods/log" in permissions.detail
