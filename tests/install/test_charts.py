"""The Helm charts in charts/, rendered offline with the Helm engine (no cluster).

Every rendered object is validated against the Kubernetes OpenAPI schemas kubernetes-validate ships
(strict: unknown fields are refused). ``lookup`` returns nothing offline, so the CA Secret's "kept on
upgrade" logic is tested here through its helper with a given lookup result in a temporary copy of the
chart, and ``ca-init.py`` only where it needs no API server. test_charts_in_a_cluster.py installs both
charts into a real API server: ca-init storing the CA in the chart's Secret, and ``lookup`` keeping it
on upgrade, are tested there.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml
from chart_server import closed_port

from edgehub.settings import HubSettings

ROOT = Path(__file__).resolve().parents[2]
HUB_CHART = ROOT / "charts" / "edgehub"
AGENT_CHART = ROOT / "charts" / "edgeagent"
# What an install of the agent chart must be given (the defaults leave them empty on purpose).
AGENT_REQUIRED = {"hub": {"url": "https://hub.example.com:8470"}, "joinToken": {"value": "ec1.abc.def.0123"}}
KUBE_VERSION = kubernetes_validate.latest_version()
CHART_OWNED_SETTINGS = {"state_dir", "listen_host", "listen_port"}


def render(chart: Path, values: dict[str, Any] | None = None, *, namespace: str = "edge-system",
           upgrade: bool = False) -> dict[str, str]:
    with helm_python.Chart.load(chart) as loaded:
        return loaded.render(values or {}, name="ec", namespace=namespace, revision=2 if upgrade else 1,
                             is_install=not upgrade, is_upgrade=upgrade)


def objects(rendered: dict[str, str]) -> list[dict[str, Any]]:
    found = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        found.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return found


def by_kind(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def container(pod: dict[str, Any], name: str, *, init: bool = False) -> dict[str, Any]:
    return next(c for c in pod["spec"]["template"]["spec"]["initContainers" if init else "containers"]
                if c["name"] == name)


def all_options(chart: Path) -> dict[str, Any]:
    return yaml.safe_load((chart / "ci" / "all-options-values.yaml").read_text())


def validate_all(docs: list[dict[str, Any]]) -> None:
    assert docs
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{doc['kind']}/{doc['metadata'].get('name')}: {exc.message} at "
                                 f"{'.'.join(map(str, exc.path))}") from exc


# --------------------------------------------------------------------------- render and validate

CASES = {
    "edgehub-defaults": (HUB_CHART, {}),
    "edgehub-all-options": (HUB_CHART, all_options(HUB_CHART)),
    "edgehub-no-mosquitto-pvc-or-secret": (HUB_CHART, {
        "mosquitto": {"enabled": False}, "persistence": {"enabled": False}, "ca": {"storeInSecret": False},
        "settings": {"mqtt_url": "mqtts://mqtt.example.com:8883", "tls": "off"},
        "rbac": {"create": False}, "serviceAccount": {"create": False}}),
    "edgehub-existing-secret-and-claim": (HUB_CHART, {
        "ca": {"existingSecret": "my-hub-ca"}, "persistence": {"existingClaim": "hub-data"}}),
    "edgeagent-required-only": (AGENT_CHART, AGENT_REQUIRED),
    "edgeagent-all-options": (AGENT_CHART, all_options(AGENT_CHART)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_renders_and_every_object_validates_against_the_kubernetes_schemas(case: str) -> None:
    chart, values = CASES[case]
    rendered = render(chart, values)
    docs = objects(rendered)
    validate_all(docs)
    assert rendered[f"{chart.name}/templates/NOTES.txt"].strip()


def test_validation_catches_a_bad_object() -> None:
    """The validator is strict: the check above would notice a misspelt field."""
    docs = objects(render(HUB_CHART))
    deployment = one(docs, "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)


def test_the_agent_chart_names_its_required_values() -> None:
    with pytest.raises(helm_python.HelmError, match="is required"):
        render(AGENT_CHART)  # the defaults alone: an agent needs a hub and a token
    with pytest.raises(helm_python.HelmError, match="hub.url is required"):
        render(AGENT_CHART, {"joinToken": AGENT_REQUIRED["joinToken"]})
    with pytest.raises(helm_python.HelmError, match="joinToken.value or joinToken.existingSecret is required"):
        render(AGENT_CHART, {"hub": AGENT_REQUIRED["hub"]})
    docs = objects(render(AGENT_CHART, {"hub": AGENT_REQUIRED["hub"], "joinToken": {"existingSecret": "tok"}}))
    assert not by_kind(docs, "Secret")
    volume = next(v for v in one(docs, "DaemonSet")["spec"]["template"]["spec"]["volumes"] if v["name"] == "join-token")
    assert volume["secret"]["secretName"] == "tok"


def test_the_hub_chart_refuses_no_broker() -> None:
    with pytest.raises(helm_python.HelmError, match="settings.mqtt_url is required"):
        render(HUB_CHART, {"mosquitto": {"enabled": False}})


# --------------------------------------------------------------------------- values schemas

@pytest.mark.parametrize(("chart", "values", "where"), [
    (HUB_CHART, {"settings": {"render_parallel": "two"}}, "/settings/render_parallel"),
    (HUB_CHART, {"settings": {"tls": True}}, "/settings/tls"),  # a bare YAML `on`
    (HUB_CHART, {"settings": {"tls": "maybe"}}, "/settings/tls"),
    (HUB_CHART, {"settings": {"tokens": {"uses": 0}}}, "/settings/tokens/uses"),
    (HUB_CHART, {"settings": {"join_rate_limit": {"per_second": 0, "burst": 1}}},
     "/settings/join_rate_limit/per_second"),
    (HUB_CHART, {"settings": {"node_certificate_days": 4000}}, "/settings/node_certificate_days"),
    (HUB_CHART, {"settings": {"allowed_hosts": "hub.example.com"}}, "/settings/allowed_hosts"),
    (HUB_CHART, {"settings": {"mqtt_url": "http://broker:8883"}}, "/settings/mqtt_url"),
    (HUB_CHART, {"settings": {"listen_port": 1}}, "/settings"),  # the chart's, not a value
    (HUB_CHART, {"service": {"port": 70000}}, "/service/port"),
    (HUB_CHART, {"mosquitto": {"enabled": "yes"}}, "/mosquitto/enabled"),
    (HUB_CHART, {"persistence": {"size": "lots"}}, "/persistence/size"),
    (AGENT_CHART, {**AGENT_REQUIRED, "agent": {"keepalive": "often"}}, "/agent/keepalive"),
    (AGENT_CHART, {**AGENT_REQUIRED, "hub": {"url": "hub.example.com"}}, "/hub/url"),
    (AGENT_CHART, {**AGENT_REQUIRED, "rbac": {"namespaces": "shop"}}, "/rbac/namespaces"),
    (AGENT_CHART, {**AGENT_REQUIRED, "node": {"labels": {"tier": "it's"}}}, "/node/labels/tier"),
    (AGENT_CHART, {**AGENT_REQUIRED, "stateDir": 5}, "/stateDir"),
])
def test_the_values_schema_refuses_a_bad_value_naming_the_key(chart: Path, values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as caught:
        render(chart, values)
    assert f"at '{where}'" in str(caught.value)


def test_the_settings_schema_covers_every_hub_setting_and_the_defaults_are_the_hubs() -> None:
    schema = json.loads((HUB_CHART / "values.schema.json").read_text())
    settings_fields = {f.name for f in dataclasses.fields(HubSettings)}
    assert set(schema["properties"]["settings"]["properties"]) == settings_fields - CHART_OWNED_SETTINGS
    defaults = yaml.safe_load((HUB_CHART / "values.yaml").read_text())["settings"]
    hub = HubSettings(state_dir=Path("/x"))
    for key, value in defaults.items():
        if key in ("mqtt_url", "mqtt_advertise_url"):  # the chart's own defaults (the bundled broker)
            continue
        expected = getattr(hub, key)
        if dataclasses.is_dataclass(expected):
            expected = json.loads(json.dumps(dataclasses.asdict(expected)))  # tuples in it as YAML's lists
        if isinstance(expected, tuple):
            expected = list(expected)
        assert value == expected, key


# --------------------------------------------------------------------------- the hub's wiring

def hub_settings_file(docs: list[dict[str, Any]], tmp_path: Path) -> HubSettings:
    text = one(docs, "ConfigMap")["data"]["hub.json"]
    path = tmp_path / "hub.json"
    path.write_text(text)
    return HubSettings.from_file(path)


def test_the_hub_settings_file_is_one_the_hub_reads(tmp_path: Path) -> None:
    docs = objects(render(HUB_CHART, namespace="edge"))
    settings = hub_settings_file(docs, tmp_path)
    assert settings.state_dir == Path("/data/hub")
    assert (settings.listen_host, settings.listen_port, settings.tls) == ("0.0.0.0", 8470, "auto")
    assert {"ec-edgehub", "ec-edgehub.edge", "ec-edgehub.edge.svc", "ec-edgehub.edge.svc.cluster.local"} <= set(
        settings.allowed_hosts)
    assert settings.mqtt_url == "mqtts://127.0.0.1:8883"  # the broker in the same pod
    assert settings.mqtt_advertise_url == "mqtts://ec-edgehub.edge.svc:8883"
    hub = container(one(docs, "Deployment"), "hub")
    assert hub["command"][:4] == ["edgehub", "serve", "--config", "/config/hub.json"]
    assert hub["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"  # tls auto on 0.0.0.0 serves HTTPS
    assert {"name": "Host", "value": "localhost"} in hub["livenessProbe"]["httpGet"]["httpHeaders"]


def test_every_option_reaches_the_hub_settings(tmp_path: Path) -> None:
    values = all_options(HUB_CHART)
    docs = objects(render(HUB_CHART, values))
    settings = hub_settings_file(docs, tmp_path)
    for key, value in values["settings"].items():
        if key in ("mqtt_url", "allowed_hosts"):
            continue
        got = getattr(settings, key)
        if dataclasses.is_dataclass(got):
            got = dataclasses.asdict(got)
        assert got == value, key
    assert isinstance(settings.render_parallel, int) and isinstance(settings.render_output_bytes, int)
    assert {"hub.example.com", "192.0.2.10"} <= set(settings.allowed_hosts)
    assert settings.listen_port == 9443
    assert settings.mqtt_url == "mqtts://127.0.0.1:18883"
    deployment = one(docs, "Deployment")
    assert container(deployment, "hub")["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert container(deployment, "mosquitto")["image"] == "registry.example.com/edgecollab-mosquitto:2.0"
    assert container(deployment, "hub")["image"] == "registry.example.com/edgecollab:0.1.0-test"
    config = container(deployment, "mosquitto-config", init=True)["command"]
    assert "--listen=0.0.0.0:18883" in config
    assert {"--name=mqtt.example.com", "--name=hub.example.com", "--name=edgecollab-hub.edge-system.svc"} <= set(config)
    assert one(docs, "PersistentVolumeClaim")["spec"]["storageClassName"] == "local-path"


def test_tls_off_probes_over_http(tmp_path: Path) -> None:
    docs = objects(render(HUB_CHART, {"settings": {"tls": "off"}}))
    assert container(one(docs, "Deployment"), "hub")["readinessProbe"]["httpGet"]["scheme"] == "HTTP"
    assert hub_settings_file(docs, tmp_path).tls == "off"


def test_mosquitto_shares_the_volume_but_not_the_hub_key() -> None:
    docs = objects(render(HUB_CHART))
    deployment = one(docs, "Deployment")
    init = container(deployment, "mosquitto-config", init=True)
    assert init["command"][:5] == ["edgehub", "mosquitto-config", "--state=/data/hub", "--listen=0.0.0.0:8883",
                                   "--out=/data/broker"]
    broker = container(deployment, "mosquitto")
    assert broker["command"] == ["mosquitto", "-c", "/data/broker/mosquitto.conf"]
    assert broker["volumeMounts"] == [{"name": "data", "mountPath": "/data/broker", "subPath": "broker"}]
    ports = {p["name"]: p["port"] for p in one(docs, "Service")["spec"]["ports"]}
    assert ports == {"api": 8470, "mqtts": 8883}
    # Without Mosquitto: no broker container or port.
    docs = objects(render(HUB_CHART, {"mosquitto": {"enabled": False}, "settings": {"mqtt_url": "mqtts://b:8883"}}))
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["hub", "controller"]
    assert [c["name"] for c in pod["initContainers"]] == ["ca-init"]
    assert [p["name"] for p in one(docs, "Service")["spec"]["ports"]] == ["api"]


def test_the_component_controller_rbac_is_scoped() -> None:
    docs = objects(render(HUB_CHART))
    rules = one(docs, "ClusterRole")["rules"]
    assert {"apiGroups": ["edgecollab.io"], "resources": ["components"],
            "verbs": ["get", "list", "watch", "patch"]} in rules
    assert {"apiGroups": ["edgecollab.io"], "resources": ["components/status"], "verbs": ["get", "patch"]} in rules
    assert all(r["apiGroups"] in (["edgecollab.io"], [""], ["events.k8s.io"]) for r in rules)
    assert all(r["resources"] == ["events"] for r in rules if r["apiGroups"] != ["edgecollab.io"])
    role = one(docs, "Role")  # the ca-init container's: one Secret, get and patch
    assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["ec-edgehub-ca"],
                              "verbs": ["get", "patch"]}]


def test_the_component_controller_runs_beside_the_hub_with_the_hubs_token_and_ca() -> None:
    from deployer_plugin.controller import build_parser

    values = all_options(HUB_CHART)
    deployment = one(objects(render(HUB_CHART, values)), "Deployment")
    controller = container(deployment, "controller")
    assert controller["command"][:3] == ["python", "-m", "deployer_plugin.controller"]
    args = build_parser().parse_args(controller["command"][3:])  # the controller's own flags, as it parses them
    assert (args.hub, args.namespace, args.resync) == (f"https://localhost:{values['service']['port']}", "edge-apps",
                                                       120)
    state = HubSettings(state_dir=Path("/data/hub"))
    env = {e["name"]: e["value"] for e in controller["env"]}
    assert env["EDGECOLLAB_TOKEN_FILE"] == str(state.admin_token_path)
    assert env["EDGECOLLAB_CA_FILE"] == str(state.ca_certificate_path)
    assert {"name": "data", "mountPath": "/data", "readOnly": True} in controller["volumeMounts"]
    # The account the ClusterRole is bound to.
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "edgecollab-hub-sa"
    plain = one(objects(render(HUB_CHART, {"settings": {"tls": "off"}, "controller": {"namespace": ""}})),
                "Deployment")
    assert build_parser().parse_args(container(plain, "controller")["command"][3:]).hub == "http://localhost:8470"
    off = one(objects(render(HUB_CHART, {"controller": {"enabled": False}})), "Deployment")
    assert "controller" not in {c["name"] for c in off["spec"]["template"]["spec"]["containers"]}


def test_the_chart_carries_its_crds_dir(tmp_path: Path) -> None:
    """Whatever charts/edgehub/crds/ holds is a CRD Helm installs before the templates (a placeholder here)."""
    chart = tmp_path / "edgehub"
    shutil.copytree(HUB_CHART, chart)
    crds = chart / "crds"
    crds.mkdir(exist_ok=True)
    placeholder = crds / "components.edgecollab.io.yaml"
    if not placeholder.exists():
        placeholder.write_text(yaml.safe_dump({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "components.edgecollab.io"},
            "spec": {"group": "edgecollab.io", "scope": "Namespaced",
                     "names": {"plural": "components", "singular": "component", "kind": "Component"},
                     "versions": [{"name": "v1alpha1", "served": True, "storage": True,
                                   "schema": {"openAPIV3Schema": {"type": "object",
                                                                  "x-kubernetes-preserve-unknown-fields": True}},
                                   "subresources": {"status": {}}}]}}))
    with helm_python.Chart.load(chart) as loaded:
        carried = {Path(c["filename"]).name: c["data"] for c in loaded.crds}
        rendered = loaded.render({}, name="ec", namespace="edge-system")
    assert "components.edgecollab.io.yaml" in carried
    for text in carried.values():
        for doc in yaml.safe_load_all(text):
            if doc:
                assert doc["kind"] == "CustomResourceDefinition"
                kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    assert not any("crds/" in path for path in rendered)  # CRDs are not templates: Helm applies them as they are


# --------------------------------------------------------------------------- the CA Secret

def test_the_ca_secret_renders_empty_offline_and_is_kept() -> None:
    """Offline (and at a first install) ``lookup`` finds nothing: an empty Secret the ca-init container fills."""
    for upgrade in (False, True):
        secret = by_kind(objects(render(HUB_CHART, upgrade=upgrade)), "Secret", "ec-edgehub-ca")[0]
        assert secret["data"] == {}
        assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert not by_kind(objects(render(HUB_CHART, {"ca": {"existingSecret": "mine"}})), "Secret")
    assert not by_kind(objects(render(HUB_CHART, {"ca": {"storeInSecret": False}})), "Secret")


def _render_helper(tmp_path: Path, existing: dict[str, Any]) -> dict[str, Any]:
    """The Secret template's data helper, called with ``existing`` as what ``lookup`` found."""
    chart = tmp_path / "edgehub"
    if not chart.exists():
        shutil.copytree(HUB_CHART, chart)
    (chart / "templates" / "zz-lookup-probe.yaml").write_text(
        "{{- $data := include \"edgehub.caSecretData\" (dict \"existing\" .Values.probe) }}\n"
        "probe:\n{{- if $data }}\n  {{- $data | nindent 2 }}\n{{- else }} {}\n{{- end }}\n")
    (chart / "values.schema.json").unlink(missing_ok=True)  # the probe value is not one of the chart's
    with helm_python.Chart.load(chart) as loaded:
        rendered = loaded.render({"probe": existing}, name="ec", namespace="edge-system")
    return yaml.safe_load(rendered["edgehub/templates/zz-lookup-probe.yaml"])["probe"]


