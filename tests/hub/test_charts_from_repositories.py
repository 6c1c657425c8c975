"""Applying components whose spec.chart names a chart repository entry or an OCI reference: the hub
fetches the chart itself (from a repository and a registry the test serves on 127.0.0.1, see
tests/chart_server.py), through the API in-process and through ``edgectl apply`` in a subprocess.

Loopback is not a public address: the hub here is allowed it by its settings file, as a hub with a lab
repository on loopback must be (test_chart_sources_are_limited.py has the hub without it)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient
from chart_server import ChartServer, closed_port
from hub_api import answer, operator_token, refused

from deployer_plugin import package_chart
from edgehub.chart_sources import CACHE_DIRECTORY
from edgehub.keys import COMPONENT_STORE, SETTINGS
from edgehub.settings import HubSettings
from edgesim.fleet import Mosquitto

REPO = Path(__file__).resolve().parents[2]
GOOD = REPO / "tests" / "deployer" / "charts" / "good"


@pytest.fixture
def hub_settings(tmp_path: Path, broker: Mosquitto) -> HubSettings:
    """The hub's settings file, allowing loopback as a source of charts."""
    config = tmp_path / "hub.yaml"
    config.write_text(yaml.safe_dump({"state_dir": "state", "mqtt_url": broker.url,
                                      "chart_sources": {"allow": ["127.0.0.0/8"]}}))
    return HubSettings.from_file(config)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ChartServer]:
    with ChartServer(tmp_path / "server") as server:
        for version in ("0.1.0", "0.2.0"):
            server.add_chart(GOOD, version)
        server.push_oci("charts/good", GOOD, "0.3.0")
        yield server


def component(chart: Any, values: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"apiVersion": "edgecollab.io/v1alpha1", "kind": "Component",
            "metadata": {"name": "web", "namespace": "demo"},
            "spec": {"chart": chart, "values": values or {"message": "from a repository"},
                     "edge": {"nodePools": ["shanghai"]}}}


async def configmap(hub: TestClient, revision: int) -> dict[str, str]:
    bundle = await hub.app[COMPONENT_STORE].get_render("demo", "web", revision, "")
    assert bundle is not None
    (found,) = [d for d in yaml.safe_load_all(bundle.manifests) if d and d["kind"] == "ConfigMap"]
    return found["data"]


async def test_a_repository_chart_is_fetched_rendered_and_unchanged_when_applied_again(hub: TestClient,
                                                                                      server: ChartServer):
    chart = {"repo": server.repo_url, "name": "good", "version": "0.2.0"}
    created = await answer(await hub.post("/api/v1/components", json={"component": component(chart)}), 201)
    assert (created["component"], created["revision"], created["changed"]) == ("demo/web", 1, True)
    # A loopback http:// repository gets no warning; these are the chart's own.
    assert created["warnings"] == ["left out 1 Helm test hook document(s): edge nodes do not run 'helm test'",
                                   "pool 'shanghai' has no nodes yet"]
    assert created["notes"] == "web is installed.\n"

    view = await answer(await hub.get("/api/v1/components/demo/web"), 200)
    assert view["chart"] == {"name": "good", "version": "0.2.0"}
    assert view["spec"]["spec"]["chart"] == chart
    assert (await configmap(hub, 1))["message"] == "from a repository"
    # The archive is cached by its SHA-256 in the hub's state directory.
    cached = list((hub.app[SETTINGS].state_dir / CACHE_DIRECTORY).glob("sha256-*.tgz"))
    assert len(cached) == 1

    server.requests.clear()
    again = await answer(await hub.post("/api/v1/components", json={"component": component(chart)}), 200)
    assert again == {"component": "demo/web", "revision": 1, "changed": False}
    assert server.requests == ["/charts/index.yaml"]  # the archive came from the cache

    # A new version is a new revision; a constraint takes the highest match.
    server.add_chart(GOOD, "0.4.0")
    upgraded = await answer(await hub.post("/api/v1/components", json={"component": component(
        {**chart, "version": "^0.2 || ^0.4"})}), 200)
    assert upgraded["revision"] == 2
    assert (await answer(await hub.get("/api/v1/components/demo/web"), 200))["chart"]["version"] == "0.4.0"


async def test_the_same_chart_from_a_repository_or_packaged_locally_is_the_same_revision(hub: TestClient,
                                                                                        server: ChartServer,
                                                                                        tmp_path: Path):
    archive = package_chart(server.directory / "good-0.2.0.tgz")
    local = {"component": component("./good-0.2.0.tgz"), "chart_archive": base64.b64encode(archive).decode()}
    assert (await answer(await hub.post("/api/v1/components", json=local), 201))["revision"] == 1
    chart = {"repo": server.repo_url, "name": "good", "version": "0.2.0"}
    same = await answer(await hub.post("/api/v1/components", json={"component": component(chart)}), 200)
    assert same == {"component": "demo/web", "revision": 1, "changed": False}


