"""Dispatch parses each component's spec once per revision, off the event loop; sync reads no specs after that.

A real store with five components of 6 MB of values each (the attack that
made every apply, join and /healthz take over 20 s); publishing is captured
in memory.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from deployer_plugin import ChartArchive, component_fingerprint, load_component_file, parse_component
from edgehub import dispatch
from edgehub.dispatch import Dispatcher
from edgehub.store import HubStores
from edgehub.store.components import ComponentStore
from edgehub.tokens import new_token
from edgeprotocol.messages import Bundle

REPO = Path(__file__).resolve().parents[2]
COMPONENTS = 5


async def store_big_components(components: ComponentStore, items: int = 100_000) -> list[str]:
    component, archive = load_component_file(REPO / "examples" / "web" / "component.yaml")
    chart = ChartArchive.from_bytes(archive)
    names = []
    for i in range(COMPONENTS):
        document = component.to_document()
        document["metadata"]["name"] = f"big{i}"
        document["spec"]["values"]["blob"] = [f"{i}-{n:07d}" + "x" * 50 for n in range(items)]  # ~6 MB by default
        parsed = parse_component(document)
        await components.save_component(
            namespace="demo", name=parsed.name, spec=parsed.to_document(), chart_archive=archive,
            chart_name=chart.name, chart_version=chart.version,
            fingerprint=component_fingerprint(parsed, chart.fingerprint), revision=1,
            renders={"": Bundle.of(f"kind: ConfigMap\nname: {parsed.name}\n"),
                     "shanghai": Bundle.of(f"kind: ConfigMap\nname: {parsed.name}-sh\n")},
        )
        names.append(parsed.name)
    return names


async def longest_stall(during: asyncio.Task[object]) -> float:
    """The longest the event loop went without running a 10 ms ticker while ``during`` ran."""
    longest, last = 0.0, time.monotonic()
    while not during.done():
        await asyncio.sleep(0.01)
        now = time.monotonic()
        longest, last = max(longest, now - last), now
    await during
    return longest


async def test_sync_parses_each_spec_once_off_the_event_loop_and_then_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    parsed: list[str] = []
    parse = dispatch.parse_component

    def counting_parse(document: dict, **kwargs: object):
        parsed.append(document["metadata"]["name"])
        return parse(document, **kwargs)  # type: ignore[arg-type]  # parse's own keywords, passed through

    monkeypatch.setattr(dispatch, "parse_component", counting_parse)
    published: list[str] = []

    async def publish(topic: str, payload: bytes, retain: bool) -> bool:
        published.append(topic)
        return True

    async with HubStores(tmp_path / "hub.db") as stores:
        token = new_token()
        await stores.enrollment.create_token(token, pool="shanghai", ttl_seconds=60, uses=3)
        for node in ("sh-1", "sh-2"):
            await stores.enrollment.register_node(token, node=node, requested_pool=None, labels={},
                                                  sign=lambda _: "cert")
        names = await store_big_components(stores.components)
        dispatcher = Dispatcher(stores.enrollment, stores.components, stores.assignments, Ed25519PrivateKey.generate(),
                                publish)

        first = asyncio.create_task(dispatcher.sync())
        assert await longest_stall(first) < 0.5  # the loop kept answering (it stalled for seconds before)
        assert (await first).changed == 2 * COMPONENTS and sorted(parsed) == names

        started = time.monotonic()
        for _ in range(10):
            assert (await dispatcher.sync()).changed == 0
        assert time.monotonic() - started < 1.0 and len(parsed) == COMPONENTS  # nothing parsed again

        # A new revision is parsed once more; a join places every component without parsing any.
        await stores.enrollment.register_node(token, node="sh-3", requested_pool=None, labels={}, sign=lambda _: "cert")
        assert (await dispatcher.sync()).changed == COMPONENTS and len(parsed) == COMPONENTS


async def test_a_dispatcher_reuses_what_an_apply_remembered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    calls: list[object] = []
    monkeypatch.setattr(dispatch, "parse_component", lambda *a, **k: calls.append(a))

    async def publish(topic: str, payload: bytes, retain: bool) -> bool:
        return True

    async with HubStores(tmp_path / "hub.db") as stores:
        component, archive = load_component_file(REPO / "examples" / "web" / "component.yaml")
        chart = ChartArchive.from_bytes(archive)
        fingerprint = component_fingerprint(component, chart.fingerprint)
        await stores.components.save_component(
            namespace="demo", name="web", spec=component.to_document(), chart_archive=archive,
            chart_name=chart.name, chart_version=chart.version, fingerprint=fingerprint,
            revision=1, renders={"": Bundle.of("kind: ConfigMap\n")})
        dispatcher = Dispatcher(stores.enrollment, stores.components, stores.assignments, Ed25519PrivateKey.generate(),
                                publish)
        dispatcher.remember(component, revision=1, fingerprint=fingerprint)
        await dispatcher.sync()
        assert calls == []


async def test_a_resync_re_publishes_only_what_the_node_lacks_or_holds_older(tmp_path: Path):
    published: list[str] = []

    async def publish(topic: str, payload: bytes, retain: bool) -> bool:
        published.append(topic)
        return True

    async with HubStores(tmp_path / "hub.db") as stores:
        token = new_token()
        await stores.enrollment.create_token(token, pool="shanghai", ttl_seconds=60, uses=1)
        await stores.enrollment.register_node(token, node="sh-1", requested_pool=None, labels={}, sign=lambda _: "cert")
        await store_big_components(stores.components, items=10)
        dispatcher = Dispatcher(stores.enrollment, stores.components, stores.assignments, Ed25519PrivateKey.generate(),
                                publish)
        await dispatcher.sync()
        published.clear()
        held = {"demo/big0": 1, "demo/big1": 1, "demo/big2": 0, "other/thing": 7}
        assert await dispatcher.publish_node("sh-1", held=held) == 3  # big2 (older), big3 and big4 (lacking)
        assert sorted(t.rsplit("/", 1)[-1] for t in published) == ["big2", "big3", "big4"]
        assert await dispatcher.publish_node("sh-1", held={f"demo/big{i}": 1 for i in range(COMPONENTS)}) == 0
        assert await dispatcher.publish_node("sh-1") == COMPONENTS  # without held: everything
