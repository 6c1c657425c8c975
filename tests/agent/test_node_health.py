"""Preflight checks become node conditions whose ``since`` moves only when their status changes."""

from __future__ import annotations

from edgeagent.health import conditions_from, summary
from edgeagent.runtime import PreflightCheck

PODMAN_OK = PreflightCheck("podman", True, "podman 4.3.1", "RuntimeReady")
STORAGE_OK = PreflightCheck("storage", True, "/var/lib/containers/storage writable", "StorageReady")
POD_OK = PreflightCheck("pod", True, "created, started and removed a pod", "RuntimeReady")
POD_BROKEN = PreflightCheck("pod", False, "podman pod create failed: catatonit not found", "RuntimeReady",
                            "PodCreateFailed")


def by_type(conditions):
    return {c.type: c for c in conditions}


def test_passing_checks_make_every_condition_true():
    found = by_type(conditions_from([PODMAN_OK, STORAGE_OK, POD_OK], at="t1"))
    assert {k: (c.status, c.reason, c.since) for k, c in found.items()} == {
        "RuntimeReady": ("True", "RuntimeWorks", "t1"), "StorageReady": ("True", "StorageWritable", "t1")}
    assert summary(found.values()) == ""


def test_a_failing_check_sets_its_condition_false_with_its_reason_and_only_that_one_moves_since():
    healthy = conditions_from([PODMAN_OK, STORAGE_OK, POD_OK], at="t1")
    broken = by_type(conditions_from([PODMAN_OK, STORAGE_OK, POD_BROKEN], healthy, at="t2"))
    assert (broken["RuntimeReady"].status, broken["RuntimeReady"].reason, broken["RuntimeReady"].since) == \
        ("False", "PodCreateFailed", "t2")
    assert "catatonit" in broken["RuntimeReady"].message
    assert (broken["StorageReady"].status, broken["StorageReady"].since) == ("True", "t1")
    assert summary(broken.values()).startswith("RuntimeReady=False (PodCreateFailed): pod: podman pod create")

    still = by_type(conditions_from([PODMAN_OK, STORAGE_OK, POD_BROKEN], broken.values(), at="t3"))
    assert still["RuntimeReady"].since == "t2"


def test_a_condition_no_check_could_reach_is_unknown_not_false():
    podman_missing = PreflightCheck("podman", False, "cannot run 'podman'", "RuntimeReady", "PodmanMissing")
    skipped = PreflightCheck("storage", False, "not checked: podman does not run")
    found = by_type(conditions_from([podman_missing, skipped], at="t1"))
    assert (found["RuntimeReady"].status, found["RuntimeReady"].reason) == ("False", "PodmanMissing")
    assert found["StorageReady"].status == "Unknown"
