"""The hub's HTTP API (JSON), used by ``edgectl``, by agents at join, and by dashboards.

    GET    /api/v1/ca                              the hub CA's certificate and its SHA-256, and every CA trusted (open)
    GET    /api/v1/ca/rotation                     the hub's CAs, which issues, how many nodes hold certificates of each
    POST   /api/v1/ca/rotation                     take a CA rotation step: {"step": "begin"|"switch"|"finish"}
    GET    /api/v1/time?nonce=HEX                  the hub's time and trust bundle, signed over the nonce (open)
    POST   /api/v1/tokens                          create a join token for a pool (it carries the CA's SHA-256)
    POST   /api/v1/join                            exchange a token, a CSR and a bundle key for a node identity (open)
    POST   /api/v1/nodes/{name}/certificate        renew a node's certificate: a CSR for a new key, proven by
                                                   the node's current key (open)
    GET    /api/v1/nodes[/{name}]                  nodes with presence and reported releases
    GET    /api/v1/nodes/{name}/events             the node's most recent events
    GET    /api/v1/events                          events of every node (or ?node=), in the order they arrived
    POST   /api/v1/nodes/{name}/reset              free the node's name for the next join (assignments kept)
    POST   /api/v1/nodes/{name}/revoke             refuse the node until it is reset
    GET    /api/v1/credentials                     broker credentials issued for dashboards
    POST   /api/v1/credentials                     sign a CSR for a read-only dashboard identity
    DELETE /api/v1/credentials/{name}              revoke one (the broker disconnects it)
    GET    /api/v1/pools                           pools with node counts
    GET    /api/v1/components                      components with rollout counts
    POST   /api/v1/components                      apply a component spec with its chart archive (none when
                                                   spec.chart is a chart repository or OCI reference: the hub
                                                   fetches and caches it, see edgehub.chart_sources)
    GET    /api/v1/components/{namespace}/{name}   a component with its per-node status
    DELETE /api/v1/components/{namespace}/{name}   delete a component from every node
    GET    /api/v1/components/{namespace}/{name}/history   its kept revisions, newest first, with their status
    POST   /api/v1/components/{namespace}/{name}/rollback  a new revision from an earlier one ({"to_revision": N})
    GET    /api/v1/components/{namespace}/{name}/rollout   its staged rollout (batches, failed node, deferred)
    POST   /api/v1/components/{namespace}/{name}/rollout/pause   no new batch starts
    POST   /api/v1/components/{namespace}/{name}/rollout/resume  a paused rollout goes on
    GET    /api/v1/hub                             the hub itself: every certificate in the chain (CA, broker, the
                                                   hub's own, each node's) with its end, and the warnings
    GET    /healthz
    GET    /metrics                                Prometheus metrics (operator or viewer token)
    GET    /api/v1/stream                          server-sent events: summaries, then each change
    GET    /  and  /ui/{file}                      the web dashboard's page and files (open; edgehub.dashboard)

Every endpoint but the open ones (join, certificate renewal, the CA, the
hub's time and ``GET /healthz``) needs the operator token as ``Authorization: Bearer
<token>`` (the hub writes it to ``STATE/admin-token``). Every request must
name a Host the hub answers to and come from no foreign web origin; a body
must be ``application/json``; joins, renewals, time requests and token
creations are rate-limited per source address. See :mod:`edgehub.auth` and
:mod:`edgehub.ratelimit`.

A renewal (``POST /api/v1/nodes/{name}/certificate``) is ``{"csr": PEM,
"timestamp": UNIX_SECONDS, "nonce": HEX, "proof": BASE64}``: ``proof`` is the
node's current key's Ed25519 signature over
``edgeprotocol.enrollment.renewal_payload``, checked against the key of the
certificate the hub holds for the node. The timestamp must be within
``RENEWAL_WINDOW_SECONDS`` of the hub's clock and the nonce new; the
certificate held must not have expired longer than ``offline_horizon_days``
ago (``edgehub.renewal_rules``). The answer is the new certificate;
the node's generation and assignments stay. It is sent once the broker refuses
the replaced certificate (``edgehub.broker_revocations``); a retry after a lost
answer is proven by the new key, which the hub then holds.

Secret values never leave the hub through a read: ``GET
/api/v1/components/{namespace}/{name}`` answers the spec with ``spec.values``
and each pool's ``spec.edge.poolValues`` replaced by ``{"hmac-sha256": HEX}``,
a digest of the values (canonical JSON) keyed by the hub's key: equal values
give equal digests, so a change shows, but a guess cannot be checked against it.

The history (``GET .../history``) lists each kept revision with its chart
(name, version, digest), when and how it was made (``origin``: ``apply``,
``apply by CLIENT`` when the apply body names its ``client``, as edgectl does,
``rollback to N``, ``delete``), its status and the
digests of its values, never the values; the current revision's status is its
live rollout (``deployed``, ``deploying R/N``, ``failed``, ``no targets``).
See docs/rollouts.md.

Errors are ``{"error": "..."}`` (plus ``"field"`` when one field is at fault)
with the status ``STATUS`` gives the exception's type: 400 (malformed request),
401 (no or wrong operator token), 403 (join refused: a bad token, or a name
registered to another key or revoked; renewal refused; or a foreign Origin), 404,
409 (concurrent change), 415 (a body that is not JSON), 421 (a Host the hub does
not answer to), 422 (a spec or chart that does not validate or render) or 429
(over a rate limit, with ``Retry-After``). See :mod:`edgehub.errors` for the
tree. Anything unexpected answers 500 with a generic message; the traceback
goes to the log.

Handlers parse the request, call the store or a service and shape the
answer; they raise, and ``json_errors`` alone turns exceptions into responses.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import datetime as dt
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgeprotocol import bundle_crypto
from edgeprotocol.enrollment import RENEWAL_WINDOW_SECONDS, renewal_payload
from edgeprotocol.errors import ProtocolError
from edgeprotocol.hub_facts import NONCE, TIME_PATH, facts_answer, facts_payload
from edgeprotocol.messages import Event
from edgeprotocol.topics import check_name

from .broker_access import ANONYMOUS_BROKER_WARNING
from .broker_roles import DASHBOARD_TOPICS, dashboard_user
from .ca_rotation import CA_ROTATION
from .ca_rotation import STEPS as CA_STEPS
from .components import ApplyOutcome
from .errors import (
    AlreadyExists,
    BadRequest,
    ConcurrentChange,
    ForeignOrigin,
    HubError,
    JoinRefused,
    MisdirectedHost,
    NotFound,
    RateLimited,
    RenewalRefused,
    RotationRefused,
    SpecRefused,
    Unauthorized,
    UnsupportedMediaType,
)
from .keys import (
    ASSIGNMENT_STORE,
    BROKER_ACCESS,
    CERTIFICATES,
    COMPONENT_STORE,
    COMPONENTS,
    DISPATCHER,
    ENROLLMENT_STORE,
    IDENTITY,
    METRICS,
    REPORT_STORE,
    REVOCATIONS,
    ROLLOUTS,
    SETTINGS,
    SUMMARIES,
)
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .renewal_rules import check_certificate_age, check_timestamp
from .settings import MAX_TOKEN_TTL_SECONDS, MAX_TOKEN_USES
from .store.assignments import AssignmentRecord, AssignmentStore
from .store.components import ComponentRecord, RevisionRecord
from .store.enrollment import CredentialRecord, NodeRecord
from .store.reports import ReportStore
from .store.schema import MAX_SEQ
from .summaries import rollout
from .tokens import new_token, parse_token
from .views import component_view, node_view, pool_views, release_targets

logger = logging.getLogger(__name__)

# Kubernetes label syntax: an optional DNS-subdomain prefix, a name of up to
# 63 characters; values of up to 63 characters.
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
RESERVED_LABEL_PREFIX = "edgecollab.io/"
# A chart archive larger than this is refused before it is decoded.
MAX_REQUEST_BYTES = 16 * 1024 * 1024
# GET .../events answers this many events unless ?limit= asks otherwise, and
# never more than the maximum (a node keeps 500 by default).
DEFAULT_EVENTS_LIMIT = 100
MAX_EVENTS_LIMIT = 1000
# What an apply may name as its client ("edgectl"): the history says "apply by CLIENT".
_CLIENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
# A renewal's nonce: 128 to 256 random bits, in hex.
_NONCE = re.compile(r"^[0-9a-f]{32,64}$")

# The one place that maps a refusal to its HTTP status. A type not listed
# answers the status of its nearest listed base: CsrError is a BadRequest
# (400).
STATUS: dict[type[HubError], int] = {
    HubError: 400,
    BadRequest: 400,
    Unauthorized: 401,
    JoinRefused: 403,
    RenewalRefused: 403,
    ForeignOrigin: 403,
    NotFound: 404,
    ConcurrentChange: 409,
    RotationRefused: 409,
    AlreadyExists: 409,
    UnsupportedMediaType: 415,
    MisdirectedHost: 421,
    SpecRefused: 422,
    RateLimited: 429,
}
INTERNAL_ERROR = "internal error in the hub; its log has the details"


def status_of(exc: HubError) -> int:
    return next(STATUS[kind] for kind in type(exc).__mro__ if kind in STATUS)


def _headers_of(exc: HubError) -> dict[str, str] | None:
    if isinstance(exc, RateLimited):
        return {"Retry-After": str(exc.retry_after)}
    if isinstance(exc, Unauthorized):
        return {"WWW-Authenticate": 'Bearer realm="edgehub"'}
    return None


@web.middleware
async def json_errors(request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Answer every error as ``{"error": ...}`` JSON, never aiohttp's HTML or text pages."""
    try:
        return await handler(request)
    except HubError as exc:
        status = status_of(exc)
        # A source over its rate limit is logged once by the limiter, not per request.
        logger.log(logging.DEBUG if isinstance(exc, RateLimited) else logging.INFO,
                   "Refused %s %s with %d: %s", request.method, request.path, status, exc)
        body: dict[str, Any] = {"error": str(exc)}
        if isinstance(exc, BadRequest) and exc.field:
            body["field"] = exc.field
        return web.json_response(body, status=status, headers=_headers_of(exc))
    except web.HTTPException as exc:
        # aiohttp's own: no such route (404), wrong method (405), body too large (413).
        if exc.status < 400:
            raise
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return web.json_response({"error": exc.reason}, status=exc.status, headers=allow)
    except Exception:
        logger.exception("Unexpected error answering %s %s; answering 500", request.method, request.path)
        return web.json_response({"error": INTERNAL_ERROR}, status=500)


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, RecursionError) as exc:
        # RecursionError: JSON nested deeper than the parser's stack.
        raise BadRequest(f"request body is not valid JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


_KINDS = {str: "a string", int: "an integer", dict: "an object", (int, float): "a number"}


def _field(body: dict[str, Any], key: str, kind: type | tuple[type, ...], *, required: bool = True,
           default: Any = None) -> Any:
    if key not in body or body[key] is None:
        if required:
            raise BadRequest("is required", field=key)
        return default
    value = body[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BadRequest(f"must be {_KINDS.get(kind, kind)}, not {type(value).__name__}", field=key)
    return value


def _shown(value: Any) -> str:
    """``repr(value)``, cut short: an error message must not echo a megabyte back."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _name(value: str, key: str) -> str:
    try:
        return check_name(value, key)
    except ValueError as exc:
        # check_name's message echoes the whole value: keep only its rule.
        rule = str(exc).partition(" is not a valid name: ")[2] or "see the naming rules"
        raise BadRequest(f"{_shown(value)} is not a valid name: {rule}", field=key) from exc


def _query_int(request: web.Request, key: str, *, default: int, low: int, high: int) -> int:
    text = request.query.get(key)
    if text is None:
        return default
    refusal = BadRequest(f"must be an integer from {low} to {high}, not {_shown(text)}", field=key)
    try:
        value = int(text)
    except ValueError as exc:
        raise refusal from exc
    if not low <= value <= high:
        raise refusal
    return value


def validate_labels(labels: Any) -> dict[str, str]:
    if not isinstance(labels, dict):
        raise BadRequest("must be an object of strings", field="labels")
    for key, value in labels.items():
        if not isinstance(value, str) or not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value):
            raise BadRequest(f"{_shown(key)}={_shown(value)} is not a valid Kubernetes label", field="labels")
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


async def healthz(request: web.Request) -> web.Response:
    """Up, with what an operator should know about how it runs (``edgectl get nodes`` prints the warnings):
    an anonymous broker, and certificates that end within 30 days unless someone acts (edgehub.certificates)."""
    warnings = [] if request.app[SETTINGS].broker_identities else [ANONYMOUS_BROKER_WARNING]
    keeper = request.app.get(CERTIFICATES)
    return web.json_response({"ok": True, "warnings": warnings + (keeper.warnings if keeper is not None else [])})


async def describe_hub(request: web.Request) -> web.Response:
    """``edgectl describe hub``: every certificate in the chain with ``not_after``, ``days_left`` and what
    renews it (``renewed_by``), the node certificates summed up, and the warnings."""
    view = await request.app[CERTIFICATES].describe_now()
    warnings = [] if request.app[SETTINGS].broker_identities else [ANONYMOUS_BROKER_WARNING]
    # The CAs, which issues, and the nodes on each (edgehub.ca_rotation), as 'edgehub ca status' shows them.
    rotation = await request.app[CA_ROTATION].status()
    return web.json_response({**view, "ca_rotation": rotation, "warnings": warnings + view["warnings"]})


async def ca_certificate(request: web.Request) -> web.Response:
    """The hub CA's certificate: an agent fetches it before its join and checks it against its token's pin.
    ``ca_certificate`` is the CA that issues now (what new tokens pin); ``ca_bundle`` every CA trusted now."""
    identity = request.app[IDENTITY]
    return web.json_response({"ca_certificate": identity.ca_pem, "sha256": identity.ca_fingerprint,
                              "ca_bundle": identity.trust_bundle_pem})


async def ca_rotation_status(request: web.Request) -> web.Response:
    """The hub's CAs, which issues, and how many joined nodes hold a certificate of each (edgehub.ca_rotation)."""
    return web.json_response(await request.app[CA_ROTATION].status())


async def ca_rotation_step(request: web.Request) -> web.Response:
    """Take a CA rotation step: ``{"step": "begin"|"switch"|"finish", "force": false}``."""
    body = await _json_body(request)
    step = _field(body, "step", str)
    if step not in CA_STEPS:
        raise BadRequest(f"must be one of {', '.join(CA_STEPS)}, not {_shown(step)}", field="step")
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise BadRequest(f"must be true or false, not {_shown(force)}", field="force")
    return web.json_response(await request.app[CA_ROTATION].step(step, force=force))


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


async def create_token(request: web.Request) -> web.Response:
    body = await _json_body(request)
    defaults = request.app[SETTINGS].tokens
    pool = _name(_field(body, "pool", str), "pool")
    ttl = _field(body, "ttl_seconds", (int, float), required=False, default=defaults.ttl_seconds)
    uses = _field(body, "uses", int, required=False, default=defaults.uses)
    # Compared before any float(): an int too large for a float, NaN and
    # infinity all fail the comparison instead of raising.
    if not 0 < ttl <= MAX_TOKEN_TTL_SECONDS:
        raise BadRequest(
            f"must be above 0 and at most {MAX_TOKEN_TTL_SECONDS:.0f} seconds (30 days), not {_shown(ttl)}",
            field="ttl_seconds",
        )
    if not 1 <= uses <= MAX_TOKEN_USES:
        raise BadRequest(f"must be from 1 to {MAX_TOKEN_USES}, not {_shown(uses)}", field="uses")
    ttl = float(ttl)
    token = new_token()
    expires_at = await request.app[ENROLLMENT_STORE].create_token(token, pool=pool, ttl_seconds=ttl, uses=uses)
    logger.info("Join token %s created for pool %s (%d use(s), %.0f s)", token.token_id, pool, uses, ttl)
    # The printed token pins the CA, so the agent can check the hub before it sends the token.
    pin = request.app[IDENTITY].ca_fingerprint
    return web.json_response({"token": str(token.with_pin(pin)), "pool": pool, "expires_at": expires_at,
                              "uses": uses, "ca_sha256": pin}, status=201)


async def join(request: web.Request) -> web.Response:
    body = await _json_body(request)
    app = request.app
    token = parse_token(_field(body, "token", str))
    node = _name(_field(body, "node", str), "node")
    labels = validate_labels(_field(body, "labels", dict, required=False, default={}))
    requested_pool = _field(body, "pool", str, required=False)
    csr = _field(body, "csr", str)
    bundle_key = _bundle_key(_field(body, "bundle_key", str, required=False, default=""))
    identity = app[IDENTITY]
    try:
        joined = await app[ENROLLMENT_STORE].register_node(
            token, node=node, requested_pool=requested_pool, labels=labels,
            sign=lambda name: identity.sign_node_csr(csr, node=name, lifetime=app[SETTINGS].node_certificate_lifetime),
            bundle_key=bundle_key,
        )
    except JoinRefused as exc:
        # Worth a warning: someone holds a token that no longer works, or guesses.
        logger.warning("Join of %s refused: %s", node, exc)
        raise
    logger.info("Node %s joined pool %s (join generation %d%s)", node, joined.pool, joined.generation,
                "" if bundle_key else "; no bundle key: its bundles go unencrypted")
    # Before the answer: the agent connects to the broker right after it.
    await app[BROKER_ACCESS].admit_node(node)
    await app[DISPATCHER].sync(node=node)
    if joined.rejoined:
        # What was kept for the name is sealed again for the new generation.
        await app[DISPATCHER].publish_node(node)
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
            "mqtt_url": app[SETTINGS].advertised_mqtt_url,
        },
        status=201,
    )


