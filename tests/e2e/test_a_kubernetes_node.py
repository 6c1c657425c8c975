"""A node with its own Kubernetes, end to end: a real hub and Mosquitto, an agent joined with ``edgeagent join
--runtime kubernetes --kubeconfig FILE`` as the README says, and the session's real API server (kwok makes pods
ready; no container runs).

Components are applied, upgraded, rolled back and deleted with ``edgectl``; what the agent asked the API server
is read from its audit log, what it holds through it (as kubectl shows it), what the node reported through the
hub. Every test works in a namespace and a CRD group of its own and removes them.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fleet_checks import component, node_events, node_view, write_spec
from kube_checks import (
    WIDGETS_CHART,
    AuditLog,
    Write,
    client,
    delete,
    labels,
    live,
    remove_test_objects,
    render_chart,
    unique_name,
    widget_group,
)

from edgeagent.policy import POLICY_FILE, NodePolicy
from edgeagent.runtime import ManifestRejected, NodeContext, ReleaseRef
from edgeagent.runtime.podman_plan import build_plan
from edgesim.fleet import Fleet, Node, NodeOptions, wait_until

pytestmark = pytest.mark.timeout(180)

POOL = "k3s"
NODE = "k3s-1"
# Seconds for the agent to apply and report (a few reconcile passes, and a reconnection to the broker).
CONVERGE = 60


@pytest.fixture(scope="module")
def k8s_fleet(tmp_path_factory: pytest.TempPathFactory, control_plane: Any) -> Iterator[Fleet]:
    """Broker, hub and one agent joined with the kubernetes runtime, for the whole module.

    The agents run with ``--reconcile-interval 2`` (default 5): what these tests wait for, a drift repaired, a
    workload's status reported, comes once per reconcile pass, which this flag bounds.
    """
    options = NodeOptions(runtime="kubernetes", kubeconfig=control_plane.kubeconfig, reconcile_interval=2)
    with Fleet(workdir=tmp_path_factory.mktemp("k8s-fleet"), node_options=options) as fleet:
        fleet.add_node(NODE, POOL)
        yield fleet


@pytest.fixture
def namespace(control_plane: Any) -> Iterator[str]:
    name = unique_name("ec-node")
    yield name
    remove_test_objects(control_plane.kubeconfig, name)


@pytest.fixture
def audit(control_plane: Any) -> AuditLog:
    return AuditLog(control_plane.audit_log)


def converge(fleet: Fleet, what: str, check: Callable[[], Any], timeout: float = CONVERGE) -> Any:
    """``check`` once it holds; on timeout the agents' logs say why."""
    try:
        return wait_until(check, timeout=timeout, what=what, interval=0.5)
    except TimeoutError as exc:
        logs = "\n".join(f"----- {n.name} -----\n{n.log_tail(40)}" for n in fleet.nodes.values())
        raise AssertionError(f"{exc}\n{logs}") from None


def reported(fleet: Fleet, node: str, namespace: str, release: str) -> dict[str, Any] | None:
    assert fleet.hub is not None
    return next((r for r in fleet.hub.api(f"/api/v1/nodes/{node}")["releases"]
                 if (r["namespace"], r["release"]) == (namespace, release)), None)


def apply(fleet: Fleet, spec_dir: Path, namespace: str, name: str = "shop", *, pool: str = POOL, **values: Any) -> None:
    assert fleet.hub is not None
    spec = write_spec(spec_dir / f"{name}.yaml", name=name, namespace=namespace, chart=WIDGETS_CHART,
                      values={"group": widget_group(namespace), **values}, edge={"nodePools": [pool]})
    fleet.hub.ctl("apply", "-f", str(spec))


def deployed(fleet: Fleet, namespace: str, revision: int, name: str = "shop") -> None:
    """Wait until the component's one node reports it Deployed at ``revision``, as the hub counts it."""
    hub = fleet.hub
    assert hub is not None
    converge(fleet, f"{namespace}/{name} Deployed at revision {revision}", lambda: (
        view := component(hub, f"{namespace}/{name}"))["revision"] == revision
        and view["targets"] == view["deployed"] == 1)


def in_cluster(kubeconfig: Path, namespace: str, api: str, kind: str, name: str) -> dict[str, Any] | None:
    """The release's object ``kind/name`` (in ``namespace`` unless it is the cluster-wide CRD)."""
    return live(kubeconfig, api, kind, name, None if kind == "CustomResourceDefinition" else namespace)


