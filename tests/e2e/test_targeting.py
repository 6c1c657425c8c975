"""Targeting: label selectors, per-pool values, and nodes that join after the apply."""

from __future__ import annotations

from pathlib import Path

from fleet_checks import component, wait_deployed, write_spec

from edgesim.fleet import Fleet


def test_a_label_selector_picks_nodes_across_pools_with_per_pool_values(fleet: Fleet, tmp_path: Path):
    hub = fleet.hub
    assert hub is not None
    east_store = fleet.add_node("east-store", "east", labels={"tier": "store"})
    east_depot = fleet.add_node("east-depot", "east", labels={"tier": "depot"})
    west_store = fleet.add_node("west-store", "west", labels={"tier": "store"})

    spec = write_spec(
        tmp_path / "stores.yaml",
        values={"greeting": "hello"},
        edge={
            "nodeSelector": {"matchLabels": {"tier": "store"}},
            "poolValues": {"east": {"greeting": "hello east"}, "west": {"greeting": "hello west"}},
        },
    )
    hub.ctl("apply", "-f", str(spec))
    view = wait_deployed(hub, "demo/web", revision=1, nodes=2)
    assert sorted(r["node"] for r in view["nodes"]) == ["east-store", "west-store"]

    assert east_depot.release_pods("demo.web") == []
    assert east_store.container_env(east_store.main_container("demo.web"))["GREETING"] == "hello east"
    assert west_store.container_env(west_store.main_container("demo.web"))["GREETING"] == "hello west"


def test_a_node_that_joins_later_gets_the_current_revision_without_a_new_apply(fleet: Fleet, tmp_path: Path):
    hub = fleet.hub
    assert hub is not None
    fleet.add_node("sh-1", "shanghai")
    hub.ctl("apply", "-f", str(write_spec(tmp_path / "web.yaml", values={"message": "v1"})))
    hub.ctl("apply", "-f", str(write_spec(tmp_path / "web.yaml", values={"message": "v2"})))
    wait_deployed(hub, "demo/web", revision=2, nodes=1)

    late = fleet.add_node("sh-late", "shanghai")
    view = wait_deployed(hub, "demo/web", revision=2, nodes=2)
    assert {r["node"]: r["applied_revision"] for r in view["nodes"]} == {"sh-1": 2, "sh-late": 2}
    assert len(late.release_pods("demo.web")) == 1
    assert component(hub, "demo/web")["revision"] == 2
