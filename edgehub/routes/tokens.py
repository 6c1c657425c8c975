"""Join tokens: ``POST /api/v1/tokens`` creates one for a pool (it carries the CA's SHA-256)."""

from __future__ import annotations

import logging

from aiohttp import web

from ..errors import BadRequest
from ..keys import ENROLLMENT_STORE, IDENTITY, SETTINGS
from ..settings import MAX_TOKEN_TTL_SECONDS, MAX_TOKEN_USES
from ..tokens import new_token
from .parsing import body_field, json_body, shown, valid_name

logger = logging.getLogger(__name__)

ROUTES = web.RouteTableDef()


@ROUTES.post("/api/v1/tokens")
async def create_token(request: web.Request) -> web.Response:
    body = await json_body(request)
    defaults = request.app[SETTINGS].tokens
    pool = valid_name(body_field(body, "pool", str), "pool")
    ttl = body_field(body, "ttl_seconds", (int, float), required=False, default=defaults.ttl_seconds)
    uses = body_field(body, "uses", int, required=False, default=defaults.uses)
    # Compared before any float(): an int too large for a float, NaN and
    # infinity all fail the comparison instead of raising.
    if not 0 < ttl <= MAX_TOKEN_TTL_SECONDS:
        raise BadRequest(
            f"must be above 0 and at most {MAX_TOKEN_TTL_SECONDS:.0f} seconds (30 days), not {shown(ttl)}",
            field="ttl_seconds",
        )
    if not 1 <= uses <= MAX_TOKEN_USES:
        raise BadRequest(f"must be from 1 to {MAX_TOKEN_USES}, not {shown(uses)}", field="uses")
    ttl = float(ttl)
    token = new_token()
    expires_at = await request.app[ENROLLMENT_STORE].create_token(token, pool=pool, ttl_seconds=ttl, uses=uses)
    logger.info("Join token %s created for pool %s (%d use(s), %.0f s)", token.token_id, pool, uses, ttl)
    # The printed token pins the CA, so the agent can check the hub before it sends the token.
    pin = request.app[IDENTITY].ca_fingerprint
    return web.json_response({"token": str(token.with_pin(pin)), "pool": pool, "expires_at": expires_at,
                              "uses": uses, "ca_sha256": pin}, status=201)
