"""The Component controller end to end: Component objects in a real API server, applied through a
real hub to real agents on podman.

One scene for the module: the session's control plane (``control_plane``) with the CRD installed
from charts/edgehub/crds/, a namespace of this module's own, a fleet (Mosquitto, ``edgehub serve
--tls on``, two podman nodes in pools shanghai and beijing), a chart repository on loopback
(tests/chart_server.py: a cluster object cannot name a local chart), and the controller run as a
user runs it::

    KUBECONFIG=... EDGECOLLAB_TOKEN_FILE=STATE/admin-token \\
        python -m deployer_plugin.controller --hub https://127.0.0.1:PORT --ca-file STATE/hub-ca.crt --namespace NS

with a ServiceAccount's token bound to the ClusterRole charts/edgehub renders for it (so the chart's
RBAC is what it runs with). Components are written with the ``kubernetes`` client; what is checked
is what a user sees: the object's status and conditions, ``kubectl get components`` (the API
server's Table), the hub's history, and what podman runs on each node.

The tests of the component ``web`` follow its life in order (created, updated, rolled back on the
hub, deleted); the others each have a component of their own.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml
from chart_server import ChartServer
from cluster import api_client, create_namespace, delete_namespace, install_crd, table
from fleet_checks import EXAMPLE_CHART
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from deployer_plugin.controller import FINALIZER, GROUP, PLURAL, VERSION
from edgesim.fleet import Fleet, ManagedProcess, Node, NodeOptions, wait_until

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]
HUB_CHART = REPO / "charts" / "edgehub"
# The controller's periods here: a resync every 5 s (60 by default) so a change made on the hub alone
# (a rollback) shows soon, and a rollout under way looked at every 2 s (5 by default).
RESYNC_SECONDS = 5
POLL_SECONDS = 2
# A rollout to podman nodes: agents reconcile every 5 s and report; a resync period more for the status.
ROLLOUT_SECONDS = 90


class ControllerProcess(ManagedProcess):
    """``python -m deployer_plugin.controller`` as a user runs it, its output in a log file."""

    def __init__(self, workdir: Path, argv: list[str], env: dict[str, str]) -> None:
        super().__init__("controller", workdir / "controller.log")
        self.argv = argv
        self.env = env

    def start(self) -> ControllerProcess:
        self._spawn([sys.executable, "-m", "deployer_plugin.controller", *self.argv], env=self.env)
        return self


@dataclass
class Scene:
    admin: client.ApiClient
    namespace: str
    fleet: Fleet
    charts: ChartServer
    controller: ControllerProcess

    @property
    def objects(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.admin)

    @property
    def hub(self) -> Any:
        assert self.fleet.hub is not None
        return self.fleet.hub

    def node(self, name: str) -> Node:
        return self.fleet.nodes[name]

    def component(self, name: str, *, version: str = "1.0.0", values: dict[str, Any] | None = None,
                  edge: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Component",
                "metadata": {"name": name, "namespace": self.namespace},
                "spec": {"chart": {"repo": self.charts.repo_url, "name": "web", "version": version},
                         "values": values or {}, "edge": edge or {"nodePools": ["shanghai"]}}}

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.objects.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body,
                                                            field_validation="Strict")

    def patch(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.objects.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, patch)

    def get(self, name: str) -> dict[str, Any] | None:
        try:
            return self.objects.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def status_when(self, name: str, check: Any, what: str, timeout: float = ROLLOUT_SECONDS) -> dict[str, Any]:
        """The object's status once ``check(status)`` holds."""

        def ready() -> dict[str, Any] | None:
            self.assert_controller_runs()
            status = (self.get(name) or {}).get("status") or {}
            return status if check(status) else None

        return wait_until(ready, timeout=timeout, what=f"{self.namespace}/{name}: {what}")

    def available(self, name: str, *, generation: int, revision: int, ready: str) -> dict[str, Any]:
        """The status once the controller acted on ``generation`` and the rollout of ``revision`` is complete."""
        return self.status_when(name, lambda s: (
            s.get("observedGeneration") == generation and s.get("targetRevision") == revision
            and s.get("currentRevision") == revision and s.get("readyNodes") == ready
            and conditions(s).get("Available", ("",))[0] == "True"),
            f"generation {generation} available at revision {revision} on {ready} node(s)")

    def row(self, name: str) -> dict[str, Any]:
        """The row of ``kubectl get components -o wide`` for ``name``: column name -> cell."""
        printed = table(self.admin, f"/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}/{PLURAL}")
        names = [c["name"] for c in printed["columnDefinitions"]]
        (row,) = [r for r in printed["rows"] if r["cells"][0] == name]
        return dict(zip(names, row["cells"], strict=True))

    def greeting(self, node: str, name: str) -> str:
        pod_name = f"{self.namespace}.{name}"
        return self.node(node).container_env(self.node(node).main_container(pod_name))["GREETING"]

    def release_pods(self, node: str, name: str) -> list[dict[str, Any]]:
        return self.node(node).release_pods(f"{self.namespace}.{name}")

    def assert_controller_runs(self) -> None:
        assert self.controller.running, f"the controller exited:\n{self.controller.log_tail(60)}"


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status.get("conditions") or []}


