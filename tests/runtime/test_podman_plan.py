"""What the podman runtime makes of a release's manifests before podman sees them.

Pure logic, no podman: the same behaviour is exercised for real in the other
test files of this folder.
"""

from __future__ import annotations

import base64

import pytest
import yaml

from edgeagent.runtime import EdgeRuntimeError, ManifestRejected, NodeContext, ReleaseRef, RuntimeApplyError
from edgeagent.runtime.podman_plan import build_plan, parse_played, release_label

from .helpers import ALLOW_ALL, render_web

NODE = NodeContext(node="edge-7", pool="shanghai")
DEMO_WEB = ReleaseRef("demo", "web")


def played(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def pods_of(text: str) -> list[dict]:
    return [d for d in played(text) if d["kind"] == "Pod"]


def test_every_pod_gets_a_namespaced_name_node_labels_and_node_env() -> None:
    plan = build_plan(DEMO_WEB, render_web(), NODE, policy=ALLOW_ALL)

    (pod,) = pods_of(plan.text)
    assert pod["metadata"]["name"] == "demo.web-pod-0"
    assert pod["metadata"]["labels"] | {
        "edgecollab.io/node": "edge-7",
        "edgecollab.io/pool": "shanghai",
        "edgecollab.io/release": "demo.web",
        "edgecollab.io/namespace": "demo",
        "edgecollab.io/release-name": "web",
    } == pod["metadata"]["labels"]
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    assert env["EDGE_NODE_NAME"] == "edge-7"
    assert env["EDGE_NODE_POOL"] == "shanghai"
    # A Deployment's pod is Always: podman is told Never, and the agent restarts its containers with back-off.
    assert pod["spec"]["restartPolicy"] == "Never"
    assert plan.pods["demo.web-pod-0"].restart_policy == "Always"
    assert list(plan.pods) == ["demo.web-pod-0"]
    assert plan.pods["demo.web-pod-0"].source == "Deployment/web"


def test_the_node_identity_wins_over_env_and_labels_the_chart_set() -> None:
    manifests = """
apiVersion: v1
kind: Pod
metadata: {name: p, labels: {edgecollab.io/node: spoofed}}
spec:
  containers:
  - {name: c, image: img, env: [{name: EDGE_NODE_NAME, value: spoofed}, {name: KEEP, value: "1"}]}
"""
    (pod,) = pods_of(build_plan(DEMO_WEB, manifests, NODE, policy=ALLOW_ALL).text)

    assert pod["metadata"]["labels"]["edgecollab.io/node"] == "edge-7"
    env = pod["spec"]["containers"][0]["env"]
    assert [e["value"] for e in env if e["name"] == "EDGE_NODE_NAME"] == ["edge-7"]
    assert {"name": "KEEP", "value": "1"} in env


def test_a_long_release_label_is_cut_to_63_characters_and_stays_unique() -> None:
    a = ReleaseRef("n" * 63, "r" * 60 + "aaa")
    b = ReleaseRef("n" * 63, "r" * 60 + "bbb")

    assert release_label(DEMO_WEB) == "demo.web"
    assert len(release_label(a)) == 63
    assert release_label(a) != release_label(b)
    assert release_label(a)[-1].isalnum()


def test_container_ports_without_a_host_port_are_not_published() -> None:
    # podman 4.3 would publish containerPort 8080 on the host's 0.0.0.0.
    plan = build_plan(DEMO_WEB, render_web(), NODE, policy=ALLOW_ALL, network=None)

    (pod,) = pods_of(plan.text)
    assert "ports" not in pod["spec"]["containers"][0]
    assert plan.warnings == []


def test_host_ports_are_kept_on_a_pod_network_and_reported_without_one() -> None:
    manifests = """
apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  containers:
  - {name: c, image: img, ports: [{containerPort: 80, hostPort: 18080}, {containerPort: 81}]}
"""
    bridged = build_plan(DEMO_WEB, manifests, NODE, policy=ALLOW_ALL, network=None)
    isolated = build_plan(DEMO_WEB, manifests, NODE, policy=ALLOW_ALL, network="none")

    assert pods_of(bridged.text)[0]["spec"]["containers"][0]["ports"] == [{"containerPort": 80, "hostPort": 18080}]
    assert "ports" not in pods_of(isolated.text)[0]["spec"]["containers"][0]
    assert isolated.warnings == [
        "Pod/p: container 'c': hostPort 18080 not published (the node's pods run with network none)"
    ]


def test_configmap_secret_and_claim_names_are_namespaced_and_tagged_by_kind() -> None:
    manifests = """
apiVersion: v1
kind: ConfigMap
metadata: {name: data}
data: {a: "1"}
---
apiVersion: v1
kind: Secret
metadata: {name: data}
data: {key: %s, blob: %s}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
---
apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  containers:
  - name: c
    image: img
    env:
    - {name: A, valueFrom: {configMapKeyRef: {name: data, key: a}}}
    - {name: K, valueFrom: {secretKeyRef: {name: data, key: key}}}
    envFrom: [{secretRef: {name: data}}]
  volumes:
  - {name: cm, configMap: {name: data}}
  - {name: s, secret: {secretName: data, defaultMode: 256}}
  - {name: pv, persistentVolumeClaim: {claimName: data}}
""" % (base64.b64encode(b"v").decode(), base64.b64encode(b"\xff\x00").decode())  # noqa: UP031 - flow-style braces

    plan = build_plan(DEMO_WEB, manifests, NODE, policy=ALLOW_ALL)

    docs = played(plan.text)
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    assert configmaps["demo.web.cm.data"]["data"] == {"a": "1"}
    assert configmaps["demo.web.secret.data"]["data"] == {"key": "v"}
    assert configmaps["demo.web.secret.data"]["binaryData"] == {"blob": base64.b64encode(b"\xff\x00").decode()}
    assert not [d for d in docs if d["kind"] in ("Secret", "PersistentVolumeClaim")]
    (pod,) = pods_of(plan.text)
    container = pod["spec"]["containers"][0]
    assert container["env"][1] == {
        "name": "K",
        "valueFrom": {"configMapKeyRef": {"name": "demo.web.secret.data", "key": "key"}},
    }
    assert container["envFrom"] == [{"configMapRef": {"name": "demo.web.secret.data"}}]
    assert pod["spec"]["volumes"] == [
        {"name": "cm", "configMap": {"name": "demo.web.cm.data"}},
        {"name": "s", "configMap": {"name": "demo.web.secret.data", "defaultMode": 256}},
        {"name": "pv", "persistentVolumeClaim": {"claimName": "demo.web.pvc.data"}},
    ]
    assert plan.volumes == {"demo.web.cm.data", "demo.web.secret.data", "demo.web.pvc.data"}
    assert plan.warnings == []


def test_a_deployment_scaled_to_zero_asks_for_no_pods() -> None:
    plan = build_plan(DEMO_WEB, render_web({"replicas": 0}), NODE, policy=ALLOW_ALL)

    assert plan.pods == {}
    assert pods_of(plan.text) == []


@pytest.mark.parametrize(
    ("manifests", "message"),
    [
        ("just a string", r"^document 1 of demo/web: not a Kubernetes object"),
        ("kind: Pod\nmetadata: {name: Bad_Name}\nspec: {containers: [{name: c, image: i}]}",
         r"^Pod/Bad_Name: metadata.name 'Bad_Name' is not a valid object name"),
        ("kind: Deployment\nmetadata: {name: d}\nspec: {replicas: -1, template: {spec: {}}}",
         r"^Deployment/d: spec.replicas -1"),
        ("kind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c}]}", r"^Pod/p: container 'c' has no image"),
        ("kind: Secret\nmetadata: {name: s}\ndata: {k: '!!notbase64'}", r"^Secret/s: data key 'k' is not valid base64"),
        ("kind: Pod\nmetadata: {name: d-pod-0}\nspec: {containers: [{name: c, image: i}]}\n---\n"
         "kind: Deployment\nmetadata: {name: d}\nspec: {template: {spec: {containers: [{name: c, image: i}]}}}",
         r"more than one pod of the release is named 'd-pod-0'"),
    ],
)
def test_manifests_podman_cannot_run_are_refused_naming_the_object(manifests: str, message: str) -> None:
    with pytest.raises(ManifestRejected, match=message):
        build_plan(DEMO_WEB, manifests, NODE, policy=ALLOW_ALL)


POD = "kind: Pod\nmetadata: {name: p%s}\nspec: {containers: [{name: c, image: i%s}]%s}"


@pytest.mark.parametrize(
    ("manifests", "message"),
    [
        ("kind: Pod\nmetadata: {name: [oops\n", r"^manifests of demo/web: invalid YAML"),
        ("metadata: {name: p}\nspec: {}", r"^document 1 of demo/web: not a Kubernetes object \(no kind\)"),
        ("kind: 7\nmetadata: {name: p}", r"^document 1 of demo/web: not a Kubernetes object \(no kind\)"),
        ("kind: ConfigMap\nmetadata: {name: ok}\n---\nkind: Pod\nmetadata: {name: UPPER}",
         r"^Pod/UPPER: metadata.name 'UPPER' is not a valid object name"),
        ("kind: Pod\nmetadata: {name: p}\nspec: [not, a, mapping]", r"^Pod/p: spec must be a mapping"),
        ("kind: Deployment\nmetadata: {name: d}\nspec: {replicas: three, template: {spec: {}}}",
         r"^Deployment/d: spec.replicas 'three' is not a whole number"),
        ("kind: Deployment\nmetadata: {name: d}\nspec: {replicas: 1.5, template: {spec: {}}}",
         r"^Deployment/d: spec.replicas 1.5 is not a whole number"),
        (POD % (", labels: [a, b]", "", ""), r"^Pod/p: metadata.labels must be a mapping"),
        (POD % ("", ", env: {A: b}", ""), r"^Pod/p: container 'c': env must be a list"),
        (POD % ("", ", ports: 8080", ""), r"^Pod/p: container 'c': ports must be a list"),
        (POD % ("", "", ", volumes: 3"), r"^Pod/p: spec.volumes must be a list"),
        ("kind: ConfigMap\nmetadata: {name: c}\ndata: [a, b]", r"^ConfigMap/c: data must be a mapping"),
    ],
)
def test_bad_manifests_are_rejected_for_good_naming_the_object(manifests: str, message: str) -> None:
    with pytest.raises(ManifestRejected, match=message) as refusal:
        build_plan(DEMO_WEB, manifests, NODE, policy=ALLOW_ALL)

    # Still a RuntimeApplyError: every caller that catches those catches it.
    assert isinstance(refusal.value, RuntimeApplyError)


def test_reading_a_played_file_back_gives_what_the_plan_said_it_would() -> None:
    manifests = render_web({"replicas": 2}) + (
        "\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n"
        "  terminationGracePeriodSeconds: 7\n"
        "  initContainers: [{name: init, image: busybox}]\n"
        "  containers: [{name: c, image: img}]\n"
        "  volumes: [{name: v, persistentVolumeClaim: {claimName: data}}]\n"
    )
    plan = build_plan(DEMO_WEB, manifests, NODE, policy=ALLOW_ALL)

    back = parse_played(plan.text, "demo/web.yaml")

    assert back == plan.played()
    assert back.pods["demo.p"].grace == 7
    assert back.pods["demo.p"].init_containers == ("demo.p-init",)
    assert back.volumes == {"demo.web.cm.web-page", "demo.web.pvc.data"}


def test_a_damaged_played_file_is_a_runtime_error_not_a_rejected_manifest() -> None:
    with pytest.raises(EdgeRuntimeError, match="not YAML") as failure:
        parse_played("kind: Pod\nmetadata: {name: [oops\n", "demo/web.yaml")

    assert not isinstance(failure.value, RuntimeApplyError)


def test_objects_of_another_namespace_are_applied_in_the_releases_with_a_warning() -> None:
    manifests = "kind: Pod\nmetadata: {name: p, namespace: other}\nspec: {containers: [{name: c, image: i}]}"

    plan = build_plan(DEMO_WEB, manifests, NODE, policy=ALLOW_ALL)

    assert list(plan.pods) == ["demo.p"]
    assert plan.warnings == ["Pod/p: namespace 'other' ignored, applied in the release's namespace 'demo'"]


def test_every_kind_podman_cannot_run_is_reported_once() -> None:
    manifests = render_web({"service": {"enabled": True}}) + (
        "\n---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web}\n"
        "---\napiVersion: batch/v1\nkind: CronJob\nmetadata: {name: nightly}\n"
    )

    plan = build_plan(DEMO_WEB, manifests, NODE, policy=ALLOW_ALL)

    assert sorted(plan.warnings) == [
        "CronJob/nightly: not run on podman (CronJobs are not run on podman)",
        "Ingress/web: not run on podman (the node has no ingress controller)",
        "Service/web: not run on podman (podman has no cluster networking or service IPs; "
        "reach pods through hostPort or hostNetwork)",
    ]


@pytest.mark.parametrize(
    ("text", "expanded"),
    [
        ("$(A)-$(B)", "1-two"),
        ("$$(A)", "$(A)"),
        ("$$$(A)", "$1"),
        ("$(MISSING) $(A", "$(MISSING) $(A"),
        ("cost: $5 $", "cost: $5 $"),
    ],
)
def test_var_references_expand_like_the_kubelets(text: str, expanded: str) -> None:
    from edgeagent.runtime.podman_plan import expand_refs

    assert expand_refs(text, {"A": "1", "B": "two"}) == expanded


def test_hook_documents_are_left_out_of_the_played_file_and_returned_untouched() -> None:
    hook = ("apiVersion: batch/v1\nkind: Job\nmetadata: {name: migrate, annotations: {helm.sh/hook: pre-upgrade}}\n"
            "spec: {template: {spec: {containers: [{name: c, image: i}]}}}\n")
    plan = build_plan(DEMO_WEB, render_web() + "\n---\n" + hook, NODE, policy=ALLOW_ALL)

    assert [h["metadata"]["name"] for h in plan.hooks] == ["migrate"]
    assert plan.hooks[0] == yaml.safe_load(hook)
    assert "migrate" not in plan.text and plan.warnings == []


def test_probes_are_stripped_from_what_podman_plays_and_recorded_with_named_ports_resolved() -> None:
    manifests = """
kind: Pod
metadata: {name: p, annotations: {checksum/config: %s}}
spec:
  containers:
  - name: c
    image: i
    ports: [{name: http, containerPort: 8080}]
    readinessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 3, successThreshold: 2}
    livenessProbe: {tcpSocket: {port: 8080}}
""" % ("f" * 64)
    plan = build_plan(DEMO_WEB, manifests, NODE, policy=ALLOW_ALL)

    (pod,) = pods_of(plan.text)
    assert "readinessProbe" not in pod["spec"]["containers"][0]
    assert "checksum/config" not in pod["metadata"]["annotations"]
    readiness = next(p for p in plan.pods["demo.p"].probes if p.kind == "readiness")
    assert (readiness.action, readiness.port, readiness.path, readiness.period, readiness.success_threshold) == (
        "http", 8080, "/healthz", 3, 2)
    assert parse_played(plan.text, "x") == plan.played()  # the record brings probes and annotations back
    assert plan.played().pods["demo.p"].annotations == {"checksum/config": "f" * 64}


def test_a_probe_on_a_port_name_the_container_does_not_declare_is_refused() -> None:
    manifests = "kind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: i, " \
                "livenessProbe: {httpGet: {port: web}}}]}"

    with pytest.raises(ManifestRejected, match=r"^Pod/p: container 'c': livenessProbe: port 'web'"):
        build_plan(DEMO_WEB, manifests, NODE, policy=ALLOW_ALL)
