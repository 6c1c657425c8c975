"""Every wire decoder, fed arbitrary input, either decodes or raises ProtocolError: nothing else escapes.

Property-based (hypothesis): JSON documents shaped like each message with
fields of the wrong type, missing or extra, plus raw bytes and deep nesting.
"""

from __future__ import annotations

import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeprotocol import Event, NodeStatus, Presence, ProtocolError, Resync
from edgeprotocol.signing import open_sealed

KEY = Ed25519PrivateKey.generate().public_key()
DECODERS = {
    "status": NodeStatus.decode,
    "presence": Presence.decode,
    "event": Event.decode,
    "resync": Resync.decode,
    "assignment": lambda payload: open_sealed(payload, KEY, node="n1", generation=0),
}
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=True), st.text(max_size=20))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                      max_leaves=12)
FIELDS = ["v", "node", "seq", "observed_at", "releases", "conditions", "agent_version", "runtime", "state", "at",
          "reason", "message", "namespace", "release", "revision", "held", "body", "sig", "phase", "ready", "total",
          "desired_revision", "applied_revision", "type", "status", "since"]
shaped = st.dictionaries(st.sampled_from(FIELDS), values, max_size=10).map(lambda d: {**d, "v": 1})
releases = st.lists(st.dictionaries(st.sampled_from(FIELDS), values, max_size=10), max_size=3)
statuses = st.builds(lambda base, rels, conds: {**base, "node": "n1", "seq": 1, "observed_at": "t",
                                                "releases": rels, "conditions": conds},
                     shaped, releases, releases)


def decodes_or_refuses(decoder, payload: bytes) -> None:
    try:
        decoder(payload)
    except ProtocolError:
        pass


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
