"""One long-lived MQTT connection that reconnects by itself, shared by hub and agent.

``MqttSession`` connects, subscribes, hands every message to a handler and,
when the link drops, reconnects with jittered exponential backoff (tenacity's
``wait_random_exponential``) so a broker restart does not bring every node back
in the same second. The backoff restarts from its smallest step once a
connection has been established.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import random
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict
from urllib.parse import urlsplit

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_random_exponential

from .aiomqtt_private import acknowledge, paho_client, take_queued
from .tasks import OwnedTask

logger = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes], Awaitable[None]]
ConnectHook = Callable[["MqttSession"], Awaitable[None]]


class _ClientArguments(TypedDict, total=False):
    """The ``aiomqtt.Client`` arguments a session sets (the rest keep aiomqtt's defaults)."""

    hostname: str
    port: int
    identifier: str | None
    will: aiomqtt.Will | None
    keepalive: int
    timeout: float | None
    protocol: aiomqtt.ProtocolVersion | None
    clean_session: bool | None
    clean_start: bool
    properties: Properties | None
    max_queued_incoming_messages: int | None
    max_inflight_messages: int | None
    tls_context: ssl.SSLContext | None
    bind_address: str


_DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}

# QoS 1 publishes a sender of many keeps unacknowledged at once (with ``edgekit.tasks.each_within``).
# 200 keeps a loopback or LAN broker busy; the clients' bookkeeping grows with it (aiomqtt and paho
# scan every pending publish on each publish and acknowledgement).
PUBLISH_WINDOW = 200


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """Parse ``mqtts://HOST:PORT`` (TLS, port 8883 when left out) or ``mqtt://HOST:PORT`` (plain, 1883)."""
        parts = urlsplit(url)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"MQTT URL {url!r} must look like mqtts://HOST:PORT (or mqtt://HOST:PORT on loopback)")
        try:
            port = parts.port or _DEFAULT_PORTS[parts.scheme]
        except ValueError as exc:
            raise ValueError(f"MQTT URL {url!r} has an invalid port") from exc
        return cls(host=parts.hostname, port=port, tls=parts.scheme == "mqtts")

    @property
    def loopback(self) -> bool:
        """True for 127.0.0.0/8, ::1 and ``localhost``: a broker only this machine reaches."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def require_identities(self) -> None:
        """Refuse a plain (anonymous) broker anywhere but on loopback: ValueError saying what to use."""
        if not self.tls and not self.loopback:
            raise ValueError(
                f"{self} is a plain MQTT broker off loopback, where anyone on the network could read and forge "
                "fleet messages; use mqtts:// with the broker 'edgehub mosquitto-config' writes (plain mqtt:// is "
                "for development on 127.0.0.1 only)")

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class TlsIdentity:
    """What a client needs for a broker with identities: the CAs the broker's certificate may chain to
    (PEM, one or more), and this client's own certificate and key files (read again on every connect, so a
    renewed certificate is used from the next connection on)."""

    ca_pem: str
    cert_file: Path
    key_file: Path
    # When given, the CAs are read from this file on every connect instead (``ca_pem`` is then unused): a
    # trust bundle that changes while the client runs, as the hub's does during a CA rotation.
    ca_file: Path | None = None
    # Called with every new context, last: a node whose clock is wrong has certificate dates checked against
    # the hub's time instead of its own (edgeagent.clock, edgekit.tls_time).
    adjust: Callable[[ssl.SSLContext], None] | None = field(default=None, compare=False)

    def context(self) -> ssl.SSLContext:
        """A client TLS context: the broker's certificate must chain to a CA given and name the host dialled."""
        cadata = self.ca_file.read_text() if self.ca_file is not None else self.ca_pem
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=cadata)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        if self.adjust is not None:
            self.adjust(context)
        return context


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionSettings:
    url: str
    client_id: str
    subscriptions: tuple[str, ...] = ()
    will: aiomqtt.Will | None = None
    # The broker declares a silent client gone after 1.5 x keepalive; 10 s
    # makes a cut link visible (last will: offline) within about 15 s.
    keepalive: int = 10
    # Each connect, subscribe and QoS 1 publish waits at most this long.
    timeout: float = 10.0
    # Reconnect waits a random time in [0, min(max, initial * 2**attempt)].
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    # Messages the handler has not taken yet; past this paho drops them (and
    # aiomqtt logs it). Retained assignments make a dropped one come back on
    # the next connect. Not used with ``manual_ack``.
    max_queued_incoming: int = 10_000
    # Acknowledge a QoS 1 message only once the handler has returned (taken
    # it): the broker then sends no more than its in-flight window of
    # unacknowledged messages, so a handler that waits holds the broker back
    # instead of a queue here overflowing, and nothing acknowledged is dropped.
    manual_ack: bool = False
    # QoS 1 publishes sent and not yet acknowledged, at most; paho's default
    # of 20 caps a publisher that keeps a window open (the hub's dispatch).
    max_inflight: int | None = None
    # Required for an mqtts:// URL: the CA and this client's certificate.
    tls: TlsIdentity | None = None
    # None: a clean session per connection (MQTT 3.1.1), and whatever the broker held for this client
    # (QoS 1 messages sent and not acknowledged yet, or queued behind them, and any published while it
    # was away) ends with the connection. Seconds: the broker keeps the session that long after a
    # connection ends, and a connection within that time takes it up again with every one of those
    # messages (MQTT 5's session expiry, so the session is MQTT 5): a reconnect (a renewed certificate,
    # a link that dropped, a quick restart) loses nothing, a client away for longer starts afresh.
    session_expiry: int | None = None
    # The local address connections leave from ("": the system's choice).
    bind_address: str = ""

    def __post_init__(self) -> None:
        if self.session_expiry is not None and not 0 < self.session_expiry < 2**32 - 1:
            raise ValueError(f"session_expiry {self.session_expiry!r} must be from 1 to {2**32 - 2} seconds, or None")
        if BrokerAddress.parse(self.url).tls and self.tls is None:
            raise ValueError(f"{self.url} is a TLS broker: the session needs a CA and a client certificate")


