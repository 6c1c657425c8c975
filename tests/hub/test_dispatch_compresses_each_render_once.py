"""The dispatcher compresses (and encrypts) a render once, however many nodes get it, and every node can still
open its copy.

A real store and the real Helm render of the example component; publishing
is captured in memory (which payloads go where is what is checked here; the
broker path is covered by tests/hub/test_api.py and the e2e tests).
"""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from deployer_plugin import ChartArchive, component_fingerprint, load_component_file, parse_component, render_component
from edgehub.dispatch import Dispatcher, WireBundles, wire_bytes
from edgehub.store import HubStores
from edgehub.store.components import ComponentStore
from edgehub.tokens import new_token
from edgeprotocol import Assignment, DecryptionError, bundle_crypto, messages, topics
from edgeprotocol.messages import Bundle
from edgeprotocol.signing import load_public_key, open_sealed, public_key_pem

REPO = Path(__file__).resolve().parents[2]
SHANGHAI, BEIJING = 20, 10


async def _store_revision(components: ComponentStore, revision: int, message: str) -> None:
    """The example at ``revision``, for shanghai (its own poolValues) and beijing (the base values)."""
    component, archive = load_component_file(REPO / "examples" / "web" / "component.yaml")
    document = component.to_document()
    document["spec"]["edge"]["nodePools"] = ["shanghai", "beijing"]
    document["spec"]["values"]["message"] = message
    component = parse_component(document)
    chart = ChartArchive.from_bytes(archive)
    await components.save_component(
        namespace=component.namespace, name=component.name, spec=component.to_document(), chart_archive=archive,
        chart_name=chart.name, chart_version=chart.version,
        fingerprint=component_fingerprint(component, chart.fingerprint),
        revision=revision, renders=render_component(component, archive, revision=revision),
    )


async def test_a_publish_to_many_nodes_compresses_each_render_once_and_later_publishes_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    compressed: list[bytes] = []
    compress = gzip.compress

    def counting_compress(data: bytes, *args: object, **kwargs: object) -> bytes:
        compressed.append(data)
        return compress(data, *args, **kwargs)  # type: ignore[arg-type]  # compress's own arguments, passed through

    monkeypatch.setattr(messages.gzip, "compress", counting_compress)
    published: dict[str, bytes] = {}

    async def publish(topic: str, payload: bytes, retain: bool) -> bool:
        published[topic] = payload
        return True

    key = Ed25519PrivateKey.generate()
    pinned = load_public_key(public_key_pem(key.public_key()))  # the hub's key as its nodes hold it
    async with HubStores(tmp_path / "hub.db") as stores:
        for pool, count in (("shanghai", SHANGHAI), ("beijing", BEIJING)):
            token = new_token()
            await stores.enrollment.create_token(token, pool=pool, ttl_seconds=60, uses=count)
            for i in range(count):
                await stores.enrollment.register_node(token, node=f"{pool[:2]}-{i}", requested_pool=None,
                                                      labels={}, sign=lambda _: "cert")
        await _store_revision(stores.components, 1, "first")
        dispatcher = Dispatcher(stores.enrollment, stores.components, stores.assignments, key, publish)

        report = await dispatcher.sync()
        assert report.published == SHANGHAI + BEIJING
        assert len(compressed) == 2 and len(set(compressed)) == 2  # one per render: shanghai's and the base

        # Every node opens its own signed assignment; a pool's nodes carry the very same bundle.
        bundles: dict[str, set[str]] = {"sh": set(), "be": set()}
        for pool, count in (("sh", SHANGHAI), ("be", BEIJING)):
            for i in range(count):
                payload = published[topics.assignment(f"{pool}-{i}", "demo", "web")]
                assignment = open_sealed(payload, pinned, node=f"{pool}-{i}", generation=1)
                assert assignment.revision == 1 and assignment.bundle is not None
                bundles[pool].add(json.dumps(json.loads(payload)["body"]["bundle"], sort_keys=True))
        assert len(bundles["sh"]) == len(bundles["be"]) == 1 and bundles["sh"] != bundles["be"]
        shanghai = open_sealed(published[topics.assignment("sh-0", "demo", "web")], pinned, node="sh-0", generation=1)
        assert shanghai.bundle is not None and "ni hao shanghai" in shanghai.bundle.manifests

        # Re-publishing everything (a broker reconnect) or one node (a resync) compresses nothing again.
        assert await dispatcher.publish_all() == SHANGHAI + BEIJING
        assert await dispatcher.publish_node("sh-3") == 1
        assert len(compressed) == 2

        # A new revision is compressed once per render too.
        await _store_revision(stores.components, 2, "second")
        assert (await dispatcher.sync()).published == SHANGHAI + BEIJING
        assert len(compressed) == 4

    # These nodes joined without bundle keys (older agents): one warning, at the first publish, says so.
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(f"{SHANGHAI + BEIJING} node(s) joined without a bundle key") and ", ...;" in warning


