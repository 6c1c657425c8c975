"""A chart is code: a render that runs away is stopped within its bounds, and other applies go on.

The real hub (aiohttp's test server, real Mosquitto) with the real Helm
engine in its worker processes; the bounds are made small so the tests are
quick: 3 s and 1 MiB.
"""

from __future__ import annotations

import asyncio
import base64
import multiprocessing
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hub_api import answer, create_token, join, refused, unique

from deployer_plugin import RenderError, load_component_file, package_chart
from edgehub.errors import RendererBusy
from edgehub.keys import COMPONENT_STORE, SETTINGS
from edgehub.renderer import Renderer, RenderLimits
from edgehub.settings import HubSettings
from edgesim.fleet import Mosquitto

REPO = Path(__file__).resolve().parents[2]
GOOD = REPO / "tests" / "deployer" / "charts" / "good"
TIMEOUT = 3.0
OUTPUT = 1024 * 1024
FOREVER = "{{ range $i := until 100000000 }}{{ $i }}{{ end }}\n"


@pytest.fixture
def hub_settings(tmp_path: Path, broker: Mosquitto) -> HubSettings:
    return HubSettings(state_dir=tmp_path / "state", mqtt_url=broker.url, render_timeout_seconds=TIMEOUT,
                       render_output_bytes=OUTPUT)


def chart_with(tmp_path: Path, templates: dict[str, str]) -> Path:
    chart = tmp_path / unique("chart")
    shutil.copytree(GOOD, chart)
    for name, text in templates.items():
        (chart / "templates" / name).write_text(text)
    return chart


def body(chart: Path, name: str = "web", values: dict[str, Any] | None = None) -> dict[str, Any]:
    document = {"apiVersion": "edgecollab.io/v1alpha1", "kind": "Component",
                "metadata": {"name": name, "namespace": "demo"},
                "spec": {"chart": str(chart), "values": values or {}, "edge": {"nodePools": ["shanghai"]}}}
    return {"component": document, "chart_archive": base64.b64encode(package_chart(chart)).decode()}


async def timed(request: Any) -> tuple[Any, float]:
    started = time.monotonic()
    response = await request
    await response.read()
    return response, time.monotonic() - started


async def test_a_template_that_loops_forever_is_stopped_within_the_time_bound_while_another_apply_completes(
    hub: TestClient, tmp_path: Path, example: dict[str, Any]
):
    forever = body(chart_with(tmp_path, {"forever.yaml": FOREVER}), name="forever")
    looping = asyncio.create_task(timed(hub.post("/api/v1/components", json=forever)))
    await asyncio.sleep(0.5)  # the runaway render is under way
    response, took = await timed(hub.post("/api/v1/components", json=example))
    assert (await answer(response, 201))["revision"] == 1
    assert took < TIMEOUT - 0.5  # not stalled behind the runaway

    response, took = await looping
    error = await refused(response, 422)
    assert error == ("component demo/forever: the render took longer than the time bound: Helm did not finish "
                     f"within {TIMEOUT:g} s (render_timeout_seconds); the render was stopped")
    assert TIMEOUT <= took < TIMEOUT + 2
    assert multiprocessing.active_children() == []  # the worker was killed
    listed = await answer(await hub.get("/api/v1/components"), 200)
    assert [c["name"] for c in listed] == ["web"]  # nothing stored of the runaway


async def test_a_chart_with_a_huge_output_is_refused_by_the_output_bound(hub: TestClient, tmp_path: Path):
    huge = chart_with(tmp_path, {"huge.yaml": 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: huge}\n'
                                              'data: {blob: "{{ repeat 1100000 "x" }}"}\n'})
    error = await refused(await hub.post("/api/v1/components", json=body(huge)), 422)
    assert error.startswith("component demo/web: the rendered output is over the bound: Helm printed ")
    assert error.endswith(f"the bound is {OUTPUT} bytes (1 MiB)")
    assert await answer(await hub.get("/api/v1/components"), 200) == []


async def test_helms_refusals_still_answer_422_in_helms_words(hub: TestClient, tmp_path: Path):
    broken = chart_with(tmp_path, {"broken.yaml": "{{ fail \"no way\" }}\n"})
    error = await refused(await hub.post("/api/v1/components", json=body(broken)), 422)
    assert error.startswith("component demo/web: template error: ") and "no way" in error


