"""The deployer interface: the edge deployer, loaded by its entry point, drives a real in-process hub.

The entry point is resolved from pyproject.toml the way ``importlib.metadata`` resolves an installed
one (the venv's installed metadata may belong to another checkout). A fake node reports status over
MQTT, so ``status`` counts what a node says.
"""

from __future__ import annotations

import asyncio
import copy
import tomllib
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hub_api import operator_token
from test_history_and_rollback import joined

from deployer_plugin.deployer import (
    ENTRY_POINT_GROUP,
    ENTRY_POINT_NAME,
    Deployer,
    EdgeDeployer,
    HubUnavailable,
    ReleaseExists,
    ReleaseNotFound,
    SpecRejected,
)
from edgesim.fleet import Mosquitto

REPO = Path(__file__).resolve().parents[2]


def declared_entry_point() -> EntryPoint:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    group = project["entry-points"][ENTRY_POINT_GROUP]
    return EntryPoint(name=ENTRY_POINT_NAME, value=group[ENTRY_POINT_NAME], group=ENTRY_POINT_GROUP)


def test_the_edge_deployer_is_declared_under_the_deployers_entry_point_group() -> None:
    loaded = declared_entry_point().load()

    assert loaded is EdgeDeployer
    assert issubclass(loaded, Deployer) and loaded.name == ENTRY_POINT_NAME


def with_message(body: dict[str, Any], message: str) -> dict[str, Any]:
    document = copy.deepcopy(body["component"])
    document["spec"]["values"]["message"] = message
    return document


@pytest.fixture
def deployer(hub: TestClient) -> Deployer:
    cls = declared_entry_point().load()
    return cls(str(hub.make_url("")), token=operator_token(hub), client_name="host-deployer")


async def test_install_upgrade_status_rollback_uninstall(hub: TestClient, broker: Mosquitto,
                                                         deployer: Deployer, example: dict[str, Any]) -> None:
    import base64

    node = await joined(hub, broker, "sh-1")
    archive = base64.b64decode(example["chart_archive"])
    document = example["component"]

    assert await asyncio.to_thread(deployer.status, "demo", "web") is None
    with pytest.raises(ReleaseNotFound):
        await asyncio.to_thread(deployer.upgrade, document, chart_archive=archive)

    installed = await asyncio.to_thread(deployer.install, document, chart_archive=archive)
    assert (installed.component, installed.revision, installed.changed, installed.targets) == ("demo/web", 1, True, 1)
    with pytest.raises(ReleaseExists):
        await asyncio.to_thread(deployer.install, document, chart_archive=archive)

    status = await asyncio.to_thread(deployer.status, "demo", "web")
    assert status is not None
    assert (status.revision, status.current_revision, status.rollout) == (1, 0, "waiting for offline nodes")
    assert status.counts.to_dict() == {"desired": 1, "updated": 0, "ready": 0, "failed": 0, "offline": 1}
    assert status.origin == "apply by host-deployer" and status.chart_name == "web"

    await node.report(1)
    for _ in range(100):
        status = await asyncio.to_thread(deployer.status, "demo", "web")
        if status is not None and status.rollout == "complete":
            break
        await asyncio.sleep(0.05)
    assert status is not None and status.rollout == "complete" and status.current_revision == 1
    assert {p: c.to_dict() for p, c in status.pools.items()} == {
        "shanghai": {"desired": 1, "updated": 1, "ready": 1, "failed": 0, "offline": 0}}

    same = await asyncio.to_thread(deployer.upgrade, document, chart_archive=archive)
    assert (same.revision, same.changed) == (1, False)
    upgraded = await asyncio.to_thread(deployer.upgrade, with_message(example, "two"), chart_archive=archive)
    assert (upgraded.revision, upgraded.changed) == (2, True)

    rolled = await asyncio.to_thread(deployer.rollback, "demo", "web")
    assert (rolled.revision, rolled.rolled_back_to) == (3, 1)
    status = await asyncio.to_thread(deployer.status, "demo", "web")
    assert status is not None and (status.revision, status.rolled_back_to, status.origin) == (3, 1, "rollback to 1")

    assert await asyncio.to_thread(deployer.uninstall, "demo", "web") == 4
    assert await asyncio.to_thread(deployer.status, "demo", "web") is None
    with pytest.raises(ReleaseNotFound):
        await asyncio.to_thread(deployer.uninstall, "demo", "web")


async def test_refusals_name_their_cause(hub: TestClient, deployer: Deployer, example: dict[str, Any]) -> None:
    import base64

    archive = base64.b64decode(example["chart_archive"])
    broken = copy.deepcopy(example["component"])
    broken["spec"]["edge"]["nodePools"] = []

    with pytest.raises(SpecRejected, match="spec.edge.nodePools"):
        await asyncio.to_thread(deployer.upgrade, broken, chart_archive=archive, install=True)
    with pytest.raises(SpecRejected, match="local chart"):
        await asyncio.to_thread(deployer.install, example["component"])
    stranger = EdgeDeployer(str(hub.make_url("")), token="wrong", environ={})
    with pytest.raises(Exception, match="token") as refused:
        await asyncio.to_thread(stranger.status, "demo", "web")
    assert getattr(refused.value, "status", None) == 401


def test_an_unreachable_hub_is_hub_unavailable() -> None:
    deployer = EdgeDeployer("http://127.0.0.1:9", token="t", timeout=2, environ={})
    with pytest.raises(HubUnavailable, match="cannot reach"):
        deployer.status("demo", "web")


def test_settings_come_from_edgectls_variables(tmp_path: Path) -> None:
    (tmp_path / "admin-token").write_text("secret-token\n")
    deployer = EdgeDeployer(environ={"EDGECOLLAB_HUB": "http://127.0.0.1:1234",
                                     "EDGECOLLAB_TOKEN_FILE": str(tmp_path / "admin-token")})
    assert deployer.hub_url == "http://127.0.0.1:1234"
    assert deployer._hub.http.token == "secret-token"
