"""Assignments are signed by the hub and checked by the node: what a node must refuse."""

from __future__ import annotations

import base64
import dataclasses
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.signing import VerifyKey

from edgeprotocol import AddressError, Assignment, Bundle, ProtocolError, SignatureError
from edgeprotocol.messages import MAX_MESSAGE_BYTES, encode_json, now
from edgeprotocol.signing import load_public_key, open_sealed, public_key_pem, seal

MANIFESTS = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n"


def pinned(hub: Ed25519PrivateKey) -> VerifyKey:
    """The hub's key as a node holds it: the PEM join hands over, loaded as the agent loads it."""
    return load_public_key(public_key_pem(hub.public_key()))


def make(node: str = "sh-1", revision: int = 3) -> Assignment:
    return Assignment(node=node, namespace="demo", release="web", revision=revision, kind="release",
                      issued_at=now(), chart={"name": "web", "version": "0.1.0"}, bundle=Bundle.of(MANIFESTS))


def test_a_sealed_assignment_opens_with_the_hub_key_and_keeps_its_manifests():
    key = Ed25519PrivateKey.generate()
    opened = open_sealed(seal(make(), key), pinned(key), node="sh-1", generation=0)
    assert opened.revision == 3
    assert opened.bundle is not None and opened.bundle.manifests == MANIFESTS


def test_a_sealed_assignment_is_canonical_json_and_its_signature_covers_the_body_as_encoded():
    key = Ed25519PrivateKey.generate()
    payload = seal(make(), key)
    envelope = json.loads(payload)
    assert set(envelope) == {"v", "body", "sig"} and envelope["v"] == 1
    # Any implementation can rebuild the exact bytes: keys sorted, no spaces.
    assert payload == encode_json(envelope)
    key.public_key().verify(base64.b64decode(envelope["sig"]), encode_json(envelope["body"]))


def test_an_assignment_signed_by_another_key_is_refused():
    hub, intruder = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    with pytest.raises(SignatureError, match="not signed by the pinned hub key"):
        open_sealed(seal(make(), intruder), pinned(hub), node="sh-1", generation=0)


def test_a_tampered_revision_breaks_the_signature():
    key = Ed25519PrivateKey.generate()
    envelope = json.loads(seal(make(revision=3), key))
    envelope["body"]["revision"] = 99
    with pytest.raises(SignatureError):
        open_sealed(json.dumps(envelope).encode(), pinned(key), node="sh-1", generation=0)


def test_an_assignment_for_another_node_is_refused():
    key = Ed25519PrivateKey.generate()
    with pytest.raises(AddressError, match="addressed to node 'sh-2'"):
        open_sealed(seal(make(node="sh-2"), key), pinned(key), node="sh-1", generation=0)


def test_a_bundle_whose_digest_does_not_match_is_refused():
    key = Ed25519PrivateKey.generate()
    body = make().to_body()
    body["bundle"]["digest"] = "sha256:" + "0" * 64
    envelope = {"v": 1, "body": body, "sig": base64.b64encode(key.sign(encode_json(body))).decode()}
    with pytest.raises(ProtocolError, match="digest does not match"):
        open_sealed(encode_json(envelope), pinned(key), node="sh-1", generation=0)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "not valid JSON"),
        (b"[]", "a JSON object was expected"),
        (b'{"v": 2}', "protocol version 2"),
        (b"x" * (MAX_MESSAGE_BYTES + 1), "exceeds"),
    ],
)
def test_malformed_payloads_are_refused_with_a_reason(payload: bytes, reason: str):
    key = Ed25519PrivateKey.generate()
    with pytest.raises(ProtocolError, match=reason):
        open_sealed(payload, pinned(key), node="sh-1", generation=0)


def test_an_assignment_sealed_for_an_earlier_join_of_the_name_is_refused():
    key = Ed25519PrivateKey.generate()
    captured = seal(dataclasses.replace(make(), generation=1), key)
    assert open_sealed(captured, pinned(key), node="sh-1", generation=1).generation == 1
    # The name was reset and joined again: the node now holds generation 2.
    with pytest.raises(AddressError, match="join generation 1 of node 'sh-1', but this node joined as generation 2"):
        open_sealed(captured, pinned(key), node="sh-1", generation=2)


def test_the_generation_is_signed_so_it_cannot_be_raised_on_the_way():
    key = Ed25519PrivateKey.generate()
    envelope = json.loads(seal(dataclasses.replace(make(), generation=1), key))
    envelope["body"]["generation"] = 2
    with pytest.raises(SignatureError):
        open_sealed(json.dumps(envelope).encode(), pinned(key), node="sh-1", generation=2)


def test_an_assignment_signed_without_a_generation_is_generation_0_as_an_older_hub_signs_it():
    key = Ed25519PrivateKey.generate()
    body = make().to_body()
    del body["generation"]
    envelope = encode_json({"v": 1, "body": body, "sig": base64.b64encode(key.sign(encode_json(body))).decode()})
    assert open_sealed(envelope, pinned(key), node="sh-1", generation=0).generation == 0
    with pytest.raises(AddressError, match="join generation 0"):
        open_sealed(envelope, pinned(key), node="sh-1", generation=1)
    assert Assignment.from_body(make().to_body())  # and a body with one decodes
    with pytest.raises(ProtocolError, match="generation -1 is below 0"):
        Assignment.from_body({**make().to_body(), "generation": -1})
