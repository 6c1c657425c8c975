"""The Helm charts installed into a real Kubernetes API server, the way docs/helm.md says.

The session's control plane (tests/conftest.py: etcd, kube-apiserver with RBAC, kube-controller-manager,
kube-scheduler and a kwok node, on which pods become Running and Ready without any container running)
takes both charts through Helm's own engine (``helm_python``: install, upgrade, uninstall, ``lookup``
against the live API). Release names, charts, namespaces and ``--set`` flags are read from docs/helm.md's
own commands, so this installs what a user copies; only the namespaces get a suffix of their own (the
control plane is shared by the session) and the agent's join token replaces the doc's ``ec1.…``
placeholder. Each chart is installed once for the module.

The control plane has no storage provisioner, so the hub's PersistentVolumeClaim binds to a hostPath
PersistentVolume this module makes for it (reserved for that claim by ``claimRef``), as an administrator
of a cluster without a default StorageClass would.

What is checked: every object both charts make is accepted and live, and the Component CRD from
``crds/`` is Established; the hub's Deployment and the agent's DaemonSet run their pods on the kwok
node; the accounts the charts bind can do what the product does with them, shown by the product's own
code run with a token of the chart's ServiceAccount (the TokenRequest API, as the kubelet mounts one):
the Component controller against a real hub, the agent's kubernetes runtime applying a release, and
``ca-init.py`` storing the CA in the chart's Secret; and those accounts may do nothing more
(SelfSubjectAccessReview with the same token). Last, ``helm upgrade`` renders the CA Secret's data
back (``lookup``), ``helm uninstall`` leaves the Secret and the volume, and installing again finds both.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml
from chart_server import ChartServer
from fleet_checks import component

from deployer_plugin.controller import FINALIZER, GROUP, PLURAL, VERSION
from deployer_plugin.merge import deep_merge
from deployer_plugin.render import join_manifests
from edgeagent.runtime import NodeContext, ReleaseRef
from edgeagent.runtime.kubernetes import KubernetesRuntime, KubernetesSettings
from edgesim.control_plane import NODE_NAME, ControlPlane
from edgesim.fleet import Fleet, wait_until

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]
HELM_DOC = ROOT / "docs" / "helm.md"
EXAMPLE_CHART = ROOT / "examples" / "web" / "chart"
# The doc's placeholder for the token `edgectl token create` prints, and a token of that form.
DOC_TOKEN_PLACEHOLDER = "ec1.…"
JOIN_TOKEN = "ec1.abc.def.0123"
HELM_SECONDS = 90  # Helm's own timeout for an install or upgrade to become ready
WAIT_SECONDS = 60
CA_FILES = ("hub.key", "hub-ca.crt")


# --------------------------------------------------------------------------- the doc's commands

@dataclass(frozen=True)
class DocumentedInstall:
    """One ``helm install`` of docs/helm.md, as Helm reads its flags."""

    release: str
    chart: Path
    namespace: str
    create_namespace: bool
    values: dict[str, Any]


def documented_installs() -> dict[str, DocumentedInstall]:
    """The ``helm install`` commands of docs/helm.md's first ``sh`` block, by chart name."""
    text = HELM_DOC.read_text(encoding="utf-8")
    assert "```sh\n" in text, f"{HELM_DOC} has no ```sh block"
    block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    found = {}
    for line in block.replace("\\\n", " ").splitlines():
        argv = shlex.split(line, comments=True)
        if argv[:2] != ["helm", "install"]:
            continue
        release, chart, *flags = argv[2:]
        namespace, create_namespace, values = "default", False, {}
        given = iter(flags)
        for flag in given:
            if flag in ("-n", "--namespace"):
                namespace = next(given)
            elif flag == "--create-namespace":
                create_namespace = True
            elif flag == "--set":  # several --set are merged in order, as Helm does
                values = deep_merge(values, helm_python.parse_set_string(next(given)))
            else:
                raise AssertionError(f"docs/helm.md's `helm install {release}` has a flag this test does not "
                                     f"pass to Helm yet: {flag}")
        found[Path(chart).name] = DocumentedInstall(release, ROOT / chart, namespace, create_namespace, values)
    assert set(found) == {"edgehub", "edgeagent"}, f"docs/helm.md's helm install commands install {sorted(found)}"
    return found


DOCUMENTED_INSTALLS = documented_installs()


# --------------------------------------------------------------------------- the cluster