async def test_an_oci_chart_is_fetched_with_the_anonymous_token_flow(hub: TestClient, server: ChartServer):
    server.require_token = True
    chart = f"oci://{server.oci_host}/charts/good:0.3.0"
    created = await answer(await hub.post("/api/v1/components", json={"component": component(chart)}), 201)
    assert created["revision"] == 1
    view = await answer(await hub.get("/api/v1/components/demo/web"), 200)
    assert view["chart"] == {"name": "good", "version": "0.3.0"} and view["spec"]["spec"]["chart"] == chart
    assert "/token" in server.requests


@pytest.mark.parametrize(
    ("chart", "expected"),
    [
        ({"name": "good", "version": "0.9.0"},
         "component demo/web: spec.chart.version: chart good has no version 0.9.0 in the repository {repo}; "
         "it has 0.2.0, 0.1.0"),
        ({"name": "goood", "version": "0.1.0"},
         "component demo/web: spec.chart.name: chart 'goood' is not in the repository {repo} (did you mean good?); "
         "it holds 1 chart(s): good"),
    ],
)
async def test_a_chart_or_version_not_in_the_repository_is_refused_naming_the_field(
        hub: TestClient, server: ChartServer, chart: dict[str, str], expected: str):
    response = await hub.post("/api/v1/components", json={"component": component({"repo": server.repo_url, **chart})})
    assert await refused(response, 422) == expected.format(repo=server.repo_url)
    await refused(await hub.get("/api/v1/components/demo/web"), 404)


async def test_an_archive_that_does_not_match_the_index_is_refused(hub: TestClient, server: ChartServer):
    (server.directory / "good-0.2.0.tgz").write_bytes((server.directory / "good-0.1.0.tgz").read_bytes())
    response = await hub.post("/api/v1/components", json={"component": component(
        {"repo": server.repo_url, "name": "good", "version": "0.2.0"})})
    error = await refused(response, 422)
    assert error.startswith("component demo/web: spec.chart: the archive downloaded from ")
    assert "but the repository's index says" in error and error.endswith("refused (a changed or corrupted archive)")


async def test_an_unreachable_repository_is_refused_at_once(hub: TestClient):
    repo = f"http://127.0.0.1:{closed_port()}/charts"
    started = time.monotonic()
    response = await hub.post("/api/v1/components", json={"component": component(
        {"repo": repo, "name": "good", "version": "0.2.0"})})
    assert await refused(response, 422) == (f"component demo/web: spec.chart: {repo} could not be fetched (no chart "
                                            "repository answered there, or the address is not allowed: see "
                                            "chart_sources.allow)")
    assert time.monotonic() - started < 5


async def test_the_archive_goes_with_a_local_chart_only(hub: TestClient, server: ChartServer, example: dict[str, Any]):
    chart = {"repo": server.repo_url, "name": "good", "version": "0.2.0"}
    with_archive = {"component": component(chart), "chart_archive": example["chart_archive"]}
    error = await refused(await hub.post("/api/v1/components", json=with_archive), 400, field="chart_archive")
    assert error == (f"chart_archive: must be left out: spec.chart names good 0.2.0 from {server.repo_url}, "
                     "which the hub fetches itself")
    error = await refused(await hub.post("/api/v1/components", json={"component": example["component"]}), 400,
                          field="chart_archive")
    assert error.startswith("chart_archive: is required: spec.chart is a local chart")


async def test_edgectl_apply_sends_no_archive_for_a_repository_chart(hub: TestClient, server: ChartServer,
                                                                     tmp_path: Path):
    spec = tmp_path / "component.yaml"
    spec.write_text(yaml.safe_dump(component({"repo": server.repo_url, "name": "good", "version": "0.1.0"})))
    env = {**os.environ, "EDGECOLLAB_HUB": str(hub.make_url("")), "EDGECOLLAB_TOKEN": operator_token(hub),
           "PYTHONPATH": str(REPO)}
    env.pop("EDGECOLLAB_TOKEN_FILE", None)

    async def edgectl(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "edgectl.cli", *args],
                                       capture_output=True, text=True, env=env, timeout=120)

    applied = await edgectl("apply", "-f", str(spec))
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.startswith("component/demo/web configured (revision 1, 0 node(s))")
    again = await edgectl("apply", "-f", str(spec), "-o", "json")
    assert json.loads(again.stdout) == {"component": "demo/web", "revision": 1, "changed": False}
    assert (await configmap(hub, 1))["message"] == "from a repository"

    spec.write_text(yaml.safe_dump(component({"repo": server.repo_url, "name": "good", "version": "7.0.0"})))
    missing = await edgectl("apply", "-f", str(spec))
    assert missing.returncode == 1
    assert "spec.chart.version: chart good has no version 7.0.0 in the repository" in missing.stderr
    assert "it has 0.2.0, 0.1.0" in missing.stderr
