"""A summary pass on a big fleet re-makes only the summaries of nodes whose record changed.

The store hands out one record object per unchanged row (``ReportStore.list_nodes``), and ``build`` keeps each
node's summary by that record, so the publisher finds an unchanged node without encoding it again.
"""

from __future__ import annotations

import dataclasses

from edgehub.store.enrollment import NodeRecord
from edgehub.summaries import build, node_topic
from edgeprotocol.messages import NodeStatus, ReleaseStatus


def node(name: str, phase: str = "Deployed") -> NodeRecord:
    status = NodeStatus(node=name, seq=1, observed_at="2026-11-22T00:00:00+00:00", releases=(
        ReleaseStatus(namespace="demo", release="web", desired_revision=1, applied_revision=1, phase=phase),))
    return NodeRecord(name=name, pool="lab", labels={}, registered_at=0.0, presence="online", presence_at="",
                      last_seen="2026-11-22T00:00:00+00:00", status=status, generation=0, standing="joined",
                      bundle_key="", certificate="")


def test_unchanged_records_keep_their_summary_and_a_changed_one_is_made_again():
    memo: dict = {}
    a, b, c = node("a"), node("b"), node("c", phase="Applying")
    first = build([a, b, c], [], [], None, memo)

    b_changed = dataclasses.replace(b, presence="offline")
    second = build([a, b_changed], [], [], None, memo)

    assert second[node_topic("a")] is first[node_topic("a")]
    assert second[node_topic("b")] is not first[node_topic("b")]
    assert second[node_topic("b")]["online"] is False and first[node_topic("b")]["online"] is True
    # A node gone from the fleet is forgotten, and the counts are made from every node each time.
    assert set(memo) == {"a", "b"} and node_topic("c") not in second
    assert second[node_topic("a")] == build([a], [], [])[node_topic("a")]
    assert first["ec/v1/summary/fleet"]["releases_deployed"] == 2
    assert first["ec/v1/summary/fleet"]["releases_applying"] == 1
    assert second["ec/v1/summary/fleet"]["releases_deployed"] == 2
    assert second["ec/v1/summary/fleet"]["releases_applying"] == 0
