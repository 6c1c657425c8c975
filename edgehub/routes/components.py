"""Components: list, apply (a spec with its chart archive), read, delete, history and rollback; applies,
deletions and rollbacks are the components service's (edgehub.components).

Secret values never leave the hub through a read: a component is answered with ``spec.values`` and each
pool's ``spec.edge.poolValues`` replaced by ``{"hmac-sha256": HEX}``, a digest of the values (canonical JSON)
keyed by the hub's key: equal values give equal digests, so a change shows, but a guess cannot be checked
against it.

The history lists each kept revision with its chart (name, version, digest), when and how it was made
(``origin``: ``apply``, ``apply by CLIENT`` when the apply body names its ``client``, as edgectl does,
``rollback to N``, ``delete``), its status and the digests of its values, never the values; the current
revision's status is its live rollout (``deployed``, ``deploying R/N``, ``failed``, ``no targets``).
See docs/rollouts.md.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import hmac
import json
import re
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import serialization

from ..components import ApplyOutcome
from ..errors import BadRequest, NotFound, SpecRefused
from ..keys import ASSIGNMENT_STORE, COMPONENT_STORE, COMPONENTS, IDENTITY, METRICS, REPORT_STORE
from ..store.assignments import AssignmentRecord, AssignmentStore
from ..store.components import ComponentRecord, RevisionRecord
from ..store.enrollment import NodeRecord
from ..store.reports import ReportStore
from ..store.schema import MAX_SEQ
from ..summaries import rollout
from ..views import component_view, release_targets
from .parsing import body_field, json_body, shown

ROUTES = web.RouteTableDef()

# What an apply may name as its client ("edgectl"): the history says "apply by CLIENT".
_CLIENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")


@ROUTES.get("/api/v1/components")
async def list_components(request: web.Request) -> web.Response:
    by_name, targets = await _fleet_targets(request.app[REPORT_STORE], request.app[ASSIGNMENT_STORE])
    return web.json_response([component_view(c, by_name, targets.get((c.namespace, c.name), []), detail=False)
                              for c in await request.app[COMPONENT_STORE].list_components()])


@ROUTES.post("/api/v1/components")
async def apply_component(request: web.Request) -> web.Response:
    body = await json_body(request)
    document = body_field(body, "component", dict)
    # Left out when spec.chart names a chart repository or OCI reference: the hub fetches it.
    encoded = body_field(body, "chart_archive", str, required=False)
    try:
        archive = None if encoded is None else base64.b64decode(encoded, validate=True)
    except ValueError as exc:
        # binascii.Error, or a string with non-ASCII characters.
        raise BadRequest(f"is not valid base64 ({exc})", field="chart_archive") from exc
    client = body_field(body, "client", str, required=False)
    if client is not None and not _CLIENT.match(client):
        raise BadRequest(f"{shown(client)} is not a client name: up to 32 letters, digits, '.', '_' or '-'",
                         field="client")
    try:
        outcome = await request.app[COMPONENTS].apply(document, archive,
                                                      origin=f"apply by {client}" if client else "apply")
    except SpecRefused:
        request.app[METRICS].apply_refused()
        raise
    return _apply_answer(outcome)


@ROUTES.get("/api/v1/components/{namespace}/{name}")
async def get_component(request: web.Request) -> web.Response:
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    comp = await request.app[COMPONENT_STORE].get_component(namespace, name)
    if comp is None or comp.deleted:
        raise NotFound(f"component {namespace}/{name} not found")
    by_name, targets = await _fleet_targets(request.app[REPORT_STORE], request.app[ASSIGNMENT_STORE])
    view = component_view(comp, by_name, targets.get((namespace, name), []), detail=True)
    view["spec"] = without_values(view["spec"], _values_digest_key(request.app))
    return web.json_response(view)


@ROUTES.delete("/api/v1/components/{namespace}/{name}")
async def delete_component(request: web.Request) -> web.Response:
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    revision = await request.app[COMPONENTS].delete(namespace, name)
    return web.json_response({"component": f"{namespace}/{name}", "revision": revision, "deleted": True})


@ROUTES.get("/api/v1/components/{namespace}/{name}/history")
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


@ROUTES.post("/api/v1/components/{namespace}/{name}/rollback")
async def rollback_component(request: web.Request) -> web.Response:
    """A new revision from an earlier one (``{"to_revision": N}``; default the one before the current),
    answered as an apply is, with ``rolled_back_to``."""
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    body = await json_body(request) if request.body_exists else {}
    to_revision = body_field(body, "to_revision", int, required=False)
    if to_revision is not None and not 1 <= to_revision <= MAX_SEQ:
        raise BadRequest(f"must be a revision number from 1, not {shown(to_revision)}", field="to_revision")
    try:
        outcome = await request.app[COMPONENTS].rollback(namespace, name, to_revision)
    except SpecRefused:
        request.app[METRICS].apply_refused()
        raise
    return _apply_answer(outcome)


async def _fleet_targets(reports: ReportStore, assignments: AssignmentStore
                         ) -> tuple[dict[str, NodeRecord], dict[tuple[str, str], list[AssignmentRecord]]]:
    """Every node by name, and each component's release assignments: what its rollout is counted over."""
    return ({n.name: n for n in await reports.list_nodes(with_certificate=False)},
            release_targets(await assignments.list_assignments()))


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
    shown_document = copy.deepcopy(document)
    spec = shown_document.get("spec")
    if isinstance(spec, dict):
        if "values" in spec:
            spec["values"] = values_digest(spec["values"], key)
        edge = spec.get("edge")
        if isinstance(edge, dict) and isinstance(edge.get("poolValues"), dict):
            edge["poolValues"] = {pool: values_digest(v, key) for pool, v in edge["poolValues"].items()}
    return shown_document


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
    history = []
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
        history.append(item)
    return history