@dataclass
class Installed:
    """A chart the module installed: where, with which values, and the Helm configuration that did it."""

    spec: DocumentedInstall
    namespace: str
    values: dict[str, Any]
    helm: helm_python.Config
    release: dict[str, Any]

    @property
    def fullname(self) -> str:
        """FULLNAME in the charts' templates (the release name does not hold the chart's)."""
        return f"{self.spec.release}-{self.spec.chart.name}"

    def install(self) -> dict[str, Any]:
        self.release = self.helm.install(self.spec.chart, self.spec.release, self.values, namespace=self.namespace,
                                         create_namespace=self.spec.create_namespace, wait="watcher",
                                         timeout=HELM_SECONDS)
        return self.release


def manifest_objects(release: dict[str, Any]) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(release["manifest"]) if doc]


def unique(name: str) -> str:
    return f"{name}-{secrets.token_hex(3)}"


@pytest.fixture(scope="module")
def kube(control_plane: ControlPlane) -> Iterator[Any]:
    """The ``kubernetes`` client package and an administrator's ApiClient."""
    import kubernetes

    admin = kubernetes.config.new_client_from_config(config_file=str(control_plane.kubeconfig))
    yield kubernetes, admin
    admin.close()


def api_call_gone(call: Any, *args: Any) -> bool:
    """Whether ``call(*args)`` answers 404."""
    from kubernetes.client.exceptions import ApiException

    try:
        call(*args)
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


def delete_namespace(kube: Any, name: str) -> None:
    kubernetes, admin = kube
    with contextlib.suppress(kubernetes.client.exceptions.ApiException):  # 404: never made
        kubernetes.client.CoreV1Api(admin).delete_namespace(name)


@contextlib.contextmanager
def installed(control_plane: ControlPlane, kube: Any, spec: DocumentedInstall, namespace: str,
              values: dict[str, Any]) -> Iterator[Installed]:
    """``spec`` installed into ``namespace`` with ``values``; uninstalled and its namespace deleted after."""
    helm = helm_python.Config(kubeconfig_path=control_plane.kubeconfig, namespace=namespace)
    chart = Installed(spec, namespace, values, helm, {})
    try:
        chart.install()
        yield chart
    finally:
        try:
            helm.uninstall(spec.release, ignore_not_found=True)
        finally:
            helm.close()
            delete_namespace(kube, namespace)  # and what uninstall keeps: the hub's Secret and volume


@pytest.fixture(scope="module")
def hub(control_plane: ControlPlane, kube: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """charts/edgehub installed as docs/helm.md says, its PVC bound to a hostPath PersistentVolume made for it."""
    kubernetes, admin = kube
    core = kubernetes.client.CoreV1Api(admin)
    spec = DOCUMENTED_INSTALLS["edgehub"]
    namespace = unique(spec.namespace)
    volume = unique("edgehub-data")
    claim = f"{spec.release}-edgehub"  # the chart's PVC: FULLNAME
    core.create_persistent_volume({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": volume},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "",
                 "persistentVolumeReclaimPolicy": "Retain",
                 "hostPath": {"path": str(tmp_path_factory.mktemp("edgehub-volume"))},
                 "claimRef": {"namespace": namespace, "name": claim}}})
    try:
        with installed(control_plane, kube, spec, namespace, spec.values) as chart:
            yield chart
    finally:
        core.delete_persistent_volume(volume)


@pytest.fixture(scope="module")
def agent(control_plane: ControlPlane, kube: Any) -> Iterator[Installed]:
    """charts/edgeagent installed as docs/helm.md says, with a token in place of its placeholder."""
    spec = DOCUMENTED_INSTALLS["edgeagent"]
    assert spec.values["joinToken"]["value"] == DOC_TOKEN_PLACEHOLDER
    values = deep_merge(spec.values, {"joinToken": {"value": JOIN_TOKEN}})
    with installed(control_plane, kube, spec, unique(spec.namespace), values) as chart:
        yield chart


