"""The uplink: the node's MQTT session to the hub, assignments in, status and events out.

Assignments are verified (signed by the hub key pinned at join, addressed to
this node at its join generation, on their own topic), their bundles
decrypted with the node's bundle key, and recorded in the local store when
newer than what the node holds; the reconciler is then woken. The hub's
signed notices (``edgeprotocol.notices``: a CA rotation step) arrive on the
same subscription and go to the renewer; the broker's CAs follow the node's
(``trust_changed``), and a failed TLS handshake is reported (``on_tls_failure``). Events go to
the persisted, bounded outbox first and are sent in order whenever the link is up. Status is
rebuilt from the store, so the latest one is sent on every connect, whatever
was missed while offline; a change waits ``status_coalesce`` (0.25 s) for
the changes that follow it, and they go out as one report. The uplink never
touches the runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import aiomqtt

from edgekit.mqtt import MqttSession, SessionSettings
from edgekit.tasks import OwnedTask
from edgeprotocol import topics
from edgeprotocol.errors import ProtocolError
from edgeprotocol.messages import Event, NodeStatus, Presence, ReleaseStatus, Resync, now
from edgeprotocol.notices import NOTICE_NAMESPACE, CaNotice, open_notice
from edgeprotocol.signing import load_public_key, open_sealed

from . import __version__
from .clock import HubClock
from .health import NodeHealth
from .identity import BUNDLE_KEY_FILE, NodeIdentity, load_bundle_key
from .settings import AgentSettings
from .store import AgentStore, ReleaseRecord
from .trust import tls_trouble

logger = logging.getLogger(__name__)


class Uplink:
    """Use as an async context manager: connected (and reconnecting) while entered.

    ``record_event`` and ``publish_status`` work entered or not: events wait in
    the outbox, status is sent on the next connect.
    """

    def __init__(self, settings: AgentSettings, identity: NodeIdentity, store: AgentStore, *, runtime_name: str,
                 health: NodeHealth, on_assignment: Callable[[], None], clock: HubClock | None = None,
                 before_connect: Callable[[], Awaitable[None]] | None = None,
                 on_notice: Callable[[CaNotice], None] | None = None,
                 on_tls_failure: Callable[[BaseException], None] | None = None) -> None:
        self.settings = settings
        self.identity = identity
        self.node = identity.node
        self.store = store
        self._runtime_name = runtime_name
        self._health = health  # its conditions go out with every status
        self._on_assignment = on_assignment
        # The node's clock as corrected by the hub's: its condition goes out with every status, and the
        # broker's certificate is checked by its time.
        self._clock = clock or HubClock(settings.state_dir)
        # Awaited before each connection attempt (the certificate renewer's gate, edgeagent.renewal).
        self._before_connect = before_connect
        # The hub's signed notice of a CA rotation step (the renewer checks at once), and a TLS handshake with
        # the broker that failed (the renewer asks the hub whether its CAs changed): edgeagent.trust.
        self._on_notice = on_notice
        self._on_tls_failure = on_tls_failure
        self._reconnecting = OwnedTask(f"reconnect-{self.node}")
        self._hub_key = load_public_key(identity.hub_public_key)
        self._bundle_key = load_bundle_key(settings.state_dir)
        if self._bundle_key is None:
            logger.warning("Node %s has no bundle key (%s): it joined before bundles were encrypted, so the hub "
                           "sends its bundles, Secrets included, unencrypted; join it again to encrypt them",
                           self.node, settings.state_dir / BUNDLE_KEY_FILE)
        self._session: MqttSession | None = None
        self._last_status: object = None
        self._last_status_at = 0.0
        self._coalescing = OwnedTask(f"status-{self.node}")
        self._status_wanted = False  # a change not yet in a coalesced report
        # Flushes run from the reconciler's workers and from connects at once:
        # one at a time keeps the outbox in order.
        self._flush_lock = asyncio.Lock()

    async def __aenter__(self) -> Uplink:
        if self._session is not None:
            raise RuntimeError(f"the uplink of {self.node} is already connected")
        offline = Presence(node=self.node, state="offline").encode()
        session = MqttSession(
            SessionSettings(
                url=self.identity.mqtt_url,
                client_id=f"edgeagent-{self.node}",
                subscriptions=(topics.assignments_of(self.node),),
                will=aiomqtt.Will(topics.presence(self.node), offline, qos=1, retain=True),
                keepalive=self.settings.keepalive,
                timeout=self.settings.mqtt_timeout,
                tls=self.identity.broker_tls(self.settings.state_dir, adjust=self._clock.adjust_tls),
                bind_address=self.settings.mqtt_bind_address,
            ),
            on_message=self._on_message, on_connect=self._on_connect, before_connect=self._before_connect,
            on_connect_failed=self._connect_failed,
        )
        await session.__aenter__()
        self._session = session
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        # A status still waiting is rebuilt from the store and sent on the next connect.
        await self._coalescing.stop()
        await self._reconnecting.stop()
        session, self._session = self._session, None
        if session is None:
            return
        # The broker sends the last will only when a link dies; a clean stop
        # says it itself.
        with contextlib.suppress(Exception):
            await session.publish(topics.presence(self.node),
                                  Presence(node=self.node, state="offline", at=now()).encode(), retain=True)
        await session.__aexit__(*exc_info)

    @property
    def session(self) -> MqttSession:
        if self._session is None:
            raise RuntimeError("the uplink is not connected")
        return self._session

    @property
    def connected(self) -> bool:
        return self._session is not None and self._session.connected.is_set()

    async def reconnect(self) -> None:
        """Connect to the broker again now, with the certificate files as they are (after a renewal)."""
        if self._session is not None:
            await self._session.reconnect()

    def trust_changed(self, identity: NodeIdentity) -> None:
        """The node's trusted CAs changed (``edgeagent.trust``): the next connection checks the broker by them.
        A link that is up stays; one that is down (its handshake failed on a CA the node did not trust yet) is
        tried again now."""
        self.identity = identity
        if self._session is None:
            return
        tls = identity.broker_tls(self.settings.state_dir, identity.mqtt_url, adjust=self._clock.adjust_tls)
        if tls is not None:
            self._session.use_tls(tls)
        if not self.connected:
            self._reconnecting.restart(self.reconnect())

    def _connect_failed(self, exc: BaseException) -> None:
        if self._on_tls_failure is not None and tls_trouble(exc):
            self._on_tls_failure(exc)

    # --- from the hub --------------------------------------------------------

    async def _on_connect(self, session: MqttSession) -> None:
        await self.store.set_counter("last_sync", int(time.time()))
        await session.publish(
            topics.presence(self.node), Presence(node=self.node, state="online", at=now()).encode(), retain=True
        )
        held = {f"{r.namespace}/{r.release}": r.desired_revision for r in await self.store.releases()}
        await session.publish(topics.resync(self.node), Resync(node=self.node, held=held).encode(), retain=False)
        await self.publish_status(force=True, via=session)
        await self._flush_outbox(session)

    async def _on_message(self, topic: str, payload: bytes) -> None:
        if not payload:
            return  # the hub cleared a retained assignment
        try:
            parsed = topics.NodeTopic.parse(topic)
            if parsed.namespace == NOTICE_NAMESPACE:
                await self._take_notice(topic, payload)
                return
            assignment = open_sealed(payload, self._hub_key, node=self.node, generation=self.identity.generation,
                                     bundle_key=self._bundle_key)
            if (parsed.namespace, parsed.release) != assignment.key:
                raise ProtocolError(f"assignment for {assignment.namespace}/{assignment.release} arrived on {topic}")
        except (ProtocolError, ValueError) as exc:
            logger.warning("Rejected a message on %s: %s", topic, exc)
            await self.record_event("Rejected", f"message on {topic} rejected: {exc}")
            return
        if await self.store.accept(assignment):
            logger.info("Accepted %s %s/%s revision %d", assignment.kind, assignment.namespace,
                        assignment.release, assignment.revision)
            self._on_assignment()
        else:
            await self.store.bump("assignments_ignored")
            logger.debug("Ignored %s/%s revision %d: not newer than what the node holds",
                         assignment.namespace, assignment.release, assignment.revision)

    async def _take_notice(self, topic: str, payload: bytes) -> None:
        """A signed notice of the hub's (``edgeprotocol.notices``): a CA rotation step to act on."""
        try:
            notice = open_notice(payload, self._hub_key, node=self.node, generation=self.identity.generation)
        except ProtocolError as exc:
            logger.warning("Rejected a message on %s: %s", topic, exc)
            await self.record_event("Rejected", f"message on {topic} rejected: {exc}")
            return
        logger.info("The hub's CAs changed (CA set generation %d): checking the node's certificate and CAs within "
                    "%.1f s", notice.ca_generation, notice.spread_seconds)
        if self._on_notice is not None:
            self._on_notice(notice)

    # --- to the hub ----------------------------------------------------------

    async def publish_status(self, *, force: bool = False, via: MqttSession | None = None) -> None:
        """Send the node's status now when ``force``d; else once ``status_coalesce`` has passed (what changed
        meanwhile goes with it), when it changed or the heartbeat is due."""
        if force or self.settings.status_coalesce == 0:
            await self._send_status(force=force, via=via)
            return
        if not self.connected:
            return  # the next connect sends it
        self._status_wanted = True
        if not self._coalescing.running:
            self._coalescing.restart(self._send_status_later())

    async def _send_status_later(self) -> None:
        # A change while a report is being sent (its store reads may already be done) goes out in one more.
        while self._status_wanted:
            await asyncio.sleep(self.settings.status_coalesce)
            self._status_wanted = False
            try:
                await self._send_status()
            except Exception:  # the link went down meanwhile: the next connect sends the status
                logger.debug("Sending a coalesced status failed; the next connect sends it", exc_info=True)
                return

    async def _send_status(self, *, force: bool = False, via: MqttSession | None = None) -> None:
        releases = tuple(
            ReleaseStatus(
                namespace=r.namespace, release=r.release, desired_revision=r.desired_revision,
                applied_revision=r.applied_revision, phase=r.phase, message=r.message, ready=r.ready,
                total=r.total, observed_at=r.observed_at, reason=r.reason, restarts=r.restarts,
                pods=r.pod_statuses(),
            )
            for r in await self.store.releases()
            if r.phase != "Removed"
        )
        conditions = self._health.conditions + self._clock.conditions
        comparable = (tuple((r.namespace, r.release, r.desired_revision, r.applied_revision, r.phase, r.message,
                             r.ready, r.total, r.reason, r.restarts, r.pods) for r in releases), conditions)
        due = time.monotonic() - self._last_status_at >= self.settings.status_heartbeat
        if not force and not due and comparable == self._last_status:
            return
        session = via or self._session
        if session is None or not session.connected.is_set():
            return  # the latest status is re-read from the store on connect
        status = NodeStatus(
            node=self.node, seq=await self.store.next_seq("status"), observed_at=now(), releases=releases,
            agent_version=__version__, runtime=self._runtime_name, conditions=conditions,
            outbox=await self.store.outbox_size(),
        )
        if await session.publish(topics.status(self.node), status.encode(), retain=True):
            self._last_status, self._last_status_at = comparable, time.monotonic()
            await self.store.set_counter("last_sync", int(time.time()))

    async def record_event(self, reason: str, message: str, rec: ReleaseRecord | None = None) -> None:
        """Queue an event in the persisted outbox and send what the link allows, in order."""
        event = Event(
            node=self.node, seq=await self.store.next_seq("event"), at=now(), reason=reason, message=message,
            namespace=rec.namespace if rec else "", release=rec.release if rec else "",
            revision=rec.desired_revision if rec else 0,
        )
        dropped = await self.store.enqueue(topics.events(self.node), event.encode())
        if dropped:
            logger.warning("Event outbox full: dropped the %d oldest event(s)", dropped)
        await self._flush_outbox()

    async def _flush_outbox(self, via: MqttSession | None = None) -> None:
        session = via or self._session
        if session is None or not session.connected.is_set():
            return
        async with self._flush_lock:
            dropped = await self.store.counter("events_dropped")
            if dropped:
                # The dropped events were the oldest queued, so this notice goes
                # out first, where the gap is.
                notice = Event(node=self.node, seq=await self.store.next_seq("event"), at=now(),
                               reason="EventsDropped",
                               message=f"{dropped} event(s) dropped while offline: the outbox holds "
                                       f"{self.settings.outbox_limit} at most")
                if not await session.publish(topics.events(self.node), notice.encode(), retain=False):
                    return
                await self.store.bump("events_dropped", -dropped)
            while batch := await self.store.pending():
                for item in batch:
                    if not await session.publish(item.topic, item.payload, retain=False):
                        return
                    await self.store.delivered(item.id)
