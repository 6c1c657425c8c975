"""The example dashboards read only documented topics, and every field they show is in what the hub publishes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from bus_watch import SUMMARY, Watcher, settings_for
from hub_api import answer, create_token, join

from edgehub.settings import HubSettings
from edgesim.fleet import Mosquitto

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "dashboards"
DOCUMENTED = re.compile(r"^ec/v1/(hub/state|summary/#|summary/fleet|summary/pools/[^/]+|summary/components/[^/]+/[^/]+"
                        r"|summary/nodes/[^/]+)$")


@pytest.fixture
def hub_settings(tmp_path: Path, fresh_broker: Mosquitto) -> HubSettings:
    return settings_for(tmp_path, fresh_broker)


async def test_the_grafana_dashboard_reads_documented_topics_and_fields_the_hub_publishes(
    hub: TestClient, watcher: Watcher, example: dict[str, Any]
):
    await answer(await join(hub, await create_token(hub), "sh-1"), 201)
    await answer(await hub.post("/api/v1/components", json=example), 201)
    dashboard = json.loads((EXAMPLES / "grafana-fleet.json").read_text())
    variables = {v["name"]: v.get("query", "") for v in dashboard["templating"]["list"]}
    assert variables["component"] == "demo/web" and variables["pool"] == "shanghai"
    for panel in dashboard["panels"]:
        (target,) = panel["targets"]
        topic = re.sub(r"\$\{(\w+)\}", lambda m: variables[m.group(1)], target["topic"])
        assert DOCUMENTED.match(topic), (panel["title"], topic)
        payload = await watcher.until(topic, bool)
        wanted = panel["options"].get("reduceOptions", {}).get("fields", "")
        names = [t["options"]["include"]["names"] for t in panel.get("transformations", [])]
        if wanted:
            pattern = re.compile(wanted.strip("/"))
            assert [k for k in payload if pattern.search(k)], (panel["title"], wanted, sorted(payload))
        for name in (n for group in names for n in group if n != "Time"):
            assert name in payload, (panel["title"], name)


async def test_the_node_red_flow_reads_documented_topics_and_fields_the_hub_publishes(
    hub: TestClient, watcher: Watcher, example: dict[str, Any]
):
    await answer(await join(hub, await create_token(hub), "sh-1"), 201)
    await answer(await hub.post("/api/v1/components", json=example), 201)
    flow = json.loads((EXAMPLES / "node-red-fleet.json").read_text())
    inputs = [n["topic"] for n in flow if n["type"] == "mqtt in"]
    assert inputs and all(DOCUMENTED.match(t) for t in inputs)
    code = " ".join(n["func"] for n in flow if n["type"] == "function")
    node = await watcher.until(f"{SUMMARY}/nodes/sh-1", bool)
    component = await watcher.until(f"{SUMMARY}/components/demo/web", bool)
    state = await watcher.until("ec/v1/hub/state", bool)
    known = set(node) | set(component) | set(state)
    used = set(re.findall(r"\b(?:s|msg\.payload)\.(\w+)", code))
    assert used and used <= known, used - known