class SessionLost(Exception):
    """Raised inside the retry loop when an established connection ends."""


class MqttSession:
    """Keeps one MQTT connection alive for as long as it is entered."""

    def __init__(
        self,
        settings: SessionSettings,
        *,
        on_message: MessageHandler,
        on_connect: ConnectHook | None = None,
        before_connect: Callable[[], Awaitable[None]] | None = None,
        on_connect_failed: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.settings = settings
        self.broker = BrokerAddress.parse(settings.url)
        self._on_message = on_message
        self._on_connect = on_connect
        # Told (on the loop; it must not block) why each connection attempt failed, before the wait for the next:
        # an agent whose TLS handshake failed asks the hub whether its CAs changed (edgeagent.trust).
        self._on_connect_failed = on_connect_failed
        # Awaited before every connection attempt: it returns once an attempt makes sense (an agent whose
        # certificate expired renews it first, instead of showing the broker a certificate it refuses).
        self._before_connect = before_connect
        self._client: aiomqtt.Client | None = None
        self._task = OwnedTask(f"mqtt-session-{settings.client_id}")
        self.connected = asyncio.Event()
        self.connections = 0  # how many times a connection was established
        self._stopping = False
        self._exited = False  # left (a reconnect under way then starts nothing)

    async def __aenter__(self) -> MqttSession:
        self._task.start(self._run())
        self._stopping = self._exited = False
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._stopping = self._exited = True  # no reconnect from here on, whatever error the cancellation turns into
        await self._task.stop()
        self.connected.clear()

    async def publish(self, topic: str, payload: bytes | str, *, retain: bool, qos: int = 1) -> bool:
        """Publish and, for QoS 1, wait for the broker's acknowledgement.

        Returns False (and logs) when there is no connection or the broker did
        not acknowledge in time; the caller decides whether to keep the message.
        """
        client = self._client
        if client is None or not self.connected.is_set():
            logger.debug("Not connected to %s; not publishing to %s", self.broker, topic)
            return False
        try:
            await client.publish(topic, payload, qos=qos, retain=retain, timeout=self.settings.timeout)
        except aiomqtt.MqttError as exc:
            logger.info("Publish to %s on %s failed (%s); the caller keeps it for later", topic, self.broker, exc)
            return False
        return True

    async def reconnect(self) -> None:
        """Drop the connection (or the wait before the next attempt) and connect again now: the client's
        certificate files are read again, so a renewed certificate is used from here on."""
        if self._stopping or not self._task.running:
            return
        # The old connection is closed and awaited first: its clean-up must not undo the new one's state.
        self._stopping = True
        try:
            await self._task.stop()
        finally:
            self._stopping = self._exited
        if not self._exited:
            self.connected.clear()
            self._task.start(self._run())

    async def wait_connected(self, timeout: float) -> None:
        await asyncio.wait_for(self.connected.wait(), timeout)

    def _client_args(self, tls_context: ssl.SSLContext | None) -> _ClientArguments:
        s = self.settings
        session: _ClientArguments = {"clean_session": True}
        if s.session_expiry is not None:
            connect = Properties(PacketTypes.CONNECT)
            connect.SessionExpiryInterval = s.session_expiry
            # Every connection asks for the session kept (aiomqtt's default cleans the first one, and each
            # connection is a new client there).
            session = {"protocol": aiomqtt.ProtocolVersion.V5, "clean_session": None, "clean_start": False,
                       "properties": connect}
        return {
            "tls_context": tls_context,
            "hostname": self.broker.host,
            "port": self.broker.port,
            "identifier": s.client_id,
            "will": s.will,
            "keepalive": s.keepalive,
            "timeout": s.timeout,
            **session,
            # 0: unbounded; with manual acknowledgement the broker's in-flight window bounds it.
            "max_queued_incoming_messages": 0 if s.manual_ack else s.max_queued_incoming,
            "max_inflight_messages": s.max_inflight,
            "bind_address": s.bind_address,
        }

    async def _run(self) -> None:
        while not self._stopping:
            retrying = AsyncRetrying(
                wait=wait_random_exponential(multiplier=self.settings.backoff_initial, max=self.settings.backoff_max),
                # aiomqtt may turn a cancellation into its own error (a disconnect that timed out while the
                # session stops): never retry then.
                retry=retry_if_exception(
                    lambda exc: isinstance(exc, (aiomqtt.MqttError, OSError)) and not self._stopping),
                before_sleep=self._log_retry,
                reraise=True,
            )
            try:
                async for attempt in retrying:
                    with attempt:
                        if self._before_connect is not None:
                            await self._before_connect()
                        await self._serve_one_connection()
            except SessionLost:
                # The link was up and dropped: start a fresh backoff, but
                # still wait a little so a fleet does not reconnect in step.
                delay = random.uniform(0, self.settings.backoff_initial)
                logger.warning("Link to %s lost; reconnecting in %.1f s", self.broker, delay)
                await asyncio.sleep(delay)
            except Exception:  # a bug, not a network fault: log loudly, keep serving
                if self._stopping:
                    return
                logger.exception("MQTT session with %s crashed; restarting it in %.1f s", self.broker,
                                 self.settings.backoff_max)
                await asyncio.sleep(self.settings.backoff_max)

    def _log_retry(self, state: RetryCallState) -> None:
        delay = state.next_action.sleep if state.next_action else 0.0
        exc = state.outcome.exception() if state.outcome else None
        logger.info("Connecting to %s failed (attempt #%d: %s); will retry in %.1f s", self.broker,
                    state.attempt_number, exc, delay)
        if exc is not None and self._on_connect_failed is not None:
            try:
                self._on_connect_failed(exc)
            except Exception:  # a bug in the listener must not end the session
                logger.exception("The connection failure listener of %s failed", self.settings.client_id)

    def use_tls(self, tls: TlsIdentity) -> None:
        """Show the broker ``tls`` from the next connection on (a node's trusted CAs changed); the connection up
        now, if any, stays."""
        self.settings = dataclasses.replace(self.settings, tls=tls)

    async def _tls_context(self) -> ssl.SSLContext | None:
        tls = self.settings.tls
        if not self.broker.tls or tls is None:
            return None
        try:
            # Reads the certificate files: off the loop.
            return await asyncio.to_thread(tls.context)
        except (OSError, ssl.SSLError, ValueError) as exc:
            # Retried like a refused connection: the files may be in the middle of a renewal.
            raise aiomqtt.MqttError(f"cannot load the TLS identity ({tls.cert_file}, {tls.key_file}): {exc}") from exc

    async def _serve_one_connection(self) -> None:
        tls_context = await self._tls_context()
        async with aiomqtt.Client(**self._client_args(tls_context)) as client:
            self._client = client
            self._tune(client)
            try:
                for topic in self.settings.subscriptions:
                    granted = await client.subscribe(topic, qos=1, timeout=self.settings.timeout)
                    if any(getattr(code, "is_failure", False) for code in granted or ()):
                        # The broker took the connection but not this subscription: on a broker with
                        # identities, a client it does not (or no longer) admit. Staying connected would
                        # receive nothing, so drop the link and try again with backoff.
                        raise aiomqtt.MqttError(f"the broker refused the subscription to {topic} (not authorized: "
                                                "is this identity admitted, or was it revoked?)")
                self.connections += 1
                self.connected.set()
                logger.info("Connected to %s as %s", self.broker, self.settings.client_id)
                if self._on_connect is not None:
                    await self._on_connect(self)
                async for message in client.messages:
                    await self._handle_and_ack(client, message)
                    # aiomqtt hands out one message per two turns of the event loop (a task and a wait each),
                    # and a busy loop (a rollout's publishing) makes each turn long: what is queued already is
                    # taken now, or the broker holds a fleet's reports until the publishing is done.
                    while len(client.messages):
                        await self._handle_and_ack(client, take_queued(client))
            except aiomqtt.MqttError as exc:
                raise SessionLost(str(exc)) from exc
            finally:
                self.connected.clear()
                self._client = None
        raise SessionLost("the message stream ended")

    def _tune(self, client: aiomqtt.Client) -> None:
        """Per-connection settings aiomqtt does not take as arguments (so reach paho's client)."""
        paho = paho_client(client)
        paho.manual_ack_set(self.settings.manual_ack)
        # Windows of publishes (assignments, summaries) are pending on purpose: aiomqtt would warn on every
        # publish past 10.
        client.pending_calls_threshold = max(client.pending_calls_threshold, 4 * (self.settings.max_inflight or 0))
        sock = paho.socket()
        if isinstance(sock, socket.socket):  # a TCP or TLS socket (paho's type also covers websockets')
            # MQTT packets are small and answered one by one (PUBLISH, PUBACK): without this, Nagle
            # plus the peer's delayed ACK stall a stream of them about 40 ms at a time.
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError as exc:  # not a TCP socket (a test's socket pair, say): nothing to tune
                logger.debug("TCP_NODELAY not set on the connection to %s: %s", self.broker, exc)

    async def _handle_and_ack(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        await self._handle(message)
        if self.settings.manual_ack and message.qos > 0:
            acknowledge(client, message)

    async def _handle(self, message: aiomqtt.Message) -> None:
        payload = message.payload if isinstance(message.payload, bytes) else str(message.payload or "").encode()
        try:
            await self._on_message(message.topic.value, payload)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("Handling a message on %s failed; skipping it", message.topic.value)
