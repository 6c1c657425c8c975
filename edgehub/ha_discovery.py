"""Home Assistant MQTT discovery documents for pools and components (openHAB reads the same).

Off unless the hub is given a prefix (``--ha-discovery homeassistant``). One
device per pool and per component; sensors read the summary topics with a
``value_template``, so Home Assistant needs nothing else. Every entity's
availability follows the hub's state topic (a dead hub turns them
unavailable), and ``expire_after`` turns a value stale when the hub stops
refreshing it. Each component also gets an ``update`` entity: installed
revision (the one every target has reached) against the latest.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .summaries import HUB_STATE_TOPIC, SUMMARY_PREFIX

# (summary field, entity name, unit)
POOL_SENSORS = (("nodes_online", "nodes online", "nodes"), ("nodes_offline", "nodes offline", "nodes"),
                ("nodes_total", "nodes", "nodes"), ("releases_failed", "failed releases", "releases"))
COMPONENT_SENSORS = (("ready", "ready", "nodes"), ("desired", "desired", "nodes"), ("failed", "failed", "nodes"),
                     ("offline", "offline", "nodes"), ("revision", "revision", None))


def _object_id(*parts: str) -> str:
    return "edgecollab_" + "_".join(re.sub(r"[^a-z0-9]+", "_", p.lower()) for p in parts)


def _availability() -> dict[str, Any]:
    return {"availability": [{"topic": HUB_STATE_TOPIC,
                              "value_template": "{{ 'online' if value_json.online else 'offline' }}"}]}


def _sensor(prefix: str, device: dict[str, Any], device_id: str, state_topic: str, field: str, name: str,
            unit: str | None, expire_after: int) -> tuple[str, bytes]:
    object_id = f"{device_id}_{field}"
    config: dict[str, Any] = {
        "name": name, "unique_id": object_id, "object_id": object_id, "device": device,
        "state_topic": state_topic, "value_template": f"{{{{ value_json.{field} }}}}",
        "state_class": "measurement", "expire_after": expire_after, **_availability(),
    }
    if unit:
        config["unit_of_measurement"] = unit
    return f"{prefix}/sensor/{object_id}/config", json.dumps(config, sort_keys=True).encode()


def documents(prefix: str, summaries: dict[str, dict[str, Any]], *, expire_after: int) -> dict[str, bytes]:
    """Every discovery document (retained config topics) for the pools and components in ``summaries``."""
    out: dict[str, bytes] = {}
    for topic, summary in summaries.items():
        if topic.startswith(f"{SUMMARY_PREFIX}/pools/"):
            device_id = _object_id("pool", summary["pool"])
            device = {"identifiers": [device_id], "name": f"edgecollab pool {summary['pool']}",
                      "manufacturer": "edgecollab", "model": "node pool"}
            out.update(_sensor(prefix, device, device_id, topic, field, name, unit, expire_after)
                       for field, name, unit in POOL_SENSORS)
        elif topic.startswith(f"{SUMMARY_PREFIX}/components/"):
            device_id = _object_id("component", summary["namespace"], summary["name"])
            device = {"identifiers": [device_id], "name": f"edgecollab {summary['component']}",
                      "manufacturer": "edgecollab", "model": f"chart {summary['chart']}"}
            out.update(_sensor(prefix, device, device_id, topic, field, name, unit, expire_after)
                       for field, name, unit in COMPONENT_SENSORS)
            update_id = f"{device_id}_revision_update"
            out[f"{prefix}/update/{update_id}/config"] = json.dumps({
                "name": "revision", "unique_id": update_id, "object_id": update_id, "device": device,
                "state_topic": topic,
                "value_template": ('{{ {"installed_version": value_json.installed_revision | string, '
                                   '"latest_version": value_json.revision | string} | to_json }}'),
                **_availability(),
            }, sort_keys=True).encode()
    return out
