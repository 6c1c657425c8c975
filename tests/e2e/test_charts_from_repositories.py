"""A component whose chart is in a Helm chart repository, deployed to a real node: the hub fetches the
chart from a repository the test serves on 127.0.0.1 (tests/chart_server.py), the node runs it on podman.

Loopback is not a public address, so the hub is started as a user with a lab repository on loopback
starts it: ``edgehub serve --allow-chart-source 127.0.0.0/8``."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from chart_server import ChartServer
from fleet_checks import EXAMPLE_CHART, wait_deployed

from edgesim.fleet import Fleet


@pytest.fixture
def hub_flags() -> tuple[str, ...]:
    return ("--allow-chart-source", "127.0.0.0/8")


def test_a_chart_from_a_repository_is_deployed_and_upgraded_by_version(fleet: Fleet, tmp_path: Path):
    hub = fleet.hub
    assert hub is not None
    node = fleet.add_node("sh-1", "shanghai")
    with ChartServer(tmp_path / "server") as server:
        server.add_chart(EXAMPLE_CHART, "1.0.0")
        server.add_chart(EXAMPLE_CHART, "1.1.0")

        def apply(version: str) -> str:
            spec = tmp_path / "web.yaml"
            spec.write_text(yaml.safe_dump({
                "apiVersion": "edgecollab.io/v1alpha1", "kind": "Component",
                "metadata": {"name": "web", "namespace": "demo"},
                "spec": {"chart": {"repo": server.repo_url, "name": "web", "version": version},
                         "values": {"greeting": "from the repository"}, "edge": {"nodePools": ["shanghai"]}},
            }))
            return hub.ctl("apply", "-f", str(spec)).stdout

        assert apply("1.0.0").startswith("component/demo/web configured (revision 1, 1 node(s))")
        view = wait_deployed(hub, "demo/web", revision=1, nodes=1)
        assert view["chart"] == {"name": "web", "version": "1.0.0"}
        assert node.container_env(node.main_container("demo.web"))["GREETING"] == "from the repository"

        assert apply("1.0.0").startswith("component/demo/web unchanged (revision 1)")
        assert apply("~1.0 || ^1.1").startswith("component/demo/web configured (revision 2, 1 node(s))")
        assert wait_deployed(hub, "demo/web", revision=2, nodes=1)["chart"]["version"] == "1.1.0"
