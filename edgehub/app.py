"""The hub application factory: resources hang on ``cleanup_ctx`` with typed keys."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiomqtt
from aiohttp import web

from edgekit.mqtt import PUBLISH_WINDOW, BrokerAddress, MqttSession, SessionSettings, TlsIdentity
from edgekit.tasks import OwnedTask
from edgeprotocol import topics
from edgeprotocol.messages import now

from . import ha_discovery
from .auth import HostAllowList, json_bodies_only, operator_only, operator_token_ctx, same_origin_only
from .broker_access import ANONYMOUS_BROKER_WARNING, BrokerAccess
from .broker_revocations import BROKER_FILES, BrokerFiles, BrokerRevocations
from .broker_roles import CONTROL_RESPONSE_TOPIC
from .ca_rotation import CA_ROTATION, CaRotation
from .certificates import CertificateKeeper, KeeperHooks
from .chart_sources import ChartSources
from .components import Components
from .dashboard import add_dashboard_routes
from .dispatch import Dispatcher
from .enrollment import Enrollment, NodeCertificates
from .identity import HubIdentity
from .ingest import IngestLimits, NodeMessages
from .keys import (
    ASSIGNMENT_STORE,
    BROKER_ACCESS,
    CERTIFICATES,
    COMPONENT_STORE,
    COMPONENTS,
    DISPATCHER,
    ENROLLMENT,
    ENROLLMENT_STORE,
    IDENTITY,
    METRICS,
    MQTT,
    RENDERER,
    REPORT_STORE,
    REVOCATIONS,
    ROLLOUTS,
    SETTINGS,
    STORES,
    SUMMARIES,
)
from .metrics import HubMetrics
from .ratelimit import SourceRateLimiter, rate_limits
from .renderer import Renderer, RenderLimits
from .rollout_driver import RolloutDriver
from .routes import add_routes
from .routes.error_answers import json_errors
from .routes.parsing import MAX_REQUEST_BYTES
from .settings import HubSettings
from .store import HubStores
from .summaries import HUB_STATE_TOPIC, SummaryPublisher, SummarySettings
from .tls import TLS, serves_tls, tls_ctx

logger = logging.getLogger(__name__)

HUB_CLIENT_ID = "edgehub"
# After a CA rotation step the hub may reconnect (its certificate issued again): its notices to nodes wait at
# most this long for the broker.
NOTICE_CONNECT_WAIT_SECONDS = 10.0


def publisher(app: web.Application, *, retain: bool) -> Callable[[str, bytes], Awaitable[bool]]:
    """Publish over the hub's MQTT session once it exists (False before, and while not connected)."""

    async def publish(topic: str, payload: bytes) -> bool:
        session = app.get(MQTT)
        return await session.publish(topic, payload, retain=retain) if session else False

    return publish


async def identity_ctx(app: web.Application) -> AsyncIterator[None]:
    # Key generation and file writes: a thread keeps the loop free. The hub's own certificates are the
    # certificate keeper's (certificates_ctx).
    app[IDENTITY] = await asyncio.to_thread(HubIdentity.load_or_create, app[SETTINGS].state_dir)
    yield


async def certificates_ctx(app: web.Application) -> AsyncIterator[None]:
    """The certificate keeper: the hub's MQTT client certificate, the API's (``app[TLS]`` when served over
    HTTPS) and the broker's, issued at start and renewed on a timer (edgehub.certificates)."""
    settings, enrollment, revocations = app[SETTINGS], app[ENROLLMENT_STORE], app[REVOCATIONS]

    async def node_certificates() -> list[tuple[str, str]]:
        return [(n.name, n.certificate) for n in await enrollment.list_nodes()]

    async def hub_mqtt_renewed() -> None:
        session = app.get(MQTT)
        if session is not None:  # none yet: it reads the new files when it first connects
            await session.reconnect()

    hooks = KeeperHooks(node_certificates=node_certificates, hub_mqtt_renewed=hub_mqtt_renewed,
                        reload_lock=revocations.reload_lock)
    async with CertificateKeeper(settings, app[IDENTITY], broker_files=revocations.files,
                                 serve_https=serves_tls(settings), hooks=hooks) as keeper:
        app[CERTIFICATES] = keeper
        if keeper.tls_context is not None:
            app[TLS] = keeper.tls_context
        app[METRICS].watch_certificates(keeper.gauges)
        yield


async def renderer_ctx(app: web.Application) -> AsyncIterator[None]:
    # Renders run in worker processes of their own; leaving kills any still running.
    async with Renderer(RenderLimits.of(app[SETTINGS])) as renderer:
        app[RENDERER] = renderer
        yield


