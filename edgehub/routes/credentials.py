"""Broker credentials the hub issues for read-only dashboards: list, create (a CSR signed), revoke."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from ..broker_roles import DASHBOARD_TOPICS, dashboard_user
from ..errors import BadRequest, NotFound
from ..keys import BROKER_ACCESS, ENROLLMENT_STORE, IDENTITY, SETTINGS
from ..store.enrollment import CredentialRecord
from .parsing import body_field, json_body, valid_name

logger = logging.getLogger(__name__)

ROUTES = web.RouteTableDef()

CREDENTIAL_ROLES = ("dashboard",)


def _credential_view(record: CredentialRecord) -> dict[str, Any]:
    return {"name": record.name, "role": record.role, "username": dashboard_user(record.name),
            "created_at": record.created_at}


@ROUTES.get("/api/v1/credentials")
async def list_credentials(request: web.Request) -> web.Response:
    return web.json_response([_credential_view(r) for r in await request.app[ENROLLMENT_STORE].list_credentials()])


@ROUTES.post("/api/v1/credentials")
async def create_credential(request: web.Request) -> web.Response:
    """Issue a broker credential: the caller's CSR signed for ``dashboard.NAME``, a user the broker lets
    read summaries and nothing else. The key stays with the caller."""
    body = await json_body(request)
    app = request.app
    role = body_field(body, "role", str)
    if role not in CREDENTIAL_ROLES:
        raise BadRequest(f"role {role!r} is not one of {list(CREDENTIAL_ROLES)}", field="role")
    name = valid_name(body_field(body, "name", str), "name")
    csr = body_field(body, "csr", str)
    username = dashboard_user(name)
    identity = app[IDENTITY]
    record = await app[ENROLLMENT_STORE].add_credential(name, role,
                                                        lambda: identity.sign_csr(csr, common_name=username))
    await app[BROKER_ACCESS].admit_dashboard(name)
    logger.info("Broker credential %s (role %s) issued", username, role)
    return web.json_response({**_credential_view(record), "certificate": record.certificate,
                              # Every CA the hub trusts, as the dashboard's ca.crt: during a CA rotation the broker
                              # may present a certificate of either.
                              "ca_certificate": identity.trust_bundle_pem,
                              "mqtt_url": app[SETTINGS].advertised_mqtt_url,
                              "topics": list(DASHBOARD_TOPICS)}, status=201)


@ROUTES.delete("/api/v1/credentials/{name}")
async def delete_credential(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not await request.app[ENROLLMENT_STORE].delete_credential(name):
        raise NotFound(f"credential {name!r} not found")
    await request.app[BROKER_ACCESS].expel_dashboard(name)
    logger.warning("Broker credential %s revoked", dashboard_user(name))
    return web.json_response({"name": name, "revoked": True})