async def test_renders_of_a_deleted_component_are_gone_from_the_store_and_the_file_gives_the_space_back(
    hub: TestClient, tmp_path: Path
):
    await answer(await join(hub, await create_token(hub), unique("sh")), 201)
    big = chart_with(tmp_path, {"big.yaml": 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: big}\n'
                                            'data: {blob: "{{ randAlphaNum 400000 }}"}\n'})
    for values in ({}, {"message": "second"}):  # two revisions, both kept while the component lives
        await answer(await hub.post("/api/v1/components", json=body(big, values=values)), 201 if not values else 200)
    db_path = hub.app[SETTINGS].db_path

    def stored() -> tuple[int, int, int]:
        with sqlite3.connect(db_path) as db:
            renders = db.execute("SELECT COUNT(*) FROM renders WHERE name = 'web'").fetchone()[0]
            # The chart is stored once (charts, by digest) however many revisions use it.
            archive = db.execute("SELECT (SELECT length(chart_archive) FROM components WHERE name = 'web') + "
                                 "(SELECT COALESCE(SUM(length(archive)), 0) FROM charts)").fetchone()[0]
            pages = db.execute("PRAGMA page_count").fetchone()[0]
        return renders, archive, pages

    renders, archive, pages_before = stored()
    assert renders == 2 and archive > 0
    await answer(await hub.delete("/api/v1/components/demo/web"), 200)
    renders, archive, pages_after = stored()
    assert (renders, archive) == (0, 0)
    assert pages_after < pages_before - 150  # ~800 KB of renders given back, not kept as free pages
    # The component comes back at the next revision, rendered afresh.
    assert (await answer(await hub.post("/api/v1/components", json=body(big)), 201))["revision"] == 4
    assert stored()[0] == 1 and await hub.app[COMPONENT_STORE].get_renders("demo", "web", 4)


# --- the renderer on its own ----------------------------------------------------


def forever_component(tmp_path: Path) -> tuple[Any, bytes]:
    chart = chart_with(tmp_path, {"forever.yaml": FOREVER})
    component, _ = load_component_file(REPO / "examples" / "web" / "component.yaml")
    return component, package_chart(chart)


async def test_with_every_slot_taken_and_no_queue_an_apply_is_refused_as_busy(tmp_path: Path):
    component, archive = forever_component(tmp_path)
    async with Renderer(RenderLimits(timeout_seconds=TIMEOUT, parallel=1, queue=0)) as renderer:
        running = asyncio.create_task(renderer.render(component, archive, revision=1, previous={}, upgrade=False))
        await asyncio.sleep(0.3)
        with pytest.raises(RendererBusy, match="render_parallel, render_queue"):
            await renderer.render(component, archive, revision=1, previous={}, upgrade=False)
        with pytest.raises(RenderError, match="time bound"):
            await running


async def test_stopping_the_renderer_kills_its_workers_at_once(tmp_path: Path):
    component, archive = forever_component(tmp_path)
    started = time.monotonic()
    async with Renderer(RenderLimits(timeout_seconds=60)) as renderer:
        running = asyncio.create_task(renderer.render(component, archive, revision=1, previous={}, upgrade=False))
        await asyncio.sleep(1.0)
        assert len(multiprocessing.active_children()) == 1
    with pytest.raises(RuntimeError, match="shutting down"):
        await running
    assert time.monotonic() - started < 5 and multiprocessing.active_children() == []


async def test_a_cancelled_apply_kills_its_worker(tmp_path: Path):
    component, archive = forever_component(tmp_path)
    async with Renderer(RenderLimits(timeout_seconds=60, parallel=1)) as renderer:
        running = asyncio.create_task(renderer.render(component, archive, revision=1, previous={}, upgrade=False))
        await asyncio.sleep(1.0)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        # The slot comes back once the worker is gone: a render goes through again.
        example, example_archive = load_component_file(REPO / "examples" / "web" / "component.yaml")
        async with asyncio.timeout(10):
            rendered = await renderer.render(example, example_archive, revision=1, previous={}, upgrade=False)
        assert "ni hao shanghai" in rendered.bundles["shanghai"].manifests
