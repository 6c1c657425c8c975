"""The hub's HTTP API (JSON), used by ``edgectl``, by agents at join, and by dashboards.

    POST   /api/v1/tokens                          create a join token for a pool
    POST   /api/v1/join                            exchange a token and a CSR for a node identity
    GET    /api/v1/nodes[/{name}]                  nodes with presence and reported releases
    GET    /api/v1/nodes/{name}/events             the node's most recent events
    GET    /api/v1/pools                           pools with node counts
    GET    /api/v1/components                      components with rollout counts
    POST   /api/v1/components                      apply a component spec with its chart archive
    GET    /api/v1/components/{namespace}/{name}   a component with its per-node status
    DELETE /api/v1/components/{namespace}/{name}   delete a component from every node
    GET    /healthz

Errors are ``{"error": "..."}`` with 400 (malformed request), 403 (join
refused), 404, 409 (concurrent change) or 422 (a spec or chart that does not
validate or render).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from deployer_plugin import ChartArchive, SpecError, component_fingerprint, parse_component, render_component
from edgeprotocol.topics import check_name

from .identity import CsrError
from .keys import DISPATCHER, IDENTITY, SETTINGS, STORE
from .store import ConcurrentChange, JoinRefused
from .tokens import TokenFormatError, new_token, parse_token
from .views import component_view, node_view, pool_views

logger = logging.getLogger(__name__)

# Kubernetes label syntax: an optional DNS-subdomain prefix, a name of up to
# 63 characters; values of up to 63 characters.
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
RESERVED_LABEL_PREFIX = "edgecollab.io/"
# A chart archive larger than this is refused before it is decoded.
MAX_REQUEST_BYTES = 16 * 1024 * 1024


class BadRequest(Exception):
    """A request the API refuses; carries the HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@web.middleware
