"""The hub's time and trust, signed: what ``GET /api/v1/time?nonce=HEX`` answers and how a node checks it.

A node whose clock is wrong (a board without a real-time clock that boots
with a stale date) cannot check a certificate's dates, and a renewal proof
stamped with its time is refused. So it asks the hub what time it is, with a
nonce of its own, and the hub answers its time, the CAs it trusts (PEM, the
trust bundle) and the SHA-256 of the CA that issues certificates now, signed
with the hub's key over ``facts_payload``:

    "edgecollab hub facts v1\\0" || canonical JSON of {"ca_bundle", "issuing_ca", "nonce", "time"}

(canonical JSON as everywhere in the protocol: keys sorted, no spaces;
``time`` a JSON number, Unix seconds). The node fetches it over TLS that
verifies nothing (its clock may be too wrong for any certificate to verify,
and the hub's chain may have changed) and trusts it because the signature
verifies with the hub key it pinned at join and the answer echoes its nonce:
nobody else can make the one, nobody can replay an old answer past the
other. The delay of the answer is the one thing a man in the middle can
add; the node bounds it (``edgeagent.clock``).

This module is the whole format: the hub builds the payload and signs it
with ``cryptography`` (its key, ``edgehub.identity``), a node verifies with
PyNaCl, so a running agent never loads ``cryptography``.
"""

from __future__ import annotations

import base64
import math
import re
from dataclasses import dataclass
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from .errors import ProtocolError, SignatureError
from .messages import encode_json

FACTS_CONTEXT = b"edgecollab hub facts v1\0"
# The path a node asks; ``nonce`` is 128 to 256 random bits in lower-case hex, as a renewal's.
TIME_PATH = "/api/v1/time"
NONCE = re.compile(r"^[0-9a-f]{32,64}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# A trust bundle is a few CA certificates; a larger answer is not the hub's.
MAX_BUNDLE_CHARS = 64 * 1024


@dataclass(frozen=True, slots=True)
class HubFacts:
    """What the hub said, checked: its time (Unix seconds), the PEM of every CA it trusts, and the SHA-256 (hex,
    of the DER) of the CA that issues certificates now."""

    time: float
    ca_bundle: str
    issuing_ca: str


def facts_payload(*, time: float, nonce: str, ca_bundle: str, issuing_ca: str) -> bytes:
    """The bytes the hub signs: the domain separator, then the canonical JSON of the facts and the node's nonce."""
    return FACTS_CONTEXT + encode_json({"time": time, "nonce": nonce, "ca_bundle": ca_bundle,
                                        "issuing_ca": issuing_ca})


def facts_answer(*, time: float, nonce: str, ca_bundle: str, issuing_ca: str, signature: bytes) -> dict[str, Any]:
    """The JSON object the hub answers, ``signature`` being its signature over ``facts_payload`` of the rest."""
    return {"time": time, "nonce": nonce, "ca_bundle": ca_bundle, "issuing_ca": issuing_ca,
            "signature": base64.b64encode(signature).decode()}


def open_facts(answer: Any, key: VerifyKey, *, nonce: str) -> HubFacts:
    """The facts in the hub's ``answer`` to a request with ``nonce``, once its signature verifies with ``key`` (the
    hub key pinned at join). Raises SignatureError when it does not, ProtocolError naming the field otherwise."""
    where = "the hub's time answer"
    if not isinstance(answer, dict):
        raise ProtocolError(f"{where} is not a JSON object")
    moment, echoed = answer.get("time"), answer.get("nonce")
    bundle, issuing, signature = answer.get("ca_bundle"), answer.get("issuing_ca"), answer.get("signature")
    if isinstance(moment, bool) or not isinstance(moment, int | float) or not math.isfinite(moment) or moment <= 0:
        raise ProtocolError(f"{where}: 'time' must be a positive number of Unix seconds, not {str(moment)[:40]!r}")
    if echoed != nonce:
        # An answer to another request (an old one replayed): whatever its signature, its time is not now.
        raise ProtocolError(f"{where} echoes nonce {str(echoed)[:70]!r}, not the {nonce!r} this node sent")
    if not isinstance(bundle, str) or not bundle or len(bundle) > MAX_BUNDLE_CHARS:
        raise ProtocolError(f"{where}: 'ca_bundle' must be PEM text of at most {MAX_BUNDLE_CHARS} characters")
    if not isinstance(issuing, str) or not _SHA256.match(issuing):
        raise ProtocolError(f"{where}: 'issuing_ca' must be a SHA-256 in lower-case hex")
    if not isinstance(signature, str):
        raise ProtocolError(f"{where}: 'signature' must be base64 text")
    payload = facts_payload(time=moment, nonce=nonce, ca_bundle=bundle, issuing_ca=issuing)
    try:
        key.verify(payload, base64.b64decode(signature, validate=True))
    except (BadSignatureError, ValueError) as exc:  # ValueError: not base64, not 64 bytes
        raise SignatureError(f"{where} is not signed by the hub key this node pinned at join") from exc
    return HubFacts(time=float(moment), ca_bundle=bundle, issuing_ca=issuing)