def revision_labels(kubeconfig: Path, namespace: str, objects: list[tuple[str, str, str]]) -> set[str]:
    found = set()
    for api, kind, name in objects:
        obj = in_cluster(kubeconfig, namespace, api, kind, name)
        assert obj is not None, f"{kind}/{name} missing"
        found.add(labels(obj)["edgecollab.io/revision"])
    return found


def hooks_run(fleet: Fleet, namespace: str, revision: int) -> list[str]:
    """The hooks the node's Applied event of ``revision`` says it ran, in order."""
    assert fleet.hub is not None
    message = next(e["message"] for e in node_events(fleet.hub, NODE)
                   if e["reason"] == "Applied" and e["namespace"] == namespace and e["revision"] == revision)
    return re.findall(r"(\S+ hook \S+) succeeded", message)


def names(writes: list[Write], *verbs: str) -> list[str]:
    return [str(w) for w in writes if w.verb in verbs]


def test_a_node_joined_with_the_kubernetes_runtime_reports_it_and_passes_doctor(k8s_fleet: Fleet,
                                                                                 control_plane: Any) -> None:
    assert k8s_fleet.hub is not None
    # The conditions come with the first status after the runtime's preflight.
    view = converge(k8s_fleet, "the node online with its runtime's checks", lambda: (
        v := node_view(k8s_fleet.hub, NODE)) and v["presence"] == "online" and v["conditions"] and v)
    assert view["runtime"] == "kubernetes"
    assert [(c["type"], c["status"]) for c in view["conditions"]] == [("RuntimeReady", "True"),
                                                                     ("StorageReady", "True")]
    # As the README's k3s section checks a node: doctor with the runtime chosen at join.
    node = k8s_fleet.nodes[NODE]
    doctor = subprocess.run([sys.executable, "-m", "edgeagent.cli", "doctor", "--state-dir", str(node.state_dir)],
                            capture_output=True, text=True, timeout=60)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    checks = {line.split()[1]: line for line in doctor.stdout.splitlines() if line.startswith(("ok", "WARN"))}
    assert checks["kubernetes"].startswith("ok") and f"Kubernetes v1.36.3 at {control_plane.server}" \
        in checks["kubernetes"]
    assert checks["permissions"].startswith("ok") and "read pods and their logs" in checks["permissions"]