def controller_kubeconfig(admin: client.ApiClient, control_plane: Any, namespace: str, path: Path) -> str:
    """A kubeconfig for a ServiceAccount in ``namespace`` that holds the rules of the ClusterRole
    charts/edgehub gives its controller (bound in ``namespace`` only); returns the ClusterRole's name."""
    with helm_python.Chart.load(HUB_CHART) as chart:
        rendered = chart.render({}, name="ec", namespace=namespace, revision=1, is_install=True, is_upgrade=False)
    rbac = yaml.safe_load_all(rendered["edgehub/templates/rbac.yaml"])
    (role,) = [d for d in rbac if d and d["kind"] == "ClusterRole"]
    role_name = f"edgecollab-controller-{namespace}"
    rbac, core = client.RbacAuthorizationV1Api(admin), client.CoreV1Api(admin)
    rbac.create_cluster_role({"metadata": {"name": role_name}, "rules": role["rules"]})
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "controller"}})
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "controller"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name},
        "subjects": [{"kind": "ServiceAccount", "name": "controller", "namespace": namespace}]})
    token = core.create_namespaced_service_account_token(
        "controller", namespace, {"spec": {"expirationSeconds": 3600}}).status.token
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "controller",
        "clusters": [{"name": "test", "cluster": {"server": control_plane.server,
                                                  "certificate-authority": str(control_plane.ca_file)}}],
        "users": [{"name": "controller", "user": {"token": token}}],
        "contexts": [{"name": "controller", "context": {"cluster": "test", "user": "controller",
                                                        "namespace": namespace}}]}))
    path.chmod(0o600)
    return role_name


@pytest.fixture(scope="module")
def scene(request: pytest.FixtureRequest, control_plane: Any, tmp_path_factory: pytest.TempPathFactory,
          demo_image_tar: Path, containers_conf: Path | None) -> Iterator[Scene]:
    workdir = tmp_path_factory.mktemp("controller")
    admin = api_client(control_plane.kubeconfig)
    install_crd(admin)
    namespace = create_namespace(admin, "controller")
    role_name = controller_kubeconfig(admin, control_plane, namespace, workdir / "controller.kubeconfig")
    failed_before = request.session.testsfailed
    options = NodeOptions(containers_conf=containers_conf, image_tar=demo_image_tar)
    with Fleet(workdir=workdir / "fleet", node_options=options,
               hub_flags=("--tls", "on", "--allow-chart-source", "127.0.0.0/8")) as fleet, \
            ChartServer(workdir / "charts") as charts:
        assert fleet.hub is not None and fleet.hub.scheme == "https"
        fleet.add_node("sh-1", "shanghai")
        fleet.add_node("bj-1", "beijing")
        charts.add_chart(EXAMPLE_CHART, "1.0.0")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGECOLLAB_", "KUBERNETES_"))}
        env.update(KUBECONFIG=str(workdir / "controller.kubeconfig"),
                   EDGECOLLAB_TOKEN_FILE=str(fleet.hub.admin_token_path))
        controller = ControllerProcess(workdir, ["--hub", fleet.hub.url, "--ca-file", str(fleet.hub.ca_path),
                                                 "--namespace", namespace, "--resync", str(RESYNC_SECONDS),
                                                 "--poll", str(POLL_SECONDS)], env)
        scene = Scene(admin, namespace, fleet, charts, controller)
        controller.start()
        try:
            yield scene
            # What is left is deleted while the controller runs, as a user would, so the hub forgets it.
            for obj in scene.objects.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]:
                scene.objects.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                              obj["metadata"]["name"])
            wait_until(lambda: not scene.objects.list_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL)["items"], timeout=60, what="the Components deleted")
        finally:
            if request.session.testsfailed > failed_before:
                for proc in [controller, fleet.hub, *fleet.nodes.values()]:
                    if proc is not None:
                        print(f"\n----- {proc.name} log (tail) -----\n{proc.log_tail(60)}")
            controller.stop()
            delete_namespace(admin, namespace)
            client.RbacAuthorizationV1Api(admin).delete_cluster_role(role_name)
            admin.close()


