"""The Kubernetes runtime's pure half, over real manifests: the test charts rendered by Helm's own engine.

No cluster is needed: ordering, labels, namespaces, the pruning plan, the
node policy and the status mapping are functions of manifests and object JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from fleet_checks import vendored_chart

from edgeagent.policy import NodePolicy
from edgeagent.runtime import ManifestRejected, NodeContext, ReleaseRef
from edgeagent.runtime.kubernetes_plan import (
    INSTALL_ORDER,
    KubeObject,
    ObjectKey,
    build_kube_plan,
    drifted,
    hook_order,
    install_sorted,
    observation_from,
    ownership_conflict,
    prune_plan,
    release_labels,
    uninstall_sorted,
    workload_status,
)

NODE = NodeContext(node="edge-1", pool="shanghai")
REF = ReleaseRef("demo", "site")


def render(name: str, workdir: Path, values: dict[str, Any] | None = None, revision: int = 1) -> str:
    from deployer_plugin import package_chart, parse_component
    from deployer_plugin.render import render_release

    chart = vendored_chart(name, workdir)
    component = parse_component({
        "apiVersion": "edgecollab.io/v1alpha1", "kind": "Component",
        "metadata": {"name": REF.release, "namespace": REF.namespace},
        "spec": {"chart": str(chart), "values": values or {}, "edge": {"nodePools": ["shanghai"]}},
    })
    return render_release(component, package_chart(chart), revision=revision).bundles[""].manifests


@pytest.fixture(scope="module")
def charts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    pytest.importorskip("helm_python", reason="the Helm engine (the hub extra) renders the test charts")
    workdir = tmp_path_factory.mktemp("charts")
    return {name: render(name, workdir) for name in ("webserver", "keyvalue", "nodeexporter")}


def kinds(objects: list[KubeObject]) -> list[str]:
    return [o.kind for o in objects]


def test_a_web_chart_is_applied_configmap_then_service_then_deployment_every_object_labelled(charts):
    plan = build_kube_plan(REF, charts["webserver"], NODE, revision=3)

    assert [o.source for o in plan.objects] == ["ConfigMap/site-webserver", "Service/site-webserver",
                                               "Deployment/site-webserver"]
    for obj in plan.objects:
        labels = obj.body["metadata"]["labels"]
        assert labels["edgecollab.io/release"] == "site"
        assert labels["edgecollab.io/release-namespace"] == "demo"
        assert labels["edgecollab.io/revision"] == "3"
        assert labels["app.kubernetes.io/managed-by"] == "edgecollab"
        assert labels["app.kubernetes.io/name"] == "webserver"  # the chart's own labels stay
        assert obj.namespace == "demo" and obj.body["metadata"]["namespace"] == "demo"
    assert plan.namespaces == ["demo"]  # created when missing
    assert plan.hooks == [] and plan.warnings == []
    # The node's identity reaches every container, as on podman; no privilege escalation by default.
    (container,) = plan.objects[2].body["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["EDGE_NODE_NAME"] == "edge-1" and env["EDGE_NODE_POOL"] == "shanghai"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # The rendered manifests themselves are left untouched.
    assert "edgecollab.io/revision" not in charts["webserver"]


def test_a_database_chart_keeps_its_hook_apart_secret_before_service_before_statefulset(charts):
    plan = build_kube_plan(REF, charts["keyvalue"], NODE)

    assert kinds(plan.objects) == ["Secret", "Service", "StatefulSet"]
    (hook,) = plan.hooks
    assert hook.source == "Job/site-keyvalue-init"
    assert hook_order(plan.hooks, "pre-install") == [hook] and hook_order(plan.hooks, "post-delete") == []
    assert uninstall_sorted(plan.objects) == list(reversed(plan.objects))


def test_a_host_network_daemonset_is_refused_by_the_default_policy_and_runs_where_the_policy_allows(charts):
    with pytest.raises(ManifestRejected, match=r"DaemonSet/site-nodeexporter: hostNetwork .* allow: \{demo"):
        build_kube_plan(REF, charts["nodeexporter"], NODE)

    policy = NodePolicy.parse("allow: {demo: [hostNetwork]}")
    plan = build_kube_plan(REF, charts["nodeexporter"], NODE, policy=policy)
    assert kinds(plan.objects) == ["DaemonSet"]


def test_the_policy_is_the_podmans_root_and_namespaces_too(charts):
    with pytest.raises(ManifestRejected, match="namespace demo is not allowed"):
        build_kube_plan(REF, charts["webserver"], NODE, policy=NodePolicy.parse("namespaces: [other]"))
    root = charts["webserver"].replace("runAsUser:", "runAsGroup:")
    assert root != charts["webserver"]
    with pytest.raises(ManifestRejected, match="running as root"):
        build_kube_plan(REF, root, NODE)
    # An object aimed at another namespace is checked against that namespace.
    elsewhere = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: kube-system}\n"
    with pytest.raises(ManifestRejected, match="namespace kube-system is not allowed"):
        build_kube_plan(REF, elsewhere, NODE, policy=NodePolicy.parse("namespaces: [demo]"))


def test_the_install_order_is_helms_with_unknown_kinds_last_and_crds_before_their_resources():
    manifests = yaml.safe_dump_all([
        {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}},
        {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
         "metadata": {"name": "widgets.example.com"},
         "spec": {"group": "example.com", "scope": "Cluster", "names": {"kind": "Widget", "plural": "widgets"}}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "extra"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "extra"}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "r"}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "sa"}},
        {"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g"}},
    ])
    plan = build_kube_plan(REF, manifests, NODE)

    assert kinds(plan.objects) == ["Namespace", "ServiceAccount", "ConfigMap", "CustomResourceDefinition",
                                   "ClusterRole", "Deployment", "Gadget", "Widget"]
    by_kind = {o.kind: o for o in plan.objects}
    # Cluster-scoped: built-in kinds, and a custom kind whose CRD (in the release) says so.
    assert by_kind["Namespace"].namespace is None and by_kind["ClusterRole"].namespace is None
    assert by_kind["Widget"].namespace is None and "namespace" not in by_kind["Widget"].body["metadata"]
    assert by_kind["Gadget"].namespace == "demo"  # unknown custom kind: namespaced by default
    assert by_kind["ConfigMap"].namespace == "extra"
    # The release defines "extra" itself; only its own namespace is created when missing.
    assert plan.namespaces == ["demo"]
    # The cluster's discovery decides for custom kinds the release does not define.
    plan = build_kube_plan(REF, manifests, NODE, scope=lambda api, kind: kind != "Gadget")
    assert {o.kind: o.namespace for o in plan.objects}["Gadget"] is None
    assert INSTALL_ORDER.index("CustomResourceDefinition") < INSTALL_ORDER.index("Deployment")


def test_pruning_removes_what_the_new_revision_lacks_in_uninstall_order_by_group_kind_namespace_name(charts, tmp_path):
    old = build_kube_plan(REF, charts["webserver"] + "\n---\n" + charts["keyvalue"], NODE, revision=1)
    new = build_kube_plan(REF, charts["webserver"].replace("apps/v1", "apps/v1beta2"), NODE, revision=2)

    gone = prune_plan(old.objects, new.objects)

    # The Deployment changed apiVersion only: the same object, kept.
    assert [o.source for o in gone] == ["StatefulSet/site-keyvalue", "Service/site-keyvalue-headless",
                                       "Secret/site-keyvalue"]
    assert prune_plan(new.objects, new.objects) == []
    assert ObjectKey.of("apps/v1", "Deployment", "demo", "x") == ObjectKey.of("apps/v1beta2", "Deployment", "demo",
                                                                              "x")
    assert ObjectKey.of("v1", "ConfigMap", "a", "x") != ObjectKey.of("v1", "ConfigMap", "b", "x")


def test_bad_manifests_are_rejected_naming_the_object():
    with pytest.raises(ManifestRejected, match="no kind"):
        build_kube_plan(REF, "apiVersion: v1\nmetadata: {name: x}\n", NODE)
    with pytest.raises(ManifestRejected, match="ConfigMap/\\? of demo/site: metadata.name is missing"):
        build_kube_plan(REF, "apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n", NODE)
    with pytest.raises(ManifestRejected, match="defined twice"):
        build_kube_plan(REF, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\n"
                             "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", NODE)
    with pytest.raises(ManifestRejected, match="aliases expand it"):
        bomb = "a: &a [" + ",".join(["x"] * 50) + "]\n" + "".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 50) + "]\n" for i in range(4))
        build_kube_plan(REF, bomb, NODE)


def test_release_labels_and_ownership():
    assert release_labels(REF, 7) == {"edgecollab.io/release": "site", "edgecollab.io/release-namespace": "demo",
                                      "edgecollab.io/revision": "7", "app.kubernetes.io/managed-by": "edgecollab"}
    ours = {"metadata": {"labels": release_labels(REF, 1)}}
    other = {"metadata": {"labels": release_labels(ReleaseRef("demo", "other"), 1)}}
    assert ownership_conflict(None, REF) == "" and ownership_conflict(ours, REF) == ""
    assert "belongs to release demo/other" in ownership_conflict(other, REF)
    assert "does not manage it" in ownership_conflict({"metadata": {}}, REF)


def deployment(**status: Any) -> dict[str, Any]:
    return {"kind": "Deployment", "metadata": {"name": "web", "generation": 2, "uid": "u1"},
            "spec": {"replicas": 2}, "status": {"observedGeneration": 2, **status}}


def test_status_comes_from_each_workloads_own_conditions():
    available = deployment(availableReplicas=2, updatedReplicas=2, readyReplicas=2,
                           conditions=[{"type": "Available", "status": "True"}])
    assert workload_status(available).ready
    assert workload_status(deployment(availableReplicas=1, updatedReplicas=2)).phase == "Progressing"
    stuck = deployment(conditions=[{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                                    "message": 'ReplicaSet "web-1" has timed out progressing.'}])
    assert workload_status(stuck) == workload_status(stuck) and workload_status(stuck).phase == "Failed"
    assert "ProgressDeadlineExceeded" in workload_status(stuck).message
    assert workload_status({**available, "status": {**available["status"], "observedGeneration": 1}}).phase \
        == "Progressing"

    sts = {"kind": "StatefulSet", "spec": {"replicas": 3},
           "status": {"readyReplicas": 3, "currentRevision": "a", "updateRevision": "a"}}
    assert workload_status(sts).ready
    assert not workload_status({**sts, "status": {"readyReplicas": 2}}).ready
    ds = {"kind": "DaemonSet", "status": {"desiredNumberScheduled": 1, "numberReady": 0}}
    assert workload_status(ds).message == "0/1 pods ready"
    assert workload_status({"kind": "DaemonSet", "status": {"desiredNumberScheduled": 1, "numberReady": 1,
                                                            "updatedNumberScheduled": 1}}).ready
    job = {"kind": "Job", "status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    assert workload_status(job) .phase == "Complete" and workload_status(job).ready
    failed = {"kind": "Job", "status": {"conditions": [{"type": "Failed", "status": "True",
                                                        "reason": "BackoffLimitExceeded",
                                                        "message": "Job has reached the specified backoff limit"}]}}
    assert workload_status(failed).phase == "Failed" and "BackoffLimitExceeded" in workload_status(failed).message


def test_the_observation_counts_workloads_and_names_the_failing_one(charts):
    plan = build_kube_plan(REF, charts["webserver"] + "\n---\n" + charts["keyvalue"], NODE)
    by_kind = {o.kind: o for o in plan.objects}
    stuck = deployment(conditions=[{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                                    "message": "timed out"}])
    live = {o.key: {"kind": o.kind} for o in plan.objects}
    live[by_kind["Deployment"].key] = stuck
    live[by_kind["StatefulSet"].key] = {"kind": "StatefulSet", "spec": {"replicas": 1}, "status": {"readyReplicas": 1}}

    seen = observation_from(plan.objects, live)
    assert (seen.ready, seen.total) == (1, 2)
    assert [(p.name, p.phase, p.ready) for p in seen.pods] == [
        ("Deployment/site-webserver", "Failed", False), ("StatefulSet/site-keyvalue", "Available", True)]
    assert seen.message == ("1 of 2 workloads not ready: Deployment/site-webserver "
                            "(Failed: ProgressDeadlineExceeded: timed out)")

    live[by_kind["Deployment"].key] = None
    seen = observation_from(plan.objects, live, repaired=["ConfigMap/site-webserver"])
    assert seen.pods[0].phase == "Missing"  # the reconciler's word for a pod to bring back
    assert seen.message.endswith("restored from the stored revision: ConfigMap/site-webserver")


def test_drift_is_a_field_we_set_that_the_live_object_lacks_or_holds_otherwise(charts):
    plan = build_kube_plan(REF, charts["webserver"], NODE)
    deploy = plan.objects[-1].body
    live = yaml.safe_load(yaml.safe_dump(deploy))
    live["status"] = {"replicas": 1}
    live["metadata"]["uid"] = "x"
    live["spec"]["template"]["spec"]["dnsPolicy"] = "ClusterFirst"  # a server default: not drift
    assert drifted(deploy, live) == ""
    live["spec"]["replicas"] = 5
    assert drifted(deploy, live) == "spec.replicas"
    secret = {"kind": "Secret", "stringData": {"a": "b"}, "metadata": {"name": "s"}}
    assert drifted(secret, {"kind": "Secret", "data": {"a": "Yg=="}, "metadata": {"name": "s"}}) == ""


def test_install_sorted_is_stable_within_a_kind():
    objs = [KubeObject("v1", "ConfigMap", "demo", n, {}, f"ConfigMap/{n}") for n in ("b", "a", "c")]
    assert [o.name for o in install_sorted(objs)] == ["b", "a", "c"]
