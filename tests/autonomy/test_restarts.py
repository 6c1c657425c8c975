"""Broker and hub restarts: desired state comes back from the hub's store; nothing unchanged is re-applied."""

from __future__ import annotations

from pathlib import Path

from fleet_checks import EXAMPLE_SPEC, agent_status, container_starts, node_view, wait_deployed

from edgesim.fleet import Fleet, wait_until


def test_a_broker_restart_without_persistence_converges_without_reapplying(fleet: Fleet, tmp_path: Path):
    hub, broker = fleet.hub, fleet.broker
    assert hub is not None and broker is not None
    nodes = [fleet.add_node("sh-1", "shanghai"), fleet.add_node("sh-2", "shanghai")]
    hub.ctl("apply", "-f", str(EXAMPLE_SPEC))
    wait_deployed(hub, "demo/web", revision=1, nodes=2)
    before = {n.name: container_starts(n) for n in nodes}
    syncs = {n.name: agent_status(n)["last_sync"] for n in nodes}

    broker.restart()  # same port, retained messages gone

    for n in nodes:
        wait_until(lambda n=n: agent_status(n)["last_sync"] != syncs[n.name], timeout=60,
                   what=f"{n.name} to reconnect to the restarted broker")
        wait_until(lambda n=n: node_view(hub, n.name)["presence"] == "online", timeout=60, what=f"{n.name} online")
    wait_deployed(hub, "demo/web", revision=1, nodes=2)
    for n in nodes:
        assert container_starts(n) == before[n.name], f"{n.name} restarted pods after the broker restart"
        assert agent_status(n)["counters"]["applies"] == 1

    # The restarted broker holds the assignments again (the hub re-published
    # them from its store), so a node that joins now still gets the release.
    late = fleet.add_node("sh-3", "shanghai")
    wait_deployed(hub, "demo/web", revision=1, nodes=3)
    assert agent_status(late)["counters"]["applies"] == 1


def test_a_hub_restart_leaves_nodes_running_and_they_converge_without_reapplying(fleet: Fleet):
    hub = fleet.hub
    assert hub is not None
    node = fleet.add_node("sh-1", "shanghai")
    hub.ctl("apply", "-f", str(EXAMPLE_SPEC))
    wait_deployed(hub, "demo/web", revision=1, nodes=1)
    before = container_starts(node)

    hub.stop()
    hub.start()
    wait_deployed(hub, "demo/web", revision=1, nodes=1)
    assert container_starts(node) == before
    assert agent_status(node)["counters"]["applies"] == 1
