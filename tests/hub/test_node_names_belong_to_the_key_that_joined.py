"""A node's name belongs to the key that joined it; assignments are bound to the node's current join.

The real hub on aiohttp's test server, a real Mosquitto, and the agent's own
join (``edgeagent.identity.join``) and uplink check for the node's side: a
join with a live node's name is refused and changes nothing; ``reset`` frees
the name (the next join is generation 2 and gets the node's releases back,
and an assignment captured from generation 1 is refused by the node);
``revoke`` shuts the node out until reset; a release a node reports that the
hub never assigned to it is tombstoned.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from aiohttp.test_utils import TestClient
from fakes import FakeRuntime
from hub_api import answer, create_token, join, refused, unique

from edgeagent.agent import AgentSettings
from edgeagent.health import NodeHealth
from edgeagent.identity import JoinError, NodeIdentity, load_bundle_key
from edgeagent.identity import join as agent_join
from edgeagent.store import AgentStore
from edgeagent.uplink import Uplink
from edgehub.keys import ASSIGNMENT_STORE, SETTINGS
from edgeprotocol import Assignment, Event, topics
from edgeprotocol.messages import NodeStatus, Presence, ReleaseStatus, now
from edgeprotocol.signing import load_public_key, open_sealed
from edgesim.fleet import Mosquitto

# A retained message arrives at once on subscribe; this long without one means there is none.
NOTHING_RETAINED_SECONDS = 0.5


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 10.0) -> Any:
    async with asyncio.timeout(timeout):
        while not (found := await check()):
            await asyncio.sleep(0.05)
    return found


async def retained(broker: Mosquitto, topic: str) -> bytes | None:
    """The broker's retained message on ``topic``; None when it holds none."""
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier=unique("test")) as mqtt:
        await mqtt.subscribe(topic, qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(NOTHING_RETAINED_SECONDS):
                return (await anext(aiter(mqtt.messages))).payload
    return None


async def publish(broker: Mosquitto, *messages: tuple[str, bytes]) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier=unique("node")) as mqtt:
        for topic, payload in messages:
            await mqtt.publish(topic, payload, qos=1)


def stored_row(hub: TestClient, sql: str, *args: Any) -> tuple[Any, ...]:
    """One row of the hub's SQLite file, read-only."""
    db = hub.app[SETTINGS].db_path
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
        return connection.execute(sql, args).fetchone()


def report(node: str, seq: int, *releases: tuple[str, int]) -> NodeStatus:
    return NodeStatus(node=node, seq=seq, observed_at=now(), agent_version="test", runtime="podman", releases=tuple(
        ReleaseStatus(namespace="demo", release=release, desired_revision=revision, applied_revision=revision,
                      phase="Deployed", ready=1, total=1)
        for release, revision in releases))


async def test_a_join_with_a_live_nodes_name_is_refused_and_changes_nothing(hub: TestClient):
    node = unique("sh")
    await answer(await join(hub, await create_token(hub, "shanghai"), node, labels={"zone": "a"}), 201)
    before = await answer(await hub.get(f"/api/v1/nodes/{node}"), 200)
    certificate = stored_row(hub, "SELECT certificate FROM nodes WHERE name = ?", node)
    attacker_token = await create_token(hub, "beijing", uses=1)

    error = await refused(await join(hub, attacker_token, node, labels={"zone": "attacker"}), 403)
    assert f"node {node!r} is already registered" in error
    assert f"an operator can free the name with: edgectl node reset {node}" in error

    after = await answer(await hub.get(f"/api/v1/nodes/{node}"), 200)
    assert after == before and (after["pool"], after["labels"], after["generation"]) == ("shanghai", {"zone": "a"}, 1)
    assert stored_row(hub, "SELECT certificate FROM nodes WHERE name = ?", node) == certificate
    # The refused join spent nothing: the single-use token still joins another name.
    assert (await answer(await join(hub, attacker_token, unique("bj")), 201))["pool"] == "beijing"


