"""Signed notices from the hub to one node: "look at your certificate and the hub's CAs now".

A CA rotation step (``edgehub ca rotate``) changes what a node must trust or
which CA must have issued its certificate. A node checks both at its
certificate checks (``edgeagent.renewal``, at most hourly); the hub's notice
makes it check at once, after a random wait of up to ``spread_seconds`` (the
hub spreads a large fleet's renewals out). The notice carries no trust
itself: the node then fetches the hub's signed facts (``edgeprotocol.hub_facts``),
fresh by its own nonce. So a notice replayed or kept past its time costs a
node one check, nothing more.

Where it travels: a node may read nothing on the broker but its own
assignments (``ec/v1/nodes/NODE/releases/#``, ``edgehub.broker_roles``) and
subscribes to ``ec/v1/nodes/NODE/releases/+/+``. A notice goes to
``ec/v1/nodes/NODE/releases/-/KIND``: ``-`` is no namespace (not a DNS
label), so no release can have that topic, and brokers configured before
notices existed pass it. Not retained: a node that is away checks anyway when
it comes back (at start, and when a TLS handshake fails).

Format: ``{"v": 1, "body": {...}, "sig": BASE64}``, the hub key's Ed25519
signature over ``NOTICE_CONTEXT`` and the body's canonical JSON (the context
keeps an assignment's signature from passing for a notice's and the other
way round). The body names the node and its join generation, as an
assignment's does.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from .errors import AddressError, ProtocolError, SignatureError
from .messages import VERSION, decode_json, encode_json

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

NOTICE_CONTEXT = b"edgecollab hub notice v1\0"
# The topic level that stands where a namespace would: never one (namespaces are DNS labels).
NOTICE_NAMESPACE = "-"
CA_NOTICE = "ca"
# A node waits at most this long before it acts on a notice, whatever the hub asks.
MAX_SPREAD_SECONDS = 3600.0


def notice_topic(node: str, kind: str = CA_NOTICE) -> str:
    return f"ec/v1/nodes/{node}/releases/{NOTICE_NAMESPACE}/{kind}"


@dataclass(frozen=True, slots=True)
class CaNotice:
    """The hub's CAs changed (``ca_generation``): check the node's trust and certificate within ``spread_seconds``."""

    node: str
    generation: int
    ca_generation: int
    spread_seconds: float
    at: str

    def body(self) -> dict[str, object]:
        return {"kind": CA_NOTICE, "node": self.node, "generation": self.generation,
                "ca_generation": self.ca_generation, "spread_seconds": self.spread_seconds, "at": self.at}


def seal_notice(notice: CaNotice, key: Ed25519PrivateKey) -> bytes:
    body = notice.body()
    signature = key.sign(NOTICE_CONTEXT + encode_json(body))
    return encode_json({"v": VERSION, "body": body, "sig": base64.b64encode(signature).decode()})


def open_notice(payload: bytes, key: VerifyKey, *, node: str, generation: int) -> CaNotice:
    """The notice in ``payload`` for ``node`` at join ``generation``, once its signature verifies with ``key`` (the
    hub key pinned at join). Raises SignatureError, AddressError or ProtocolError saying why not."""
    envelope = decode_json(payload, "hub notice")
    body, sig = envelope.get("body"), envelope.get("sig")
    if not isinstance(body, dict) or not isinstance(sig, str):
        raise ProtocolError("hub notice: needs an object 'body' and a string 'sig'")
    try:
        key.verify(NOTICE_CONTEXT + encode_json(body), base64.b64decode(sig, validate=True))
    except (BadSignatureError, ValueError) as exc:
        raise SignatureError("hub notice is not signed by the pinned hub key") from exc
    if body.get("node") != node or body.get("generation") != generation:
        raise AddressError(f"hub notice is for node {body.get('node')!r} at join generation "
                           f"{body.get('generation')!r}, not {node!r} at {generation}")
    spread, ca_generation = body.get("spread_seconds"), body.get("ca_generation")
    if body.get("kind") != CA_NOTICE:
        raise ProtocolError(f"hub notice of unknown kind {str(body.get('kind'))[:40]!r}")
    if isinstance(spread, bool) or not isinstance(spread, int | float) or not math.isfinite(spread) or spread < 0:
        raise ProtocolError("hub notice: 'spread_seconds' must be a number of seconds, 0 or more")
    if isinstance(ca_generation, bool) or not isinstance(ca_generation, int):
        raise ProtocolError("hub notice: 'ca_generation' must be a whole number")
    return CaNotice(node=node, generation=generation, ca_generation=ca_generation,
                    spread_seconds=min(float(spread), MAX_SPREAD_SECONDS), at=str(body.get("at", "")))
