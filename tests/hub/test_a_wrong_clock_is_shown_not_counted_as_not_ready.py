"""A node's ``ClockSynchronized=False`` is shown wherever its conditions are (the node view edgectl prints, the
dashboard's node summary), and does not make the node "not ready": the agent corrects for its clock, and its
runtime runs pods."""

from __future__ import annotations

from edgehub.store.enrollment import NodeRecord
from edgehub.summaries import node_summary
from edgehub.views import node_view
from edgeprotocol.messages import Condition, NodeStatus

RUNTIME = (Condition(type="RuntimeReady", status="True", reason="RuntimeWorks"),
           Condition(type="StorageReady", status="True", reason="StorageWritable"))
CLOCK = Condition(type="ClockSynchronized", status="False", reason="ClockBehindHub",
                  message="the node's clock is 365.0 days behind the hub's (offset +31536000.0 s, measured "
                          "2027-05-06T21:53:27Z); the agent corrects for it", since="2027-05-06T21:53:27.000Z")


def record(*conditions: Condition) -> NodeRecord:
    status = NodeStatus(node="n1", seq=1, observed_at="2027-05-06T21:53:27.000Z", releases=(), conditions=conditions)
    return NodeRecord(name="n1", pool="p", labels={}, registered_at=0.0, presence="online", presence_at="",
                      last_seen="", status=NodeStatus.decode(status.encode()))


def test_the_clock_condition_goes_through_the_protocol_and_into_every_view():
    view = node_view(record(*RUNTIME, CLOCK))
    assert view["conditions"][-1] == CLOCK.to_dict()
    summary = node_summary(record(*RUNTIME, CLOCK))
    assert summary["conditions"] == {"RuntimeReady": "True", "StorageReady": "True", "ClockSynchronized": "False"}
    assert summary["ready"] is True


def test_readiness_is_still_the_runtimes():
    broken = Condition(type="RuntimeReady", status="False", reason="PodCreateFailed")
    assert node_summary(record(broken, RUNTIME[1], CLOCK))["ready"] is False
    assert node_summary(record(*RUNTIME))["ready"] is True
    # A node that reported only its clock has said nothing about its runtime yet.
    assert node_summary(record(CLOCK))["ready"] is False
