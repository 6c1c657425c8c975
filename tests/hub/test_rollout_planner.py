"""The staged-rollout planner (edgehub.rollout): pure decisions, an injected clock, no MQTT or podman."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from deployer_plugin import SpecError, parse_rollout_policy
from edgehub.rollout import Report, RolloutState, Target, begin, desired_revision, pause, resume, step, view


def policy(**fields: Any):
    doc = {"batches": [{"pools": ["canary"]}, {"percent": 50}, {"percent": 100}],
           "healthGate": {"readyWithin": "2m", "minReadyTime": "10s"}}
    doc.update(fields)
    return parse_rollout_policy(doc)


def fleet(canary: int = 1, main: int = 4, offline: tuple[str, ...] = ()) -> dict[str, Target]:
    nodes = {f"c{i}": "canary" for i in range(canary)} | {f"m{i}": "main" for i in range(main)}
    return {n: Target(pool=p, online=n not in offline) for n, p in nodes.items()}


def ready(*nodes: str, revision: int = 2) -> dict[str, Report]:
    return {n: Report(desired_revision=revision, applied_revision=revision, phase="Deployed") for n in nodes}


def start(**fields: Any) -> RolloutState:
    return begin("demo", "web", 2, policy(**fields), live_revision=1, prior=None, now=0.0)


def test_batches_by_pool_then_percent_of_the_remaining_then_the_rest() -> None:
    targets = fleet()
    s = step(start(), targets, {}, 0.0)
    assert s.batches == [["c0"]] and s.state == "progressing"
    s = step(s, targets, ready("c0"), 1.0)  # ready, but not for minReadyTime yet
    assert s.batch == 0
    s = step(s, targets, ready("c0"), 11.0)
    assert s.batches == [["c0"], ["m0", "m1"]] and s.batch_started_at == 11.0
    s = step(s, targets, ready("c0", "m0", "m1"), 12.0)
    s = step(s, targets, ready("c0", "m0", "m1"), 22.0)
    assert s.batches[2] == ["m2", "m3"]
    s = step(s, targets, ready(*targets), 23.0)
    s = step(s, targets, ready(*targets), 33.0)
    assert s.state == "complete"
    assert all(desired_revision(s, n, current=2, held=1) == 2 for n in targets)


def test_nodes_of_later_batches_keep_the_previous_revision() -> None:
    s = step(start(), fleet(), {}, 0.0)
    assert desired_revision(s, "c0", current=2, held=1) == 2
    assert desired_revision(s, "m0", current=2, held=1) == 1
    assert desired_revision(s, "m0", current=2, held=0) == 1  # a node that holds nothing gets the previous one


def test_count_batches() -> None:
    s = step(start(batches=[{"count": 3}, {"count": 100}], healthGate={"minReadyTime": 0}), fleet(), {}, 0.0)
    assert s.batches == [["c0", "m0", "m1"]]


def test_a_node_that_reports_failed_fails_the_batch_and_rolls_back() -> None:
    s = step(start(), fleet(), {}, 0.0)
    s = step(s, fleet(), {"c0": Report(2, 1, "Failed", "exit code 1")}, 5.0)
    assert s.state == "rolling back" and s.failed_node == "c0"
    assert "exit code 1" in s.reason and "batch 1/3" in s.reason
    assert len(s.batches) == 1


def test_the_ready_within_deadline() -> None:
    s = step(start(), fleet(), {}, 0.0)
    s = step(s, fleet(), {"c0": Report(2, 1, "Deploying")}, 119.0)
    assert s.state == "progressing"
    s = step(s, fleet(), {"c0": Report(2, 1, "Deploying")}, 120.0)
    assert s.state == "rolling back" and "within 2m" in s.reason


def test_on_failure_pause_then_resume_checks_the_batch_afresh() -> None:
    s = step(start(onFailure="Pause"), fleet(), {}, 0.0)
    s = step(s, fleet(), {"c0": Report(2, 1, "Failed")}, 1.0)
    assert s.state == "paused" and s.failed_node == "c0"
    s = resume(s, 50.0)
    assert s.state == "progressing" and s.batch_started_at == 50.0
    s = step(s, fleet(), ready("c0"), 51.0)
    s = step(s, fleet(), ready("c0"), 61.0)
    assert s.batch == 1


def test_max_failures_as_a_count_and_a_percent() -> None:
    targets = fleet(canary=0, main=10)
    failing = {f"m{i}": Report(2, 1, "Failed") for i in range(2)}
    for tolerated, allowed in ((1, False), (2, True), ("20%", True), ("10%", False)):
        s = step(start(batches=[{"percent": 100}], maxFailures=tolerated, healthGate={"minReadyTime": 0}),
                 targets, {}, 0.0)
        reports = {**ready(*targets), **failing}
        s = step(s, targets, reports, 1.0)
        assert (s.state == "complete") is allowed, tolerated


def test_pause_stops_new_batches() -> None:
    s = step(start(), fleet(), {}, 0.0)
    s = pause(s, 1.0)
    s = step(s, fleet(), ready("c0"), 30.0)
    assert s.state == "paused" and s.batch == 0
    s = step(resume(s, 31.0), fleet(), ready("c0"), 32.0)
    s = step(s, fleet(), ready("c0"), 42.0)
    assert s.batch == 1


def test_offline_nodes_are_deferred_not_failed() -> None:
    targets = fleet(offline=("m3",))
    s = step(start(batches=[{"pools": ["canary"]}, {"percent": 100}], healthGate={"minReadyTime": 0}),
             targets, ready("c0"), 0.0)
    assert s.batches == [["c0"], ["m0", "m1", "m2"]] and s.deferred == ["m3"]
    assert desired_revision(s, "m3", current=2, held=1) == 1
    s = step(s, targets, ready("c0", "m0", "m1", "m2"), 500.0)
    assert s.state == "complete" and s.deferred == ["m3"]
    assert desired_revision(s, "m3", current=2, held=1) == 2  # the settled revision, taken when it returns


def test_a_node_that_goes_offline_in_its_batch_is_deferred() -> None:
    s = step(start(), fleet(), {}, 0.0)
    s = step(s, fleet(offline=("c0",)), {}, 500.0)
    assert s.state != "rolling back" and "c0" in s.deferred


def test_skip_leaves_offline_nodes_out_of_every_batch() -> None:
    targets = fleet(offline=("m0",))
    s = step(start(offlineNodes="Skip"), targets, ready("c0"), 0.0)
    s = step(s, fleet(), ready("c0"), 10.0)  # m0 is back, but skipped
    assert "m0" not in s.batches[1] and s.skipped == ["m0"]


def test_block_waits_for_offline_nodes_and_fails_them() -> None:
    targets = fleet(canary=2, offline=("c1",))
    s = step(start(offlineNodes="Block"), targets, ready("c0"), 0.0)
    assert s.batches == [["c0", "c1"]]
    s = step(s, targets, ready("c0"), 60.0)
    assert s.state == "progressing"
    s = step(s, targets, ready("c0"), 121.0)
    assert s.state == "rolling back" and s.failed_node == "c1" and "offline" in s.reason


def test_after_a_rollback_only_nodes_that_took_the_bad_revision_get_the_rollback() -> None:
    s = step(start(), fleet(), {}, 0.0)
    s.state, s.rollback_revision = "rolled back", 3
    assert desired_revision(s, "c0", current=3, held=2) == 3
    assert desired_revision(s, "m0", current=3, held=1) == 1
    assert desired_revision(s, "new", current=3, held=0) == 3


def test_state_survives_its_row() -> None:
    s = step(start(maxFailures="10%"), fleet(), ready("c0"), 0.0)
    again = RolloutState.from_row(s.to_row())
    assert again.to_row() == s.to_row() and again.policy == s.policy
    assert view(again)["batches"][0]["nodes"] == ["c0"]


def test_previous_good_revision_through_an_interrupted_rollout() -> None:
    first = step(start(), fleet(), {}, 0.0)  # revision 2 going out over revision 1
    second = begin("demo", "web", 3, policy(), live_revision=2, prior=first, now=1.0)
    assert second.previous == 1
    first.state = "complete"
    assert begin("demo", "web", 3, policy(), live_revision=2, prior=first, now=1.0).previous == 2


@pytest.mark.parametrize("doc, message", [
    ({"batches": []}, "at least one batch"),
    ({"batches": [{"pools": []}]}, "at least one pool"),
    ({"batches": [{"percent": 0}]}, "more than 0"),
    ({"batches": [{"count": 1.5}]}, "whole number"),
    ({"batches": [{"percent": 10}], "healthGate": {"readyWithin": "soon"}}, "not a duration"),
    ({"batches": [{"percent": 10}], "maxFailures": "110%"}, "at most 100%"),
    ({"batches": [{"percent": 10}], "onFailure": "Rollbak"}, "did you mean Rollback"),
    ({"batches": [{"percent": 10}], "offlinenodes": "Defer"}, "did you mean offlineNodes"),
])
def test_refused_policies_say_why(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_rollout_policy(doc)


def test_the_component_summary_says_where_a_staged_rollout_is() -> None:
    from edgehub.store.components import ComponentRecord
    from edgehub.summaries import staged_words

    comp = ComponentRecord(namespace="demo", name="web", chart_name="web", chart_version="1", fingerprint="x",
                           revision=2, deleted=False, updated_at=0.0)
    s = step(start(), fleet(), {}, 0.0)
    assert staged_words([s.to_row()], [comp]) == {("demo", "web"): "batch 1/3"}
    s.state, s.rollback_revision = "rolled back", 3
    assert staged_words([s.to_row()], [dataclasses.replace(comp, revision=3)]) == {("demo", "web"): "rolled back"}
    s.state = "complete"
    assert staged_words([s.to_row()], [comp]) == {}
