"""A link cut for longer than the keepalive: the node keeps running, heals itself, and catches up after."""

from __future__ import annotations

from pathlib import Path

from fleet_checks import (
    applied_revisions,
    component,
    container_starts,
    link_test_options,
    node_events,
    node_view,
    wait_deployed,
    write_spec,
)

from edgesim.fleet import Fleet, wait_until

OFFLINE_SECONDS = 45  # keepalive 4 s here: the broker gives up after ~6 s (15 s at the default 10 s)


def test_pods_run_untouched_through_a_cut_a_killed_pod_is_healed_offline_and_events_arrive_in_order(
    fleet: Fleet, tmp_path: Path
):
    hub = fleet.hub
    assert hub is not None
    link = fleet.link("sh-1")
    node = fleet.add_node("sh-1", "shanghai", link=link, options=link_test_options(fleet))
    for name in ("alpha", "beta"):
        hub.ctl("apply", "-f", str(write_spec(tmp_path / f"{name}.yaml", name=name, values={"message": name})))
        wait_deployed(hub, f"demo/{name}", revision=1, nodes=1)
    before = container_starts(node)

    link.cut()
    wait_until(lambda: node_view(hub, "sh-1")["presence"] == "offline", timeout=OFFLINE_SECONDS,
               what="the hub to see sh-1 offline")
    row = component(hub, "demo/alpha")["nodes"][0]
    assert row["stale"] and row["presence"] == "offline" and row["last_seen"]
    assert component(hub, "demo/alpha")["deployed"] == 0  # a stale Deployed is not counted as live

    (alpha_pod,) = node.release_pods("demo.alpha")
    node.podman("pod", "rm", "-f", "-t", "0", alpha_pod["Name"])
    healed = wait_until(lambda: node.release_pods("demo.alpha"), timeout=60,
                        what="the agent to bring alpha back offline")
    assert healed[0]["Id"] != alpha_pod["Id"]
    during = container_starts(node)
    beta = {k: v for k, v in before.items() if ".beta-" in k}
    assert beta and all(during[k] == v for k, v in beta.items()), "beta was restarted during the outage"

    link.restore()
    wait_until(lambda: node_view(hub, "sh-1")["presence"] == "online", timeout=60, what="sh-1 back online")
    for name in ("alpha", "beta"):
        wait_deployed(hub, f"demo/{name}", revision=1, nodes=1)
    assert container_starts(node) == during, "the reconnect restarted something"

    events = node_events(hub, "sh-1")
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    reasons = [(e["reason"], e["release"]) for e in events]
    assert ("SelfHealed", "alpha") in reasons
    assert applied_revisions(events, "alpha") == [1] and applied_revisions(events, "beta") == [1]


def test_upgrades_issued_while_a_node_is_offline_apply_only_the_newest_revision_once(fleet: Fleet, tmp_path: Path):
    hub = fleet.hub
    assert hub is not None
    link = fleet.link("sh-1")
    fleet.add_node("sh-1", "shanghai", link=link, options=link_test_options(fleet))
    spec = tmp_path / "web.yaml"
    hub.ctl("apply", "-f", str(write_spec(spec, values={"message": "v1"})))
    wait_deployed(hub, "demo/web", revision=1, nodes=1)

    link.cut()
    wait_until(lambda: node_view(hub, "sh-1")["presence"] == "offline", timeout=OFFLINE_SECONDS,
               what="the hub to see sh-1 offline")
    for message in ("v2", "v3"):
        hub.ctl("apply", "-f", str(write_spec(spec, values={"message": message})))
    link.restore()

    wait_deployed(hub, "demo/web", revision=3, nodes=1)
    assert applied_revisions(node_events(hub, "sh-1")) == [1, 3]
