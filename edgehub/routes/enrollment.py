"""A node's join and the renewal of its certificate (both open: the token or the node's key is the proof);
decided by the enrollment service (edgehub.enrollment).

A renewal (``POST /api/v1/nodes/{name}/certificate``) is ``{"csr": PEM, "timestamp": UNIX_SECONDS,
"nonce": HEX, "proof": BASE64}``; the answer is the new certificate.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from typing import Any

from aiohttp import web

from edgeprotocol import bundle_crypto
from edgeprotocol.errors import ProtocolError

from ..errors import BadRequest
from ..keys import ENROLLMENT, IDENTITY, SETTINGS
from ..tokens import parse_token
from .parsing import body_field, json_body, shown, valid_name

ROUTES = web.RouteTableDef()

# Kubernetes label syntax: an optional DNS-subdomain prefix, a name of up to
# 63 characters; values of up to 63 characters.
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
RESERVED_LABEL_PREFIX = "edgecollab.io/"
# A renewal's nonce: 128 to 256 random bits, in hex.
_NONCE = re.compile(r"^[0-9a-f]{32,64}$")


def validate_labels(labels: Any) -> dict[str, str]:
    if not isinstance(labels, dict):
        raise BadRequest("must be an object of strings", field="labels")
    for key, value in labels.items():
        if not isinstance(value, str) or not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value):
            raise BadRequest(f"{shown(key)}={shown(value)} is not a valid Kubernetes label", field="labels")
        if key.startswith(RESERVED_LABEL_PREFIX):
            raise BadRequest(f"{key}: the prefix {RESERVED_LABEL_PREFIX} is reserved for edgecollab", field="labels")
    return labels


def _bundle_key(text: str) -> str:
    """The X25519 public key a node's bundles are encrypted to (base64 of 32 raw bytes); '' when the
    node sent none (an agent from before bundle encryption)."""
    if not text:
        return ""
    try:
        return bundle_crypto.check_public_key(text)
    except ProtocolError as exc:
        raise BadRequest(f"is not a usable X25519 public key: {exc}", field="bundle_key") from exc


@ROUTES.post("/api/v1/join")
async def join(request: web.Request) -> web.Response:
    """Exchange a token, a CSR and a bundle key for a node identity."""
    body = await json_body(request)
    token = parse_token(body_field(body, "token", str))
    node = valid_name(body_field(body, "node", str), "node")
    labels = validate_labels(body_field(body, "labels", dict, required=False, default={}))
    requested_pool = body_field(body, "pool", str, required=False)
    csr = body_field(body, "csr", str)
    bundle_key = _bundle_key(body_field(body, "bundle_key", str, required=False, default=""))
    joined = await request.app[ENROLLMENT].join(token, node=node, requested_pool=requested_pool, labels=labels,
                                                csr=csr, bundle_key=bundle_key)
    identity = request.app[IDENTITY]
    return web.json_response(
        {
            "node": node,
            "pool": joined.pool,
            "labels": labels,
            "generation": joined.generation,
            "certificate": joined.certificate,
            "ca_certificate": identity.ca_pem,
            # Every CA the node must trust (two during a CA rotation), and which one issues now.
            "ca_bundle": identity.trust_bundle_pem,
            "issuing_ca": identity.issuing_ca_fingerprint,
            "hub_public_key": identity.public_key_pem,
            "mqtt_url": request.app[SETTINGS].advertised_mqtt_url,
        },
        status=201,
    )


@ROUTES.post("/api/v1/nodes/{name}/certificate")
async def renew_certificate(request: web.Request) -> web.Response:
    """A node's new certificate, for a CSR of a new key, when the node's current key proves the request."""
    body = await json_body(request)
    node = valid_name(request.match_info["name"], "node")
    csr = body_field(body, "csr", str)
    timestamp = body_field(body, "timestamp", int)
    nonce = body_field(body, "nonce", str)
    if not _NONCE.match(nonce):
        raise BadRequest("must be 32 to 64 lower-case hex digits", field="nonce")
    try:
        proof = base64.b64decode(body_field(body, "proof", str), validate=True)
    except (ValueError, binascii.Error) as exc:
        raise BadRequest(f"is not valid base64 ({exc})", field="proof") from exc
    renewal = await request.app[ENROLLMENT].renew(node, csr=csr, timestamp=timestamp, nonce=nonce, proof=proof)
    identity = request.app[IDENTITY]
    return web.json_response({"node": node, "certificate": renewal.certificate, "ca_certificate": identity.ca_pem,
                              "ca_bundle": identity.trust_bundle_pem, "issuing_ca": identity.issuing_ca_fingerprint,
                              "not_after": _iso(renewal.not_after)})


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
