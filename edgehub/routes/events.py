"""Events the nodes reported: one node's most recent, and every node's in the order they arrived."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from edgeprotocol.messages import Event

from ..errors import NotFound
from ..keys import REPORT_STORE
from ..store.schema import MAX_SEQ
from .parsing import query_int, valid_name

ROUTES = web.RouteTableDef()

# GET .../events answers this many events unless ?limit= asks otherwise, and
# never more than the maximum (a node keeps 500 by default).
DEFAULT_EVENTS_LIMIT = 100
MAX_EVENTS_LIMIT = 1000


def _event_view(e: Event) -> dict[str, Any]:
    return {"seq": e.seq, "at": e.at, "reason": e.reason, "message": e.message, "namespace": e.namespace,
            "release": e.release, "revision": e.revision}


@ROUTES.get("/api/v1/nodes/{name}/events")
async def node_events(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    limit = query_int(request, "limit", default=DEFAULT_EVENTS_LIMIT, low=1, high=MAX_EVENTS_LIMIT)
    if await request.app[REPORT_STORE].get_node(name) is None:
        raise NotFound(f"node {name!r} not found")
    events = await request.app[REPORT_STORE].list_events(name, limit=limit)
    return web.json_response([_event_view(e) for e in events])


@ROUTES.get("/api/v1/events")
async def list_events(request: web.Request) -> web.Response:
    """Events of every node, or of ``?node=``, in the order they arrived at the hub (``edgectl events``).

    ``?limit=`` (1 to 1000, default 100) bounds the answer. Without ``?after=`` it is the latest
    events; with ``?after=CURSOR`` (a ``cursor`` of an earlier answer) the first that arrived after
    it, so a follower asks again with the last cursor it holds and misses none. Each event carries
    its ``node`` and ``cursor``.
    """
    limit = query_int(request, "limit", default=DEFAULT_EVENTS_LIMIT, low=1, high=MAX_EVENTS_LIMIT)
    after = query_int(request, "after", default=0, low=0, high=MAX_SEQ) if "after" in request.query else None
    node = request.query.get("node")
    if node is not None:
        node = valid_name(node, "node")
        if await request.app[REPORT_STORE].get_node(node) is None:
            raise NotFound(f"node {node!r} not found")
    logged = await request.app[REPORT_STORE].list_event_log(node=node, after=after, limit=limit)
    return web.json_response([{"node": e.event.node, "cursor": e.cursor, **_event_view(e.event)} for e in logged])
