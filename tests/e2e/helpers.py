"""Checks shared by the end-to-end tests: what the hub says and what podman really runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from edgesim.fleet import Hub, Node, wait_until

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_SPEC = REPO / "examples" / "web" / "component.yaml"
EXAMPLE_CHART = REPO / "examples" / "web" / "chart"
# Agents report within a reconcile pass (2 s here) of the pods being ready.
CONVERGE_SECONDS = 90


def write_spec(path: Path, *, name: str = "web", namespace: str = "demo", values: dict[str, Any] | None = None,
               edge: dict[str, Any] | None = None, chart: Path = EXAMPLE_CHART) -> Path:
    doc = {
        "apiVersion": "edgecollab.io/v1alpha1",
        "kind": "Component",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"chart": str(chart), "values": values or {}, "edge": edge or {"nodePools": ["shanghai"]}},
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def component(hub: Hub, ref: str) -> dict[str, Any]:
    return hub.ctl_json("describe", "component", ref)


def wait_deployed(hub: Hub, ref: str, *, revision: int, nodes: int) -> dict[str, Any]:
    """Wait until ``nodes`` nodes report Deployed at ``revision`` and no other node is targeted."""

    def done() -> dict[str, Any] | None:
        view = component(hub, ref)
        ok = view["revision"] == revision and view["targets"] == nodes and view["deployed"] == nodes
        return view if ok else None

    return wait_until(done, timeout=CONVERGE_SECONDS, what=f"{ref} deployed at revision {revision} on {nodes} node(s)")


def release_pods(node: Node, release: str = "demo.web") -> list[dict[str, Any]]:
    return [p for p in node.running_pods() if p.get("Labels", {}).get("edgecollab.io/release") == release]


def main_container(node: Node, release: str = "demo.web") -> str:
    (pod,) = release_pods(node, release)
    names = [c["Names"] for c in pod["Containers"] if not c["Names"].endswith("-infra")]
    return names[0]


def served_page(node: Node, port: int = 8080, release: str = "demo.web") -> str:
    """The page the release's httpd serves, fetched inside the pod on its own loopback."""
    return node.podman("exec", main_container(node, release), "wget", "-q", "-O-", f"http://127.0.0.1:{port}/").stdout