async def store_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    async with HubStores(settings.store_location, events_kept_per_node=settings.events_kept_per_node) as stores:
        app[STORES] = stores
        enrollment = stores.enrollment
        app[ENROLLMENT_STORE] = enrollment
        app[REPORT_STORE] = stores.reports
        app[COMPONENT_STORE] = stores.components
        app[ASSIGNMENT_STORE] = stores.assignments

        async def publish(topic: str, payload: bytes, retain: bool) -> bool:
            return await publisher(app, retain=retain)(topic, payload)

        async def registry() -> tuple[set[str], set[str]]:
            refused = {n.name for n in await enrollment.list_nodes(with_certificate=False)
                       if n.standing != "joined"}
            return refused, {c.name for c in await enrollment.list_credentials()}

        app[DISPATCHER] = Dispatcher(enrollment, stores.components, stores.assignments, app[IDENTITY].key, publish,
                                     on_published=app[METRICS].published)
        app[COMPONENTS] = Components(enrollment, stores.reports, stores.components, stores.assignments,
                                     app[DISPATCHER], app[RENDERER],
                                     ChartSources.in_state_dir(settings.state_dir,
                                                               allow=settings.chart_sources.networks))
        files = await asyncio.to_thread(BrokerFiles.load, settings.state_dir) if settings.broker_identities else None
        if settings.broker_identities and files is None:
            logger.warning("Warning: the hub does not know the broker's certificate revocation list (%s/%s is "
                           "missing: 'edgehub mosquitto-config' did not write this broker with this state directory), "
                           "so a node certificate replaced by a renewal, reset or revoke still connects until it "
                           "expires", settings.state_dir, BROKER_FILES)
        async with (BrokerAccess(publisher(app, retain=False), registry, enabled=settings.broker_identities) as access,
                    BrokerRevocations(app[IDENTITY], enrollment.void_certificates, files,
                                      broker=BrokerAddress.parse(settings.mqtt_url)) as revocations):
            app[BROKER_ACCESS] = access
            app[REVOCATIONS] = revocations
            app[ENROLLMENT] = Enrollment(enrollment, app[IDENTITY], app[DISPATCHER], access, revocations,
                                         NodeCertificates(lifetime=settings.node_certificate_lifetime,
                                                          offline_horizon_days=settings.offline_horizon_days))
            yield


async def ca_rotation_ctx(app: web.Application) -> AsyncIterator[None]:
    """The CA rotation's steps (edgehub.ca_rotation): the running hub takes them and puts them in force, the
    certificate keeper issuing its own and the broker's certificates again from the CA that issues."""
    keeper = app[CERTIFICATES]

    async def keep_certificates(_: object) -> str | None:
        before = dict(keeper.renewals)
        await keeper.check()
        renewed = sorted(name for name, count in keeper.renewals.items() if count > before.get(name, 0))
        return f"issued again from the CA that issues now: {', '.join(renewed)}" if renewed else None

    async def connected() -> None:
        session = app.get(MQTT)
        if session is not None:  # a renewed hub certificate makes it reconnect: the notices wait for it
            with contextlib.suppress(TimeoutError):
                await session.wait_connected(NOTICE_CONNECT_WAIT_SECONDS)

    app[CA_ROTATION] = CaRotation(app[SETTINGS].state_dir, app[IDENTITY], app[ENROLLMENT_STORE], app[REVOCATIONS],
                                  publish=publisher(app, retain=False), after_step=[keep_certificates],
                                  before_notices=connected)
    yield


async def rollouts_ctx(app: web.Application) -> AsyncIterator[None]:
    """Staged rollouts move on from status changes and the clock; the driver stops (cancelled, awaited) first."""
    stores = app[STORES]
    driver = RolloutDriver(stores.reports, stores.components, stores.assignments, app[DISPATCHER], app[COMPONENTS],
                           tick=app[SETTINGS].rollout_tick_seconds)
    stores.on_change(driver.changed)
    async with driver:
        app[ROLLOUTS] = driver
        yield


async def summaries_ctx(app: web.Application) -> AsyncIterator[None]:
    settings, stores = app[SETTINGS], app[STORES]
    refresh = settings.summary_refresh_seconds
    extra = None
    if settings.ha_discovery_prefix:
        prefix = settings.ha_discovery_prefix

        def extra(summaries: dict[str, dict[str, Any]]) -> dict[str, bytes]:
            return ha_discovery.documents(prefix, summaries, expire_after=int(3 * refresh))

    summaries = SummaryPublisher(stores.reports, stores.components, stores.assignments, publisher(app, retain=True),
                                 SummarySettings(interval=settings.summary_interval_seconds,
                                                 max_per_pass=settings.summary_max_per_pass, refresh=refresh),
                                 extra=extra)
    stores.on_change(summaries.changed)
    async with summaries:
        app[SUMMARIES] = summaries
        yield


