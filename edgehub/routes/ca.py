"""The hub's CAs: the one that issues (open: an agent checks it against its token's pin before it joins) and
the steps of a CA rotation (edgehub.ca_rotation)."""

from __future__ import annotations

from aiohttp import web

from ..ca_rotation import CA_ROTATION
from ..ca_rotation import STEPS as CA_STEPS
from ..errors import BadRequest
from ..keys import IDENTITY
from .parsing import body_field, json_body, shown

ROUTES = web.RouteTableDef()


@ROUTES.get("/api/v1/ca")
async def ca_certificate(request: web.Request) -> web.Response:
    """The hub CA's certificate: an agent fetches it before its join and checks it against its token's pin.
    ``ca_certificate`` is the CA that issues now (what new tokens pin); ``ca_bundle`` every CA trusted now."""
    identity = request.app[IDENTITY]
    return web.json_response({"ca_certificate": identity.ca_pem, "sha256": identity.ca_fingerprint,
                              "ca_bundle": identity.trust_bundle_pem})


@ROUTES.get("/api/v1/ca/rotation")
async def ca_rotation_status(request: web.Request) -> web.Response:
    """The hub's CAs, which issues, and how many joined nodes hold a certificate of each (edgehub.ca_rotation)."""
    return web.json_response(await request.app[CA_ROTATION].status())


@ROUTES.post("/api/v1/ca/rotation")
async def ca_rotation_step(request: web.Request) -> web.Response:
    """Take a CA rotation step: ``{"step": "begin"|"switch"|"finish", "force": false}``."""
    body = await json_body(request)
    step = body_field(body, "step", str)
    if step not in CA_STEPS:
        raise BadRequest(f"must be one of {', '.join(CA_STEPS)}, not {shown(step)}", field="step")
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise BadRequest(f"must be true or false, not {shown(force)}", field="force")
    return web.json_response(await request.app[CA_ROTATION].step(step, force=force))
