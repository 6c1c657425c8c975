"""A fleet that reports at once is heard in full: every node's last report and presence reach the hub.

The real hub on aiohttp's test server and a real Mosquitto. Hundreds of nodes
each send a burst of reports (and their presence) as fast as one client can
publish them, many unacknowledged at a time, while the hub is also busy
publishing a rollout to all of them. Before batched ingest, the hub's MQTT
client took messages faster than it stored them and discarded what did not
fit its queue, after acknowledging them: the nodes' last reports went
missing until their next heartbeat, and lost presence never came back.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from aiohttp.test_utils import TestClient
from hub_api import answer, create_token, join, unique

from edgehub.settings import HubSettings, RateLimit
from edgeprotocol import topics
from edgeprotocol.messages import NodeStatus, Presence, now
from edgesim.fleet import Mosquitto

NODES = 300
REPORTS_PER_NODE = 30  # 9,000 reports and 300 presence messages in one burst
WINDOW = 200


@pytest.fixture
def hub_settings(tmp_path: Path, broker: Mosquitto) -> HubSettings:
    return HubSettings(state_dir=tmp_path / "state", mqtt_url=broker.url,
                       join_rate_limit=RateLimit(per_second=1000.0, burst=NODES))


def report(node: str, seq: int) -> bytes:
    # No releases: a node reporting one the hub has not assigned yet would be sent a tombstone.
    return NodeStatus(node=node, seq=seq, observed_at=now(), agent_version=f"report {seq}", runtime="dry-run",
                      releases=()).encode()


async def test_every_node_s_last_report_and_presence_arrive_from_a_burst_during_a_rollout(
    hub: TestClient, broker: Mosquitto, example: dict[str, Any], caplog: pytest.LogCaptureFixture
):
    token = await create_token(hub, uses=NODES)
    nodes = [unique("burst") for _ in range(NODES)]
    for node in nodes:
        await answer(await join(hub, token, node), 201)

    burst = [(topics.presence(node), Presence(node=node, state="online", at=now()).encode()) for node in nodes]
    burst += [(topics.status(node), report(node, seq)) for seq in range(1, REPORTS_PER_NODE + 1) for node in nodes]
    with caplog.at_level(logging.WARNING):
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier=unique("fleet"),
                                  max_inflight_messages=WINDOW) as mqtt:
            mqtt.pending_calls_threshold = WINDOW
            # The rollout to every node is published while the reports come in.
            applying = asyncio.create_task(hub.post("/api/v1/components", json=example))
            pending = iter(burst)

            async def send() -> None:
                for topic, payload in pending:
                    await mqtt.publish(topic, payload, qos=1, timeout=30)

            # A window of publishes unacknowledged at once, as a fleet of nodes sending together is.
            await asyncio.gather(*(send() for _ in range(WINDOW)))
            await answer(await applying, 201)

        async with asyncio.timeout(60):
            while True:
                shown = {n["name"]: n for n in await answer(await hub.get("/api/v1/nodes"), 200)}
                heard = [name for name in nodes if shown[name]["presence"] == "online"
                         and shown[name]["agent_version"] == f"report {REPORTS_PER_NODE}"]
                if len(heard) == NODES:
                    break
                await asyncio.sleep(0.2)
    component = await answer(await hub.get("/api/v1/components/demo/web"), 200)
    assert component["targets"] == NODES, component
    assert "queue is full" not in caplog.text.lower()
