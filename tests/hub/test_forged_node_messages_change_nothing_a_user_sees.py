"""Forged node messages (anyone may publish on a node's topics) change nothing a user sees.

The real hub on aiohttp's test server and a real Mosquitto; the attacker is a
plain MQTT client. Each test ends by showing that the node's real reports
still arrive: the hub handles a node's messages in order, so once a real
report sent after the attack is seen, the attack has been handled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from aiohttp.test_utils import TestClient
from hub_api import answer, create_token, join, unique

from edgehub.keys import MQTT, SETTINGS
from edgehub.settings import HubSettings
from edgeprotocol import topics
from edgeprotocol.messages import Condition, Event, NodeStatus, Presence, ReleaseStatus, Resync, now
from edgesim.fleet import Mosquitto

HUGE_SEQ = 2**63 - 1


@pytest.fixture
def hub_settings(tmp_path: Path, broker: Mosquitto) -> HubSettings:
    # A minute between resyncs, so a flood in one test is one window.
    return HubSettings(state_dir=tmp_path / "state", mqtt_url=broker.url, resync_interval_seconds=60.0)


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 10.0) -> Any:
    async with asyncio.timeout(timeout):
        while not (found := await check()):
            await asyncio.sleep(0.05)
    return found


def status(node: str, seq: int, *, message: str = "running", releases: int = 1) -> NodeStatus:
    return NodeStatus(
        node=node, seq=seq, observed_at=now(), agent_version="test", runtime="podman",
        releases=tuple(ReleaseStatus(namespace="demo", release=f"web{i}" if i else "web", desired_revision=1,
                                     applied_revision=1, phase="Deployed", message=message, ready=1, total=1)
                       for i in range(releases)),
        conditions=(Condition(type="RuntimeReady", status="True", reason="Ready"),),
    )


async def publish(broker: Mosquitto, *messages: tuple[str, bytes]) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier=unique("attacker")) as mqtt:
        for topic, payload in messages:
            await mqtt.publish(topic, payload, qos=1)


async def joined(hub: TestClient) -> str:
    node = unique("sh")
    await answer(await join(hub, await create_token(hub), node), 201)
    return node


async def shown(hub: TestClient, node: str) -> dict[str, Any]:
    return await answer(await hub.get(f"/api/v1/nodes/{node}"), 200)


async def every_listing_answers(hub: TestClient) -> None:
    for path in ("/api/v1/nodes", "/api/v1/pools", "/api/v1/components", "/healthz"):
        await answer(await hub.get(path), 200)


async def test_a_huge_status_with_the_largest_seq_is_not_stored_and_the_real_reports_still_arrive(
    hub: TestClient, broker: Mosquitto, caplog: pytest.LogCaptureFixture
):
    node = await joined(hub)
    # 3.8 MB of emoji as UTF-8, in a field no bound cuts: JSON's \\u escapes made the hub store it at 11.4 MB.
    body = json.loads(status(node, HUGE_SEQ).encode())
    body["agent_version"] = "\U0001F600" * 950_000
    forged = json.dumps(body, ensure_ascii=False).encode()
    assert 3_700_000 < len(forged) < 4 * 1024 * 1024
    many = status(node, 50, releases=1001).encode()  # small, but more releases than any node holds
    with caplog.at_level(logging.WARNING, logger="edgehub.ingest"):
        await publish(broker, (topics.status(node), forged), (topics.status(node), many),
                      (topics.status(node), status(node, 1, message="x" * 5000).encode()))
        seen = await eventually(lambda: _with_status(hub, node))
    assert seen["status_observed_at"] and [r["release"] for r in seen["releases"]] == ["web"]
    assert len(seen["releases"][0]["message"]) == 1000  # a long message is cut, the status kept
    assert "over the bound of 262144 (max_status_bytes)" in caplog.text
    await every_listing_answers(hub)
    stored = sqlite3.connect(hub.app[SETTINGS].db_path).execute(
        "SELECT length(status), status_seq FROM nodes WHERE name = ?", (node,)).fetchone()
    assert stored[0] < 256 * 1024 and stored[1] == 1

    # The node's next report is taken as usual.
    await publish(broker, (topics.status(node), status(node, 2, message="second").encode()))
    assert (await eventually(lambda: _message_is(hub, node, "second")))


async def _with_status(hub: TestClient, node: str) -> dict[str, Any] | None:
    view = await shown(hub, node)
    return view if view["status_observed_at"] else None


async def _message_is(hub: TestClient, node: str, message: str) -> bool:
    view = await shown(hub, node)
    return bool(view["releases"]) and view["releases"][0]["message"] == message


@pytest.mark.parametrize("seq", [HUGE_SEQ, 2**64, 1_000_002, -5])
async def test_a_status_whose_seq_jumps_too_far_is_dropped_and_the_real_reports_still_arrive(
    hub: TestClient, broker: Mosquitto, seq: int
):
    node = await joined(hub)
    await publish(broker, (topics.status(node), status(node, seq, message="forged").encode()),
                  (topics.status(node), status(node, 1, message="real").encode()))
    assert await eventually(lambda: _message_is(hub, node, "real"))
    # A real report a million ahead of the last is still taken (the bound is inclusive).
    await publish(broker, (topics.status(node), status(node, 1_000_001, message="far").encode()))
    assert await eventually(lambda: _message_is(hub, node, "far"))


async def _events(hub: TestClient, node: str) -> list[dict[str, Any]]:
    return await answer(await hub.get(f"/api/v1/nodes/{node}/events", params={"limit": "1000"}), 200)


def event(node: str, seq: int, message: str = "") -> tuple[str, bytes]:
    return topics.events(node), Event(node=node, seq=seq, at=now(), reason="Applied",
                                      message=message or f"#{seq}").encode()


async def test_an_event_with_a_huge_seq_erases_no_history_and_later_events_still_arrive(
    hub: TestClient, broker: Mosquitto
):
    node = await joined(hub)
    await publish(broker, *(event(node, seq) for seq in range(1, 6)))
    await eventually(lambda: _count_is(hub, node, 5))
    # Forged: the largest seq (dropped), one within the bound (kept, but erases nothing), a huge message (cut).
    await publish(broker, event(node, HUGE_SEQ), event(node, 2**64), event(node, 900_000, "forged"),
                  event(node, 6, "y" * 100_000), event(node, 7))
    history = await eventually(lambda: _count_is(hub, node, 8))
    assert [e["seq"] for e in history] == [1, 2, 3, 4, 5, 900_000, 6, 7]  # in arrival order
    assert len(history[6]["message"]) == 1000
    # A repeat of a delivered event is not stored twice.
    await publish(broker, event(node, 7), event(node, 8))
    assert [e["seq"] for e in await eventually(lambda: _count_is(hub, node, 9))][-2:] == [7, 8]


async def _count_is(hub: TestClient, node: str, count: int) -> list[dict[str, Any]] | None:
    found = await _events(hub, node)
    assert len(found) <= count, found
    return found if len(found) == count else None


async def test_events_of_an_unregistered_node_are_not_stored(hub: TestClient, broker: Mosquitto):
    stranger = unique("nobody")
    await publish(broker, *(event(stranger, seq) for seq in range(1, 4)))
    node = await joined(hub)
    await publish(broker, event(node, 1))
    await eventually(lambda: _count_is(hub, node, 1))
    rows = sqlite3.connect(hub.app[SETTINGS].db_path).execute(
        "SELECT COUNT(*) FROM events WHERE node = ?", (stranger,)).fetchone()
    assert rows == (0,)


async def test_a_presence_with_an_oversized_time_is_dropped(hub: TestClient, broker: Mosquitto):
    node = await joined(hub)
    forged = Presence(node=node, state="online", at="2024-01-01T00:00:00Z" + " " * 1_000_000).encode()
    real_at = "2024-05-06T07:08:09.000Z"
    await publish(broker, (topics.presence(node), forged),
                  (topics.presence(node), Presence(node=node, state="online", at=real_at).encode()))
    view = await eventually(lambda: _present(hub, node))
    assert view["presence_since"] == real_at


async def _present(hub: TestClient, node: str) -> dict[str, Any] | None:
    view = await shown(hub, node)
    return view if view["presence"] == "online" else None


async def test_a_resync_flood_costs_one_re_publish_of_only_what_the_node_lacks(
    hub: TestClient, broker: Mosquitto, example: dict[str, Any]
):
    node = await joined(hub)
    await answer(await hub.post("/api/v1/components", json=example), 201)
    received: list[bytes] = []
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier=unique("watcher")) as watcher:
        await watcher.subscribe(topics.assignments_of(node), qos=1)

        async def watch() -> None:
            async for message in watcher.messages:
                received.append(message.payload)

        watching = asyncio.create_task(watch(), name="watch-assignments")
        try:
            await eventually(lambda: _true(len(received) >= 1))  # the retained assignment
            lacks = Resync(node=node, held={}).encode()
            await publish(broker, *[(topics.resync(node), lacks)] * 200,
                          (topics.status(node), status(node, 1, message="after the flood").encode()))
            await eventually(lambda: _message_is(hub, node, "after the flood"))
            await asyncio.sleep(0.5)  # a re-publish would have arrived by now
        finally:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
    assert len(received) == 2  # the retained one, then a single re-publish for 200 resyncs


async def _true(value: bool) -> bool:
    return value


async def test_a_resync_re_publishes_nothing_the_node_holds_at_the_current_revision(
    hub: TestClient, broker: Mosquitto, example: dict[str, Any], caplog: pytest.LogCaptureFixture
):
    node = await joined(hub)
    await answer(await hub.post("/api/v1/components", json=example), 201)
    with caplog.at_level(logging.DEBUG, logger="edgehub.ingest"):
        await publish(broker, (topics.resync(node), Resync(node=node, held={"demo/web": 1}).encode()),
                      (topics.status(node), status(node, 1, message="done").encode()))
        await eventually(lambda: _message_is(hub, node, "done"))
    assert f"Node {node} asked to resync; re-published 0 assignment(s)" in caplog.text


async def test_a_stored_status_that_does_not_decode_shows_the_node_without_status_and_is_logged_once(
    hub: TestClient, caplog: pytest.LogCaptureFixture
):
    node = await joined(hub)
    with sqlite3.connect(hub.app[SETTINGS].db_path) as db:  # as an older hub's store may hold it
        db.execute("UPDATE nodes SET status = ?, status_seq = 7 WHERE name = ?", (json.dumps({"v": 1}), node))
    with caplog.at_level(logging.WARNING, logger="edgehub.store.reports"):
        for _ in range(3):
            await every_listing_answers(hub)
            view = await shown(hub, node)
            assert (view["name"], view["releases"], view["status_observed_at"]) == (node, [], "")
    assert caplog.text.count(f"Stored status of node {node} does not decode") == 1
    assert hub.app[MQTT].connected.is_set()


def status_with_pods(node: str, seq: int, *, pods: int, containers: int, name_chars: int = 8,
                     log: str = "") -> bytes:
    """A status of one crash-looping release whose pods' detail is as long as the sender likes."""
    body = json.loads(status(node, seq, message="pod p0 container c0: CrashLoopBackOff").encode())
    body["releases"][0].update(phase="Degraded", reason="CrashLoopBackOff", restarts=pods * containers, pods=[
        {"name": f"p{p}".ljust(name_chars, "p"), "containers": [
            {"name": f"c{c}".ljust(name_chars, "c"), "ready": False, "restarts": 1, "state": "waiting",
             "reason": "CrashLoopBackOff", "exit_code": 3, "last_reason": "Error", "last_log": log}
            for c in range(containers)]}
        for p in range(pods)])
    return json.dumps(body).encode()