def live_objects(kube: Any, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each of ``objects`` as the API server holds it (404 raises)."""
    kubernetes, admin = kube
    dynamic = kubernetes.dynamic.DynamicClient(admin)
    found = []
    for obj in objects:
        resource = dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        namespace = obj["metadata"].get("namespace") if resource.namespaced else None
        found.append(resource.get(name=obj["metadata"]["name"], namespace=namespace).to_dict())
    return found


def ready_pods(kube: Any, namespace: str, selector: dict[str, str]) -> list[Any]:
    kubernetes, admin = kube
    pods = kubernetes.client.CoreV1Api(admin).list_namespaced_pod(
        namespace, label_selector=",".join(f"{k}={v}" for k, v in selector.items())).items
    return [p for p in pods if p.status.phase == "Running" and p.metadata.deletion_timestamp is None
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])]


# --------------------------------------------------------------------------- the chart's accounts

@dataclass
class Account:
    """A chart's ServiceAccount, as the product uses it: a token the TokenRequest API issued (what the kubelet
    mounts into the account's pods), a kubeconfig holding it, and a client that asks with it."""

    name: str
    token_file: Path
    kubeconfig: Path
    client: Any

    def may(self, verb: str, group: str, resource: str, *, namespace: str = "", name: str = "",
            subresource: str = "") -> bool:
        """What the API server's authorizer answers this account (a SelfSubjectAccessReview with its token)."""
        import kubernetes

        attributes = {"verb": verb, "group": group, "resource": resource, "namespace": namespace, "name": name,
                      "subresource": subresource}
        review = kubernetes.client.AuthorizationV1Api(self.client).create_self_subject_access_review(
            {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
             "spec": {"resourceAttributes": {k: v for k, v in attributes.items() if v}}})
        return bool(review.status.allowed)

    def refused(self, wanted: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
        """Of ``wanted`` ((verb, group, resource[, namespace[, name[, subresource]]])), what this account may not."""
        return [w for w in wanted if not self.may(*w[:3], **dict(zip(("namespace", "name", "subresource"), w[3:],
                                                                     strict=False)))]

    def granted(self, unwanted: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
        """Of ``unwanted``, what this account may do all the same."""
        refused = self.refused(unwanted)
        return [u for u in unwanted if u not in refused]


@contextlib.contextmanager
def chart_account(kube: Any, control_plane: ControlPlane, namespace: str, name: str, where: Path) -> Iterator[Account]:
    kubernetes, admin = kube
    answer = kubernetes.client.CoreV1Api(admin).create_namespaced_service_account_token(
        name, namespace, {"spec": {"audiences": [], "expirationSeconds": 600}})
    where.mkdir(parents=True, exist_ok=True)
    token_file = where / "token"
    token_file.write_text(answer.status.token, encoding="utf-8")
    kubeconfig = where / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": name,
        "clusters": [{"name": "edgecollab", "cluster": {"server": control_plane.server,
                                                         "certificate-authority": str(control_plane.ca_file)}}],
        "users": [{"name": name, "user": {"token": answer.status.token}}],
        "contexts": [{"name": name, "context": {"cluster": "edgecollab", "user": name, "namespace": namespace}}]}),
        encoding="utf-8")
    client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    try:
        yield Account(f"system:serviceaccount:{namespace}:{name}", token_file, kubeconfig, client)
    finally:
        client.close()


def container(pod_spec: Any, name: str, *, init: bool = False) -> Any:
    return next(c for c in (pod_spec.init_containers if init else pod_spec.containers) if c.name == name)


# --------------------------------------------------------------------------- installed and running

def test_every_object_of_the_hub_chart_is_live_and_its_pod_runs_on_the_node(hub: Installed, kube: Any) -> None:
    kubernetes, admin = kube
    assert hub.release["status"] == "deployed"
    objects = manifest_objects(hub.release)
    assert sorted(o["kind"] for o in objects) == sorted([
        "ServiceAccount", "Secret", "ConfigMap", "PersistentVolumeClaim", "ClusterRole", "ClusterRoleBinding",
        "Role", "RoleBinding", "Service", "Deployment"])
    for live in live_objects(kube, objects):
        assert live["metadata"]["annotations"]["meta.helm.sh/release-name"] == hub.spec.release, live["kind"]
    crd = kubernetes.client.ApiextensionsV1Api(admin).read_custom_resource_definition(f"{PLURAL}.{GROUP}")
    assert any(c.type == "Established" and c.status == "True" for c in crd.status.conditions)

    deployment = kubernetes.client.AppsV1Api(admin).read_namespaced_deployment(hub.fullname, hub.namespace)
    assert deployment.status.ready_replicas == 1
    (pod,) = ready_pods(kube, hub.namespace, deployment.spec.selector.match_labels)
    assert pod.spec.node_name == NODE_NAME
    assert [(s.name, s.state.terminated.reason) for s in pod.status.init_container_statuses] == [
        ("ca-init", "Completed"), ("mosquitto-config", "Completed")]
    assert {s.name for s in pod.status.container_statuses if s.ready} == {"hub", "controller", "mosquitto"}

    core = kubernetes.client.CoreV1Api(admin)
    claim = core.read_namespaced_persistent_volume_claim(hub.fullname, hub.namespace)
    assert claim.status.phase == "Bound"
    service = core.read_namespaced_service(hub.fullname, hub.namespace)
    assert service.spec.type == "LoadBalancer"
    assert {p.name: (p.port, bool(p.node_port)) for p in service.spec.ports} == {
        "api": (8470, True), "mqtts": (8883, True)}
    # The doc's values reached the hub's settings file.
    settings = yaml.safe_load(core.read_namespaced_config_map(hub.fullname, hub.namespace).data["hub.json"])
    assert "hub.example.com" in settings["allowed_hosts"]
    assert settings["mqtt_advertise_url"] == "mqtts://hub.example.com:8883"


