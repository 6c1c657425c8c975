"""The demo path: a component targets one pool of three nodes, is upgraded, then deleted.

Pods are checked through podman on each node, not only through the hub's word.
"""

from __future__ import annotations

from pathlib import Path

from fleet_checks import EXAMPLE_SPEC, component, wait_deployed, write_spec

from edgesim.fleet import Fleet, wait_until


def test_a_component_for_one_pool_runs_on_exactly_its_nodes_upgrades_and_goes_away(fleet: Fleet, tmp_path: Path):
    hub = fleet.hub
    assert hub is not None
    sh1, sh2 = fleet.add_node("sh-1", "shanghai"), fleet.add_node("sh-2", "shanghai")
    bj1 = fleet.add_node("bj-1", "beijing")

    applied = hub.ctl("apply", "-f", str(EXAMPLE_SPEC))
    assert "revision 1" in applied.stdout
    view = wait_deployed(hub, "demo/web", revision=1, nodes=2)
    assert sorted(row["node"] for row in view["nodes"]) == ["sh-1", "sh-2"]

    # What really runs: one pod on each shanghai node, none in beijing.
    assert len(sh1.release_pods("demo.web")) == 1 and len(sh2.release_pods("demo.web")) == 1
    assert bj1.release_pods("demo.web") == []
    env = sh1.container_env(sh1.main_container("demo.web"))
    assert env["EDGE_NODE_NAME"] == "sh-1" and env["EDGE_NODE_POOL"] == "shanghai"
    assert "hello from edgecollab" in sh2.served_page("demo.web")

    # Upgrade: new values make revision 2, applied on both nodes.
    upgraded = write_spec(tmp_path / "web-v2.yaml", values={"message": "second revision"},
                          edge={"nodePools": ["shanghai"]})
    assert "revision 2" in hub.ctl("apply", "-f", str(upgraded)).stdout
    wait_deployed(hub, "demo/web", revision=2, nodes=2)
    for node in (sh1, sh2):
        wait_until(lambda n=node: "second revision" in n.served_page("demo.web"), timeout=30,
                   what=f"new page on {node.name}")

    # Applying the same spec again changes nothing.
    assert "unchanged (revision 2" in hub.ctl("apply", "-f", str(upgraded)).stdout

    # The hub's API agrees with podman, node by node.
    nodes = {n["name"]: n for n in hub.ctl_json("get", "nodes")}
    assert {r["release"]: r["phase"] for r in nodes["sh-1"]["releases"]} == {"web": "Deployed"}
    assert nodes["bj-1"]["releases"] == [] and nodes["bj-1"]["presence"] == "online"
    pools = {p["pool"]: p for p in hub.ctl_json("get", "pools")}
    assert (pools["shanghai"]["nodes"], pools["beijing"]["nodes"]) == (2, 1)

    assert "deleted" in hub.ctl("delete", "component", "demo/web").stdout
    for node in (sh1, sh2):
        wait_until(lambda n=node: n.release_pods("demo.web") == [] and n.pods() == [], timeout=60,
                   what=f"pods gone on {node.name}")
    missing = hub.ctl("describe", "component", "demo/web", check=False)
    assert missing.returncode == 4 and "not found" in missing.stderr  # 4: not found
    wait_until(lambda: all(n["releases"] == [] for n in hub.ctl_json("get", "nodes")), timeout=30,
               what="nodes to stop reporting the deleted release")


def test_a_restarted_hub_keeps_nodes_components_and_status(fleet: Fleet):
    hub = fleet.hub
    assert hub is not None
    fleet.add_node("sh-1", "shanghai")
    hub.ctl("apply", "-f", str(EXAMPLE_SPEC))
    wait_deployed(hub, "demo/web", revision=1, nodes=1)

    hub.stop()
    hub.start()
    assert [n["name"] for n in hub.ctl_json("get", "nodes")] == ["sh-1"]
    view = component(hub, "demo/web")
    assert view["revision"] == 1 and view["nodes"][0]["phase"] == "Deployed"