async def renew_certificate(request: web.Request) -> web.Response:
    """A node's new certificate, for a CSR of a new key, when the node's current key proves the request."""
    body = await _json_body(request)
    app = request.app
    node = _name(request.match_info["name"], "node")
    csr = _field(body, "csr", str)
    timestamp = _field(body, "timestamp", int)
    nonce = _field(body, "nonce", str)
    if not _NONCE.match(nonce):
        raise BadRequest("must be 32 to 64 lower-case hex digits", field="nonce")
    try:
        proof = base64.b64decode(_field(body, "proof", str), validate=True)
    except (ValueError, binascii.Error) as exc:
        raise BadRequest(f"is not valid base64 ({exc})", field="proof") from exc
    now = time.time()
    check_timestamp(timestamp, now=now)
    settings = app[SETTINGS]
    identity, lifetime, horizon = app[IDENTITY], settings.node_certificate_lifetime, settings.offline_horizon_days
    notes: list[str] = []

    def renew(current_pem: str) -> str:
        # Called by the store only for a node that is joined: a revoked or reset one is refused before, at any age.
        current = x509.load_pem_x509_certificate(current_pem.encode())
        key = current.public_key()
        payload = renewal_payload(node=node, csr=csr, timestamp=timestamp, nonce=nonce)
        try:
            if not isinstance(key, Ed25519PublicKey):
                raise InvalidSignature
            key.verify(proof, payload)
        except InvalidSignature as exc:
            raise RenewalRefused(f"the proof does not verify against the current certificate of node {node!r} "
                                 f"(serial {current.serial_number:x}): only the node's own key can renew it") from exc
        # After the proof: only the node itself learns how its certificate stands.
        note = check_certificate_age(node, current.not_valid_after_utc, now=dt.datetime.fromtimestamp(now, dt.UTC),
                                     horizon_days=horizon)
        if note:
            notes.append(note)
        return identity.sign_node_csr(csr, node=node, lifetime=lifetime)

    try:
        certificate = await app[ENROLLMENT_STORE].renew_certificate(node, nonce=nonce, at=float(timestamp),
                                                         forget_before=now - RENEWAL_WINDOW_SECONDS, renew=renew)
    except RenewalRefused as exc:
        logger.warning("Certificate renewal of %s refused: %s", node, exc)
        raise
    # The replaced certificate is refused by the broker before the node holds the new one. Should this
    # answer be lost, the node retries with a proof by its new key (the hub holds that key now) and gets
    # its certificate again; until then its MQTT link waits, its workloads run on.
    await app[REVOCATIONS].refresh()
    issued = x509.load_pem_x509_certificate(certificate.encode())
    logger.info("Node %s renewed its certificate (serial %x, valid until %s)%s", node, issued.serial_number,
                issued.not_valid_after_utc.isoformat(), f"; {notes[0]}" if notes else "")
    return web.json_response({"node": node, "certificate": certificate, "ca_certificate": identity.ca_pem,
                              "ca_bundle": identity.trust_bundle_pem, "issuing_ca": identity.issuing_ca_fingerprint,
                              "not_after": _iso(issued.not_valid_after_utc)})


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


