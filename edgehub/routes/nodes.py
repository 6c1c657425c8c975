"""Nodes and pools: the nodes with presence and reported releases, the pools with node counts, and an
operator's reset or revoke of a node (the enrollment service's, edgehub.enrollment)."""

from __future__ import annotations

from aiohttp import web

from ..errors import NotFound
from ..keys import BROKER_ACCESS, ENROLLMENT, REPORT_STORE
from ..views import node_view, pool_views

ROUTES = web.RouteTableDef()


@ROUTES.get("/api/v1/nodes")
async def list_nodes(request: web.Request) -> web.Response:
    nodes = await request.app[REPORT_STORE].list_nodes()
    return web.json_response([node_view(n) for n in nodes])


@ROUTES.get("/api/v1/nodes/{name}")
async def get_node(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    node = await request.app[REPORT_STORE].get_node(name)
    if node is None:
        raise NotFound(f"node {name!r} not found")
    return web.json_response(node_view(node))


@ROUTES.post("/api/v1/nodes/{name}/reset")
async def reset_node(request: web.Request) -> web.Response:
    """Free a node's name for the next join (at the next generation); its assignments are kept for it."""
    name = request.match_info["name"]
    shut_out = await request.app[ENROLLMENT].reset(name)
    node = shut_out.node
    return web.json_response({"node": name, "standing": node.standing, "generation": node.generation,
                              "next_generation": node.generation + 1, "assignments_kept": shut_out.assignments,
                              "broker_refuses": request.app[BROKER_ACCESS].enabled})


@ROUTES.post("/api/v1/nodes/{name}/revoke")
async def revoke_node(request: web.Request) -> web.Response:
    """Refuse a node until it is reset; its assignments are withheld, and kept in the store."""
    name = request.match_info["name"]
    shut_out = await request.app[ENROLLMENT].revoke(name)
    node = shut_out.node
    return web.json_response({"node": name, "standing": node.standing, "generation": node.generation,
                              "assignments_withheld": shut_out.assignments,
                              "broker_refuses": request.app[BROKER_ACCESS].enabled})


@ROUTES.get("/api/v1/pools")
async def list_pools(request: web.Request) -> web.Response:
    return web.json_response(pool_views(await request.app[REPORT_STORE].list_nodes(with_certificate=False)))
