"""Fleet status on the bus with real agents: what a plain MQTT subscriber to the summary topics sees as agents
join, deploy, fail and go offline, and when the hub is killed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fleet_checks import CONVERGE_SECONDS, write_spec

from edgesim.fleet import Fleet, wait_until
from edgesim.watch import TopicRecorder

SUMMARY = "ec/v1/summary"
# The example chart as root: every node's default policy refuses it, so its release fails.
AS_ROOT = {"podSecurityContext": {"runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": False}}


def latest(recorder: TopicRecorder) -> dict[str, Any]:
    """The last payload of every topic seen (None for a cleared retained message)."""
    out: dict[str, Any] = {}
    for topic, payload in recorder.messages():
        out[topic] = json.loads(payload) if payload else None
    return out


def until(recorder: TopicRecorder, topic: str, check: Any, what: str) -> dict[str, Any]:
    return wait_until(lambda: (v := latest(recorder).get(topic)) is not None and check(v) and v,
                      timeout=CONVERGE_SECONDS, what=what)


def test_a_plain_subscriber_follows_joins_deploys_failures_offline_nodes_and_a_killed_hub(fleet: Fleet,
                                                                                         tmp_path: Path):
    hub, broker = fleet.hub, fleet.broker
    assert hub is not None and broker is not None
    fleet_topic = f"{SUMMARY}/fleet"
    with TopicRecorder(broker.port, f"{SUMMARY}/#", tls=broker.identity()) as summaries, \
            TopicRecorder(broker.port, "ec/v1/hub/state", tls=broker.identity()) as hub_state:
        until(hub_state, "ec/v1/hub/state", lambda s: s["online"] is True, "the hub online on the bus")
        for name in ("sh-1", "sh-2"):
            fleet.add_node(name, "shanghai")
        until(summaries, fleet_topic, lambda s: s["nodes_online"] == 2, "two nodes online in the fleet summary")

        hub.ctl("apply", "-f", str(write_spec(tmp_path / "web.yaml")))
        web = until(summaries, f"{SUMMARY}/components/demo/web", lambda s: s["ready"] == 2,
                    "demo/web ready on both nodes")
        assert (web["rollout"], web["pools"]["shanghai"]["ready"], web["installed_revision"]) == ("complete", 2, 1)
        node = until(summaries, f"{SUMMARY}/nodes/sh-1", lambda s: s["releases_deployed"] == 1, "sh-1 deployed")
        assert node["online"] and node["ready"] and node["conditions"]["RuntimeReady"] == "True"

        hub.ctl("apply", "-f", str(write_spec(tmp_path / "root.yaml", name="root", values=AS_ROOT)))
        root = until(summaries, f"{SUMMARY}/components/demo/root", lambda s: s["failed"] == 2,
                     "demo/root failed on both nodes (the node policy refuses root)")
        assert root["rollout"] == "failing" and root["ready"] == 0
        pool = until(summaries, f"{SUMMARY}/pools/shanghai", lambda s: s["releases_failed"] == 2, "the pool counts")
        assert (pool["releases_deployed"], pool["components"]) == (2, ["demo/root", "demo/web"])

        fleet.nodes["sh-2"].stop()
        offline = until(summaries, fleet_topic, lambda s: s["nodes_offline"] == 1, "sh-2 offline in the fleet")
        assert offline["nodes_online"] == 1
        assert latest(summaries)[f"{SUMMARY}/nodes/sh-2"]["online"] is False

        hub.kill()
        until(hub_state, "ec/v1/hub/state", lambda s: s["online"] is False, "the hub's last will: offline")
        # The summaries stay retained, as old as their observed_at says.
        assert latest(summaries)[fleet_topic]["observed_at"].endswith("Z")