async def mqtt_ctx(app: web.Application) -> AsyncIterator[None]:
    settings, dispatcher, access, revocations = app[SETTINGS], app[DISPATCHER], app[BROKER_ACCESS], app[REVOCATIONS]
    messages = NodeMessages(app[REPORT_STORE], dispatcher, IngestLimits.of(settings), metrics=app[METRICS])

    async def on_message(topic: str, payload: bytes) -> None:
        if topic == CONTROL_RESPONSE_TOPIC:
            await access.on_response(payload)
        else:
            await messages.take(topic, payload)

    summaries = app[SUMMARIES]
    hub_started = now()
    republish = OwnedTask("republish-assignments")

    async def publish_all() -> None:
        try:
            count = await dispatcher.publish_all()
        except Exception:  # a bug: the next connect tries again
            logger.exception("Re-publishing the assignments failed")
            return
        logger.info("Re-published %d assignment(s) after connecting to the broker", count)

    async def on_connect(session: MqttSession) -> None:
        access.on_connect()
        # The broker may have started from an older list (a restored directory, a new configuration).
        revocations.changed(force=True)
        # Retained, with the last will below saying the opposite: a dashboard tells a dead hub from a quiet fleet.
        await session.publish(HUB_STATE_TOPIC, json.dumps({"online": True, "since": hub_started,
                                                           "connected_at": now()}).encode(), retain=True)
        summaries.republish_all()
        # The broker may have restarted without its retained messages: the
        # store is the truth, so re-publish all of it on every connect. In the
        # background: the nodes coming back meanwhile are heard at once.
        republish.restart(publish_all())

    subscriptions: tuple[str, ...] = (topics.ALL_STATUS, topics.ALL_PRESENCE, topics.ALL_EVENTS, topics.ALL_RESYNC)
    tls = None
    if settings.broker_identities:
        subscriptions += (CONTROL_RESPONSE_TOPIC,)
        # The trust bundle is read at each connect: after a CA rotation step the broker may present a
        # certificate of the new CA (edgehub.ca_rotation).
        tls = TlsIdentity("", settings.mqtt_cert_path, settings.mqtt_key_path, ca_file=settings.ca_certificate_path)
    else:
        logger.warning("Warning: %s", ANONYMOUS_BROKER_WARNING)
    session_settings = SessionSettings(
        url=settings.mqtt_url,
        client_id=HUB_CLIENT_ID,
        subscriptions=subscriptions,
        will=aiomqtt.Will(HUB_STATE_TOPIC, json.dumps({"online": False, "since": hub_started}).encode(), qos=1,
                          retain=True),
        tls=tls,
        # A node's message is acknowledged once queued for ingest; a full queue holds the broker back.
        manual_ack=True,
        max_inflight=PUBLISH_WINDOW,
        # One client, not a fleet: back soon after a broker restart (the nodes' backoff spreads theirs).
        backoff_max=5.0,
        # A clean session (no session_expiry): Mosquitto 2.0.11 corrupts its memory (and then crashes) when it is
        # sent SIGHUP while it holds an MQTT 5 session for a client that is away, and the hub signals it
        # whenever its revocation list, certificate or CAs change, whether or not the hub is connected at that
        # moment (tests/broker/test_the_broker_outlives_reloads_while_the_hub_is_away.py).
    )
    async with messages, MqttSession(session_settings, on_message=on_message, on_connect=on_connect) as session:
        app[MQTT] = session
        app[METRICS].watch(lambda: summaries.latest, lambda: session.connections)
        try:
            yield
        finally:
            await republish.stop()
        # A clean stop sends no last will: say it here.
        await session.publish(HUB_STATE_TOPIC, json.dumps({"online": False, "since": now()}).encode(), retain=True)


def create_app(settings: HubSettings) -> web.Application:
    limits = {
        ("POST", "/api/v1/join"): SourceRateLimiter(settings.join_rate_limit, what="join",
                                                    max_sources=settings.rate_limit_sources),
        ("POST", "/api/v1/tokens"): SourceRateLimiter(settings.token_rate_limit, what="token creation",
                                                      max_sources=settings.rate_limit_sources),
        ("POST", "/api/v1/nodes/{name}/certificate"): SourceRateLimiter(
            settings.renewal_rate_limit, what="certificate renewal", max_sources=settings.rate_limit_sources),
        # Each answer costs a signature; nodes ask once before a renewal or connect and then hourly at most,
        # as often as they renew, so the renewals' limit (a bucket of its own).
        ("GET", "/api/v1/time"): SourceRateLimiter(
            settings.renewal_rate_limit, what="hub time", max_sources=settings.rate_limit_sources),
    }
    # In this order: errors as JSON around everything; a foreign Host or Origin
    # refused before anything else is looked at; rate limits before the token
    # check (a refused request counts too); the body's type checked last, so a
    # stranger learns only that a token is needed.
    middlewares = [json_errors, same_origin_only(HostAllowList(settings)), rate_limits(limits), operator_only,
                   json_bodies_only]
    app = web.Application(middlewares=middlewares, client_max_size=MAX_REQUEST_BYTES)
    app[SETTINGS] = settings
    app[METRICS] = HubMetrics()
    # The operator token first: it creates the state directory owner-only.
    # The renderer before the store: the component service takes it. The
    # certificate keeper after the store (node certificates, the broker's
    # files) and before the MQTT session, which needs the hub's certificate;
    # the CA rotation after the keeper, which puts each step in force.
    app.cleanup_ctx.extend([operator_token_ctx, identity_ctx, tls_ctx, renderer_ctx, store_ctx, certificates_ctx,
                            ca_rotation_ctx, rollouts_ctx, summaries_ctx, mqtt_ctx])
    add_routes(app)
    add_dashboard_routes(app)
    return app