def test_every_object_of_the_agent_chart_is_live_and_a_pod_runs_on_every_node(agent: Installed, kube: Any) -> None:
    kubernetes, admin = kube
    assert agent.release["status"] == "deployed"
    objects = manifest_objects(agent.release)
    assert sorted(o["kind"] for o in objects) == sorted([
        "ServiceAccount", "Secret", "ClusterRole", "ClusterRole", "ClusterRoleBinding", "ClusterRoleBinding",
        "DaemonSet"])
    for live in live_objects(kube, objects):
        assert live["metadata"]["annotations"]["meta.helm.sh/release-name"] == agent.spec.release, live["kind"]

    nodes = [n.metadata.name for n in kubernetes.client.CoreV1Api(admin).list_node().items]
    daemonset = kubernetes.client.AppsV1Api(admin).read_namespaced_daemon_set(agent.fullname, agent.namespace)
    status = daemonset.status
    assert (status.desired_number_scheduled, status.number_ready, status.number_available) == (len(nodes),) * 3
    pods = ready_pods(kube, agent.namespace, daemonset.spec.selector.match_labels)
    assert sorted(p.spec.node_name for p in pods) == sorted(nodes) and NODE_NAME in nodes
    (pod,) = [p for p in pods if p.spec.node_name == NODE_NAME]
    assert [(s.name, s.state.terminated.reason) for s in pod.status.init_container_statuses] == [("join", "Completed")]
    secret = kubernetes.client.CoreV1Api(admin).read_namespaced_secret(f"{agent.fullname}-join", agent.namespace)
    assert base64.b64decode(secret.data["token"]).decode() == JOIN_TOKEN


# --------------------------------------------------------------------------- what the accounts may do

