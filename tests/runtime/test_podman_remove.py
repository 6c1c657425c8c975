"""Removing a release: nothing of it is left, fast, and removing twice is fine."""

from __future__ import annotations

import time

import pytest

from edgeagent.runtime import ReleaseRef

from .helpers import PodmanNode, render_web

pytestmark = pytest.mark.timeout(60)

DEMO_WEB = ReleaseRef("demo", "web")


async def test_remove_deletes_the_pods_volumes_and_played_file_and_is_idempotent(node: PodmanNode) -> None:
    await node.runtime.apply(DEMO_WEB, render_web(), node.context)
    assert "demo.web.cm.web-page" in (await node.podman("volume", "ls", "--format", "{{.Name}}")).split()

    await node.runtime.remove(DEMO_WEB)

    assert await node.podman("pod", "ps", "-q") == ""
    assert await node.podman("ps", "-a", "-q") == ""
    assert await node.podman("volume", "ls", "-q") == ""
    assert not node.runtime.played_file(DEMO_WEB).exists()
    seen = await node.runtime.observe(DEMO_WEB)
    assert (seen.ready, seen.total, seen.pods) == (0, 0, ())
    await node.runtime.remove(DEMO_WEB)  # a second time: nothing to do, no error


async def test_removing_a_release_the_node_never_had_is_fine(node: PodmanNode) -> None:
    await node.runtime.remove(ReleaseRef("nowhere", "nothing"))


async def test_removal_does_not_wait_out_podmans_ten_second_stop_timeout(node: PodmanNode) -> None:
    await node.runtime.apply(DEMO_WEB, render_web({"replicas": 2}), node.context)

    started = time.monotonic()
    await node.runtime.remove(DEMO_WEB)
    took = time.monotonic() - started

    # The chart's shell exits on SIGTERM at once; podman's stop timeout is 10 s.
    assert took < 5, f"removal took {took:.1f} s"
    assert await node.podman("pod", "ps", "-q") == ""


async def test_remove_finds_the_release_by_label_when_its_played_file_is_gone(node: PodmanNode) -> None:
    await node.runtime.apply(DEMO_WEB, render_web(), node.context)
    node.runtime.played_file(DEMO_WEB).unlink()

    await node.runtime.remove(DEMO_WEB)

    assert await node.podman("pod", "ps", "-q") == ""


async def test_the_web_charts_pod_stops_on_sigterm_even_under_podmans_own_stop(node: PodmanNode) -> None:
    await node.runtime.apply(DEMO_WEB, render_web(), node.context)

    started = time.monotonic()
    await node.podman("pod", "stop", "demo.web-pod-0")  # podman's default: SIGTERM, SIGKILL after 10 s
    took = time.monotonic() - started

    assert took < 5, f"podman pod stop took {took:.1f} s: the server ignored SIGTERM"
