"""The node policy, checked in the plan (pure): what the default refuses, how a node allows it, and the
YAML bound that keeps an alias bomb from holding the agent."""

from __future__ import annotations

import time
import tracemalloc

import pytest
import yaml

from edgeagent.policy import PRIVILEGES, NodePolicy, PolicyError
from edgeagent.runtime import ManifestRejected, NodeContext, ReleaseRef
from edgeagent.runtime.podman_plan import build_plan, load_yaml_all

from .helpers import render_web

NODE = NodeContext(node="edge-1", pool="shanghai")
REF = ReleaseRef("demo", "web")
SAFE_USER = "securityContext: {runAsUser: 65534, runAsNonRoot: true}"


def deployment(*, pod: str = "", container: str = SAFE_USER, annotations: str = "{}") -> str:
    """A Deployment ``x`` of one container ``y``; ``pod`` and ``container`` are YAML flow fields spliced in."""
    return f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: x}}
spec:
  template:
    metadata: {{annotations: {annotations}}}
    spec: {{ {pod} containers: [{{name: y, image: img, {container}}}]}}
"""


REFUSED = [
    ("privileged", deployment(container=f"{SAFE_USER[:-1]}, privileged: true}}"), "securityContext.privileged"),
    ("capabilities", deployment(container=f"{SAFE_USER[:-1]}, capabilities: {{add: [SYS_ADMIN]}}}}"),
     "securityContext.capabilities.add [SYS_ADMIN]"),
    ("hostPath", deployment(pod="volumes: [{name: root, hostPath: {path: /}}],"), "hostPath /"),
    ("hostNetwork", deployment(pod="hostNetwork: true,"), "spec.hostNetwork"),
    ("hostPID", deployment(pod="hostPID: true,"), "spec.hostPID"),
    ("hostIPC", deployment(pod="hostIPC: true,"), "spec.hostIPC"),
    ("root", deployment(container=""), "runAsUser unset"),
    ("root", deployment(container="securityContext: {runAsUser: 0}"), "runAsUser 0"),
    ("root", deployment(container="securityContext: {runAsNonRoot: true}"), "runAsNonRoot without runAsUser"),
    ("root", deployment(container=f"{SAFE_USER[:-1]}, allowPrivilegeEscalation: true}}"),
     "allowPrivilegeEscalation"),
    ("unconfined", deployment(container=f"{SAFE_USER[:-1]}, seccompProfile: {{type: Unconfined}}}}"),
     "seccompProfile Unconfined"),
    ("privileged", deployment(annotations="{io.podman.annotations.privileged/y: 'true'}"),
     "annotation io.podman.annotations.privileged/y"),
]


@pytest.mark.parametrize(("privilege", "manifests", "field"), REFUSED)
def test_the_default_policy_refuses_each_privilege_naming_object_container_field_and_how_to_allow(
    privilege: str, manifests: str, field: str
) -> None:
    with pytest.raises(ManifestRejected) as refused:
        build_plan(REF, manifests, NODE)

    message = str(refused.value)
    assert message.startswith("Deployment/x")
    assert field in message
    assert "is refused by this node's policy" in message
    assert message.endswith(f"(allow it for namespace demo in STATE/policy.yaml: allow: {{demo: [{privilege}]}})")
    # And exactly that allowance lets it through.
    allowed = NodePolicy(allow={"demo": frozenset({privilege})})
    assert build_plan(REF, manifests, NODE, policy=allowed).pods


def test_the_message_names_the_container_at_fault() -> None:
    with pytest.raises(ManifestRejected, match=r"^Deployment/x container y: privileged \(securityContext"):
        build_plan(REF, deployment(container=f"{SAFE_USER[:-1]}, privileged: true}}"), NODE)


def test_a_pod_level_user_counts_for_every_container_and_a_container_may_not_undo_it() -> None:
    pod_level = deployment(pod="securityContext: {runAsUser: 1000},", container="")
    assert build_plan(REF, pod_level, NODE).pods
    undone = deployment(pod="securityContext: {runAsUser: 1000},", container="securityContext: {runAsUser: 0}")
    with pytest.raises(ManifestRejected, match="running as root"):
        build_plan(REF, undone, NODE)


def test_non_root_containers_are_kept_from_escalating_unless_root_is_allowed() -> None:
    (pod,) = [d for d in yaml.safe_load_all(build_plan(REF, deployment(), NODE).text) if d and d["kind"] == "Pod"]
    assert pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False
    root_ok = NodePolicy(allow={"*": frozenset({"root"})})
    text = build_plan(REF, deployment(), NODE, policy=root_ok).text
    (pod,) = [d for d in yaml.safe_load_all(text) if d and d["kind"] == "Pod"]
    assert "allowPrivilegeEscalation" not in pod["spec"]["containers"][0]["securityContext"]


def test_an_allowance_is_per_namespace_and_star_means_every_namespace() -> None:
    host_net = deployment(pod="hostNetwork: true,")
    policy = NodePolicy(allow={"monitoring": frozenset({"hostNetwork"})})
    assert build_plan(ReleaseRef("monitoring", "ne"), host_net, NODE, policy=policy).pods
    with pytest.raises(ManifestRejected, match="allow it for namespace demo"):
        build_plan(REF, host_net, NODE, policy=policy)
    assert build_plan(REF, host_net, NODE, policy=NodePolicy(allow={"*": frozenset({"hostNetwork"})})).pods


def test_hooks_are_checked_before_anything_runs() -> None:
    hook = """