# --------------------------------------------------------------------------- the life of one component


def test_a_component_is_applied_to_the_nodes_with_its_status_and_columns(scene: Scene) -> None:
    body = scene.component("web", values={"greeting": "from the cluster"},
                           edge={"nodePools": ["shanghai", "beijing"],
                                 "poolValues": {"beijing": {"greeting": "ni hao"}}})
    scene.create(body)

    status = scene.available("web", generation=1, revision=1, ready="2/2")

    assert conditions(status) == {"Progressing": ("False", "RolloutComplete"), "Available": ("True", "AllNodesReady"),
                                  "RolledBack": ("False", "NotRolledBack")}
    assert (status["rollout"], status["desired"], status["ready"], status["failed"]) == ("complete", 2, 2, 0)
    assert set(status["pools"]) == {"shanghai", "beijing"}
    assert FINALIZER in scene.get("web")["metadata"]["finalizers"]
    # What the nodes run, as podman shows it.
    assert scene.greeting("sh-1", "web") == "from the cluster"
    assert scene.greeting("bj-1", "web") == "ni hao"
    # The hub's history names who applied it.
    (entry,) = scene.hub.api(f"/api/v1/components/{scene.namespace}/web/history")
    assert entry["origin"] == "apply by edgecollab-controller"
    # `kubectl get components` and `-o wide`: the CRD's printer columns, read from the API server.
    printed = table(scene.admin, f"/apis/{GROUP}/{VERSION}/namespaces/{scene.namespace}/{PLURAL}")
    assert [(c["name"], c.get("priority", 0)) for c in printed["columnDefinitions"]] == [
        ("Name", 0), ("Revision", 0), ("Target", 1), ("Ready", 0), ("Status", 1), ("Age", 0)]
    row = scene.row("web")
    assert (row["Revision"], row["Target"], row["Ready"], row["Status"]) == (1, 1, "2/2", "complete")
    assert row["Age"].endswith(("s", "m"))


def test_an_update_makes_a_new_revision_that_the_nodes_run(scene: Scene) -> None:
    # Leaving beijing: its pool and its values go (a merge patch's null removes a key).
    scene.patch("web", {"spec": {"values": {"greeting": "updated"},
                                 "edge": {"nodePools": ["shanghai"], "poolValues": None}}})

    status = scene.available("web", generation=2, revision=2, ready="1/1")

    assert set(status["pools"]) == {"shanghai"}  # the pool no longer targeted is gone from the status too
    assert scene.greeting("sh-1", "web") == "updated"
    wait_until(lambda: not scene.release_pods("bj-1", "web"), timeout=ROLLOUT_SECONDS, what="web gone from bj-1")
    assert scene.row("web")["Revision"] == 2


def test_a_rollback_on_the_hub_is_reported_and_kept(scene: Scene) -> None:
    scene.hub.ctl("rollback", f"{scene.namespace}/web", "--to-revision", "1")

    status = scene.status_when("web", lambda s: conditions(s).get("RolledBack") == ("True", "RolledBack")
                               and s.get("readyNodes") == "2/2" and s.get("currentRevision") == 3,
                               "RolledBack=True and revision 3 on 2 nodes")

    assert "revision 3 is revision 1 rolled back" in next(
        c["message"] for c in status["conditions"] if c["type"] == "RolledBack")
    assert status["observedGeneration"] == 2  # the spec did not change: the controller leaves the rollback be
    assert scene.greeting("bj-1", "web") == "ni hao"
    assert [h["revision"] for h in scene.hub.api(f"/api/v1/components/{scene.namespace}/web/history")][0] == 3