async def json_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadRequest as exc:
        return web.json_response({"error": str(exc)}, status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.json_response({"error": exc.reason}, status=exc.status)


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise BadRequest(f"request body is not valid JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def _field(body: dict[str, Any], key: str, kind: type, *, required: bool = True, default: Any = None) -> Any:
    if key not in body or body[key] is None:
        if required:
            raise BadRequest(f"field {key!r} is required")
        return default
    value = body[key]
    if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
        raise BadRequest(f"field {key!r} must be of type {getattr(kind, '__name__', 'number')}")
    return value


def _name(value: str, what: str) -> str:
    try:
        return check_name(value, what)
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc


def validate_labels(labels: Any) -> dict[str, str]:
    if not isinstance(labels, dict):
        raise BadRequest("labels must be an object of strings")
    for key, value in labels.items():
        if not isinstance(value, str) or not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value):
            raise BadRequest(f"label {key}={value!r} is not a valid Kubernetes label")
        if key.startswith(RESERVED_LABEL_PREFIX):
            raise BadRequest(f"label {key}: the prefix {RESERVED_LABEL_PREFIX} is reserved for edgecollab")
    return labels


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def create_token(request: web.Request) -> web.Response:
    body = await _json_body(request)
    defaults = request.app[SETTINGS].tokens
    pool = _name(_field(body, "pool", str), "pool")
    ttl = float(_field(body, "ttl_seconds", (int, float), required=False, default=defaults.ttl_seconds))
    uses = _field(body, "uses", int, required=False, default=defaults.uses)
    if ttl <= 0:
        raise BadRequest("ttl_seconds must be positive")
    if uses < 1:
        raise BadRequest("uses must be at least 1")
    token = new_token()
    expires_at = await request.app[STORE].create_token(token, pool=pool, ttl_seconds=ttl, uses=uses)
    logger.info("Join token %s created for pool %s (%d use(s), %.0f s)", token.token_id, pool, uses, ttl)
    return web.json_response({"token": str(token), "pool": pool, "expires_at": expires_at, "uses": uses}, status=201)


async def join(request: web.Request) -> web.Response:
    body = await _json_body(request)
    app = request.app
    try:
        token = parse_token(_field(body, "token", str))
    except TokenFormatError as exc:
        raise BadRequest(str(exc), status=403) from exc
    node = _name(_field(body, "node", str), "node name")
    labels = validate_labels(_field(body, "labels", dict, required=False, default={}))
    requested_pool = _field(body, "pool", str, required=False)
    csr = _field(body, "csr", str)
    identity = app[IDENTITY]
    try:
        pool, certificate = await app[STORE].register_node(
            token, node=node, requested_pool=requested_pool, labels=labels,
            sign=lambda name: identity.sign_node_csr(csr, node=name),
        )
    except JoinRefused as exc:
        logger.warning("Join of %s refused: %s", node, exc)
        raise BadRequest(f"join refused: {exc}", status=403) from exc
    except CsrError as exc:
        raise BadRequest(f"join refused: {exc}") from exc
    logger.info("Node %s joined pool %s", node, pool)
    await app[DISPATCHER].sync()
    return web.json_response(
        {
            "node": node,
            "pool": pool,
            "labels": labels,
            "certificate": certificate,
            "ca_certificate": identity.ca_pem,
            "hub_public_key": identity.public_key_pem,
            "mqtt_url": app[SETTINGS].advertised_mqtt_url,
        },
        status=201,
    )


async def list_nodes(request: web.Request) -> web.Response:
    nodes = await request.app[STORE].list_nodes()
    return web.json_response([node_view(n) for n in nodes])


async def get_node(request: web.Request) -> web.Response:
    node = await request.app[STORE].get_node(request.match_info["name"])
    if node is None:
        raise BadRequest(f"node {request.match_info['name']!r} not found", status=404)
    return web.json_response(node_view(node))


async def node_events(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if await request.app[STORE].get_node(name) is None:
        raise BadRequest(f"node {name!r} not found", status=404)
    events = await request.app[STORE].list_events(name, limit=int(request.query.get("limit", "100")))
    return web.json_response([{"seq": e.seq, "at": e.at, "reason": e.reason, "message": e.message,
                               "namespace": e.namespace, "release": e.release, "revision": e.revision}
                              for e in events])


async def list_pools(request: web.Request) -> web.Response:
    return web.json_response(pool_views(await request.app[STORE].list_nodes()))


async def list_components(request: web.Request) -> web.Response:
    store = request.app[STORE]
    nodes = await store.list_nodes()
    assignments = await store.list_assignments()
    return web.json_response(
        [component_view(c, nodes, assignments, detail=False) for c in await store.list_components()]
    )


async def get_component(request: web.Request) -> web.Response:
    store = request.app[STORE]
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    comp = await store.get_component(namespace, name)
    if comp is None or comp.deleted:
        raise BadRequest(f"component {namespace}/{name} not found", status=404)
    view = component_view(comp, await store.list_nodes(), await store.list_assignments(), detail=True)
    return web.json_response(view)


async def apply_component(request: web.Request) -> web.Response:
    body = await _json_body(request)
    app = request.app
    store = app[STORE]
    try:
        component = parse_component(_field(body, "component", dict), source="request")
    except SpecError as exc:
        raise BadRequest(str(exc), status=422) from exc
    try:
        archive = base64.b64decode(_field(body, "chart_archive", str), validate=True)
    except binascii.Error as exc:
        raise BadRequest("chart_archive is not valid base64") from exc
    ident = f"{component.namespace}/{component.name}"
    try:
        # The Helm engine is a blocking native call: keep it off the event loop.
        chart = await asyncio.to_thread(ChartArchive.from_bytes, archive)
    except SpecError as exc:
        raise BadRequest(f"component {ident}: {exc}", status=422) from exc
    fingerprint = component_fingerprint(component, chart.fingerprint)
    existing = await store.get_component(component.namespace, component.name)
    if existing is not None and not existing.deleted and existing.fingerprint == fingerprint:
        return web.json_response({"component": ident, "revision": existing.revision, "changed": False})
    revision = (existing.revision if existing else 0) + 1
    try:
        renders = await asyncio.to_thread(render_component, component, archive, revision=revision)
    except SpecError as exc:
        raise BadRequest(str(exc), status=422) from exc
    try:
        await store.save_component(
            namespace=component.namespace, name=component.name, spec=component.to_document(),
            chart_archive=archive, chart_name=chart.name, chart_version=chart.version,
            fingerprint=fingerprint, revision=revision, renders=renders,
        )
    except ConcurrentChange as exc:
        raise BadRequest(f"{exc}; apply again", status=409) from exc
    logger.info("Component %s is now at revision %d", ident, revision)
    await app[DISPATCHER].sync()
    targets = sum(1 for a in await store.list_assignments()
                  if (a.namespace, a.release) == (component.namespace, component.name) and a.kind == "release")
    pools = {n.pool for n in await store.list_nodes()}
    warnings = [f"pool {p!r} has no nodes yet" for p in component.edge.node_pools if p not in pools]
    return web.json_response(
        {"component": ident, "revision": revision, "changed": True, "targets": targets, "warnings": warnings},
        status=201 if existing is None or existing.deleted else 200,
    )


async def delete_component(request: web.Request) -> web.Response:
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    revision = await request.app[STORE].delete_component(namespace, name)
    if revision is None:
        raise BadRequest(f"component {namespace}/{name} not found", status=404)
    logger.info("Component %s/%s deleted (revision %d)", namespace, name, revision)
    await request.app[DISPATCHER].sync()
    return web.json_response({"component": f"{namespace}/{name}", "revision": revision, "deleted": True})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/api/v1/tokens", create_token)
    app.router.add_post("/api/v1/join", join)
    app.router.add_get("/api/v1/nodes", list_nodes)
    app.router.add_get("/api/v1/nodes/{name}", get_node)
    app.router.add_get("/api/v1/nodes/{name}/events", node_events)
    app.router.add_get("/api/v1/pools", list_pools)
    app.router.add_get("/api/v1/components", list_components)
    app.router.add_post("/api/v1/components", apply_component)
    app.router.add_get("/api/v1/components/{namespace}/{name}", get_component)
    app.router.add_delete("/api/v1/components/{namespace}/{name}", delete_component)
