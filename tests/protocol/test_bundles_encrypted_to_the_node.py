"""A bundle encrypted to a node opens with that node's bundle key only, and anything changed on the way is refused.

Real X25519, HKDF and ChaCha20-Poly1305 (``edgeprotocol.bundle_crypto``), no
stand-ins: what one node's key opens, another's does not.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.signing import VerifyKey

from edgeprotocol import (
    AddressError,
    Assignment,
    Bundle,
    DecryptionError,
    ProtocolError,
    SignatureError,
    bundle_crypto,
)
from edgeprotocol.messages import encode_json, now
from edgeprotocol.signing import load_public_key, open_sealed, public_key_pem, seal

SECRET = "s3cr3t-of-the-shop"
MANIFESTS = (
    "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\ntype: Opaque\n"
    f"data:\n  password: {base64.b64encode(SECRET.encode()).decode()}\n"
    "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n"
)


def assignment(node: str = "sh-1") -> Assignment:
    return Assignment(node=node, namespace="demo", release="web", revision=1, kind="release", issued_at=now(),
                      bundle=Bundle.of(MANIFESTS), generation=1)


def pinned(hub: Ed25519PrivateKey) -> VerifyKey:
    """The hub's key as a node holds it: the PEM join hands over, loaded as the agent loads it."""
    return load_public_key(public_key_pem(hub.public_key()))


def flip(text: str, at: int = -20) -> str:
    """``text`` (base64) with one bit of its decoded bytes flipped."""
    raw = bytearray(base64.b64decode(text))
    raw[at] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def test_a_bundle_encrypted_to_a_node_opens_with_its_key_to_the_same_manifests_and_digest():
    node = bundle_crypto.new_node_key()
    bundle = Bundle.of(MANIFESTS)
    wire = bundle.to_wire(node.public_key)
    assert set(wire) == {"encoding", "data", "key"} and wire["encoding"] == "gzip+chacha20poly1305+base64"
    assert set(wire["key"]) == {"alg", "to", "epk", "wrapped"}
    assert wire["key"]["to"] == bundle_crypto.public_key_text(node)

    opened = Bundle.from_wire(json.loads(json.dumps(wire)), "test", node)
    assert opened == bundle and opened.manifests == MANIFESTS and opened.digest == bundle.digest


def test_the_wire_carries_neither_the_secret_nor_its_base64_nor_a_digest_to_check_guesses_against():
    bundle = Bundle.of(MANIFESTS)
    text = json.dumps(bundle.to_wire(bundle_crypto.new_node_key().public_key))
    for needle in (SECRET, base64.b64encode(SECRET.encode()).decode(), bundle.digest, bundle.digest[7:]):
        assert needle not in text
    # The plain form's data inflates to the secret: what an older node still gets.
    assert base64.b64encode(SECRET.encode()).decode() in Bundle.from_wire(bundle.to_wire(), "test").manifests


def test_a_render_is_encrypted_once_for_every_node_and_only_the_key_is_wrapped_per_node():
    bundle = Bundle.of(MANIFESTS)
    a, b = bundle_crypto.new_node_key(), bundle_crypto.new_node_key()
    for_a, for_b = bundle.to_wire(a.public_key), bundle.to_wire(b.public_key)
    assert for_a["data"] is for_b["data"]
    assert for_a["key"]["wrapped"] != for_b["key"]["wrapped"] and for_a["key"]["epk"] != for_b["key"]["epk"]
    assert Bundle.from_wire(for_a, "a", a) == Bundle.from_wire(for_b, "b", b) == bundle


def test_another_nodes_key_does_not_open_a_bundle_and_says_whose_it_is():
    a, b = bundle_crypto.new_node_key(), bundle_crypto.new_node_key()
    wire = Bundle.of(MANIFESTS).to_wire(a.public_key)
    with pytest.raises(DecryptionError, match="encrypted to bundle key .*, not this node's"):
        Bundle.from_wire(wire, "assignment", b)


def test_a_key_wrapped_for_node_a_cannot_be_opened_by_node_b_even_when_it_claims_to_be_for_b():
    a, b = bundle_crypto.new_node_key(), bundle_crypto.new_node_key()
    wire = Bundle.of(MANIFESTS).to_wire(a.public_key)
    wire["key"]["to"] = bundle_crypto.public_key_text(b)
    with pytest.raises(DecryptionError, match="does not open with this node's bundle key"):
        Bundle.from_wire(wire, "assignment", b)
    with pytest.raises(DecryptionError):
        bundle_crypto.unwrap(wire["key"], b, "assignment")