async def test_after_node_reset_the_name_joins_again_at_generation_2_and_refuses_what_was_sealed_for_generation_1(
    hub: TestClient, broker: Mosquitto, example: dict[str, Any], tmp_path: Path
):
    node, url = unique("sh"), str(hub.make_url(""))
    first = await asyncio.to_thread(agent_join, hub_url=url, token=await create_token(hub), state_dir=tmp_path / "a",
                                    node=node)
    assert first.generation == 1
    await answer(await hub.post("/api/v1/components", json=example), 201)
    topic = topics.assignment(node, "demo", "web")
    captured = await retained(broker, topic)
    assert captured is not None
    assert open_sealed(captured, load_public_key(first.hub_public_key), node=node, generation=1,
                       bundle_key=load_bundle_key(tmp_path / "a")).revision == 1

    # A second machine (a new key) cannot take the name ...
    with pytest.raises(JoinError, match=f"node {node!r} is already registered.*edgectl node reset {node}"):
        await asyncio.to_thread(agent_join, hub_url=url, token=await create_token(hub), state_dir=tmp_path / "b",
                                node=node)
    # ... until the operator frees it: the node's assignments are kept, its retained ones cleared.
    reset = await answer(await hub.post(f"/api/v1/nodes/{node}/reset", json={}), 200)
    assert reset == {"node": node, "standing": "reset", "generation": 1, "next_generation": 2, "assignments_kept": 1,
                     "broker_refuses": False}  # an anonymous broker here
    assert await retained(broker, topic) is None
    assert (await answer(await hub.get(f"/api/v1/nodes/{node}"), 200))["standing"] == "reset"

    second = await asyncio.to_thread(agent_join, hub_url=url, token=await create_token(hub), state_dir=tmp_path / "b",
                                     node=node)
    assert second.generation == 2 and json.loads((tmp_path / "b" / "identity.json").read_text())["generation"] == 2
    assert NodeIdentity.load(tmp_path / "b") == second
    # The re-joined node gets its release back, sealed for generation 2.
    fresh = await retained(broker, topic)
    assert fresh is not None
    assert open_sealed(fresh, load_public_key(second.hub_public_key), node=node, generation=2,
                       bundle_key=load_bundle_key(tmp_path / "b")).revision == 1

    # The node refuses the captured generation-1 assignment (a Rejected event says why) and takes the fresh one.
    settings = AgentSettings(state_dir=tmp_path / "b")
    async with AgentStore(tmp_path / "b" / "agent.db") as store:
        uplink = Uplink(settings, second, store, runtime_name="fake", health=NodeHealth(FakeRuntime()),
                        on_assignment=lambda: None)
        await uplink._on_message(topic, captured)
        assert await store.releases() == []
        (rejected,) = [Event.decode(item.payload) for item in await store.pending()]
        assert rejected.reason == "Rejected"
        assert "join generation 1" in rejected.message and "joined as generation 2" in rejected.message
        await uplink._on_message(topic, fresh)
        assert [(r.release, r.desired_revision) for r in await store.releases()] == [("web", 1)]


def test_an_identity_written_before_join_generations_loads_as_generation_0(tmp_path: Path):
    identity = NodeIdentity(node="n1", pool="p", labels={}, hub_url="http://127.0.0.1:9", mqtt_url="mqtt://x:1",
                            hub_public_key="", ca_certificate="", generation=3)
    identity.save(tmp_path)
    data = json.loads((tmp_path / "identity.json").read_text())
    del data["generation"]
    (tmp_path / "identity.json").write_text(json.dumps(data))
    assert NodeIdentity.load(tmp_path).generation == 0
    (tmp_path / "identity.json").write_text(json.dumps({**data, "generation": -1}))
    with pytest.raises(JoinError, match="corrupt"):
        NodeIdentity.load(tmp_path)


