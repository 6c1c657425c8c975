"""The hub itself: ``/healthz``, ``GET /api/v1/hub`` (its certificates), ``/metrics`` and the signed time."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from edgeprotocol.hub_facts import NONCE, TIME_PATH, facts_answer, facts_payload

from ..broker_access import ANONYMOUS_BROKER_WARNING
from ..ca_rotation import CA_ROTATION
from ..errors import BadRequest
from ..keys import CERTIFICATES, IDENTITY, METRICS, SETTINGS
from ..metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

ROUTES = web.RouteTableDef()


@ROUTES.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """Up, with what an operator should know about how it runs (``edgectl get nodes`` prints the warnings):
    an anonymous broker, and certificates that end within 30 days unless someone acts (edgehub.certificates)."""
    warnings = [] if request.app[SETTINGS].broker_identities else [ANONYMOUS_BROKER_WARNING]
    keeper = request.app.get(CERTIFICATES)
    return web.json_response({"ok": True, "warnings": warnings + (keeper.warnings if keeper is not None else [])})


@ROUTES.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition (the operator or the read-only viewer token)."""
    body = await asyncio.to_thread(request.app[METRICS].exposition)
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


@ROUTES.get(TIME_PATH, allow_head=False)  # GET only: it is open and rate-limited as such
async def hub_time(request: web.Request) -> web.Response:
    """The hub's time and trust bundle, signed with the hub key over the caller's nonce (edgeprotocol.hub_facts):
    a node measures its clock's offset from it, whatever its clock and whatever certificates it can check."""
    nonce = request.query.get("nonce", "")
    if not NONCE.match(nonce):
        raise BadRequest("must be 32 to 64 lower-case hex digits", field="nonce")
    identity = request.app[IDENTITY]
    at, bundle, issuing = time.time(), identity.trust_bundle_pem, identity.issuing_ca_fingerprint
    signature = identity.key.sign(facts_payload(time=at, nonce=nonce, ca_bundle=bundle, issuing_ca=issuing))
    answer = facts_answer(time=at, nonce=nonce, ca_bundle=bundle, issuing_ca=issuing, signature=signature)
    # No cache may keep an answer: it is for this nonce, now.
    return web.json_response(answer, headers={"Cache-Control": "no-store"})


@ROUTES.get("/api/v1/hub")
async def describe_hub(request: web.Request) -> web.Response:
    """``edgectl describe hub``: every certificate in the chain with ``not_after``, ``days_left`` and what
    renews it (``renewed_by``), the node certificates summed up, and the warnings."""
    view = await request.app[CERTIFICATES].describe_now()
    warnings = [] if request.app[SETTINGS].broker_identities else [ANONYMOUS_BROKER_WARNING]
    # The CAs, which issues, and the nodes on each (edgehub.ca_rotation), as 'edgehub ca status' shows them.
    rotation = await request.app[CA_ROTATION].status()
    return web.json_response({**view, "ca_rotation": rotation, "warnings": warnings + view["warnings"]})