async def list_nodes(request: web.Request) -> web.Response:
    nodes = await request.app[REPORT_STORE].list_nodes()
    return web.json_response([node_view(n) for n in nodes])


async def get_node(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    node = await request.app[REPORT_STORE].get_node(name)
    if node is None:
        raise NotFound(f"node {name!r} not found")
    return web.json_response(node_view(node))


def _event_view(e: Event) -> dict[str, Any]:
    return {"seq": e.seq, "at": e.at, "reason": e.reason, "message": e.message, "namespace": e.namespace,
            "release": e.release, "revision": e.revision}


async def node_events(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    limit = _query_int(request, "limit", default=DEFAULT_EVENTS_LIMIT, low=1, high=MAX_EVENTS_LIMIT)
    if await request.app[REPORT_STORE].get_node(name) is None:
        raise NotFound(f"node {name!r} not found")
    events = await request.app[REPORT_STORE].list_events(name, limit=limit)
    return web.json_response([_event_view(e) for e in events])


async def list_events(request: web.Request) -> web.Response:
    """Events of every node, or of ``?node=``, in the order they arrived at the hub (``edgectl events``).

    ``?limit=`` (1 to 1000, default 100) bounds the answer. Without ``?after=`` it is the latest
    events; with ``?after=CURSOR`` (a ``cursor`` of an earlier answer) the first that arrived after
    it, so a follower asks again with the last cursor it holds and misses none. Each event carries
    its ``node`` and ``cursor``.
    """
    limit = _query_int(request, "limit", default=DEFAULT_EVENTS_LIMIT, low=1, high=MAX_EVENTS_LIMIT)
    after = _query_int(request, "after", default=0, low=0, high=MAX_SEQ) if "after" in request.query else None
    node = request.query.get("node")
    if node is not None:
        node = _name(node, "node")
        if await request.app[REPORT_STORE].get_node(node) is None:
            raise NotFound(f"node {node!r} not found")
    logged = await request.app[REPORT_STORE].list_event_log(node=node, after=after, limit=limit)
    return web.json_response([{"node": e.event.node, "cursor": e.cursor, **_event_view(e.event)} for e in logged])


async def _shut_out(request: web.Request, change: Callable[[str], Awaitable[NodeRecord | None]],
                    ) -> tuple[str, NodeRecord, int]:
    """Change the standing of the node the path names (404 if there is none), clear its retained assignments
    and expel it from the broker; the node's name and record, and how many assignments it held."""
    name = request.match_info["name"]
    node = await change(name)
    if node is None:
        raise NotFound(f"node {name!r} not found")
    held = await request.app[DISPATCHER].withdraw_node(name)
    await request.app[BROKER_ACCESS].expel_node(name)
    # The plugin refuses the name until it joins again; the revocation list refuses this certificate after
    # that too (a reset node's old certificate would otherwise serve the next holder's name until it expires).
    await request.app[REVOCATIONS].refresh()
    return name, node, held


async def reset_node(request: web.Request) -> web.Response:
    """Free a node's name: the next join with it is accepted (at the next generation) and gets the
    node's assignments, which are kept; until then nothing is published to the name and nothing it sends is taken."""
    name, node, kept = await _shut_out(request, request.app[ENROLLMENT_STORE].reset_node)
    logger.warning("Node %s reset by the operator: its name is free for the next join; %d assignment(s) kept",
                   name, kept)
    return web.json_response({"node": name, "standing": node.standing, "generation": node.generation,
                              "next_generation": node.generation + 1, "assignments_kept": kept,
                              "broker_refuses": request.app[BROKER_ACCESS].enabled})


async def revoke_node(request: web.Request) -> web.Response:
    """Refuse a node: its messages are ignored, its retained assignments cleared and nothing more
    published to it, and its name cannot join until ``reset``. Its assignments are kept in the store."""
    name, node, withheld = await _shut_out(request, request.app[ENROLLMENT_STORE].revoke_node)
    logger.warning("Node %s revoked by the operator: %d assignment(s) withheld; it is refused until reset",
                   name, withheld)
    return web.json_response({"node": name, "standing": node.standing, "generation": node.generation,
                              "assignments_withheld": withheld,
                              "broker_refuses": request.app[BROKER_ACCESS].enabled})


async def list_pools(request: web.Request) -> web.Response:
    return web.json_response(pool_views(await request.app[REPORT_STORE].list_nodes(with_certificate=False)))


async def list_components(request: web.Request) -> web.Response:
    by_name, targets = await _fleet_targets(request.app[REPORT_STORE], request.app[ASSIGNMENT_STORE])
    return web.json_response([component_view(c, by_name, targets.get((c.namespace, c.name), []), detail=False)
                              for c in await request.app[COMPONENT_STORE].list_components()])


async def _fleet_targets(reports: ReportStore, assignments: AssignmentStore
                         ) -> tuple[dict[str, NodeRecord], dict[tuple[str, str], list[AssignmentRecord]]]:
    """Every node by name, and each component's release assignments: what its rollout is counted over."""
    return ({n.name: n for n in await reports.list_nodes(with_certificate=False)},
            release_targets(await assignments.list_assignments()))


async def get_component(request: web.Request) -> web.Response:
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    comp = await request.app[COMPONENT_STORE].get_component(namespace, name)
    if comp is None or comp.deleted:
        raise NotFound(f"component {namespace}/{name} not found")
    by_name, targets = await _fleet_targets(request.app[REPORT_STORE], request.app[ASSIGNMENT_STORE])
    view = component_view(comp, by_name, targets.get((namespace, name), []), detail=True)
    view["spec"] = without_values(view["spec"], _values_digest_key(request.app))
    return web.json_response(view)


def _values_digest_key(app: web.Application) -> bytes:
    """A key for values digests, derived from the hub's own key: stable across restarts, never shown."""
    raw = app[IDENTITY].key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                          serialization.NoEncryption())
    return hashlib.sha256(b"edgecollab values digest v1\0" + raw).digest()


def values_digest(values: Any, key: bytes) -> dict[str, str]:
    canonical = json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return {"hmac-sha256": hmac.new(key, canonical, hashlib.sha256).hexdigest()}


def without_values(document: dict[str, Any], key: bytes) -> dict[str, Any]:
    """A component document with ``spec.values`` and each pool's ``spec.edge.poolValues`` replaced by digests."""
    shown = copy.deepcopy(document)
    spec = shown.get("spec")
    if isinstance(spec, dict):
        if "values" in spec:
            spec["values"] = values_digest(spec["values"], key)
        edge = spec.get("edge")
        if isinstance(edge, dict) and isinstance(edge.get("poolValues"), dict):
            edge["poolValues"] = {pool: values_digest(v, key) for pool, v in edge["poolValues"].items()}
    return shown


def _apply_answer(outcome: ApplyOutcome) -> web.Response:
    answer: dict[str, Any] = {"component": outcome.component, "revision": outcome.revision, "changed": outcome.changed}
    if not outcome.changed:
        if outcome.warnings:  # a cluster component left alone says why
            answer["warnings"] = list(outcome.warnings)
        return web.json_response(answer)
    answer.update(targets=outcome.targets, warnings=list(outcome.warnings), notes=outcome.notes)
    if outcome.rolled_back_to:
        answer["rolled_back_to"] = outcome.rolled_back_to
    return web.json_response(answer, status=201 if outcome.created else 200)


async def apply_component(request: web.Request) -> web.Response:
    body = await _json_body(request)
    document = _field(body, "component", dict)
    # Left out when spec.chart names a chart repository or OCI reference: the hub fetches it.
    encoded = _field(body, "chart_archive", str, required=False)
    try:
        archive = None if encoded is None else base64.b64decode(encoded, validate=True)
    except ValueError as exc:
        # binascii.Error, or a string with non-ASCII characters.
        raise BadRequest(f"is not valid base64 ({exc})", field="chart_archive") from exc
    client = _field(body, "client", str, required=False)
    if client is not None and not _CLIENT.match(client):
        raise BadRequest(f"{_shown(client)} is not a client name: up to 32 letters, digits, '.', '_' or '-'",
                         field="client")
    try:
        outcome = await request.app[COMPONENTS].apply(document, archive,
                                                      origin=f"apply by {client}" if client else "apply")
    except SpecRefused:
        request.app[METRICS].apply_refused()
        raise
    return _apply_answer(outcome)


async def rollback_component(request: web.Request) -> web.Response:
    """A new revision from an earlier one (``{"to_revision": N}``; default the one before the current),
    answered as an apply is, with ``rolled_back_to``."""
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    body = await _json_body(request) if request.body_exists else {}
    to_revision = _field(body, "to_revision", int, required=False)
    if to_revision is not None and not 1 <= to_revision <= MAX_SEQ:
        raise BadRequest(f"must be a revision number from 1, not {_shown(to_revision)}", field="to_revision")
    try:
        outcome = await request.app[COMPONENTS].rollback(namespace, name, to_revision)
    except SpecRefused:
        request.app[METRICS].apply_refused()
        raise
    return _apply_answer(outcome)


async def component_rollout(request: web.Request) -> web.Response:
    """The component's staged rollout: state, batches with their nodes, the failed node and why, deferred
    offline nodes (404 for a component without one)."""
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    return web.json_response(await request.app[ROLLOUTS].describe(namespace, name))


async def pause_rollout(request: web.Request) -> web.Response:
    """No new batch starts; what is assigned stays (409 unless the rollout is progressing)."""
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    return web.json_response(await request.app[ROLLOUTS].pause(namespace, name))


async def resume_rollout(request: web.Request) -> web.Response:
    """A paused rollout goes on; a batch that failed under ``onFailure: Pause`` is checked afresh."""
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    return web.json_response(await request.app[ROLLOUTS].resume(namespace, name))


def live_status(counts: dict[str, Any]) -> str:
    """The current revision's status from its rollout counts (``summaries.rollout``)."""
    state = counts["rollout"]
    if state == "complete":
        return "deployed"
    if state == "failing":
        return "failed"
    if state == "no targets":
        return "no targets"
    return f"deploying {counts['ready']}/{counts['desired']}"


def history_view(comp: ComponentRecord, revisions: list[RevisionRecord], counts: dict[str, Any] | None,
                 key: bytes) -> list[dict[str, Any]]:
    """Each kept revision, newest first: the current one with its live status (and ``rollout`` counts),
    values as digests (null when the revision holds no spec: a deletion, or dropped with the component)."""
    shown = []
    for r in revisions:
        current = r.revision == comp.revision
        spec = r.spec.get("spec", {}) if r.has_spec else None
        status: str = r.status
        if current and r.status == "current":
            status = live_status(counts) if counts is not None else "deployed"
        item: dict[str, Any] = {
            "revision": r.revision, "created_at": r.created_at, "origin": r.origin, "status": status,
            "current": current,
            "chart": {"name": r.chart_name, "version": r.chart_version, "digest": r.chart_digest},
            "fingerprint": r.fingerprint,
            "values": values_digest(spec.get("values", {}), key) if spec is not None else None,
            "pool_values": ({pool: values_digest(v, key) for pool, v in spec.get("edge", {}).get("poolValues", {})
                             .items()} if spec is not None else None),
        }
        if current and counts is not None:
            item["rollout"] = counts
        shown.append(item)
    return shown


async def component_history(request: web.Request) -> web.Response:
    """The component's kept revisions, newest first; a deleted component's too (its last is the deletion)."""
    component_store = request.app[COMPONENT_STORE]
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    comp = await component_store.get_component(namespace, name)
    if comp is None:
        raise NotFound(f"component {namespace}/{name} not found")
    revisions = await component_store.list_revisions(namespace, name)
    counts = None
    if not comp.deleted:
        counts = rollout(comp, await request.app[REPORT_STORE].list_nodes(with_certificate=False),
                         await request.app[ASSIGNMENT_STORE].list_assignments())
    key = _values_digest_key(request.app)
    return web.json_response(await asyncio.to_thread(history_view, comp, revisions, counts, key))


# A comment line this often keeps proxies and the browser from closing a quiet stream.
STREAM_KEEPALIVE_SECONDS = 15.0
# Set when the hub begins to stop: every open stream ends at once (a stream never ends by itself, and
# aiohttp would wait for it up to its shutdown timeout, a minute, before the hub could stop).
STREAMS_CLOSING = web.AppKey("streams_closing", asyncio.Event)


async def _close_streams(app: web.Application) -> None:
    app[STREAMS_CLOSING].set()


async def stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events: every current summary, then each change as it happens (the web dashboard's feed).

    ``event: summary`` with ``data: {"topic": ..., "summary": {...} | null}`` (null: it is gone), and
    ``event: reset`` when this client fell too far behind (it reconnects and starts again). The stream
    ends when the hub stops; the client reconnects.
    """
    publisher = request.app[SUMMARIES]
    closing = request.app[STREAMS_CLOSING]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)

    async def send(event: str, data: Any) -> None:
        await response.write(f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode())

    stopping = asyncio.ensure_future(closing.wait())
    try:
        with publisher.listen() as changes:
            for topic, summary in list(publisher.current.items()):
                await send("summary", {"topic": topic, "summary": summary})
            await send("ready", {})
            while not closing.is_set():
                change = asyncio.ensure_future(changes.get())
                await asyncio.wait((change, stopping), timeout=STREAM_KEEPALIVE_SECONDS,
                                   return_when=asyncio.FIRST_COMPLETED)
                if not change.done():
                    change.cancel()
                    if not closing.is_set():
                        await response.write(b": keepalive\n\n")
                    continue
                changed = change.result()
                if changed is None:
                    await send("reset", {})
                    break
                await send("summary", {"topic": changed[0], "summary": changed[1]})
    finally:
        stopping.cancel()
    return response


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition (the operator or the read-only viewer token)."""
    body = await asyncio.to_thread(request.app[METRICS].exposition)
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


async def delete_component(request: web.Request) -> web.Response:
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    revision = await request.app[COMPONENTS].delete(namespace, name)
    return web.json_response({"component": f"{namespace}/{name}", "revision": revision, "deleted": True})


CREDENTIAL_ROLES = ("dashboard",)


def _credential_view(record: CredentialRecord) -> dict[str, Any]:
    return {"name": record.name, "role": record.role, "username": dashboard_user(record.name),
            "created_at": record.created_at}


async def create_credential(request: web.Request) -> web.Response:
    """Issue a broker credential: the caller's CSR signed for ``dashboard.NAME``, a user the broker lets
    read summaries and nothing else. The key stays with the caller."""
    body = await _json_body(request)
    app = request.app
    role = _field(body, "role", str)
    if role not in CREDENTIAL_ROLES:
        raise BadRequest(f"role {role!r} is not one of {list(CREDENTIAL_ROLES)}", field="role")
    name = _name(_field(body, "name", str), "name")
    csr = _field(body, "csr", str)
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


async def list_credentials(request: web.Request) -> web.Response:
    return web.json_response([_credential_view(r) for r in await request.app[ENROLLMENT_STORE].list_credentials()])


async def delete_credential(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not await request.app[ENROLLMENT_STORE].delete_credential(name):
        raise NotFound(f"credential {name!r} not found")
    await request.app[BROKER_ACCESS].expel_dashboard(name)
    logger.warning("Broker credential %s revoked", dashboard_user(name))
    return web.json_response({"name": name, "revoked": True})


def add_routes(app: web.Application) -> None:
    app[STREAMS_CLOSING] = asyncio.Event()
    app.on_shutdown.append(_close_streams)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1/stream", stream)
    app.router.add_get("/api/v1/ca", ca_certificate)
    app.router.add_get("/api/v1/ca/rotation", ca_rotation_status)
    app.router.add_post("/api/v1/ca/rotation", ca_rotation_step)
    app.router.add_get(TIME_PATH, hub_time, allow_head=False)  # GET only: it is open and rate-limited as such
    app.router.add_get("/api/v1/hub", describe_hub)
    app.router.add_post("/api/v1/tokens", create_token)
    app.router.add_post("/api/v1/join", join)
    app.router.add_post("/api/v1/nodes/{name}/certificate", renew_certificate)
    app.router.add_get("/api/v1/nodes", list_nodes)
    app.router.add_get("/api/v1/nodes/{name}", get_node)
    app.router.add_get("/api/v1/nodes/{name}/events", node_events)
    app.router.add_get("/api/v1/events", list_events)
    app.router.add_post("/api/v1/nodes/{name}/reset", reset_node)
    app.router.add_post("/api/v1/nodes/{name}/revoke", revoke_node)
    app.router.add_get("/api/v1/credentials", list_credentials)
    app.router.add_post("/api/v1/credentials", create_credential)
    app.router.add_delete("/api/v1/credentials/{name}", delete_credential)
    app.router.add_get("/api/v1/pools", list_pools)
    app.router.add_get("/api/v1/components", list_components)
    app.router.add_post("/api/v1/components", apply_component)
    app.router.add_get("/api/v1/components/{namespace}/{name}", get_component)
    app.router.add_delete("/api/v1/components/{namespace}/{name}", delete_component)
    app.router.add_get("/api/v1/components/{namespace}/{name}/history", component_history)
    app.router.add_post("/api/v1/components/{namespace}/{name}/rollback", rollback_component)
    app.router.add_get("/api/v1/components/{namespace}/{name}/rollout", component_rollout)
    app.router.add_post("/api/v1/components/{namespace}/{name}/rollout/pause", pause_rollout)
    app.router.add_post("/api/v1/components/{namespace}/{name}/rollout/resume", resume_rollout)
