"""Charts applied through the hub as an operator-token holder would, against an agent on the default policy:
none reaches the node's host (the whole fleet: Mosquitto, ``edgehub serve``, ``edgectl apply``,
``edgeagent join --policy``/``run`` and podman).

A victim directory on the host, writable by anyone, must stay empty, and the node's policy file
(``STATE/policy.yaml``, which the first attack aims at) must keep its digest.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml
from fleet_checks import write_spec
from host_reach import CLAIM, PLANT_LINK, climb_to, digest, nobody_pod

from edgesim.fleet import Fleet, Node, wait_until
from edgesim.podman_setup import DEMO_IMAGE

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def guarded_node(fleet: Fleet, tmp_path: Path) -> Node:
    """A node joined with a policy file as a real node's owner writes one: the default privileges."""
    policy = tmp_path / "node-policy.yaml"
    policy.write_text("namespaces: [demo]\n")
    return fleet.add_node("sh-1", "shanghai", options=dataclasses.replace(fleet.node_options, policy=policy))


def chart(directory: Path, *documents: dict[str, Any]) -> Path:
    """A chart whose one template is ``documents`` as they are (no template directives)."""
    (directory / "templates").mkdir(parents=True, exist_ok=True)
    (directory / "Chart.yaml").write_text(yaml.safe_dump({"apiVersion": "v2", "name": directory.name,
                                                          "version": "0.1.0"}))
    (directory / "templates" / "all.yaml").write_text(yaml.safe_dump_all(documents))
    return directory


def release_on(fleet: Fleet, node: Node, name: str) -> dict[str, Any] | None:
    assert fleet.hub is not None
    return next((r for r in fleet.hub.api(f"/api/v1/nodes/{node.name}")["releases"] if r["release"] == name), None)


def wait_phase(fleet: Fleet, node: Node, name: str, phase: str, revision: int) -> dict[str, Any]:
    return wait_until(lambda: (r := release_on(fleet, node, name)) and r["phase"] == phase
                      and r["desired_revision"] == revision and r, timeout=120,
                      what=f"{name} {phase} at revision {revision} on {node.name}")


def test_configmap_keys_aimed_at_the_policy_file_and_the_host_are_refused_and_write_nothing(
    fleet: Fleet, guarded_node: Node, victim: Path, tmp_path: Path
) -> None:
    assert fleet.hub is not None
    policy_file = guarded_node.state_dir / "policy.yaml"
    before = digest(policy_file)
    evil = chart(tmp_path / "evil",
                 {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "evil"},
                  "data": {climb_to(policy_file): 'allow: {"*": [privileged, hostPath, root, hostPID]}',
                           climb_to(victim / "x"): "owned"}},
                 nobody_pod("reader", "sleep 3600", [{"name": "v", "mountPath": "/v"}],
                     [{"name": "v", "configMap": {"name": "evil"}}]))
    fleet.hub.ctl("apply", "-f", str(write_spec(tmp_path / "evil.yaml", name="evil", chart=evil)))

    failed = wait_phase(fleet, guarded_node, "evil", "Failed", 1)

    assert "ConfigMap/evil: data: key '../../" in failed["message"] and "is not a valid key" in failed["message"]
    assert list(victim.iterdir()) == []
    assert digest(policy_file) == before
    assert guarded_node.release_pods("evil") == []
    described = fleet.hub.ctl("describe", "component", "demo/evil").stdout
    assert "is not a valid key" in described


def test_a_subpath_through_a_link_the_last_revision_left_is_refused_and_the_host_stays_out_of_reach(
    fleet: Fleet, guarded_node: Node, victim: Path, tmp_path: Path
) -> None:
    assert fleet.hub is not None
    spec = tmp_path / "cve.yaml"
    # Revision 1, as nobody, leaves x/y -> / in its claim.
    chart(tmp_path / "cve", nobody_pod("planter", PLANT_LINK, [{"name": "data", "mountPath": "/data"}], CLAIM))
    fleet.hub.ctl("apply", "-f", str(write_spec(spec, name="cve", chart=tmp_path / "cve")))
    wait_phase(fleet, guarded_node, "cve", "Deployed", 1)
    wait_until(lambda: "y -> /" in guarded_node.podman("exec", "demo.planter-c", "ls", "-l", "/data/x",
                                                       check=False).stdout, timeout=30, what="the link planted")

    # Revision 2 mounts the claim's x/y and writes into what it finds there.
    target = str(victim).lstrip("/")
    chart(tmp_path / "cve", nobody_pod("mounter", f"touch /host/{target}/owned; sleep 3600",
                                       [{"name": "data", "mountPath": "/host", "subPath": "x/y"}], CLAIM))
    fleet.hub.ctl("apply", "-f", str(spec))
    failed = wait_phase(fleet, guarded_node, "cve", "Failed", 2)

    assert "subPath 'x/y' of volume demo.cve.pvc.data" in failed["message"]
    assert "is a symbolic link; refused" in failed["message"]
    assert list(victim.iterdir()) == []
    assert [p["Name"] for p in guarded_node.release_pods("cve")] == []


def test_a_flood_of_replicas_is_refused_naming_the_nodes_limit_and_starts_no_pod(
    fleet: Fleet, guarded_node: Node, tmp_path: Path
) -> None:
    assert fleet.hub is not None
    flood = chart(tmp_path / "flood", {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "flood"},
        "spec": {"replicas": 20000, "template": {"spec": {"securityContext": {"runAsUser": 65534}, "containers": [
            {"name": "c", "image": DEMO_IMAGE, "command": ["sleep", "3600"]}]}}}})
    fleet.hub.ctl("apply", "-f", str(write_spec(tmp_path / "flood.yaml", name="flood", chart=flood)))

    failed = wait_phase(fleet, guarded_node, "flood", "Failed", 1)

    assert ("Deployment/flood: pods of the release: 20000 is over this node's limit podsPerRelease 20"
            in failed["message"])
    assert guarded_node.release_pods("flood") == []