async def test_a_status_with_huge_pod_lists_is_cut_and_its_health_still_shown(hub: TestClient, broker: Mosquitto):
    node = await joined(hub)
    # 60 pods of 20 containers each, every log 2,500 characters: 3 MB, close to what a message may be.
    huge = status_with_pods(node, 1, pods=60, containers=20, log="x" * 2500)
    assert 3_000_000 < len(huge) < 4 * 1024 * 1024
    await publish(broker, (topics.status(node), huge))
    release = (await eventually(lambda: _with_status(hub, node)))["releases"][0]
    assert (release["reason"], release["restarts"], release["message"]) == (
        "CrashLoopBackOff", 1200, "pod p0 container c0: CrashLoopBackOff")
    # Cut by the decoder to 50 pods of 16 containers, each log to its last 200 characters, that is still more than
    # a status may be stored as (max_status_bytes): it is stored without the pods' detail, not dropped.
    assert release["pods"] == []

    # Huge lists of short entries: cut to what a status details.
    await publish(broker, (topics.status(node), status_with_pods(node, 2, pods=300, containers=50)))
    release = (await eventually(lambda: _pods_shown(hub, node)))["releases"][0]
    assert len(release["pods"]) == 50 and {len(p["containers"]) for p in release["pods"]} == {16}

    # Within the bound, long logs and names are kept as cut: the last 200 characters of a log.
    await publish(broker, (topics.status(node), status_with_pods(node, 3, pods=2, containers=2, name_chars=400,
                                                                 log="early " + "y" * 5000 + " last words")))
    release = (await eventually(lambda: _pods_shown(hub, node, 2)))["releases"][0]
    container = release["pods"][0]["containers"][0]
    assert len(container["last_log"]) == 200 and container["last_log"].endswith("y last words")
    assert len(release["pods"][0]["name"]) == 253 and len(container["name"]) == 253
    stored = sqlite3.connect(hub.app[SETTINGS].db_path).execute(
        "SELECT max(length(status)) FROM nodes WHERE name = ?", (node,)).fetchone()
    assert stored[0] < 256 * 1024
    await every_listing_answers(hub)


async def _pods_shown(hub: TestClient, node: str, pods: int = 50) -> dict[str, Any] | None:
    view = await shown(hub, node)
    return view if view["releases"] and len(view["releases"][0]["pods"]) == pods else None
