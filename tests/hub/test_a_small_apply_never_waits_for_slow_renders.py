"""A small apply never waits for slow renders: they leave the fast lane after ``render_fast_seconds``.

The real hub (aiohttp's test server, real Mosquitto) and the real Helm engine
in real worker processes, as in test_rendering_is_bounded. The heavy charts
loop for about 10**10 template iterations (hours), so every one of them ends
at the time bound, made 12 s here to keep the test short.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any, Self

import pytest
from aiohttp.test_utils import TestClient
from hub_api import answer, refused
from test_rendering_is_bounded import body, chart_with, forever_component, timed

from deployer_plugin import RenderError, load_component_file
from edgehub.keys import RENDERER
from edgehub.renderer import Renderer, RenderLimits
from edgehub.settings import HubSettings
from edgesim.fleet import Mosquitto

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 12.0
# Nested loops: CPU for hours, little memory (``until N`` alone allocates N integers).
HEAVY = "{{ range $i := until 100000 }}{{ range $j := until 100000 }}{{ end }}{{ end }}\n"


@pytest.fixture
def hub_settings(tmp_path: Path, broker: Mosquitto) -> HubSettings:
    # render_fast_seconds and render_parallel keep their defaults (2 s, 2 slots a lane): what a hub runs with.
    return HubSettings(state_dir=tmp_path / "state", mqtt_url=broker.url, render_timeout_seconds=TIMEOUT)


class WorkerCount:
    """Counts this process's live render workers every 20 ms, on a thread of its own.

    From /proc, not ``multiprocessing.active_children()``: that reaps exited
    children, racing the renderer's own threads that wait for them.
    """

    def __init__(self) -> None:
        self.most = 0
        self.seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="worker-count", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def workers() -> set[int]:
        me, found = os.getpid(), set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_bytes()
                # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ')'.
                if int(stat[stat.rindex(b")") + 2:].split()[1]) != me:
                    continue
                if b"spawn_main" in (entry / "cmdline").read_bytes():  # a spawned worker, not Mosquitto
                    found.add(int(entry.name))
            except (OSError, ValueError):
                continue  # it exited meanwhile
        return found

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            live = self.workers()
            self.seen |= live
            self.most = max(self.most, len(live))


async def test_with_four_heavy_renders_in_flight_a_small_apply_renders_at_once_and_the_heavy_ones_hit_the_bound(
    hub: TestClient, tmp_path: Path, example: dict[str, Any]
):
    heavy = [body(chart_with(tmp_path, {"heavy.yaml": HEAVY}), name=f"heavy{i}") for i in range(4)]
    renderer = hub.app[RENDERER]
    with WorkerCount() as workers:
        started = time.monotonic()
        heavies = [asyncio.create_task(timed(hub.post("/api/v1/components", json=b))) for b in heavy]
        await asyncio.sleep(1.0)  # two heavy renders hold the fast lane, two wait for it
        response, took = await timed(hub.post("/api/v1/components", json=example))
        assert (await answer(response, 201))["revision"] == 1
        # It waits behind the two heavy renders queued before it for 2 s (render_fast_seconds), then renders
        # in about a second on this busy host. Behind the heavy renders it would wait until the first two
        # hit the bound (12 s), and behind the next two (24 s) past its wait bound: a 409.
        assert took < 8, f"the small apply took {took:.1f} s"

        for i, task in enumerate(heavies):
            response, took = await task
            error = await refused(response, 422)
            assert error == (f"component demo/heavy{i}: the render took longer than the time bound: Helm did not "
                             f"finish within {TIMEOUT:g} s (render_timeout_seconds); the render was stopped")
        everything = time.monotonic() - started
    # The first two went on in the slow lane in their own process; the next two found it full, were
    # stopped after 2 s and ran again there: each heavy render left the fast lane once and ran at most twice.
    counts = renderer.counts
    assert counts.moved + counts.stopped == 4, counts
    assert counts.started == 5 + counts.stopped, counts
    assert (counts.moved, counts.stopped) == (2, 2), counts
    # Two renders of 12 s each in the slow lane, one after the other, and the 2 s a rerun lost: not more.
    assert everything < 2 * TIMEOUT + 2 + 4
    assert workers.most <= renderer.max_workers == 4, workers.most
    assert len(workers.seen) == counts.started  # every worker was seen: the count is not a lucky miss
    assert WorkerCount.workers() == set()  # and all are gone
    listed = await answer(await hub.get("/api/v1/components"), 200)
    assert [c["name"] for c in listed] == ["web"]


# --- the renderer on its own ----------------------------------------------------


async def test_stopping_the_renderer_stops_renders_in_both_lanes_and_sends_the_one_waiting_away(tmp_path: Path):
    component, archive = forever_component(tmp_path)
    limits = RenderLimits(timeout_seconds=60, parallel=1, fast_seconds=1)
    started = time.monotonic()
    async with Renderer(limits) as renderer:
        first = asyncio.create_task(renderer.render(component, archive, revision=1, previous={}, upgrade=False))
        await asyncio.sleep(0.2)
        second = asyncio.create_task(renderer.render(component, archive, revision=2, previous={}, upgrade=False))
        third = asyncio.create_task(renderer.render(component, archive, revision=3, previous={}, upgrade=False))
        # The first goes on in the slow lane, the second is stopped after 1 s and waits there; the third
        # holds the fast lane (its worker process is counted started a moment before it exists).
        async with asyncio.timeout(10):
            while renderer._slow.waiting < 1 or renderer.counts.started < 3 or len(WorkerCount.workers()) < 2:
                await asyncio.sleep(0.05)
        assert (renderer.counts.moved, renderer.counts.stopped) == (1, 1)
        assert len(WorkerCount.workers()) == 2
    for task in (first, second, third):
        with pytest.raises(RuntimeError, match="shutting down"):
            await task
    assert time.monotonic() - started < 10 and WorkerCount.workers() == set()


async def test_an_apply_that_goes_away_while_waiting_for_the_slow_lane_gives_its_place_to_the_next(tmp_path: Path):
    component, archive = forever_component(tmp_path)
    example, example_archive = load_component_file(REPO / "examples" / "web" / "component.yaml")
    # Twice the default fast lane bound: the small render below must stay in the fast lane on a host as busy
    # as a test run on two workers makes it (a fresh render worker and the Helm engine took over 2 s there).
    limits = RenderLimits(timeout_seconds=16, parallel=1, fast_seconds=4)
    async with Renderer(limits) as renderer:
        first = asyncio.create_task(renderer.render(component, archive, revision=1, previous={}, upgrade=False))
        await asyncio.sleep(0.2)
        second = asyncio.create_task(renderer.render(component, archive, revision=2, previous={}, upgrade=False))
        async with asyncio.timeout(15):
            while renderer._slow.waiting < 1:  # the second waits for the slow lane, the first holds it
                await asyncio.sleep(0.05)
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        # The fast lane is free again at once, and the one slow slot still the first's.
        async with asyncio.timeout(limits.fast_seconds + 1):
            rendered = await renderer.render(example, example_archive, revision=1, previous={}, upgrade=False)
        assert "ni hao shanghai" in rendered.bundles["shanghai"].manifests
        with pytest.raises(RenderError, match="time bound"):
            await first
        assert renderer.counts.started == 3  # the cancelled one never ran again
        assert (renderer._fast.busy, renderer._slow.busy, renderer._slow.waiting) == (0, 0, 0)
    assert WorkerCount.workers() == set()
