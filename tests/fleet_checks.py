"""Checks shared by the end-to-end tests: what the hub says and what podman really runs."""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import gzip
import json
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import yaml

from edgesim.fleet import Fleet, Hub, Node, NodeOptions, wait_until

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_SPEC = REPO / "examples" / "web" / "component.yaml"
EXAMPLE_CHART = REPO / "examples" / "web" / "chart"
# Agents report within a reconcile pass (5 s by default) of the pods being ready.
CONVERGE_SECONDS = 90
# Tests about cut links set the flag they are about, the MQTT keepalive, short:
# a cut is noticed after ~6 s instead of ~15 s at the default 10 s.
LINK_TEST_KEEPALIVE = 4


def link_test_options(fleet: Fleet) -> NodeOptions:
    """The fleet's node options with the short keepalive of link tests."""
    return dataclasses.replace(fleet.node_options, keepalive=LINK_TEST_KEEPALIVE)


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


def wait_deployed(hub: Hub, ref: str, *, revision: int, nodes: int,
                  timeout: float = CONVERGE_SECONDS) -> dict[str, Any]:
    """Wait until ``nodes`` nodes report Deployed at ``revision`` and no other node is targeted."""

    def done() -> dict[str, Any] | None:
        view = component(hub, ref)
        ok = view["revision"] == revision and view["targets"] == nodes and view["deployed"] == nodes
        return view if ok else None

    return wait_until(done, timeout=timeout, what=f"{ref} deployed at revision {revision} on {nodes} node(s)")


def container_starts(node: Node) -> dict[str, tuple[str, str]]:
    """Each release container on the node: name -> (container id, start time). Infra containers left out."""
    out = node.podman("ps", "--format", "json").stdout
    return {c["Names"][0]: (c["Id"], str(c["StartedAt"])) for c in json.loads(out or "[]")
            if c.get("Pod") and not c["Names"][0].endswith("-infra")}


def node_view(hub: Hub, name: str) -> dict[str, Any]:
    return next(n for n in hub.ctl_json("get", "nodes") if n["name"] == name)


def node_events(hub: Hub, name: str) -> list[dict[str, Any]]:
    return hub.api(f"/api/v1/nodes/{name}/events?limit=1000")


def agent_status(node: Node) -> dict[str, Any]:
    """What ``edgeagent status -o json`` says of the node, read from its local store."""
    result = subprocess.run([sys.executable, "-m", "edgeagent.cli", "status", "--state-dir", str(node.state_dir),
                             "-o", "json"], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(result.stdout)


def agent_release(node: Node, name: str) -> dict[str, Any]:
    """Release ``name`` as the node's own ``edgeagent status`` shows it, without the hub."""
    return next(r for r in agent_status(node)["releases"] if r["release"] == name)


def applied_revisions(events: list[dict[str, Any]], release: str = "web") -> list[int]:
    return [e["revision"] for e in events if e["reason"] == "Applied" and e["release"] == release]


TEST_CHARTS = REPO / "tests" / "charts"


def vendored_chart(name: str, workdir: Path) -> Path:
    """A copy of test chart ``name`` with its dependencies in ``charts/``, as ``helm dependency update`` leaves it."""
    import shutil

    import helm_python

    copy = workdir / "charts"
    if not copy.exists():
        shutil.copytree(TEST_CHARTS, copy)
    chart = copy / name
    if (chart / "Chart.yaml").read_text().count("dependencies:") and not (chart / "charts").exists():
        helm_python.dependency_update(chart)
    return chart


def container_state(node: Node, container: str) -> tuple[str, int, str]:
    """(StartedAt, RestartCount, Status) of a container as podman reports it."""
    out = node.podman("inspect", container, "--format",
                      "{{.State.StartedAt}}|{{.RestartCount}}|{{.State.Status}}").stdout.strip()
    started, restarts, status = out.split("|")
    return started, int(restarts), status


def readable_without_a_key(payload: bytes) -> str:
    """Everything a subscriber reads in an MQTT ``payload`` without any key: the payload, and every string in it
    decoded from base64 and, where that is gzip (a plain bundle), inflated. As text, bytes taken as Latin-1."""
    parts = [payload]

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str):
            try:
                raw = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                return
            parts.append(raw)
            with contextlib.suppress(OSError, EOFError, zlib.error):
                parts.append(gzip.decompress(raw))

    with contextlib.suppress(ValueError):
        walk(json.loads(payload))
    return "\n".join(part.decode("latin-1") for part in parts)


def secret_forms(secret: str) -> tuple[str, str]:
    """A secret as it may appear in manifests: as itself (stringData, env) and base64 (a Secret's data)."""
    return secret, base64.b64encode(secret.encode()).decode()
