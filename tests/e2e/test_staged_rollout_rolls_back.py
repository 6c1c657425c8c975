"""A staged rollout on real agents: a revision that fails on the canary batch is rolled back by the hub itself,
and the nodes of the later batch never receive it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fleet_checks import agent_release, wait_deployed, write_spec

from edgesim.fleet import Fleet, wait_until

# The example chart as root: every node's default policy refuses it, so its release fails at once.
AS_ROOT = {"podSecurityContext": {"runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": False}}
ROLLOUT = {"batches": [{"pools": ["canary"]}, {"percent": 100}],
           "healthGate": {"readyWithin": "90s", "minReadyTime": "2s"}, "onFailure": "Rollback"}
EDGE = {"nodePools": ["canary", "shanghai"], "rollout": ROLLOUT}


def release_of(node, name: str = "web") -> dict:
    return agent_release(node, name)


def test_a_revision_failing_on_the_canary_is_rolled_back_and_never_reaches_the_later_batch(fleet: Fleet,
                                                                                          tmp_path: Path):
    hub = fleet.hub
    assert hub is not None
    canary = fleet.add_node("canary-1", "canary")
    stores = [fleet.add_node(name, "shanghai") for name in ("sh-1", "sh-2")]
    hub.ctl("apply", "-f", str(write_spec(tmp_path / "v1.yaml", values={"message": "good"}, edge=EDGE)))
    wait_deployed(hub, "demo/web", revision=1, nodes=3)  # a first revision goes everywhere at once

    hub.ctl("apply", "-f", str(write_spec(tmp_path / "v2.yaml", values={"message": "bad", **AS_ROOT}, edge=EDGE)))
    status = subprocess.run([sys.executable, "-m", "edgectl.cli", "--hub", hub.url, "rollout", "status", "demo/web",
                             "--timeout", "150s"], capture_output=True, text=True, timeout=200,
                            env=hub_env(hub))
    assert status.returncode == 1, status.stdout + status.stderr
    assert "canary-1" in status.stdout + status.stderr

    # The hub rolled back by itself: revision 3 is revision 1 again, on the canary only.
    wait_until(lambda: release_of(canary)["applied_revision"] == 3 and release_of(canary)["phase"] == "Deployed",
               timeout=120, what="the canary back on the good values (revision 3)")
    assert canary.served_page("demo.web").strip().startswith("good")
    for node in stores:
        held = release_of(node)
        assert (held["desired_revision"], held["applied_revision"], held["phase"]) == (1, 1, "Deployed"), node.name
        assert node.served_page("demo.web").strip().startswith("good")
    history = {r["revision"]: r["status"] for r in hub.ctl_json("history", "demo/web")}
    assert history[2] == "rolled back", history


def hub_env(hub) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "EDGECOLLAB_TOKEN"}
    env["EDGECOLLAB_TOKEN_FILE"] = str(hub.admin_token_path)
    return env
