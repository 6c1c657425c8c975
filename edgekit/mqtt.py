"""One long-lived MQTT connection that reconnects by itself, shared by hub and agent.

``MqttSession`` connects, subscribes, hands every message to a handler and,
when the link drops, reconnects with jittered exponential backoff (tenacity's
``wait_random_exponential``) so a broker restart does not bring every node back
in the same second. The backoff restarts from its smallest step once a
connection has been established.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiomqtt
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_random_exponential

logger = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes], Awaitable[None]]
ConnectHook = Callable[["MqttSession"], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """Parse ``mqtt://HOST:PORT`` (port 1883 when left out)."""
        parts = urlsplit(url)
        if parts.scheme != "mqtt" or not parts.hostname:
            raise ValueError(f"MQTT URL {url!r} must look like mqtt://HOST:PORT")
        try:
            port = parts.port or 1883
        except ValueError as exc:
            raise ValueError(f"MQTT URL {url!r} has an invalid port") from exc
        return cls(host=parts.hostname, port=port)

    def __str__(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


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
    # the next connect.
    max_queued_incoming: int = 10_000
    extra: dict[str, object] = field(default_factory=dict)


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
    ) -> None:
        self.settings = settings
        self.broker = BrokerAddress.parse(settings.url)
        self._on_message = on_message
        self._on_connect = on_connect
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.connections = 0  # how many times a connection was established

    async def __aenter__(self) -> MqttSession:
        if self._task is not None:
            raise RuntimeError("this MQTT session is already running")
        self._task = asyncio.create_task(self._run(), name=f"mqtt-session-{self.settings.client_id}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
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

    async def wait_connected(self, timeout: float) -> None:
        await asyncio.wait_for(self.connected.wait(), timeout)

    def _client_args(self) -> dict[str, object]:
        s = self.settings
        return {
            "hostname": self.broker.host,
            "port": self.broker.port,
            "identifier": s.client_id,
            "will": s.will,
            "keepalive": s.keepalive,
            "timeout": s.timeout,
            "clean_session": True,
            "max_queued_incoming_messages": s.max_queued_incoming,
            **s.extra,
        }

    async def _run(self) -> None:
        while True:
            retrying = AsyncRetrying(
                wait=wait_random_exponential(multiplier=self.settings.backoff_initial, max=self.settings.backoff_max),
                retry=retry_if_exception_type((aiomqtt.MqttError, OSError)),
                before_sleep=self._log_retry,
                reraise=True,
            )
            try:
                async for attempt in retrying:
                    with attempt:
                        await self._serve_one_connection()
            except SessionLost:
                # The link was up and dropped: start a fresh backoff, but
                # still wait a little so a fleet does not reconnect in step.
                delay = random.uniform(0, self.settings.backoff_initial)
                logger.warning("Link to %s lost; reconnecting in %.1f s", self.broker, delay)
                await asyncio.sleep(delay)
            except Exception:  # a bug, not a network fault: log loudly, keep serving
                logger.exception("MQTT session with %s crashed; restarting it in %.1f s", self.broker, self.settings.backoff_max)
                await asyncio.sleep(self.settings.backoff_max)

    def _log_retry(self, state: RetryCallState) -> None:
        delay = state.next_action.sleep if state.next_action else 0.0
        exc = state.outcome.exception() if state.outcome else None
        logger.info("Connecting to %s failed (attempt #%d: %s); will retry in %.1f s", self.broker, state.attempt_number, exc, delay)

    async def _serve_one_connection(self) -> None:
        async with aiomqtt.Client(**self._client_args()) as client:  # type: ignore[arg-type]
            self._client = client
            try:
                for topic in self.settings.subscriptions:
                    await client.subscribe(topic, qos=1, timeout=self.settings.timeout)
                self.connections += 1
                self.connected.set()
                logger.info("Connected to %s as %s", self.broker, self.settings.client_id)
                if self._on_connect is not None:
                    await self._on_connect(self)
                async for message in client.messages:
                    await self._handle(message)
            except aiomqtt.MqttError as exc:
                raise SessionLost(str(exc)) from exc
            finally:
                self.connected.clear()
                self._client = None
        raise SessionLost("the message stream ended")

    async def _handle(self, message: aiomqtt.Message) -> None:
        payload = message.payload if isinstance(message.payload, bytes) else str(message.payload or "").encode()
        try:
            await self._on_message(message.topic.value, payload)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("Handling a message on %s failed; skipping it", message.topic.value)