@pytest.mark.parametrize(("path", "reason"), [
    (("data",), "bundle data does not decrypt with its key"),
    (("key", "wrapped"), "bundle key does not open"),
    (("key", "epk"), "bundle key does not open"),
])
def test_a_changed_ciphertext_wrapped_key_or_ephemeral_key_is_refused(path: tuple[str, ...], reason: str):
    node = bundle_crypto.new_node_key()
    wire = copy.deepcopy(Bundle.of(MANIFESTS).to_wire(node.public_key))
    holder = wire if len(path) == 1 else wire[path[0]]
    holder[path[-1]] = flip(holder[path[-1]], at=-1 if path[-1] == "epk" else -20)
    with pytest.raises(DecryptionError, match=reason):
        Bundle.from_wire(wire, "assignment", node)


def test_a_node_without_a_bundle_key_refuses_an_encrypted_bundle_and_says_to_join_again():
    wire = Bundle.of(MANIFESTS).to_wire(bundle_crypto.new_node_key().public_key)
    with pytest.raises(DecryptionError, match="this node has none .*join it again"):
        Bundle.from_wire(wire, "assignment")


def test_a_node_with_a_bundle_key_still_takes_a_plain_bundle_from_a_hub_older_than_encryption():
    bundle = Bundle.of(MANIFESTS)
    assert Bundle.from_wire(bundle.to_wire(), "assignment", bundle_crypto.new_node_key()) == bundle


def test_a_sealed_assignment_with_an_encrypted_bundle_opens_for_its_node_and_is_refused_elsewhere_as_such():
    hub, a, b = Ed25519PrivateKey.generate(), bundle_crypto.new_node_key(), bundle_crypto.new_node_key()
    payload = seal(assignment("sh-1"), hub, bundle_to=a.public_key)
    opened = open_sealed(payload, pinned(hub), node="sh-1", generation=1, bundle_key=a)
    assert opened.bundle is not None and opened.bundle.manifests == MANIFESTS
    # The same payload replayed to another node is refused for its address, before any decryption.
    with pytest.raises(AddressError, match="addressed to node 'sh-1'"):
        open_sealed(payload, pinned(hub), node="sh-2", generation=1, bundle_key=b)
    # A node of the right name with another key (it joined again) cannot open it.
    with pytest.raises(DecryptionError, match="not this node's"):
        open_sealed(payload, pinned(hub), node="sh-1", generation=1, bundle_key=b)
    # The wrapped key is signed: replacing it (say, with one for b) breaks the signature.
    envelope = json.loads(payload)
    envelope["body"]["bundle"]["key"] = bundle_crypto.wrap(bytes(32), b.public_key)
    with pytest.raises(SignatureError):
        open_sealed(encode_json(envelope), pinned(hub), node="sh-1", generation=1, bundle_key=b)


def test_an_encrypted_bundle_signed_after_being_changed_is_still_refused_by_its_aead():
    hub, node = Ed25519PrivateKey.generate(), bundle_crypto.new_node_key()
    body = assignment().to_body(node.public_key)
    body["bundle"]["data"] = flip(body["bundle"]["data"])
    envelope = {"v": 1, "body": body, "sig": base64.b64encode(hub.sign(encode_json(body))).decode()}
    with pytest.raises(DecryptionError, match="does not decrypt"):
        open_sealed(encode_json(envelope), pinned(hub), node="sh-1", generation=1, bundle_key=node)


def test_a_tombstone_carries_no_bundle_and_needs_no_key():
    hub = Ed25519PrivateKey.generate()
    tombstone = dataclasses.replace(assignment(), kind="tombstone", bundle=None)
    payload = seal(tombstone, hub, bundle_to=bundle_crypto.new_node_key().public_key)
    assert open_sealed(payload, pinned(hub), node="sh-1", generation=1).kind == "tombstone"


@pytest.mark.parametrize(("text", "reason"), [
    ("not base64!", "not base64"),
    (base64.b64encode(b"short").decode(), "must be 32 bytes, not 5"),
    (base64.b64encode(bytes(32)).decode(), "low-order point"),
    (42, "must be a base64 string"),
])
def test_a_bundle_key_the_hub_could_not_wrap_to_is_refused_when_it_is_given(text: object, reason: str):
    with pytest.raises(ProtocolError, match=reason):
        bundle_crypto.check_public_key(text)
    good = bundle_crypto.public_key_text(bundle_crypto.new_node_key())
    assert bundle_crypto.check_public_key(good) == good


def test_the_private_key_file_form_round_trips_and_another_key_type_is_refused():
    key = bundle_crypto.new_node_key()
    loaded = bundle_crypto.load_private_key_pem(bundle_crypto.private_key_pem(key))
    assert bundle_crypto.public_key_text(loaded) == bundle_crypto.public_key_text(key)
    ed = Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption())
    with pytest.raises(ValueError, match="not an X25519 private key"):
        bundle_crypto.load_private_key_pem(ed)
    with pytest.raises(ValueError):
        bundle_crypto.load_private_key_pem(b"garbage")
