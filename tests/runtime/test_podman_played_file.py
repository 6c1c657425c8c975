"""The played file: observe reads it back parsed once, and again only when its content changed."""

from __future__ import annotations

import pytest

from edgeagent.runtime import PodmanRuntime, ReleaseRef
from edgeagent.runtime.podman_plan import PlayedFile, parse_played

from .helpers import PodmanNode, render_web

pytestmark = pytest.mark.timeout(60)

DEMO_WEB = ReleaseRef("demo", "web")


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The played files the runtime parses from now on (a spy around the real parser)."""
    seen: list[str] = []

    def spy(text: str, where: str) -> PlayedFile:
        seen.append(where)
        return parse_played(text, where)

    monkeypatch.setattr("edgeagent.runtime.podman.parse_played", spy)
    return seen


async def test_observing_after_an_apply_never_parses_the_played_file(node: PodmanNode, parses: list[str]) -> None:
    await node.runtime.apply(DEMO_WEB, render_web({"replicas": 2}), node.context)

    seen = [await node.runtime.observe(DEMO_WEB) for _ in range(3)]

    assert parses == []
    assert [(s.ready, s.total) for s in seen] == [(2, 2)] * 3


async def test_a_restarted_runtime_parses_the_played_file_once_and_sees_the_same(
    node: PodmanNode, parses: list[str]
) -> None:
    await node.runtime.apply(DEMO_WEB, render_web({"replicas": 2}), node.context)
    before = await node.runtime.observe(DEMO_WEB)

    restarted = PodmanRuntime(node.settings)
    first = await restarted.observe(DEMO_WEB)
    second = await restarted.observe(DEMO_WEB)

    assert parses == [str(node.runtime.played_file(DEMO_WEB))]
    assert first == second == before


async def test_a_played_file_that_changed_on_disk_is_read_again(node: PodmanNode, parses: list[str]) -> None:
    await node.runtime.apply(DEMO_WEB, render_web({"replicas": 1}), node.context)
    assert (await node.runtime.observe(DEMO_WEB)).total == 1

    # Another runtime on the same work dir (an agent restarted meanwhile) plays a new revision.
    await PodmanRuntime(node.settings).apply(DEMO_WEB, render_web({"replicas": 3}), node.context)
    parses.clear()

    seen = [await node.runtime.observe(DEMO_WEB) for _ in range(2)]
    assert [(s.ready, s.total) for s in seen] == [(3, 3)] * 2
    assert parses == [str(node.runtime.played_file(DEMO_WEB))]  # once, on the first observe