def test_releases_are_applied_upgraded_rolled_back_and_uninstalled_in_helms_order_with_the_hubs_revision(
    k8s_fleet: Fleet, namespace: str, audit: AuditLog, control_plane: Any, tmp_path: Path,
) -> None:
    hub, kubeconfig = k8s_fleet.hub, control_plane.kubeconfig
    assert hub is not None
    group = widget_group(namespace)
    crd = f"widgets.{group}"
    scope = {"namespace": namespace, "names": frozenset({namespace, crd})}
    objects = [("v1", "ConfigMap", "shop-config"), ("v1", "ConfigMap", "shop-extra"),
               ("apiextensions.k8s.io/v1", "CustomResourceDefinition", crd), ("apps/v1", "Deployment", "shop-web"),
               (f"{group}/v1", "Widget", "shop")]

    mark = audit.mark()
    apply(k8s_fleet, tmp_path, namespace)
    deployed(k8s_fleet, namespace, 1)

    # The pre-install hooks by weight, then the release by server-side apply in Helm's order (the Widget once its
    # CRD is Established: the API server would not serve it before), then the post-install hook.
    writes = audit.writes(mark, **scope)
    assert names(writes, "create", "patch") == [
        f"create namespaces/{namespace}", "patch jobs/shop-prepare", "patch jobs/shop-migrate",
        "patch configmaps/shop-config", "patch configmaps/shop-extra", f"patch customresourcedefinitions/{crd}",
        "patch deployments/shop-web", "patch widgets/shop", "patch jobs/shop-announce"]
    assert {w.field_manager for w in writes if w.verb == "patch"} == {"edgecollab"}
    assert live(kubeconfig, f"{group}/v1", "Widget", "shop", namespace)["spec"] == {"size": 3}
    assert revision_labels(kubeconfig, namespace, objects) == {"1"}
    # Each hook Job ran to completion (kwok completes them) before the next was made.
    jobs = {name: live(kubeconfig, "batch/v1", "Job", f"shop-{name}", namespace)
            for name in ("prepare", "migrate", "announce")}
    assert all(j["status"].get("succeeded") == 1 for j in jobs.values())
    assert jobs["prepare"]["status"]["completionTime"] <= jobs["migrate"]["metadata"]["creationTimestamp"]
    assert hooks_run(k8s_fleet, namespace, 1) == ["pre-install hook Job/shop-prepare",
                                                  "pre-install hook Job/shop-migrate",
                                                  "post-install hook Job/shop-announce"]

    # Revision 2 drops shop-extra: pruned once the rest is applied.
    mark = audit.mark()
    apply(k8s_fleet, tmp_path, namespace, extraConfig=False)
    deployed(k8s_fleet, namespace, 2)
    writes = audit.writes(mark, **scope)
    assert names(writes, "patch", "delete") == [
        "delete jobs/shop-migrate", "patch jobs/shop-migrate", "patch configmaps/shop-config",
        f"patch customresourcedefinitions/{crd}", "patch deployments/shop-web", "patch widgets/shop",
        "delete configmaps/shop-extra"]
    assert live(kubeconfig, "v1", "ConfigMap", "shop-extra", namespace) is None
    assert revision_labels(kubeconfig, namespace, [o for o in objects if o[2] != "shop-extra"]) == {"2"}

    # A rollback at the hub is revision 3 with revision 1's manifests: labelled 3, shop-extra back.
    hub.ctl("rollback", f"{namespace}/shop")
    deployed(k8s_fleet, namespace, 3)
    assert revision_labels(kubeconfig, namespace, objects) == {"3"}

    # Uninstall: the pre-delete hook, then every object in the reverse order, then the hooks' Jobs.
    mark = audit.mark()
    hub.ctl("delete", "component", "shop", "-n", namespace)
    converge(k8s_fleet, "the release gone from the node", lambda: (
        reported(k8s_fleet, NODE, namespace, "shop") is None
        and all(in_cluster(kubeconfig, namespace, *o) is None for o in objects)))
    writes = audit.writes(mark, **scope)
    assert str(writes[0]) == "patch jobs/shop-goodbye" and names(writes, "patch") == ["patch jobs/shop-goodbye"]
    assert [str(w) for w in writes if w.verb == "delete" and w.resource != "jobs"] == [
        "delete widgets/shop", "delete deployments/shop-web", f"delete customresourcedefinitions/{crd}",
        "delete configmaps/shop-extra", "delete configmaps/shop-config"]
    assert writes[-1].resource == "jobs" and {w.name for w in writes if w.verb == "delete" and w.resource == "jobs"} \
        >= {"shop-prepare", "shop-migrate", "shop-announce", "shop-goodbye"}
    assert not client(kubeconfig).resources.get(api_version="batch/v1", kind="Job").get(
        namespace=namespace).to_dict()["items"]


def test_a_deleted_or_edited_deployment_is_restored_also_while_the_broker_is_down(
    k8s_fleet: Fleet, namespace: str, control_plane: Any, tmp_path: Path,
) -> None:
    kubeconfig = control_plane.kubeconfig
    assert k8s_fleet.broker is not None and k8s_fleet.hub is not None
    apply(k8s_fleet, tmp_path, namespace, hooks=False)
    deployed(k8s_fleet, namespace, 1)
    deployments = client(kubeconfig).resources.get(api_version="apps/v1", kind="Deployment")
    first = live(kubeconfig, "apps/v1", "Deployment", "shop-web", namespace)

    k8s_fleet.broker.stop()
    try:
        delete(kubeconfig, "apps/v1", "Deployment", "shop-web", namespace)
        restored = converge(k8s_fleet, "the deleted Deployment made again without the broker", lambda: (
            d := live(kubeconfig, "apps/v1", "Deployment", "shop-web", namespace))
            and d["metadata"]["uid"] != first["metadata"]["uid"] and d)
        assert labels(restored)["edgecollab.io/revision"] == "1"
        # kubectl scale and kubectl set image: both fields are the release's, so both are taken back.
        deployments.patch(name="shop-web", namespace=namespace, content_type="application/strategic-merge-patch+json",
                          body={"spec": {"replicas": 3, "template": {"spec": {"containers": [
                              {"name": "web", "image": "registry.invalid/other:2"}]}}}})
        converge(k8s_fleet, "the edited Deployment taken back without the broker", lambda: (
            d := live(kubeconfig, "apps/v1", "Deployment", "shop-web", namespace))
            and d["spec"]["replicas"] == 1
            and d["spec"]["template"]["spec"]["containers"][0]["image"] == "localhost/edgecollab-busybox:1")
    finally:
        k8s_fleet.broker.start()

    converge(k8s_fleet, "the node back online and Deployed", lambda: (
        node_view(k8s_fleet.hub, NODE)["presence"] == "online"
        and (r := reported(k8s_fleet, NODE, namespace, "shop")) and r["phase"] == "Deployed"))


