"""Fixtures of the in-process hub tests: a real Mosquitto, the hub on aiohttp's test server, a stranger."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from aiohttp.test_utils import TestClient
from bus_watch import Watcher
from hub_api import running_hub, unique

from deployer_plugin import load_component_file
from edgehub.settings import HubSettings, RateLimit
from edgesim.fleet import Mosquitto

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    mosquitto = Mosquitto(tmp_path_factory.mktemp("broker")).start()
    yield mosquitto
    mosquitto.stop()


@pytest.fixture(scope="module")
def example() -> dict[str, Any]:
    """The example component's request body, built the way ``edgectl apply`` builds it."""
    component, archive = load_component_file(REPO / "examples" / "web" / "component.yaml")
    return {"component": component.to_document(), "chart_archive": base64.b64encode(archive).decode()}


@pytest.fixture
def hub_settings(tmp_path: Path, broker: Mosquitto) -> HubSettings:
    """The hub's settings; a test module overrides this fixture to change them."""
    return HubSettings(state_dir=tmp_path / "state", mqtt_url=broker.url)


@pytest.fixture
async def hub(hub_settings: HubSettings) -> AsyncIterator[TestClient]:
    """The hub, and a client that sends the operator token."""
    async with running_hub(hub_settings) as client:
        yield client


@pytest.fixture
async def stranger(hub: TestClient) -> AsyncIterator[aiohttp.ClientSession]:
    """A client of the same hub without the operator token."""
    async with aiohttp.ClientSession(base_url=hub.make_url("")) as session:
        yield session


@pytest.fixture
def fresh_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A Mosquitto of this test alone: retained messages on it are this test's."""
    broker = Mosquitto(tmp_path / "broker").start()
    yield broker
    broker.stop()


@pytest.fixture
async def watcher(fresh_broker: Mosquitto) -> AsyncIterator[Watcher]:
    async with aiomqtt.Client("127.0.0.1", fresh_broker.port, identifier=unique("dashboard")) as mqtt:
        for topic in ("ec/v1/summary/#", "ec/v1/hub/state", "homeassistant/#"):
            await mqtt.subscribe(topic, qos=1)
        watcher = Watcher(mqtt)
        yield watcher
        watcher._task.cancel()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """Where the hub's stores live, once per backend: a SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "hub.db"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
async def renewals_limited(tmp_path: Path, broker: Mosquitto) -> AsyncIterator[TestClient]:
    """A hub that takes two renewals and time requests (one limit) per source address at once, then four a
    second."""
    settings = HubSettings(state_dir=tmp_path / "limited", mqtt_url=broker.url,
                           renewal_rate_limit=RateLimit(per_second=4, burst=2))
    async with running_hub(settings) as client:
        yield client
