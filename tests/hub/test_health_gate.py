"""The staged rollout's health gate judges what a node's containers did during the window, not one sample.

The planner (edgehub.rollout) is pure: reports are injected as a node's status would make them, and the clock
is the ``now`` each step is given. A canary batch (one node, c0) over four more nodes, ``readyWithin: 2m`` and
``minReadyTime: 10s``; the hub's driver and what users see are tested against the real hub in
test_staged_rollouts.py.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from test_rollout_planner import fleet, ready, start

from edgehub.rollout import Report, RolloutState, step, view
from edgeprotocol.messages import FAILING_REASONS, NodeStatus

CRASHING = 'pod web-0 container web: CrashLoopBackOff: exited 3 (Error), restarted 4 times; last log: "crashing"'


def canary(phase: str = "Deployed", *, reason: str = "", restarts: int = 0, message: str = "",
           applied: int = 2) -> dict[str, Report]:
    return {"c0": Report(desired_revision=2, applied_revision=applied, phase=phase, message=message, reason=reason,
                         restarts=restarts)}


def test_a_crash_loop_fails_the_canary_as_soon_as_it_is_heard_naming_the_node_the_reason_and_the_message():
    s = step(start(), fleet(), {}, 0.0)
    s = step(s, fleet(), canary("Degraded", reason="CrashLoopBackOff", restarts=4, message=CRASHING), 3.0)
    assert s.state == "rolling back" and s.failed_node == "c0" and len(s.batches) == 1
    assert s.reason == ("batch 1/3: 1 node(s) failed (maxFailures 0); c0 reported CrashLoopBackOff (phase Degraded) "
                        f"for revision 2: {CRASHING}")


def test_an_oom_kill_fails_at_once_even_while_the_container_runs_again():
    s = step(start(), fleet(), {}, 0.0)
    s = step(s, fleet(), canary(reason="OOMKilled", restarts=1,
                                message="pod web-0 container web: OOMKilled: exited 137 (OOMKilled), restarted 1 time"),
             2.0)
    assert s.state == "rolling back" and "c0 reported OOMKilled (phase Deployed)" in s.reason
    assert view(s, fleet(), canary(reason="OOMKilled", restarts=1))["batches"][0]["ready"] == 0


def test_an_image_that_cannot_be_pulled_fails_at_once_before_the_revision_is_applied():
    s = step(start(), fleet(), {}, 0.0)
    s = step(s, fleet(), canary("Failed", reason="ImagePullBackOff", applied=1,
                                message="pod web-0 container web: ImagePullBackOff"), 1.0)
    assert s.state == "rolling back"
    assert "c0 reported ImagePullBackOff (phase Failed) for revision 2: pod web-0 container web" in s.reason


def test_every_failing_reason_fails_at_once():
    for reason in FAILING_REASONS:
        s = step(step(start(), fleet(), {}, 0.0), fleet(), canary("Degraded", reason=reason), 1.0)
        assert s.state == "rolling back" and reason in s.reason, reason


def test_the_previous_revisions_crash_loop_does_not_fail_the_revision_that_replaces_it():
    # The node took revision 2 but still shows revision 1's containers, crash-looping: what revision 2 fixes.
    s = step(start(), fleet(), {}, 0.0)
    s = step(s, fleet(), canary("Degraded", reason="CrashLoopBackOff", restarts=9, applied=1), 1.0)
    assert s.state == "progressing" and not s.failed
    s = step(s, fleet(), canary(), 2.0)
    s = step(s, fleet(), canary(), 12.0)
    assert s.batch == 1


def test_a_single_restart_starts_the_min_ready_time_clock_again():
    s = step(start(), fleet(), {}, 0.0)
    s = step(s, fleet(), canary(restarts=0), 1.0)  # ready: the clock starts
    s = step(s, fleet(), canary(restarts=1), 9.0)  # restarted at once, and ready again when the node looked
    s = step(s, fleet(), canary(restarts=1), 11.0)  # ten seconds since it first was ready, two since the restart
    assert s.state == "progressing" and s.batch == 0
    s = step(s, fleet(), canary(restarts=1), 18.9)
    assert s.batch == 0
    s = step(s, fleet(), canary(restarts=1), 19.0)  # ten seconds without a restart
    assert s.state == "progressing" and s.batch == 1


def test_restarts_from_before_the_node_was_ready_do_not_hold_it_back():
    s = step(start(), fleet(), {}, 0.0)
    s = step(s, fleet(), canary("Degraded", restarts=2), 1.0)  # restarted while starting, then became ready
    s = step(s, fleet(), canary(restarts=2), 5.0)
    s = step(s, fleet(), canary(restarts=2), 15.0)
    assert s.batch == 1


def runs_eight_seconds_then_exits(until: float, *, seen_down: bool) -> list[tuple[float, dict[str, Report]]]:
    """What a node reports, a second apart, of a container that runs 8 s, exits and is restarted at once, over and
    over: each exit adds a restart. ``seen_down``: the node saw it down at each exit (else it looked ready at every
    sample, as a runtime that restarts at once shows it)."""
    reports = []
    for t in range(1, int(until)):
        restarts, second = divmod(t - 1, 9)
        down = seen_down and second == 8
        reports.append((float(t), canary("Applying" if down else "Deployed", restarts=restarts + down)))
    return reports


def test_a_container_that_runs_eight_seconds_then_exits_never_passes_a_min_ready_time_of_ten_seconds():
    for seen_down in (False, True):
        s = step(start(), fleet(), {}, 0.0)
        for now, reports in runs_eight_seconds_then_exits(110.0, seen_down=seen_down):
            s = step(s, fleet(), reports, now)
            assert s.state == "progressing" and s.batch == 0, (seen_down, now)
        # Restarted again and again, the node now says so: the batch fails at once, well before readyWithin.
        s = step(s, fleet(), canary("Degraded", reason="CrashLoopBackOff", restarts=13, message=CRASHING), 111.0)
        assert s.state == "rolling back" and s.failed_node == "c0" and "CrashLoopBackOff" in s.reason, seen_down
        assert len(s.batches) == 1


def test_a_healthy_canary_passes_and_every_batch_follows():
    targets = fleet()
    healthy = {n: Report(2, 2, "Deployed", reason="", restarts=0) for n in targets}
    s = step(start(), targets, {}, 0.0)
    for now in (1.0, 11.0, 12.0, 22.0, 23.0, 33.0):
        s = step(s, targets, healthy, now)
    assert s.state == "complete" and s.batches == [["c0"], ["m0", "m1"], ["m2", "m3"]]


def old_agent_report(phase: str, revision: int = 2) -> Report:
    """A report made from what an agent before container health sends: no reason, restarts or pods."""
    release = {"namespace": "demo", "release": "web", "desired_revision": revision, "applied_revision": revision,
               "phase": phase, "message": "", "ready": 1, "total": 1, "observed_at": "2026-01-01T00:00:00Z"}
    status = NodeStatus.decode(json.dumps({"v": 1, "node": "c0", "seq": 1, "observed_at": "2026-01-01T00:00:00Z",
                                           "releases": [release]}).encode())
    return Report.of(status.releases[0])


def test_an_old_agents_report_is_judged_as_before():
    deployed = old_agent_report("Deployed")
    assert (deployed.reason, deployed.restarts) == ("", 0)
    s = step(start(), fleet(), {}, 0.0)
    s = step(s, fleet(), {"c0": deployed}, 1.0)
    s = step(s, fleet(), {"c0": deployed}, 11.0)
    assert s.batch == 1
    # Degraded without a reason is a node that may still get ready: it fails at readyWithin, not before.
    s = step(start(), fleet(), {}, 0.0)
    s = step(s, fleet(), {"c0": old_agent_report("Degraded")}, 119.0)
    assert s.state == "progressing"
    s = step(s, fleet(), {"c0": old_agent_report("Degraded")}, 120.0)
    assert s.state == "rolling back" and "not Deployed and ready within 2m (phase Degraded at revision 2)" in s.reason


def test_a_rollout_stored_by_the_previous_version_loads_and_its_ready_clock_runs_on():
    s = step(start(), fleet(), {}, 0.0)
    s = step(s, fleet(), ready("c0"), 1.0)
    row = s.to_row()
    body: dict[str, Any] = json.loads(row.body)
    del body["ready_restarts"]  # the previous version stored no such field
    loaded = RolloutState.from_row(dataclasses.replace(row, body=json.dumps(body)))
    assert loaded.ready_since == {"c0": 1.0} and loaded.ready_restarts == {}
    # Its first report with restarts does not start the clock again: the restarts then are where it counts from.
    s = step(loaded, fleet(), canary(restarts=3), 5.0)
    assert s.ready_since == {"c0": 1.0} and s.ready_restarts == {"c0": 3}
    s = step(s, fleet(), canary(restarts=3), 11.0)
    assert s.batch == 1
