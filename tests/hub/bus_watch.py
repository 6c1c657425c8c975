"""A plain MQTT subscriber to the hub's summaries, and the settings of a hub that publishes them every 0.2 s
with Home Assistant discovery on (the fixtures fresh_broker and watcher are in conftest.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiomqtt

from edgehub.settings import HubSettings
from edgesim.fleet import Mosquitto

SUMMARY = "ec/v1/summary"


def settings_for(tmp_path: Path, broker: Mosquitto) -> HubSettings:
    return HubSettings(state_dir=tmp_path / "state", mqtt_url=broker.url, summary_interval_seconds=0.2,
                       ha_discovery_prefix="homeassistant")


class Watcher:
    """A plain subscriber: the latest retained payload of every topic it saw, and how often each came."""

    def __init__(self, mqtt: aiomqtt.Client) -> None:
        self.mqtt = mqtt
        self.latest: dict[str, Any] = {}
        self.counts: dict[str, int] = {}
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.mqtt.messages:
            topic, payload = message.topic.value, bytes(message.payload)
            self.latest[topic] = json.loads(payload) if payload else None
            self.counts[topic] = self.counts.get(topic, 0) + 1

    async def until(self, topic: str, check: Any, timeout: float = 10) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                value = self.latest.get(topic)
                if topic in self.latest and check(value):
                    return value
                await asyncio.sleep(0.05)
