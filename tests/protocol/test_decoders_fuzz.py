"""Every wire decoder, fed arbitrary input, either decodes or raises ProtocolError: nothing else escapes.

Property-based (hypothesis): JSON documents shaped like each message with
fields of the wrong type, missing or extra, plus raw bytes and deep nesting.
Signed assignments are refused at the signature, so the body and bundle
decoders behind it (plain and encrypted bundles) are fuzzed on their own too,
and a real encrypted bundle is fuzzed one field at a time.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeprotocol import Assignment, Bundle, Event, NodeStatus, Presence, ProtocolError, Resync, bundle_crypto
from edgeprotocol.messages import decode_json, now
from edgeprotocol.signing import load_public_key, open_sealed, public_key_pem

KEY = load_public_key(public_key_pem(Ed25519PrivateKey.generate().public_key()))
NODE_KEY = bundle_crypto.new_node_key()
DECODERS = {
    "status": NodeStatus.decode,
    "presence": Presence.decode,
    "event": Event.decode,
    "resync": Resync.decode,
    "assignment": lambda payload: open_sealed(payload, KEY, node="n1", generation=0, bundle_key=NODE_KEY),
    "assignment body": lambda payload: Assignment.from_body(decode_json(payload, "body"), bundle_key=NODE_KEY),
    "bundle": lambda payload: Bundle.from_wire(decode_json(payload, "bundle"), "bundle", NODE_KEY),
    "bundle, no key": lambda payload: Bundle.from_wire(decode_json(payload, "bundle"), "bundle"),
}
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=True), st.text(max_size=20))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                      max_leaves=12)
FIELDS = ["v", "node", "seq", "observed_at", "releases", "conditions", "agent_version", "runtime", "state", "at",
          "reason", "message", "namespace", "release", "revision", "held", "body", "sig", "phase", "ready", "total",
          "desired_revision", "applied_revision", "type", "status", "since",
          "kind", "issued_at", "generation", "pool", "chart", "bundle", "encoding", "data", "digest", "key", "alg",
          "to", "epk", "wrapped"]
ENCRYPTED = Assignment(node="n1", namespace="demo", release="web", revision=1, kind="release", issued_at=now(),
                       bundle=Bundle.of("kind: Secret\ndata:\n  password: czNjcjN0\n")).to_body(NODE_KEY.public_key)
# Real values of the fields of an encrypted bundle, so hypothesis mixes working parts with broken ones.
bundle_values = st.one_of(values, st.sampled_from(["gzip+base64", bundle_crypto.ENCODING, bundle_crypto.KEY_ALG,
                                                   ENCRYPTED["bundle"]["data"], *ENCRYPTED["bundle"]["key"].values()]),
                          st.just(ENCRYPTED["bundle"]["key"]))
shaped = st.dictionaries(st.sampled_from(FIELDS), st.one_of(values, bundle_values), max_size=10).map(
    lambda d: {**d, "v": 1})
releases = st.lists(st.dictionaries(st.sampled_from(FIELDS), values, max_size=10), max_size=3)
statuses = st.builds(lambda base, rels, conds: {**base, "node": "n1", "seq": 1, "observed_at": "t",
                                                "releases": rels, "conditions": conds},
                     shaped, releases, releases)


def decodes_or_refuses(decoder, payload: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decoder(payload)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(DECODERS)), doc=st.one_of(shaped, statuses, values))
def test_json_of_any_shape_decodes_or_raises_protocol_error(name: str, doc: object):
    decodes_or_refuses(DECODERS[name], json.dumps(doc).encode())


@settings(max_examples=100, deadline=None)
@given(name=st.sampled_from(sorted(DECODERS)), payload=st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_protocol_error(name: str, payload: bytes):
    decodes_or_refuses(DECODERS[name], payload)


def test_deeply_nested_json_is_refused_not_a_crash():
    for decoder in DECODERS.values():
        decodes_or_refuses(decoder, b"[" * 100_000 + b"]" * 100_000)


def flipped(text: str, at: int) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[at % len(raw)] ^= 0xFF
    return base64.b64encode(bytes(raw)).decode()


@settings(max_examples=150, deadline=None)
@given(field=st.sampled_from(["encoding", "data", "key", "key.alg", "key.to", "key.epk", "key.wrapped"]),
       replacement=st.one_of(values, st.integers(min_value=0, max_value=300)), drop=st.booleans())
def test_an_encrypted_bundle_with_any_one_field_changed_decodes_or_raises_protocol_error(
    field: str, replacement: object, drop: bool
):
    body = copy.deepcopy(ENCRYPTED)
    holder, key = (body["bundle"]["key"], field[4:]) if field.startswith("key.") else (body["bundle"], field)
    if drop:
        del holder[key]
    elif isinstance(replacement, int) and isinstance(holder[key], str) and field not in ("encoding", "key.alg"):
        holder[key] = flipped(holder[key], replacement)  # a byte of the ciphertext or a key changed
    else:
        holder[key] = replacement
    try:
        Assignment.from_body(body, bundle_key=NODE_KEY)
    except ProtocolError:
        return
    raise AssertionError(f"a bundle with {field} changed was taken")


def test_the_fuzzed_encrypted_bundle_opens_as_it_is():
    opened = Assignment.from_body(copy.deepcopy(ENCRYPTED), bundle_key=NODE_KEY)
    assert opened.bundle is not None and "password: czNjcjN0" in opened.bundle.manifests