apiVersion: batch/v1
kind: Job
metadata: {name: migrate, annotations: {helm.sh/hook: post-install}}
spec: {template: {spec: {restartPolicy: Never, containers: [{name: m, image: img, securityContext: {privileged: true,
  runAsUser: 1}}]}}}
"""
    with pytest.raises(ManifestRejected, match=r"^Job/migrate container m: privileged"):
        build_plan(REF, render_web() + "\n---\n" + hook, NODE)


def test_namespaces_and_kinds_outside_the_allow_lists_are_refused() -> None:
    policy = NodePolicy.parse("namespaces: [monitoring]\nkinds: [DaemonSet, ConfigMap]\n", path="/s/policy.yaml")
    with pytest.raises(ManifestRejected, match=r"^release demo/web: namespace demo is not allowed by this node's "
                                               r"policy \(namespaces: \[monitoring\] in /s/policy.yaml\)"):
        build_plan(REF, render_web(), NODE, policy=policy)
    with pytest.raises(ManifestRejected, match=r"^Deployment/x: kind Deployment is not allowed"):
        build_plan(ReleaseRef("monitoring", "m"), deployment(), NODE, policy=policy)
    # Kinds the runtime does not run stay warnings: a Service in a monitoring chart is fine.
    service = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80}]}\n"
    assert build_plan(ReleaseRef("monitoring", "m"), service, NODE, policy=policy).warnings


def test_the_example_chart_runs_under_the_default_policy() -> None:
    assert list(build_plan(REF, render_web(), NODE).pods) == ["demo.web-pod-0"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("allow: {demo: [privilegd]}", r"allow.demo: unknown privilege 'privilegd' \(one of privileged, "),
        ("namespaces: demo", r"namespaces must be a list of names"),
        ("namespaces: [Demo]", r"namespaces: namespace 'Demo' is not a valid name"),
        ("kinds: [CronJob]", r"kinds: 'CronJob' is not a kind the node runs"),
        ("alow: {}", r"unknown key 'alow' \(known: namespaces, kinds, allow, limits\)"),
        ("limits: {podsPerNode: 0}", r"limits.podsPerNode 0 is not a whole number >= 1"),
        ("limits: {pods: 3}", r"limits: unknown key 'pods' \(known: podsPerNode, podsPerRelease, "),
        ("limits: [1]", r"limits must be a mapping of podsPerNode, "),
        ("allow: [root]", r"allow must map a namespace"),
        ("- a\n- b", r"must be a mapping"),
        ("a: [", r"not YAML"),
    ],
)
def test_a_bad_policy_file_is_refused_naming_the_key(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=r"^policy file /s/policy.yaml: " + message):
        NodePolicy.parse(text, path="/s/policy.yaml")


def test_the_policy_reads_as_one_line() -> None:
    assert NodePolicy(path="/s/policy.yaml").summary() == (
        "namespaces all; kinds all the runtime runs; allowed beyond the default: nothing; limits: podsPerNode 50, "
        "podsPerRelease 20, containersPerPod 10, volumesPerPod 32, envBytesPerPod 262144 (/s/policy.yaml)")
    policy = NodePolicy.parse('namespaces: [demo, monitoring]\nallow: {monitoring: [hostPID, hostNetwork], "*": []}',
                              path="/s/policy.yaml")
    policy = NodePolicy.parse('namespaces: [demo, monitoring]\nallow: {monitoring: [hostPID, hostNetwork], "*": []}\n'
                              "limits: {podsPerNode: 8}", path="/s/policy.yaml")
    assert policy.summary() == ("namespaces demo, monitoring; kinds all the runtime runs; allowed beyond the "
                                "default: monitoring: hostNetwork, hostPID; limits: podsPerNode 8, podsPerRelease 20, "
                                "containersPerPod 10, volumesPerPod 32, envBytesPerPod 262144 (/s/policy.yaml)")
    assert set(PRIVILEGES) >= {"privileged", "capabilities", "hostPath", "hostNetwork", "hostPID", "hostIPC", "root"}


BILLION_LAUGHS = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{b}: &{b} [{', '.join(['*' + a] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi", strict=True)]
)


def test_a_billion_laughs_document_is_refused_at_once_in_little_memory() -> None:
    manifests = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bomb}\ndata:\n  " + BILLION_LAUGHS.replace(
        "\n", "\n  ")
    assert len(manifests) < 700
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ManifestRejected, match=r"^manifests of demo/web: YAML document 1: its aliases expand"):
            build_plan(REF, manifests, NODE)
        took = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert took < 0.5 and peak < 5 * 2**20, (took, peak)


def test_a_few_aliases_still_load_and_a_recursive_one_is_refused() -> None:
    assert load_yaml_all("a: &x [1, 2]\nb: *x\n---\n") == [{"a": [1, 2], "b": [1, 2]}, None]
    with pytest.raises(ManifestRejected, match="contains itself"):
        load_yaml_all("a: &x [1, *x]")
