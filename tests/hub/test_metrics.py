"""``/metrics``: Prometheus text that parses, with counters that move with what drives them."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from aiohttp.test_utils import TestClient
from hub_api import answer, create_token, join, unique
from prometheus_client.parser import text_string_to_metric_families

from edgehub.settings import HubSettings
from edgeprotocol import topics
from edgeprotocol.messages import NodeStatus, Presence, ReleaseStatus, now
from edgesim.fleet import Mosquitto


@pytest.fixture
def hub_settings(tmp_path: Path, broker: Mosquitto) -> HubSettings:
    return HubSettings(state_dir=tmp_path / "state", mqtt_url=broker.url, summary_interval_seconds=0.1)


async def scrape(client: Any,
                 headers: dict[str, str] | None = None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await client.get("/metrics", headers=headers or {})
    text = await response.text()
    assert response.status == 200, text
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def until(hub: TestClient, check: Callable[[dict[Any, float]], bool], timeout: float = 10) -> dict[Any, float]:
    async with asyncio.timeout(timeout):
        while not check(found := await scrape(hub)):
            await asyncio.sleep(0.1)
    return found


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_parse_and_move_with_joins_reports_applies_and_deploys(
    hub: TestClient, broker: Mosquitto, example: dict[str, Any]
):
    node = unique("sh")
    first = await scrape(hub)
    assert value(first, "edgecollab_mqtt_connections_total") == 1
    assert value(first, "edgecollab_nodes", presence="online") == 0
    await answer(await join(hub, await create_token(hub), node), 201)
    await answer(await hub.post("/api/v1/components", json=example), 201)

    broken = copy.deepcopy(example)
    broken["component"]["spec"]["edge"]["nodePool"] = broken["component"]["spec"]["edge"].pop("nodePools")
    await answer(await hub.post("/api/v1/components", json=broken), 422)

    async with aiomqtt.Client("127.0.0.1", broker.port, identifier=unique("agent")) as mqtt:
        await mqtt.publish(topics.presence(node), Presence(node=node, state="online", at=now()).encode(), qos=1)
        status = NodeStatus(node=node, seq=1, observed_at=now(), outbox=3, releases=(ReleaseStatus(
            namespace="demo", release="web", desired_revision=1, applied_revision=1, phase="Deployed"),))
        await mqtt.publish(topics.status(node), status.encode(), qos=1)
        await mqtt.publish(topics.status(node), status.encode(), qos=1)  # the same again: a duplicate
    samples = await until(hub, lambda s: value(s, "edgecollab_nodes", presence="online") == 1
                          and value(s, "edgecollab_releases", phase="Deployed") == 1)
    assert value(samples, "edgecollab_status_messages_total", outcome="stored") == 1
    assert value(samples, "edgecollab_status_messages_total", outcome="stale") \
        + value(samples, "edgecollab_status_messages_total", outcome="duplicate") == 1
    assert value(samples, "edgecollab_apply_failures_total", reason="hub") == 1
    assert value(samples, "edgecollab_assignment_to_deployed_seconds_count") == 1
    assert 0 < value(samples, "edgecollab_assignment_to_deployed_seconds_sum") < 10
    assert value(samples, "edgecollab_agent_outbox_messages", stat="max") == 3


async def test_the_viewer_token_reads_status_and_metrics_and_nothing_else(hub: TestClient, hub_settings: HubSettings,
                                                                           example: dict[str, Any]):
    await answer(await hub.post("/api/v1/components", json=example), 201)
    viewer = (hub_settings.state_dir / "viewer-token").read_text().strip()
    assert (hub_settings.state_dir / "viewer-token").stat().st_mode & 0o777 == 0o600
    headers = {"Authorization": f"Bearer {viewer}"}
    async with aiohttp.ClientSession(base_url=hub.make_url("")) as reader:
        await scrape(reader, headers)
        for path in ("/api/v1/nodes", "/api/v1/pools", "/api/v1/components"):
            await answer(await reader.get(path, headers=headers), 200)
        # Not the spec (its values), not tokens, not changes.
        assert (await reader.get("/api/v1/components/demo/web", headers=headers)).status == 401
        assert (await reader.post("/api/v1/tokens", json={"pool": "x"}, headers=headers)).status == 401
        assert (await reader.delete("/api/v1/components/demo/web", headers=headers)).status == 401
        assert (await reader.get("/metrics")).status == 401