def test_the_hub_account_runs_the_component_controller_and_may_do_no_more(
        hub: Installed, kube: Any, control_plane: ControlPlane, tmp_path: Path) -> None:
    """The controller container's own command, run here with a token of the hub's ServiceAccount against a
    real hub: it adds its finalizer, writes the status, and lets a deleted Component go once the hub removed
    the release."""
    kubernetes, admin = kube
    pod = kubernetes.client.AppsV1Api(admin).read_namespaced_deployment(hub.fullname, hub.namespace).spec.template.spec
    controller = container(pod, "controller")
    custom = kubernetes.client.CustomObjectsApi(admin)
    apps_namespace = unique("edgecollab-components")
    kubernetes.client.CoreV1Api(admin).create_namespace({"metadata": {"name": apps_namespace}})
    log = tmp_path / "controller.log"
    with chart_account(kube, control_plane, hub.namespace, pod.service_account_name, tmp_path / "account") as account, \
            ChartServer(tmp_path / "repository") as charts, \
            Fleet(tmp_path / "fleet", hub_flags=("--allow-chart-source", "127.0.0.0/8")) as fleet:
        assert fleet.hub is not None
        charts.add_chart(EXAMPLE_CHART)
        hub_state = str(fleet.hub.state_dir)
        env = {e.name: e.value.replace("/data/hub", hub_state) for e in controller.env}  # the volume's paths, here
        argv = [sys.executable, *(f"--hub={fleet.hub.url}" if arg.startswith("--hub=") else arg
                                  for arg in controller.command[1:]),
                f"--kubeconfig={account.kubeconfig}",
                # The session's other tests have Components of their own: this controller minds this test's.
                f"--namespace={apps_namespace}"]
        with log.open("wb") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                       env={**env, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
        try:
            body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Component",
                    "metadata": {"name": "web", "namespace": apps_namespace},
                    "spec": {"chart": {"repo": charts.repo_url, "name": "web", "version": "0.1.0"},
                             "edge": {"nodePools": ["shanghai"]}}}
            custom.create_namespaced_custom_object(GROUP, VERSION, apps_namespace, PLURAL, body)

            def applied() -> dict[str, Any] | None:
                assert process.poll() is None, log.read_text()
                obj = custom.get_namespaced_custom_object(GROUP, VERSION, apps_namespace, PLURAL, "web")
                done = FINALIZER in obj["metadata"].get("finalizers", []) and (obj.get("status") or {}).get(
                    "targetRevision") == 1
                return obj if done else None

            obj = wait_until(applied, timeout=WAIT_SECONDS, what="the controller to apply the Component")
            assert obj["status"]["observedGeneration"] == 1
            assert component(fleet.hub, f"{apps_namespace}/web")["revision"] == 1

            custom.delete_namespaced_custom_object(GROUP, VERSION, apps_namespace, PLURAL, "web")
            wait_until(lambda: api_call_gone(custom.get_namespaced_custom_object, GROUP, VERSION, apps_namespace,
                                             PLURAL, "web"),
                       timeout=WAIT_SECONDS, what="the controller to let the deleted Component go")
            assert "Forbidden" not in log.read_text()
        finally:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(15)
            delete_namespace(kube, apps_namespace)

        ca_secret = f"{hub.fullname}-ca"
        # What the controller does without --namespace (the chart's default: every namespace), and ca-init.
        assert account.refused([
            ("list", GROUP, PLURAL), ("watch", GROUP, PLURAL), ("patch", GROUP, PLURAL, "shop"),
            ("patch", GROUP, PLURAL, "shop", "web", "status"),
            ("get", "", "secrets", hub.namespace, ca_secret), ("patch", "", "secrets", hub.namespace, ca_secret),
        ]) == []
        assert account.granted([
            ("create", GROUP, PLURAL, "shop"), ("update", GROUP, PLURAL, "shop"), ("delete", GROUP, PLURAL, "shop"),
            ("list", "", "secrets", hub.namespace), ("watch", "", "secrets", hub.namespace),
            ("get", "", "secrets", hub.namespace, f"{hub.fullname}-other"), ("create", "", "secrets", hub.namespace),
            ("delete", "", "secrets", hub.namespace, ca_secret), ("get", "", "secrets", "kube-system", ca_secret),
            ("get", "", "pods", hub.namespace), ("get", "", "configmaps", hub.namespace),
            ("create", "apps", "deployments", "shop"), ("create", "rbac.authorization.k8s.io", "rolebindings", "shop"),
            ("impersonate", "", "users"), ("create", "", "serviceaccounts", hub.namespace, pod.service_account_name,
                                           "token"),
        ]) == []


async def _a_release_through_the_runtime(account: Account, work_dir: Path, ref: ReleaseRef,
                                         node: NodeContext) -> tuple[Any, ...]:
    """What the agent does with a release, as its account: preflight, apply, observe until ready, remove."""
    with helm_python.Chart.load(EXAMPLE_CHART) as chart:
        manifests = join_manifests(chart.render({}, name=ref.release, namespace=ref.namespace))
    async with KubernetesRuntime(KubernetesSettings(work_dir=work_dir, kubeconfig=account.kubeconfig)) as runtime:
        checks = await runtime.preflight()
        await runtime.apply(ref, manifests, node, revision=1)  # the hub's first revision of the release
        seen = await runtime.observe(ref)
        for _ in range(WAIT_SECONDS * 2):
            if seen.total and seen.ready == seen.total:
                break
            await asyncio.sleep(0.5)
            seen = await runtime.observe(ref)
        listed = await runtime.releases()
        await runtime.remove(ref, node)
        return checks, seen, listed, await runtime.releases()


