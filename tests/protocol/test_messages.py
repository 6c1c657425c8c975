"""Status, presence, events and resync messages round-trip and validate."""

from __future__ import annotations

import pytest

from edgeprotocol import Event, NodeStatus, Presence, ProtocolError, ReleaseStatus, Resync
from edgeprotocol.messages import now
from edgeprotocol.topics import NodeTopic, assignment, check_name, status


def test_a_node_status_round_trips_with_every_release():
    report = NodeStatus(
        node="sh-1", seq=7, observed_at=now(), agent_version="0.1.0", runtime="podman",
        releases=(ReleaseStatus(namespace="demo", release="web", desired_revision=2, applied_revision=2,
                                phase="Deployed", ready=1, total=1, observed_at=now()),),
    )
    assert NodeStatus.decode(report.encode()) == report


def test_a_status_with_an_unknown_phase_is_refused():
    bad = b'{"v":1,"node":"sh-1","seq":1,"observed_at":"x","releases":[{"namespace":"demo","release":"web",' \
          b'"desired_revision":1,"applied_revision":1,"phase":"Happy"}]}'
    with pytest.raises(ProtocolError, match="phase 'Happy'"):
        NodeStatus.decode(bad)


def test_presence_events_and_resync_round_trip():
    assert Presence.decode(Presence(node="n1", state="offline", at="t").encode()).state == "offline"
    event = Event(node="n1", seq=4, at="t", reason="Applied", message="ok", namespace="demo", release="web", revision=2)
    assert Event.decode(event.encode()) == event
    assert Resync.decode(Resync(node="n1", held={"demo/web": 3}).encode()).held == {"demo/web": 3}


def test_topics_parse_back_into_their_parts():
    parsed = NodeTopic.parse(assignment("sh-1", "demo", "web"))
    assert (parsed.node, parsed.kind, parsed.namespace, parsed.release) == ("sh-1", "releases", "demo", "web")
    assert NodeTopic.parse(status("sh-1")).kind == "status"
    with pytest.raises(ValueError, match="not an edgecollab v1 node topic"):
        NodeTopic.parse("ec/v1/nodes/sh-1/secrets")


@pytest.mark.parametrize("name", ["", "UPPER", "-lead", "trail-", "a/b", "x" * 64, "+", "#"])
def test_names_that_would_break_topics_are_refused(name: str):
    with pytest.raises(ValueError, match="is not a valid name"):
        check_name(name, "node")


def test_a_node_status_carries_its_conditions_and_a_status_without_them_still_decodes():
    from edgeprotocol import Condition

    broken = Condition(type="RuntimeReady", status="False", reason="PodCreateFailed",
                       message="catatonit missing", since="2026-11-22T10:00:00.000Z")
    report = NodeStatus(node="sh-1", seq=1, observed_at=now(), releases=(), conditions=(broken,))
    decoded = NodeStatus.decode(report.encode())
    assert decoded.conditions == (broken,) and not decoded.conditions[0].ok
    older_agent = b'{"v":1,"node":"sh-1","seq":1,"observed_at":"x","releases":[]}'
    assert NodeStatus.decode(older_agent).conditions == ()


@pytest.mark.parametrize(("condition", "named"), [
    ('{"type":"Happy","status":"True","reason":"R"}', "condition type 'Happy'"),
    ('{"type":"RuntimeReady","status":"Maybe","reason":"R"}', "condition status 'Maybe'"),
    ('{"type":"RuntimeReady","status":"True"}', "field 'reason' is missing"),
    ('"RuntimeReady"', "each condition must be an object"),
])
def test_a_status_with_a_bad_condition_is_refused_naming_it(condition: str, named: str):
    bad = ('{"v":1,"node":"sh-1","seq":1,"observed_at":"x","releases":[],"conditions":[' + condition + ']}').encode()
    with pytest.raises(ProtocolError, match=named) as raised:
        NodeStatus.decode(bad)
    assert "status.conditions[0]" in str(raised.value)