async def test_nodes_with_bundle_keys_share_one_encryption_of_a_render_and_each_opens_only_its_own_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    encrypted: list[bytes] = []
    encrypt = bundle_crypto.encrypt

    def counting_encrypt(packed: bytes) -> bundle_crypto.EncryptedContent:
        encrypted.append(packed)
        return encrypt(packed)  # the real thing: only counted

    monkeypatch.setattr(bundle_crypto, "encrypt", counting_encrypt)
    published: dict[str, bytes] = {}

    async def publish(topic: str, payload: bytes, retain: bool) -> bool:
        published[topic] = payload
        return True

    key = Ed25519PrivateKey.generate()
    pinned = load_public_key(public_key_pem(key.public_key()))  # the hub's key as its nodes hold it
    nodes = {f"sh-{i}": bundle_crypto.new_node_key() for i in range(SHANGHAI)}
    async with HubStores(tmp_path / "hub.db") as stores:
        token = new_token()
        await stores.enrollment.create_token(token, pool="shanghai", ttl_seconds=60, uses=SHANGHAI)
        for name, node_key in nodes.items():
            await stores.enrollment.register_node(token, node=name, requested_pool=None, labels={},
                                                  sign=lambda _: "cert",
                                                  bundle_key=bundle_crypto.public_key_text(node_key))
        await _store_revision(stores.components, 1, "first")
        dispatcher = Dispatcher(stores.enrollment, stores.components, stores.assignments, key, publish)
        assert (await dispatcher.sync()).published == SHANGHAI
        assert len(encrypted) == 1

        bodies = {name: json.loads(published[topics.assignment(name, "demo", "web")])["body"] for name in nodes}
        assert len({b["bundle"]["data"] for b in bodies.values()}) == 1  # one ciphertext for the pool
        assert len({b["bundle"]["key"]["wrapped"] for b in bodies.values()}) == SHANGHAI  # a wrapped key each
        for name, node_key in nodes.items():
            opened = open_sealed(published[topics.assignment(name, "demo", "web")], pinned, node=name,
                                 generation=1, bundle_key=node_key)
            assert opened.bundle is not None and "ni hao shanghai" in opened.bundle.manifests
        # A node of the pool cannot open another's copy with its own key (it is wrapped to the other's).
        with pytest.raises(DecryptionError):
            Assignment.from_body(bodies["sh-1"], bundle_key=nodes["sh-0"])

        # Publishing again (a broker reconnect) encrypts nothing again.
        assert await dispatcher.publish_all() == SHANGHAI
        assert len(encrypted) == 1


def test_the_wire_cache_keeps_the_most_recently_used_renders_within_its_bound():
    bundles = {name: Bundle.of(f"name: {name}\n" * 50) for name in ("a", "b", "c")}
    size = wire_bytes(bundles["a"])
    cache = WireBundles(max_bytes=2 * size + size // 2)
    cache.put(("demo", "a", 1, ""), bundles["a"])
    cache.put(("demo", "b", 1, ""), bundles["b"])
    assert cache.get(("demo", "a", 1, "")) is bundles["a"]  # now the most recently used
    cache.put(("demo", "c", 1, ""), bundles["c"])
    assert cache.get(("demo", "b", 1, "")) is None
    assert cache.get(("demo", "a", 1, "")) is bundles["a"] and cache.get(("demo", "c", 1, "")) is bundles["c"]


def test_a_bundle_makes_its_wire_form_once_and_it_decodes_to_the_same_manifests():
    bundle = Bundle.of("kind: ConfigMap\n" * 100)
    assert bundle.to_wire() is bundle.to_wire()
    assert Bundle.from_wire(bundle.to_wire(), "test") == bundle
    assert Bundle.of(bundle.manifests) == bundle  # the cached form takes no part in equality
