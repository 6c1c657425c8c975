"""A bundle the node's key does not open is refused like any bad assignment: nothing stored, a Rejected event
that says why; the one encrypted to the node is taken, decrypted, into the local store.

The uplink's message handler with a real local store and real keys (the
node's bundle key in its state directory, as ``edgeagent join`` leaves it).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fakes import FakeRuntime
from nacl.public import PrivateKey

from edgeagent.agent import AgentSettings
from edgeagent.health import NodeHealth
from edgeagent.identity import BUNDLE_KEY_FILE, JoinError, NodeIdentity, load_bundle_key
from edgeagent.store import AgentStore
from edgeagent.uplink import Uplink
from edgeprotocol import Assignment, Bundle, Event, bundle_crypto, topics
from edgeprotocol.messages import now
from edgeprotocol.signing import public_key_pem, seal

HUB = Ed25519PrivateKey.generate()
MANIFESTS = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\ndata:\n  password: czNjcjN0\n"
TOPIC = topics.assignment("sh-1", "demo", "db")


def sealed_to(key: PrivateKey | None, revision: int = 1) -> bytes:
    assignment = Assignment(node="sh-1", namespace="demo", release="db", revision=revision, kind="release",
                            issued_at=now(), bundle=Bundle.of(MANIFESTS), generation=1)
    return seal(assignment, HUB, bundle_to=key.public_key if key else None)


def state_with(tmp_path: Path, key: PrivateKey | None) -> Path:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    if key is not None:
        (state / BUNDLE_KEY_FILE).write_bytes(bundle_crypto.private_key_pem(key))
    return state


async def deliver(state: Path, *payloads: bytes) -> tuple[list[tuple[str, int, str]], list[Event]]:
    identity = NodeIdentity(node="sh-1", pool="shanghai", labels={}, hub_url="http://127.0.0.1:9",
                            mqtt_url="mqtt://127.0.0.1:9", hub_public_key=public_key_pem(HUB.public_key()),
                            ca_certificate="", generation=1)
    async with AgentStore(state / "agent.db") as store:
        uplink = Uplink(AgentSettings(state_dir=state), identity, store, runtime_name="fake",
                        health=NodeHealth(FakeRuntime()), on_assignment=lambda: None)
        for payload in payloads:
            await uplink._on_message(TOPIC, payload)
        held = [(r.release, r.desired_revision, r.manifests) for r in await store.releases()]
        return held, [Event.decode(item.payload) for item in await store.pending()]


async def test_a_bundle_encrypted_to_another_key_is_rejected_and_the_nodes_own_is_taken_decrypted(tmp_path: Path):
    own, other = bundle_crypto.new_node_key(), bundle_crypto.new_node_key()
    held, events = await deliver(state_with(tmp_path, own), sealed_to(other, revision=2), sealed_to(own))
    assert held == [("db", 1, MANIFESTS)]
    (rejected,) = events
    assert rejected.reason == "Rejected"
    assert f"message on {TOPIC} rejected: assignment: bundle is encrypted to bundle key" in rejected.message
    assert "not this node's" in rejected.message


async def test_a_node_that_joined_before_encryption_takes_plain_bundles_and_says_why_it_cannot_open_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    held, events = await deliver(state_with(tmp_path, None), sealed_to(bundle_crypto.new_node_key(), revision=2),
                                 sealed_to(None))
    assert held == [("db", 1, MANIFESTS)]
    assert [e.reason for e in events] == ["Rejected"] and "this node has none" in events[0].message
    assert "has no bundle key" in caplog.text and "join it again" in caplog.text


def test_a_corrupt_bundle_key_file_says_to_join_again(tmp_path: Path):
    state = state_with(tmp_path, None)
    assert load_bundle_key(state) is None
    (state / BUNDLE_KEY_FILE).write_bytes(b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    with pytest.raises(JoinError, match=f"{BUNDLE_KEY_FILE} is corrupt .*join again"):
        load_bundle_key(state)