def test_the_agent_account_applies_a_release_with_the_kubernetes_runtime_and_may_do_no_more(
        agent: Installed, kube: Any, control_plane: ControlPlane, tmp_path: Path) -> None:
    kubernetes, admin = kube
    pod = kubernetes.client.AppsV1Api(admin).read_namespaced_daemon_set(
        agent.fullname, agent.namespace).spec.template.spec
    ref = ReleaseRef(unique("edge-web"), "web")
    node = NodeContext(node=NODE_NAME, pool=agent.values["node"]["pool"])
    try:
        with chart_account(kube, control_plane, agent.namespace, pod.service_account_name,
                           tmp_path / "account") as account:
            checks, seen, listed, after = asyncio.run(
                _a_release_through_the_runtime(account, tmp_path / "runtime", ref, node))
            # The namespace the release names was made by the agent (rbac.manageNamespaces).
            namespace = kubernetes.client.CoreV1Api(admin).read_namespace(ref.namespace)
            assert namespace.metadata.labels["app.kubernetes.io/managed-by"] == "edgecollab"
            assert account.granted([
                ("create", "rbac.authorization.k8s.io", "clusterroles"),
                ("create", "rbac.authorization.k8s.io", "clusterrolebindings"),
                ("create", "rbac.authorization.k8s.io", "rolebindings", ref.namespace),
                ("bind", "rbac.authorization.k8s.io", "clusterroles"),
                ("escalate", "rbac.authorization.k8s.io", "clusterroles"),
                ("delete", "", "namespaces", "", ref.namespace), ("patch", "", "namespaces", "", ref.namespace),
                ("patch", "", "nodes"), ("delete", "", "nodes"),
                ("create", "", "pods", ref.namespace, "web", "exec"),
                ("create", "", "serviceaccounts", ref.namespace, "default", "token"),
                ("impersonate", "", "serviceaccounts"),
                ("delete", "", "persistentvolumes"),
            ]) == []
    finally:
        delete_namespace(kube, ref.namespace)
    failed = [c for c in checks if not c.ok or c.warning]
    assert failed == [], failed  # the account may do all the runtime asks of it, pod logs included
    assert (seen.ready, seen.total) == (1, 1), seen
    assert ref in listed and ref not in after
    deployments = kubernetes.client.AppsV1Api(admin).list_namespaced_deployment(ref.namespace).items
    assert [d.metadata.name for d in deployments if d.metadata.deletion_timestamp is None] == []


# --------------------------------------------------------------------------- the hub's CA

def mounted(argv: list[str], mounts: dict[str, Path]) -> list[str]:
    """``argv`` of a container with each path under a mount point turned into the local directory standing for it."""
    out = []
    for arg in argv:
        flag, equals, value = arg.rpartition("=") if arg.startswith("--") and "=" in arg else ("", "", arg)
        for mount, local in mounts.items():
            if value == mount or value.startswith(mount + "/"):
                value = str(local) + value[len(mount):]
                break
        out.append(flag + equals + value)
    return out


def as_kubelet_mounts(data: dict[str, str] | None, directory: Path, *, encoded: bool) -> Path:
    """A Secret's or ConfigMap's keys as files in ``directory``, as the kubelet mounts them."""
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.iterdir():
        old.unlink()
    for key, value in (data or {}).items():
        (directory / key).write_bytes(base64.b64decode(value) if encoded else value.encode())
    return directory


