"""The hub application factory: resources hang on ``cleanup_ctx`` with typed keys."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiomqtt
from aiohttp import web

from edgekit.mqtt import MqttSession, SessionSettings
from edgeprotocol import topics

from .api import MAX_REQUEST_BYTES, add_routes, json_errors
from .auth import HostAllowList, json_bodies_only, operator_only, operator_token_ctx, same_origin_only
from .components import Components
from .dispatch import Dispatcher
from .identity import HubIdentity
from .ingest import IngestLimits, NodeMessages
from .keys import COMPONENTS, DISPATCHER, IDENTITY, MQTT, RENDERER, SETTINGS, STORE
from .ratelimit import SourceRateLimiter, rate_limits
from .renderer import Renderer, RenderLimits
from .settings import HubSettings
from .store import HubStore
from .tls import tls_ctx

HUB_CLIENT_ID = "edgehub"


async def identity_ctx(app: web.Application) -> AsyncIterator[None]:
    # Key generation and file writes: a thread keeps the loop free.
    app[IDENTITY] = await asyncio.to_thread(HubIdentity.load_or_create, app[SETTINGS].state_dir)
    yield


async def renderer_ctx(app: web.Application) -> AsyncIterator[None]:
    # Renders run in worker processes of their own; leaving kills any still running.
    async with Renderer(RenderLimits.of(app[SETTINGS])) as renderer:
        app[RENDERER] = renderer
        yield


async def store_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    async with HubStore(settings.db_path, events_kept_per_node=settings.events_kept_per_node) as store:
        app[STORE] = store

        async def publish(topic: str, payload: bytes, retain: bool) -> bool:
            session = app.get(MQTT)
            return await session.publish(topic, payload, retain=retain) if session else False

        app[DISPATCHER] = Dispatcher(store, app[IDENTITY].key, publish)
        app[COMPONENTS] = Components(store, app[DISPATCHER], app[RENDERER])
        yield


async def mqtt_ctx(app: web.Application) -> AsyncIterator[None]:
    dispatcher = app[DISPATCHER]
    messages = NodeMessages(app[STORE], dispatcher, IngestLimits.of(app[SETTINGS]))

    async def on_connect(_: MqttSession) -> None:
        # The broker may have restarted without its retained messages: the
        # store is the truth, so re-publish all of it on every connect.
        await dispatcher.publish_all()

    session_settings = SessionSettings(
        url=app[SETTINGS].mqtt_url,
        client_id=HUB_CLIENT_ID,
        subscriptions=(topics.ALL_STATUS, topics.ALL_PRESENCE, topics.ALL_EVENTS, topics.ALL_RESYNC),
        will=aiomqtt.Will(f"{topics.PREFIX}/hub/presence", b"offline", qos=1, retain=True),
    )
    async with MqttSession(session_settings, on_message=messages.handle, on_connect=on_connect) as session:
        app[MQTT] = session
        yield


def create_app(settings: HubSettings) -> web.Application:
    limits = {
        ("POST", "/api/v1/join"): SourceRateLimiter(settings.join_rate_limit, what="join",
                                                    max_sources=settings.rate_limit_sources),
        ("POST", "/api/v1/tokens"): SourceRateLimiter(settings.token_rate_limit, what="token creation",
                                                      max_sources=settings.rate_limit_sources),
        ("POST", "/api/v1/nodes/{name}/certificate"): SourceRateLimiter(
            settings.renewal_rate_limit, what="certificate renewal", max_sources=settings.rate_limit_sources),
    }
    # In this order: errors as JSON around everything; a foreign Host or Origin
    # refused before anything else is looked at; rate limits before the token
    # check (a refused request counts too); the body's type checked last, so a
    # stranger learns only that a token is needed.
    middlewares = [json_errors, same_origin_only(HostAllowList(settings)), rate_limits(limits), operator_only,
                   json_bodies_only]
    app = web.Application(middlewares=middlewares, client_max_size=MAX_REQUEST_BYTES)
    app[SETTINGS] = settings
    # The operator token first: it creates the state directory owner-only.
    # The renderer before the store: the component service takes it. The
    # server certificate (when the API is served over HTTPS) needs the CA.
    app.cleanup_ctx.extend([operator_token_ctx, identity_ctx, tls_ctx, renderer_ctx, store_ctx, mqtt_ctx])
    add_routes(app)
    return app