def test_a_deployment_whose_pods_no_node_takes_is_degraded_at_once_naming_it(
    k8s_fleet: Fleet, namespace: str, tmp_path: Path,
) -> None:
    started = time.monotonic()
    apply(k8s_fleet, tmp_path, namespace, hooks=False, nodeSelector={"edgecollab.io/none": "x"},
          progressDeadlineSeconds=2)

    release = converge(k8s_fleet, "the release Degraded", lambda: (
        r := reported(k8s_fleet, NODE, namespace, "shop")) and r["phase"] == "Degraded" and r)

    # Its controller gave up on the Deployment: no waiting out the agent's ready timeout (120 s).
    assert time.monotonic() - started < 60
    assert (release["applied_revision"], release["ready"], release["total"]) == (1, 0, 1)
    assert "Deployment/shop-web (Failed: ProgressDeadlineExceeded: " in release["message"]
    assert "Unschedulable: 0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector" \
        in release["message"]
    # Its pod never got a container: the health gate's words say no container is failing (edgeagent.release_health).
    assert (release["reason"], release["restarts"], release["pods"]) == ("", 0, [])
    assert k8s_fleet.hub is not None
    assert k8s_fleet.hub.ctl_json("describe", "component", f"{namespace}/shop")["deployed"] == 0


def test_the_node_policy_refuses_host_access_and_privilege_in_podmans_words(
    k8s_fleet: Fleet, namespace: str, audit: AuditLog, tmp_path: Path,
) -> None:
    node = k8s_fleet.nodes[NODE]
    policy = NodePolicy(path=str(node.state_dir.resolve() / POLICY_FILE))
    mark = audit.mark()
    cases = {"net": {"hostNetwork": True}, "priv": {"privileged": True}}
    for name, values in cases.items():
        apply(k8s_fleet, tmp_path, namespace, name, **values)

    for name, values in cases.items():
        release = converge(k8s_fleet, f"{name} refused", lambda name=name: (
            r := reported(k8s_fleet, NODE, namespace, name)) and r["phase"] == "Failed" and r)
        manifests = render_chart(WIDGETS_CHART, name=name, namespace=namespace,
                                 values={"group": widget_group(namespace), **values})
        with pytest.raises(ManifestRejected) as on_podman:
            build_plan(ReleaseRef(namespace, name), manifests, NodeContext(node=NODE, pool=POOL), policy=policy)
        assert release["message"] == f"rejected: {on_podman.value}; waiting for a new revision"
    assert "hostNetwork" in reported(k8s_fleet, NODE, namespace, "net")["message"]
    assert "privileged" in reported(k8s_fleet, NODE, namespace, "priv")["message"]
    # Refused before anything reached the cluster.
    assert audit.writes(mark, namespace=namespace, names=frozenset({namespace})) == []


def test_a_node_that_joins_at_a_later_revision_labels_the_hubs_revision(
    k8s_fleet: Fleet, namespace: str, control_plane: Any, tmp_path: Path,
) -> None:
    """The release's third revision is the node's first apply: its objects say 3."""
    assert k8s_fleet.hub is not None
    for message in ("one", "two", "three"):
        apply(k8s_fleet, tmp_path, namespace, pool="k3s-later", hooks=False, message=message)
    late: Node = k8s_fleet.add_node("k3s-2", "k3s-later")

    converge(k8s_fleet, "the late node Deployed at revision 3", lambda: (r := reported(
        k8s_fleet, late.name, namespace, "shop")) and (r["phase"], r["applied_revision"]) == ("Deployed", 3))
    kubeconfig = control_plane.kubeconfig
    assert revision_labels(kubeconfig, namespace, [("v1", "ConfigMap", "shop-config"),
                                                   ("apps/v1", "Deployment", "shop-web")]) == {"3"}
    assert live(kubeconfig, "v1", "ConfigMap", "shop-config", namespace)["data"] == {"message": "three"}
    k8s_fleet.hub.ctl("delete", "component", "shop", "-n", namespace)
    converge(k8s_fleet, "the release removed", lambda: live(kubeconfig, "apps/v1", "Deployment", "shop-web",
                                                         namespace) is None)