def test_deleting_the_object_removes_the_release_from_the_hub_and_the_nodes(scene: Scene) -> None:
    scene.objects.delete_namespaced_custom_object(GROUP, VERSION, scene.namespace, PLURAL, "web")

    wait_until(lambda: scene.get("web") is None, timeout=60, what="the object gone once its finalizer is")
    listed = {c["name"] for c in scene.hub.ctl_json("get", "components") if c["namespace"] == scene.namespace}
    assert "web" not in listed
    for node in ("sh-1", "bj-1"):
        wait_until(lambda node=node: not scene.release_pods(node, "web"), timeout=ROLLOUT_SECONDS,
                   what=f"web gone from {node}")


# --------------------------------------------------------------------------- refusals and restarts


def test_a_spec_the_hub_refuses_is_reported_naming_the_field(scene: Scene) -> None:
    scene.create(scene.component("missing", version="9.9.9"))

    status = scene.status_when("missing", lambda s: conditions(s).get("Progressing") == ("False", "SpecRejected"),
                               "Progressing=False SpecRejected", timeout=60)

    message = next(c["message"] for c in status["conditions"] if c["type"] == "Progressing")
    assert "spec.chart" in message and "9.9.9" in message, message
    assert (status["observedGeneration"], status["rollout"], status["targetRevision"]) == (1, "refused", 0)
    assert scene.row("missing")["Status"] == "refused"
    # Refused until the spec changes: not sent again, the status not rewritten (a loop would, within a poll).
    written = scene.get("missing")["metadata"]["resourceVersion"]
    time.sleep(2 * POLL_SECONDS + 1)
    assert scene.get("missing")["metadata"]["resourceVersion"] == written


def test_the_controller_survives_an_api_server_restart(scene: Scene, control_plane: Any) -> None:
    control_plane.restart_apiserver()

    scene.create(scene.component("after-apiserver-restart", values={"greeting": "still here"}))
    scene.available("after-apiserver-restart", generation=1, revision=1, ready="1/1")
    assert scene.greeting("sh-1", "after-apiserver-restart") == "still here"
    assert "listing again in" in scene.controller.log_tail(200)  # it noticed, and came back by itself


def test_the_controller_survives_a_hub_restart_and_does_what_was_asked_meanwhile(scene: Scene) -> None:
    scene.create(scene.component("hub-restart", values={"greeting": "before"}))
    scene.create(scene.component("deleted-meanwhile"))
    scene.available("hub-restart", generation=1, revision=1, ready="1/1")
    scene.available("deleted-meanwhile", generation=1, revision=1, ready="1/1")

    scene.hub.stop()
    try:
        scene.patch("hub-restart", {"spec": {"values": {"greeting": "meanwhile"}}})
        scene.objects.delete_namespaced_custom_object(GROUP, VERSION, scene.namespace, PLURAL, "deleted-meanwhile")
        status = scene.status_when("hub-restart",
                                   lambda s: conditions(s).get("Progressing") == ("False", "HubUnreachable"),
                                   "Progressing=False HubUnreachable", timeout=60)
        # Generation 2 is not applied yet, and the node still runs revision 1, as last known.
        assert status["observedGeneration"] == 1
        assert (status["readyNodes"], conditions(status)["Available"]) == ("1/1", ("True", "AllNodesReady"))
        assert scene.row("hub-restart")["Revision"] == 1
        # The finalizer holds the deleted object until the hub has removed its release.
        held = scene.get("deleted-meanwhile")
        assert held is not None and held["metadata"]["deletionTimestamp"]
        assert held["metadata"]["finalizers"] == [FINALIZER]
    finally:
        scene.hub.start()

    scene.available("hub-restart", generation=2, revision=2, ready="1/1")
    assert scene.greeting("sh-1", "hub-restart") == "meanwhile"
    wait_until(lambda: scene.get("deleted-meanwhile") is None, timeout=60, what="deleted-meanwhile gone")
    wait_until(lambda: not scene.release_pods("sh-1", "deleted-meanwhile"), timeout=ROLLOUT_SECONDS,
               what="deleted-meanwhile gone from sh-1")
    # ... and a later change is applied as before.
    scene.patch("hub-restart", {"spec": {"values": {"greeting": "later"}}})
    scene.available("hub-restart", generation=3, revision=3, ready="1/1")
    assert scene.greeting("sh-1", "hub-restart") == "later"
