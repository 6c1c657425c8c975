"""Cluster components (spec.clusterScoped: true) on the in-process hub: upgraded only for a higher chart
version, otherwise left alone; a component without the field gets a revision for every change."""

from __future__ import annotations

import base64
import copy
import re
import shutil
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from hub_api import answer

from deployer_plugin import cluster_component_update_due, package_chart

REPO = Path(__file__).resolve().parents[2]


def chart_at(tmp_path: Path, version: str) -> str:
    chart = tmp_path / f"chart-{version}"
    shutil.copytree(REPO / "examples" / "web" / "chart", chart)
    meta = chart / "Chart.yaml"
    meta.write_text(re.sub(r"(?m)^version: .*$", f"version: {version}", meta.read_text()))
    return base64.b64encode(package_chart(chart)).decode()


def body(example: dict[str, Any], message: str, archive: str | None = None) -> dict[str, Any]:
    out = copy.deepcopy(example)
    out["component"]["spec"]["clusterScoped"] = True
    out["component"]["spec"]["values"]["message"] = message
    if archive is not None:
        out["chart_archive"] = archive
    return out


async def test_a_cluster_component_is_upgraded_only_for_a_higher_chart_version(
        hub: TestClient, example: dict[str, Any], tmp_path: Path) -> None:
    first = await answer(await hub.post("/api/v1/components", json=body(example, "one")), 201)
    assert first["revision"] == 1

    same_version = await answer(await hub.post("/api/v1/components", json=body(example, "two")), 200)
    assert (same_version["revision"], same_version["changed"]) == (1, False)
    assert "not above the installed 0.1.0" in same_version["warnings"][0]

    lower = await answer(await hub.post("/api/v1/components", json=body(example, "two", chart_at(tmp_path, "0.0.9"))),
                         200)
    assert (lower["revision"], lower["changed"]) == (1, False)

    higher = await answer(await hub.post("/api/v1/components", json=body(example, "two",
                                                                          chart_at(tmp_path, "0.2.0"))), 200)
    assert (higher["revision"], higher["changed"]) == (2, True)
    shown = await answer(await hub.get("/api/v1/components/demo/web"), 200)
    assert shown["chart"]["version"] == "0.2.0" and shown["spec"]["spec"]["clusterScoped"] is True


def test_version_comparison() -> None:
    assert cluster_component_update_due("1.2.3", "1.10.0")
    assert not cluster_component_update_due("1.2.3", "1.2.3")
    assert not cluster_component_update_due("1.2.3", "1.2.3-rc.1")
    assert cluster_component_update_due("v1.0", "1.0.1")
