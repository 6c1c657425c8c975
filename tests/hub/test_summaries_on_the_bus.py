"""Fleet status on the bus: what a plain MQTT client subscribed to the summary topics sees.

A real Mosquitto per test (summaries are retained: a fresh broker holds only this test's), the hub in
process, nodes joined through the API, and their status, presence and events published as agents do.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from bus_watch import SUMMARY, Watcher, settings_for
from hub_api import answer, create_token, join, unique

from edgehub.app import create_app
from edgehub.settings import HubSettings
from edgeprotocol import topics
from edgeprotocol.messages import Condition, NodeStatus, Presence, ReleaseStatus, now
from edgesim.fleet import Mosquitto


@pytest.fixture
def hub_settings(tmp_path: Path, fresh_broker: Mosquitto) -> HubSettings:
    return settings_for(tmp_path, fresh_broker)


async def report(broker: Mosquitto, node: str, *, seq: int, phase: str = "Deployed", online: bool = True,
                 reason: str = "", restarts: int = 0, message: str = "") -> None:
    """What an agent sends: presence, then a status with the example release and its health."""
    status = NodeStatus(node=node, seq=seq, observed_at=now(), agent_version="test", runtime="podman",
                        releases=(ReleaseStatus(namespace="demo", release="web", desired_revision=1,
                                                applied_revision=1, phase=phase, ready=1, total=1, reason=reason,
                                                restarts=restarts, message=message),),
                        conditions=(Condition(type="RuntimeReady", status="True", reason="Ok", message="",
                                              since=now()),))
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier=unique("agent")) as mqtt:
        presence = Presence(node=node, state="online" if online else "offline", at=now())
        await mqtt.publish(topics.presence(node), presence.encode(), qos=1, retain=True)
        if online:
            await mqtt.publish(topics.status(node), status.encode(), qos=1, retain=True)


async def test_a_plain_subscriber_sees_the_counts_follow_joins_deploys_failures_and_offline_nodes(
    hub: TestClient, fresh_broker: Mosquitto, watcher: Watcher, example: dict[str, Any]
):
    fleet = f"{SUMMARY}/fleet"
    await watcher.until("ec/v1/hub/state", lambda s: s["online"] is True)
    await watcher.until(fleet, lambda s: s["nodes_total"] == 0)
    for node in ("sh-1", "sh-2"):
        await answer(await join(hub, await create_token(hub), node), 201)
    await watcher.until(fleet, lambda s: s["nodes_total"] == 2 and s["nodes_online"] == 0)
    await answer(await hub.post("/api/v1/components", json=example), 201)
    component = await watcher.until(f"{SUMMARY}/components/demo/web", lambda s: s["desired"] == 2)
    assert (component["component"], component["revision"], component["ready"], component["rollout"]) == \
        ("demo/web", 1, 0, "waiting for offline nodes")  # joined, never connected
    assert component["pools"] == {"shanghai": {"desired": 2, "updated": 0, "ready": 0, "failed": 0, "offline": 2}}
    assert component["reasons"] == {}

    await report(fresh_broker, "sh-1", seq=1)
    await report(fresh_broker, "sh-2", seq=1, phase="Failed")
    node = await watcher.until(f"{SUMMARY}/nodes/sh-1", lambda s: s["online"] and s["releases_deployed"] == 1)
    assert node["node"] == "sh-1" and node["pool"] == "shanghai" and node["ready"] is True
    assert node["releases"] == [{"release": "demo/web", "revision": 1, "desired_revision": 1, "phase": "Deployed",
                                 "reason": "", "restarts": 0, "message": ""}]
    assert node["conditions"] == {"RuntimeReady": "True"} and node["last_seen"]
    pool = await watcher.until(f"{SUMMARY}/pools/shanghai", lambda s: s["releases_failed"] == 1)
    assert (pool["pool"], pool["nodes_online"], pool["releases_deployed"], pool["components"]) == \
        ("shanghai", 2, 1, ["demo/web"])
    component = await watcher.until(f"{SUMMARY}/components/demo/web", lambda s: s["failed"] == 1)
    assert (component["ready"], component["rollout"], component["installed_revision"]) == (1, "failing", 1)

    # A crash loop is a failure too, with its reason on the component and the node.
    crashing = 'pod web-0 container web: CrashLoopBackOff: exited 3 (Error), restarted 4 times; last log: "crashing"'
    await report(fresh_broker, "sh-1", seq=2, phase="Degraded", reason="CrashLoopBackOff", restarts=4, message=crashing)
    node = await watcher.until(f"{SUMMARY}/nodes/sh-1", lambda s: s["releases_degraded"] == 1)
    assert node["releases"] == [{"release": "demo/web", "revision": 1, "desired_revision": 1, "phase": "Degraded",
                                 "reason": "CrashLoopBackOff", "restarts": 4, "message": crashing}]
    component = await watcher.until(f"{SUMMARY}/components/demo/web", lambda s: s["failed"] == 2)
    assert (component["ready"], component["rollout"], component["reasons"]) == (0, "failing", {"CrashLoopBackOff": 1})
    assert component["pools"]["shanghai"]["failed"] == 2
    await report(fresh_broker, "sh-1", seq=3, restarts=4)  # running again: the restarts stay, the reason goes
    component = await watcher.until(f"{SUMMARY}/components/demo/web", lambda s: s["failed"] == 1)
    assert (component["ready"], component["reasons"]) == (1, {})

    await report(fresh_broker, "sh-2", seq=2, online=False)
    fleet_now = await watcher.until(fleet, lambda s: s["nodes_offline"] == 1)
    assert (fleet_now["nodes_online"], fleet_now["components_total"], fleet_now["releases_failed"]) == (1, 1, 1)
    for topic in (fleet, f"{SUMMARY}/pools/shanghai", f"{SUMMARY}/nodes/sh-1", f"{SUMMARY}/components/demo/web"):
        assert watcher.latest[topic]["observed_at"].endswith("Z")
        assert all(not isinstance(v, list) or k in ("releases", "components") for k, v in watcher.latest[topic].items())

    await answer(await hub.delete("/api/v1/components/demo/web"), 200)
    await watcher.until(f"{SUMMARY}/components/demo/web", lambda s: s is None)  # the retained summary cleared


async def test_home_assistant_discovery_describes_pools_and_components_tied_to_the_hub_state(
    hub: TestClient, watcher: Watcher, example: dict[str, Any]
):
    await answer(await join(hub, await create_token(hub), "sh-1"), 201)
    await answer(await hub.post("/api/v1/components", json=example), 201)
    online = await watcher.until("homeassistant/sensor/edgecollab_pool_shanghai_nodes_online/config", bool)
    assert online["state_topic"] == f"{SUMMARY}/pools/shanghai"
    assert online["value_template"] == "{{ value_json.nodes_online }}"
    assert online["availability"][0]["topic"] == "ec/v1/hub/state" and online["expire_after"] == 180
    assert online["device"]["identifiers"] == ["edgecollab_pool_shanghai"]
    update = await watcher.until("homeassistant/update/edgecollab_component_demo_web_revision_update/config", bool)
    assert update["state_topic"] == f"{SUMMARY}/components/demo/web"
    ready = await watcher.until("homeassistant/sensor/edgecollab_component_demo_web_ready/config", bool)
    assert ready["device"]["name"] == "edgecollab demo/web"


async def test_a_burst_of_reports_is_coalesced(hub: TestClient, fresh_broker: Mosquitto, watcher: Watcher):
    await answer(await join(hub, await create_token(hub), "sh-1"), 201)
    topic = f"{SUMMARY}/nodes/sh-1"
    await watcher.until(topic, bool)
    before = watcher.counts[topic]
    started = time.monotonic()
    async with aiomqtt.Client("127.0.0.1", fresh_broker.port, identifier=unique("agent")) as mqtt:
        for seq in range(1, 101):
            phase = "Deployed" if seq % 2 else "Applying"
            status = NodeStatus(node="sh-1", seq=seq, observed_at=now(), releases=(ReleaseStatus(
                namespace="demo", release="web", desired_revision=1, applied_revision=1, phase=phase),))
            await mqtt.publish(topics.status("sh-1"), status.encode(), qos=1)
    await watcher.until(topic, lambda s: s["releases"] and s["releases"][0]["phase"] == "Applying")
    elapsed = time.monotonic() - started
    # 100 changes; at most one summary per interval (0.2 s) and one more for the last change.
    assert watcher.counts[topic] - before <= elapsed / 0.2 + 2, (watcher.counts[topic] - before, elapsed)


async def test_the_hub_says_it_is_offline_when_it_stops(hub_settings: HubSettings, watcher: Watcher):
    from hub_api import running_hub

    async with running_hub(hub_settings):
        await watcher.until("ec/v1/hub/state", lambda s: s["online"] is True)
    state = await watcher.until("ec/v1/hub/state", lambda s: s["online"] is False)
    assert state["since"].endswith("Z")


async def test_the_live_stream_sends_every_summary_then_each_change(hub: TestClient, watcher: Watcher):
    await watcher.until(f"{SUMMARY}/fleet", bool)
    response = await hub.get("/api/v1/stream")
    assert response.status == 200 and response.headers["Content-Type"] == "text/event-stream"

    async def events() -> AsyncIterator[tuple[str, Any]]:
        event = ""
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                yield event, json.loads(line[6:])

    stream = events()
    first = []
    async with asyncio.timeout(10):
        async for event, data in stream:
            if event == "ready":
                break
            first.append(data["topic"])
    assert f"{SUMMARY}/fleet" in first
    await answer(await join(hub, await create_token(hub), "sh-9"), 201)
    async with asyncio.timeout(10):
        async for event, data in stream:
            if data.get("topic") == f"{SUMMARY}/nodes/sh-9":
                assert event == "summary" and data["summary"]["node"] == "sh-9" and data["summary"]["observed_at"]
                break
    response.close()


async def test_an_open_stream_does_not_hold_up_the_hubs_stop(hub_settings: HubSettings):
    # A dashboard left open must not keep `edgehub serve` from stopping on SIGTERM (aiohttp would wait up
    # to a minute for the stream's handler): the stream ends when the hub begins to stop.
    runner = web.AppRunner(create_app(hub_settings))
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        viewer = (hub_settings.state_dir / "viewer-token").read_text().strip()
        async with aiohttp.ClientSession() as session:
            response = await session.get(f"http://{host}:{port}/api/v1/stream",
                                         headers={"Authorization": f"Bearer {viewer}"})
            assert response.status == 200
            async with asyncio.timeout(10):
                async for line in response.content:
                    if line.startswith(b"event: ready"):
                        break
            started = time.monotonic()
            await runner.cleanup()
            # Without the fix aiohttp waits its 60 s shutdown timeout for the handler; the bound leaves room
            # for a loaded machine.
            assert time.monotonic() - started < 30
            async with asyncio.timeout(5):
                rest = await response.content.read()  # the stream ended: no hang, at most its last lines
            assert b"event: summary" not in rest or rest.endswith(b"\n\n")
    finally:
        await runner.cleanup()