def test_ca_init_stores_the_ca_in_the_charts_secret_and_upgrade_uninstall_and_reinstall_keep_it(
        hub: Installed, kube: Any, control_plane: ControlPlane, tmp_path: Path) -> None:
    """ca-init.py as the chart's init container runs it (its command and args, the ConfigMap's copy of the
    script, the Secret and volume it mounts), with a token of the hub's account, against the real API."""
    kubernetes, admin = kube
    core = kubernetes.client.CoreV1Api(admin)
    pod = kubernetes.client.AppsV1Api(admin).read_namespaced_deployment(hub.fullname, hub.namespace).spec.template.spec
    init = container(pod, "ca-init", init=True)
    (ca_volume,) = [v for v in pod.volumes if v.name == "ca-secret"]
    secret_name = ca_volume.secret.secret_name
    assert secret_name == f"{hub.fullname}-ca"  # docs/helm.md's hub-edgehub-ca
    config = as_kubelet_mounts(core.read_namespaced_config_map(hub.fullname, hub.namespace).data, tmp_path / "config",
                               encoded=False)

    def secret_data() -> dict[str, bytes]:
        data = core.read_namespaced_secret(secret_name, hub.namespace).data or {}
        return {k: base64.b64decode(v) for k, v in data.items()}

    def run_ca_init(volume: Path, account: Account, argv: list[str]) -> subprocess.CompletedProcess[str]:
        """One start of the init container: ``volume`` as its PVC, the Secret as it is now."""
        secret = as_kubelet_mounts(core.read_namespaced_secret(secret_name, hub.namespace).data, tmp_path / "secret",
                                   encoded=True)
        mounts = {"/data": volume, "/config": config, "/ca-secret": secret}
        command = [sys.executable, *mounted([*init.command[1:], *argv], mounts),
                   # What the pod finds in /var/run/secrets/kubernetes.io/serviceaccount and at kubernetes.default.
                   f"--api={control_plane.server}", f"--token-file={account.token_file}",
                   f"--api-ca-file={control_plane.ca_file}"]
        return subprocess.run(command, capture_output=True, text=True, timeout=60,
                              env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)})

    with chart_account(kube, control_plane, hub.namespace, pod.service_account_name, tmp_path / "account") as account:
        # The first start: the Secret is empty (kwok ran no container), so ca-init makes the CA and stores it.
        assert secret_data() == {}
        first = tmp_path / "volume-1"
        done = run_ca_init(first, account, init.args)
        assert done.returncode == 0, done.stderr
        assert "created a new hub CA" in done.stdout
        stored = secret_data()
        assert stored == {name: (first / "hub" / name).read_bytes() for name in CA_FILES}
        assert (first / "hub" / "hub.key").stat().st_mode & 0o777 == 0o600
        assert (first / "hub").stat().st_mode & 0o777 == 0o700

        # The pod again, on a new volume: the CA comes back from the Secret, which is not written again.
        version = core.read_namespaced_secret(secret_name, hub.namespace).metadata.resource_version
        second = tmp_path / "volume-2"
        done = run_ca_init(second, account, init.args)
        assert done.returncode == 0, done.stderr
        assert "comes from the Secret" in done.stdout
        assert {name: (second / "hub" / name).read_bytes() for name in CA_FILES} == stored
        assert core.read_namespaced_secret(secret_name, hub.namespace).metadata.resource_version == version

        # The account's Role is for that one Secret: storing a CA in another is refused by the API server.
        other = f"{hub.fullname}-other"
        core.create_namespaced_secret(hub.namespace, {"metadata": {"name": other}})
        argv = [f"--store-secret={other}" if a.startswith("--store-secret=") else a for a in init.args]
        done = run_ca_init(tmp_path / "volume-3", account, [a for a in argv if not a.startswith("--secret-dir=")])
        assert done.returncode == 1
        assert f"could not store the hub CA in the Secret {hub.namespace}/{other}: HTTP Error 403" in done.stderr

    # helm upgrade renders the live Secret's data back (lookup): the CA survives the upgrade.
    upgraded = hub.helm.upgrade(hub.spec.chart, hub.spec.release, deep_merge(hub.values, {"logLevel": "DEBUG"}),
                                namespace=hub.namespace, wait="watcher", timeout=HELM_SECONDS)
    assert upgraded["revision"] == 2
    (rendered,) = [o for o in manifest_objects(upgraded) if o["kind"] == "Secret"]
    assert {k: base64.b64decode(v) for k, v in rendered["data"].items()} == stored
    assert secret_data() == stored
    deployment = kubernetes.client.AppsV1Api(admin).read_namespaced_deployment(hub.fullname, hub.namespace)
    assert "--log-level=DEBUG" in container(deployment.spec.template.spec, "hub").command

    # helm uninstall keeps the Secret and the volume (helm.sh/resource-policy: keep) ...
    hub.helm.uninstall(hub.spec.release)
    apps = kubernetes.client.AppsV1Api(admin)
    wait_until(lambda: api_call_gone(apps.read_namespaced_deployment, hub.fullname, hub.namespace),
               timeout=WAIT_SECONDS, what="the hub's Deployment to go")
    assert secret_data() == stored
    assert core.read_namespaced_persistent_volume_claim(hub.fullname, hub.namespace).status.phase == "Bound"

    # ... and installing again takes both over: the same CA, the pod on the same volume.
    again = hub.install()
    (rendered,) = [o for o in manifest_objects(again) if o["kind"] == "Secret"]
    assert {k: base64.b64decode(v) for k, v in rendered["data"].items()} == stored
    assert secret_data() == stored
    deployment = apps.read_namespaced_deployment(hub.fullname, hub.namespace)
    assert deployment.status.ready_replicas == 1