async def test_a_status_reporting_a_release_the_hub_did_not_assign_gets_a_tombstone_above_it(
    hub: TestClient, broker: Mosquitto, example: dict[str, Any]
):
    node = unique("sh")
    joined = await answer(await join(hub, await create_token(hub), node), 201)
    await answer(await hub.post("/api/v1/components", json=example), 201)
    key = load_public_key(joined["hub_public_key"])

    # demo/web was assigned (revision 1); demo/ghost never was: a replayed or left-over release.
    await publish(broker, (topics.status(node), report(node, 1, ("web", 1), ("ghost", 7)).encode()))
    ghost = topics.assignment(node, "demo", "ghost")
    payload = await eventually(lambda: retained(broker, ghost))
    tombstone = open_sealed(payload, key, node=node, generation=1)
    assert (tombstone.kind, tombstone.revision, tombstone.generation) == ("tombstone", 8, 1)
    web = open_sealed(await retained(broker, topics.assignment(node, "demo", "web")) or b"", key, node=node,
                      generation=1)
    assert (web.kind, web.revision) == ("release", 1)  # what was assigned is left alone

    # Once the node no longer reports it, the tombstone is cleared like any other.
    await publish(broker, (topics.status(node), report(node, 2, ("web", 1)).encode()))
    await eventually(lambda: _none(retained(broker, ghost)))
    assert [a.release for a in await hub.app[ASSIGNMENT_STORE].list_assignments(node=node)] == ["web"]


async def _none(value: Awaitable[Any]) -> bool:
    return await value is None


async def test_a_revoked_node_is_not_heard_not_published_to_and_cannot_join_until_reset(
    hub: TestClient, broker: Mosquitto, example: dict[str, Any]
):
    node = unique("sh")
    await answer(await join(hub, await create_token(hub), node), 201)
    await answer(await hub.post("/api/v1/components", json=example), 201)
    topic = topics.assignment(node, "demo", "web")
    assert await retained(broker, topic) is not None

    revoked = await answer(await hub.post(f"/api/v1/nodes/{node}/revoke", json={}), 200)
    assert revoked == {"node": node, "standing": "revoked", "generation": 1, "assignments_withheld": 1,
                       "broker_refuses": False}
    assert await retained(broker, topic) is None

    # What it sends is ignored; a resync gets nothing published.
    await publish(broker,
                  (topics.presence(node), Presence(node=node, state="online", at=now()).encode()),
                  (topics.status(node), report(node, 1, ("web", 1)).encode()),
                  (topics.events(node), Event(node=node, seq=1, at=now(), reason="Applied", message="x").encode()))
    await asyncio.sleep(0.5)
    shown = await answer(await hub.get(f"/api/v1/nodes/{node}"), 200)
    assert (shown["standing"], shown["presence"], shown["releases"]) == ("revoked", "unknown", [])
    assert await answer(await hub.get(f"/api/v1/nodes/{node}/events"), 200) == []
    assert await retained(broker, topic) is None

    error = await refused(await join(hub, await create_token(hub), node), 403)
    assert f"node {node!r} is revoked" in error and f"edgectl node reset {node}" in error

    await answer(await hub.post(f"/api/v1/nodes/{node}/reset", json={}), 200)
    assert (await answer(await join(hub, await create_token(hub), node), 201))["generation"] == 2
    again = await retained(broker, topic)
    assert again is not None and json.loads(again)["body"]["generation"] == 2
    await publish(broker, (topics.presence(node), Presence(node=node, state="online", at=now()).encode()))
    await eventually(lambda: _presence_is(hub, node, "online"))


async def _presence_is(hub: TestClient, node: str, presence: str) -> bool:
    return (await answer(await hub.get(f"/api/v1/nodes/{node}"), 200))["presence"] == presence


async def test_resetting_or_revoking_an_unknown_node_answers_404(hub: TestClient):
    for action in ("reset", "revoke"):
        assert "not found" in await refused(await hub.post(f"/api/v1/nodes/nobody/{action}", json={}), 404)


def test_an_assignment_carries_its_generation_in_the_signed_body():
    assignment = Assignment(node="n1", namespace="demo", release="web", revision=2, kind="tombstone",
                            issued_at=now(), generation=5)
    assert assignment.to_body()["generation"] == 5
    assert Assignment.from_body(assignment.to_body()) == assignment