def test_the_ca_secret_keeps_the_existing_key_on_upgrade(tmp_path: Path) -> None:
    key, cert = base64.b64encode(b"KEY").decode(), base64.b64encode(b"CERT").decode()
    live = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ec-edgehub-ca"},
            "data": {"hub.key": key, "hub-ca.crt": cert, "other": "eA=="}}
    assert _render_helper(tmp_path, live) == {"hub.key": key, "hub-ca.crt": cert}
    assert _render_helper(tmp_path, {}) == {}  # lookup found nothing
    assert _render_helper(tmp_path, {"kind": "Secret", "data": {}}) == {}  # not filled yet
    assert _render_helper(tmp_path, {"kind": "Secret", "data": {"hub.key": key}}) == {}  # half a CA


CA_INIT = HUB_CHART / "files" / "ca-init.py"


def run_ca_init(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(CA_INIT), *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_ca_init_leaves_the_bundle_of_a_rotated_hub_alone(tmp_path: Path) -> None:
    from edgehub.hub_cas import begun
    from edgehub.identity import HubIdentity

    state, secret_dir = tmp_path / "state", tmp_path / "secret"
    assert run_ca_init("--state", str(state)).returncode == 0
    secret_dir.mkdir()
    for name in ("hub.key", "hub-ca.crt"):  # the Secret as the first start stored it
        (secret_dir / name).write_bytes((state / name).read_bytes())
    identity = HubIdentity.load_or_create(state)
    begun(state, identity.cas)  # edgehub ca rotate begin
    bundle = (state / "hub-ca.crt").read_bytes()
    done = run_ca_init("--state", str(state), "--secret-dir", str(secret_dir))
    assert done.returncode == 0, done.stderr
    assert (state / "hub-ca.crt").read_bytes() == bundle and not list(state.glob("*.replaced-*"))
    assert HubIdentity.load_or_create(state).cas.phase == "begun"


def test_ca_init_restores_the_secret_onto_a_new_volume(tmp_path: Path) -> None:
    made = tmp_path / "made"
    assert run_ca_init("--state", str(made)).returncode == 0  # PVC only: creates, stores nothing
    secret_dir, state = tmp_path / "secret", tmp_path / "state"
    secret_dir.mkdir()
    for name in ("hub.key", "hub-ca.crt"):
        (secret_dir / name).write_bytes((made / name).read_bytes())
    state.mkdir()
    (state / "hub.key").write_bytes(b"another key")  # e.g. a volume from another install
    done = run_ca_init("--state", str(state), "--secret-dir", str(secret_dir))
    assert done.returncode == 0, done.stderr
    assert (state / "hub.key").read_bytes() == (made / "hub.key").read_bytes()
    assert (state / "hub.key").stat().st_mode & 0o777 == 0o600
    assert [p.read_bytes() for p in state.glob("hub.key.replaced-*")] == [b"another key"]


def test_ca_init_fails_when_the_api_server_cannot_be_reached(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    done = run_ca_init("--state", str(tmp_path / "state"), "--store-secret", "s", "--namespace", "n",
                       "--api", f"http://127.0.0.1:{closed_port()}", "--token-file", str(token))
    assert done.returncode == 1
    assert "could not store the hub CA in the Secret n/s" in done.stderr


# --------------------------------------------------------------------------- the agent's wiring

def test_the_agent_daemonset_joins_once_and_runs_the_kubernetes_runtime() -> None:
    docs = objects(render(AGENT_CHART, AGENT_REQUIRED))
    daemonset = one(docs, "DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    state = next(v for v in pod["volumes"] if v["name"] == "state")
    assert state["hostPath"] == {"path": "/var/lib/edgeagent", "type": "DirectoryOrCreate"}
    agent = container(daemonset, "agent")
    assert agent["command"][:5] == ["edgeagent", "--log-level=INFO", "run", "--state-dir=/state",
                                    "--runtime=kubernetes"]
    join = container(daemonset, "join", init=True)
    script = join["command"][2]
    assert "if [ -f /state/identity.json ]" in script
    assert 'join --hub "$EDGEAGENT_HUB"' in script and '--name "$NODE_NAME"' in script
    assert "--ca-file" not in script  # the token's own CA fingerprint pins the hub
    env = {e["name"]: e for e in join["env"]}
    assert env["EDGEAGENT_HUB"]["value"] == "https://hub.example.com:8470"
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert one(docs, "Secret")["stringData"] == {"token": "ec1.abc.def.0123"}
    assert [b["kind"] for b in by_kind(docs, "ClusterRoleBinding")] == ["ClusterRoleBinding"] * 2
    assert not by_kind(docs, "RoleBinding")


def test_every_agent_option_is_wired(tmp_path: Path) -> None:
    values = all_options(AGENT_CHART)
    docs = objects(render(AGENT_CHART, values))
    daemonset = one(docs, "DaemonSet")
    script = container(daemonset, "join", init=True)["command"][2]
    for flag in ("--ca-file /config/hub-ca.crt", "--pool 'shanghai'", "--label 'tier=store'",
                 "--label 'example.com/site=sh-17'", "--policy /config/policy.yaml", "--log-level=DEBUG"):
        assert flag in script
    config = one(docs, "ConfigMap")["data"]
    assert config["hub-ca.crt"].startswith("-----BEGIN CERTIFICATE-----")
    assert yaml.safe_load(config["policy.yaml"]) == values["node"]["policy"]
    assert container(daemonset, "agent")["command"][4:] == [
        "--runtime=kubernetes", "--mqtt=mqtts://mqtt.example.com:8883", "--keepalive=30", "--reconcile-interval=2.5"]
    state = next(v for v in daemonset["spec"]["template"]["spec"]["volumes"] if v["name"] == "state")
    assert state["hostPath"]["path"] == "/var/lib/edgecollab/agent"
    assert one(docs, "Secret")["stringData"] == {"join-token": values["joinToken"]["value"]}
    bindings = by_kind(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["monitoring", "shop"]
    assert all(b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                "name": "edgecollab-agent"} for b in bindings)
    assert not by_kind(docs, "ClusterRoleBinding")  # manageNamespaces false, namespaces given
    assert one(docs, "ClusterRole")["rules"] == values["rbac"]["rules"]


@pytest.mark.parametrize(("chart", "values"), [(HUB_CHART, {}), (AGENT_CHART, AGENT_REQUIRED),
                                               (HUB_CHART, all_options(HUB_CHART)),
                                               (AGENT_CHART, all_options(AGENT_CHART))])
def test_helm_lint_strict_finds_nothing(chart: Path, values: dict[str, Any]) -> None:
    report = helm_python.lint(chart, values, strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []
