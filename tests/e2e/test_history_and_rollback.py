"""History and rollback on a real fleet: Mosquitto, the hub, agents running podman, the Helm engine.

Revision 1 serves message A, revision 2 message B; ``edgectl rollback`` makes
revision 3 from revision 1, and the pods serve A again.
"""

from __future__ import annotations

from pathlib import Path

from fleet_checks import wait_deployed, write_spec

from edgesim.fleet import Fleet, wait_until


def test_a_rollback_brings_the_old_values_back_on_the_nodes_and_the_history_says_so(fleet: Fleet, tmp_path: Path):
    hub = fleet.hub
    assert hub is not None
    nodes = [fleet.add_node("sh-1", "shanghai"), fleet.add_node("sh-2", "shanghai")]
    spec = tmp_path / "web.yaml"

    hub.ctl("apply", "-f", str(write_spec(spec, values={"message": "message A"})))
    wait_deployed(hub, "demo/web", revision=1, nodes=2)
    assert all(n.served_page("demo.web").strip() == "message A" for n in nodes)
    hub.ctl("apply", "-f", str(write_spec(spec, values={"message": "message B"})))
    wait_deployed(hub, "demo/web", revision=2, nodes=2)
    assert all(n.served_page("demo.web").strip() == "message B" for n in nodes)

    printed = hub.ctl("rollback", "demo/web").stdout
    assert printed == "component/demo/web rolled back to revision 1 (now revision 3, 2 node(s))\n"
    wait_deployed(hub, "demo/web", revision=3, nodes=2)
    wait_until(lambda: all(n.served_page("demo.web").strip() == "message A" for n in nodes), timeout=60,
               what="both nodes to serve message A again")

    history = wait_until(
        lambda: (h := hub.ctl_json("history", "demo/web")) and h[0]["status"] == "deployed" and h, timeout=30,
        what="revision 3 shown deployed")
    assert [(r["revision"], r["status"], r["origin"]) for r in history] == [
        (3, "deployed", "rollback to 1"), (2, "rolled back", "apply by edgectl"), (1, "superseded", "apply by edgectl")]
    assert history[0]["values"] == history[2]["values"] != history[1]["values"]
    table = hub.ctl("history", "demo/web").stdout.splitlines()
    assert table[0].split() == ["REVISION", "UPDATED", "STATUS", "CHART", "ORIGIN"] and len(table) == 4
