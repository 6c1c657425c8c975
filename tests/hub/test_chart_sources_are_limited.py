"""A hub with the default settings fetches charts from public addresses only: a repository on loopback
(tests/chart_server.py) is refused with the one message of a failed fetch, and nothing reaches it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from chart_server import ChartServer
from hub_api import refused

REPO = Path(__file__).resolve().parents[2]
GOOD = REPO / "tests" / "deployer" / "charts" / "good"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ChartServer]:
    with ChartServer(tmp_path / "server") as server:
        server.add_chart(GOOD, "0.2.0")
        server.push_oci("charts/good", GOOD, "0.3.0")
        yield server


def component(chart: Any) -> dict[str, Any]:
    return {"apiVersion": "edgecollab.io/v1alpha1", "kind": "Component",
            "metadata": {"name": "web", "namespace": "demo"},
            "spec": {"chart": chart, "edge": {"nodePools": ["shanghai"]}}}


async def test_a_repository_on_loopback_is_refused_by_a_hub_with_the_default_settings(
        hub: TestClient, server: ChartServer, caplog: pytest.LogCaptureFixture):
    for chart, url in (({"repo": server.repo_url, "name": "good", "version": "0.2.0"}, server.repo_url),
                       (f"oci://{server.oci_host}/charts/good:0.3.0", f"oci://{server.oci_host}/charts/good"),
                       ({"repo": f"http://localhost:{server.port}/charts", "name": "good", "version": "0.2.0"},
                        f"http://localhost:{server.port}/charts")):
        response = await hub.post("/api/v1/components", json={"component": component(chart)})
        assert await refused(response, 422) == (
            f"component demo/web: spec.chart: {url} could not be fetched (no chart repository answered there, or "
            "the address is not allowed: see chart_sources.allow)")
    assert server.requests == []
    await refused(await hub.get("/api/v1/components/demo/web"), 404)
    assert "(loopback) is not in chart_sources.allow" in caplog.text
