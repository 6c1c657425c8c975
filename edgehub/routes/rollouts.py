"""A component's staged rollout: read it, pause it, resume it (the rollout driver's, edgehub.rollout_driver)."""

from __future__ import annotations

from aiohttp import web

from ..keys import ROLLOUTS

ROUTES = web.RouteTableDef()


@ROUTES.get("/api/v1/components/{namespace}/{name}/rollout")
async def component_rollout(request: web.Request) -> web.Response:
    """The component's staged rollout: state, batches with their nodes, the failed node and why, deferred
    offline nodes (404 for a component without one)."""
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    return web.json_response(await request.app[ROLLOUTS].describe(namespace, name))


@ROUTES.post("/api/v1/components/{namespace}/{name}/rollout/pause")
async def pause_rollout(request: web.Request) -> web.Response:
    """No new batch starts; what is assigned stays (409 unless the rollout is progressing)."""
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    return web.json_response(await request.app[ROLLOUTS].pause(namespace, name))


@ROUTES.post("/api/v1/components/{namespace}/{name}/rollout/resume")
async def resume_rollout(request: web.Request) -> web.Response:
    """A paused rollout goes on; a batch that failed under ``onFailure: Pause`` is checked afresh."""
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    return web.json_response(await request.app[ROLLOUTS].resume(namespace, name))
