"""The Component controller's decisions and status: ``decide`` and ``status_from`` are pure.

The controller itself (``python -m deployer_plugin.controller``) against the session's real API server,
a real hub and real nodes: tests/deployer/test_controller_cluster.py.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from deployer_plugin.controller import (
    FINALIZER,
    Action,
    component_document,
    decide,
    refusal_of,
    status_from,
)
from deployer_plugin.deployer import (
    DeployerError,
    HubUnavailable,
    ReleaseStatus,
    RolloutCounts,
    SpecRejected,
    release_status_from,
)

REPO_CHART = {"repo": "https://charts.example.com", "name": "web", "version": "1.2.3"}


def component(*, generation: int = 1, finalizers: tuple[str, ...] = (FINALIZER,), deleting: bool = False,
              chart: Any = None, status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "edgecollab.io/v1alpha1", "kind": "Component",
        "metadata": {"name": "web", "namespace": "demo", "generation": generation, "finalizers": list(finalizers),
                     "resourceVersion": "7", "uid": "u-1"},
        "spec": {"chart": copy.deepcopy(REPO_CHART) if chart is None else chart, "values": {"message": "hi"},
                 "edge": {"nodePools": ["shanghai"]}},
    }
    if deleting:
        obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    if status is not None:
        obj["status"] = status
    return obj


def release(*, revision: int = 2, ready: int = 2, desired: int = 2, failed: int = 0, offline: int = 0,
            updated: int | None = None, origin: str = "apply by edgecollab-controller",
            rolled_back_to: int = 0) -> ReleaseStatus:
    counts = RolloutCounts(desired=desired, updated=ready if updated is None else updated, ready=ready,
                           failed=failed, offline=offline)
    return ReleaseStatus(namespace="demo", name="web", revision=revision,
                         current_revision=revision if ready == desired else revision - 1,
                         chart_name="web", chart_version="1.2.3", counts=counts, pools={"shanghai": counts},
                         origin=origin, rolled_back_to=rolled_back_to)


# --------------------------------------------------------------------------- decide


@pytest.mark.parametrize(("obj", "hub", "expected"), [
    (component(finalizers=()), None, "add_finalizer"),
    (component(), None, "apply"),
    (component(generation=3, status={"observedGeneration": 2}), release(), "apply"),
    (component(generation=2, status={"observedGeneration": 2}), release(), "observe"),
    # the hub lost the release (a new hub state): apply again
    (component(generation=2, status={"observedGeneration": 2}), None, "apply"),
    (component(deleting=True), release(), "uninstall"),
    (component(deleting=True), None, "remove_finalizer"),
    (component(deleting=True, finalizers=("other/finalizer",)), release(), "nothing"),
])
def test_decide(obj: dict[str, Any], hub: ReleaseStatus | None, expected: str) -> None:
    assert decide(obj, hub).kind == expected


@pytest.mark.parametrize("chart", ["./chart", {"path": "./chart"}, None])
def test_a_local_chart_is_refused_and_never_sent(chart: Any) -> None:
    obj = component(chart=chart)
    if chart is None:
        del obj["spec"]["chart"]
    action = decide(obj, None)
    assert (action.kind, action.reason) == ("refuse", "LocalChart")
    assert "chart repository" in action.message


@pytest.mark.parametrize("chart", [REPO_CHART, {"oci": "oci://registry.example.com/web", "version": "1"},
                                   "oci://registry.example.com/web:1"])
def test_repository_and_oci_charts_are_applied(chart: Any) -> None:
    assert decide(component(chart=chart), None).kind == "apply"


def test_a_spec_the_hub_refused_stays_refused_until_it_changes() -> None:
    refused = {"observedGeneration": 4, "conditions": [{"type": "Progressing", "status": "False",
                                                         "reason": "SpecRejected", "message": "x"}]}
    kept = decide(component(generation=4, status=refused), None)
    assert (kept.kind, kept.reason, kept.message) == ("refuse", "SpecRejected", "x")
    # ... so the status written keeps saying so (not "not applied yet", which would apply it again).
    assert conditions(status_from(component(generation=4, status=refused), None, refusal=kept))["Progressing"] == (
        "False", "SpecRejected")
    assert decide(component(generation=5, status=refused), None).kind == "apply"
    unreachable = copy.deepcopy(refused)
    unreachable["conditions"][0]["reason"] = "HubUnreachable"
    assert decide(component(generation=4, status=unreachable), None).kind == "apply"


def test_the_document_sent_is_the_spec_without_cluster_metadata_or_status() -> None:
    obj = component(status={"observedGeneration": 1})
    doc = component_document(obj)
    assert doc == {"apiVersion": "edgecollab.io/v1alpha1", "kind": "Component",
                   "metadata": {"name": "web", "namespace": "demo"}, "spec": obj["spec"]}


# --------------------------------------------------------------------------- status_from


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_a_complete_rollout_is_available() -> None:
    status = status_from(component(generation=3), release(revision=2), now="T1")

    assert status["observedGeneration"] == 3
    assert (status["currentRevision"], status["targetRevision"], status["readyNodes"]) == (2, 2, "2/2")
    assert status["pools"] == {"shanghai": {"desired": 2, "updated": 2, "ready": 2, "failed": 0, "offline": 0}}
    assert (status["desired"], status["ready"], status["rollout"]) == (2, 2, "complete")
    assert conditions(status) == {"Progressing": ("False", "RolloutComplete"), "Available": ("True", "AllNodesReady"),
                                  "RolledBack": ("False", "NotRolledBack")}
    assert all(c["lastTransitionTime"] == "T1" and c["observedGeneration"] == 3 for c in status["conditions"])


@pytest.mark.parametrize(("hub", "progressing", "available"), [
    (release(ready=1, updated=1), ("True", "RollingOut"), ("False", "NodesNotReady")),
    (release(ready=1, failed=1), ("False", "RolloutFailing"), ("False", "NodesNotReady")),
    (release(ready=1, offline=1), ("True", "WaitingForOfflineNodes"), ("False", "NodesNotReady")),
    (release(ready=0, desired=0), ("False", "NoTargets"), ("False", "NoTargets")),
])
def test_each_rollout_state_has_its_conditions(hub: ReleaseStatus, progressing: tuple[str, str],
                                               available: tuple[str, str]) -> None:
    got = conditions(status_from(component(), hub))
    assert (got["Progressing"], got["Available"]) == (progressing, available)


def test_a_rollback_is_reported() -> None:
    status = status_from(component(), release(revision=5, origin="rollback to 3", rolled_back_to=3))
    rolled = next(c for c in status["conditions"] if c["type"] == "RolledBack")
    assert (rolled["status"], rolled["reason"]) == ("True", "RolledBack")
    assert "revision 5 is revision 3 rolled back" in rolled["message"]


def test_a_refusal_is_progressing_false_with_its_reason() -> None:
    refusal = Action("refuse", "LocalChart", "spec.chart names a local chart")
    status = status_from(component(chart="./chart"), None, refusal=refusal)
    assert status["rollout"] == "refused" and status["targetRevision"] == 0
    assert conditions(status)["Progressing"] == ("False", "LocalChart")
    assert conditions(status)["Available"] == ("False", "NotDeployed")


def test_a_condition_keeps_its_transition_time_while_its_status_holds() -> None:
    first = status_from(component(), release(ready=1, updated=1), now="T1")
    obj = component(status=first)
    second = status_from(obj, release(ready=1, updated=2), now="T2")
    assert {c["type"]: c["lastTransitionTime"] for c in second["conditions"]} == {
        "Progressing": "T1", "Available": "T1", "RolledBack": "T1"}
    third = status_from(component(status=second), release(), now="T3")
    assert {c["type"]: c["lastTransitionTime"] for c in third["conditions"]} == {
        "Progressing": "T3", "Available": "T3", "RolledBack": "T1"}


def test_an_unreachable_hub_keeps_the_generation_unapplied_and_the_rollout_as_known() -> None:
    deployed = status_from(component(generation=2), release(revision=2), now="T1")
    # The spec changed (generation 3) while the hub is down: nothing was applied, so the status says
    # generation 2 still, the nodes' rollout as last known, and why.
    obj = component(generation=3, status=deployed)
    down = status_from(obj, None, refusal=refusal_of(HubUnavailable("cannot reach the hub")), now="T2")

    assert down["observedGeneration"] == 2
    assert (down["targetRevision"], down["readyNodes"], down["rollout"]) == (2, "2/2", "complete")
    assert conditions(down) == {"Progressing": ("False", "HubUnreachable"), "Available": ("True", "AllNodesReady"),
                                "RolledBack": ("False", "NotRolledBack")}
    # ... so once the hub answers, the generation is applied.
    assert decide(component(generation=3, status=down), release(revision=2)).kind == "apply"


def test_a_failed_apply_leaves_the_generation_unapplied_but_a_refused_spec_does_not() -> None:
    before = status_from(component(generation=1), release(revision=1), now="T1")
    obj = component(generation=2, status=before)
    failed = status_from(obj, release(revision=1), refusal=refusal_of(DeployerError("boom", 500)))
    assert failed["observedGeneration"] == 1 and conditions(failed)["Progressing"] == ("False", "HubError")
    refused = status_from(obj, release(revision=1), refusal=refusal_of(SpecRejected("spec.chart: no 9.9.9", 422)))
    assert refused["observedGeneration"] == 2 and refused["rollout"] == "refused"
    assert decide(component(generation=2, status=refused), release(revision=1)).kind == "refuse"


def test_hub_failures_become_refusal_reasons() -> None:
    assert refusal_of(HubUnavailable("cannot reach")).reason == "HubUnreachable"
    assert refusal_of(SpecRejected("spec.edge: selects no node", 422)).reason == "SpecRejected"
    assert refusal_of(DeployerError("boom", 500)).reason == "HubError"


def test_release_status_from_the_hubs_views() -> None:
    view = {"namespace": "demo", "name": "web", "revision": 3, "chart": {"name": "web", "version": "0.1.0"},
            "nodes": [
                {"node": "a", "pool": "sh", "presence": "online", "applied_revision": 3, "phase": "Deployed",
                 "stale": False},
                {"node": "b", "pool": "sh", "presence": "offline", "applied_revision": 2, "phase": "Deployed",
                 "stale": True},
                {"node": "c", "pool": "bj", "presence": "online", "applied_revision": 2, "phase": "Failed",
                 "stale": False},
            ]}
    history = [{"revision": 3, "current": True, "origin": "rollback to 1"}, {"revision": 2, "current": False}]

    status = release_status_from(view, history)

    assert status.counts == RolloutCounts(desired=3, updated=1, ready=1, failed=1, offline=1)
    assert status.pools["sh"] == RolloutCounts(desired=2, updated=1, ready=1, failed=0, offline=1)
    assert status.pools["bj"] == RolloutCounts(desired=1, updated=0, ready=0, failed=1, offline=0)
    assert (status.current_revision, status.rolled_back_to, status.rollout) == (2, 1, "failing")
