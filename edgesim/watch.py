"""Record what is published on a topic, with a real MQTT client (paho) on its own thread."""

from __future__ import annotations

import threading
import uuid

import paho.mqtt.client as mqtt

from edgekit.mqtt import TlsIdentity

CONNECT_TIMEOUT_SECONDS = 10.0


def _client(prefix: str, tls: TlsIdentity | None) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{prefix}-{uuid.uuid4().hex[:8]}")
    if tls is not None:
        client.tls_set_context(tls.context())
    return client


class TopicRecorder:
    """Subscribes to ``topic`` (a filter: ``ec/v1/#`` records everything) on the broker at ``port`` and keeps
    every message, in order. ``tls``: the identity to show a broker with identities (``Mosquitto.identity()``:
    the observer)."""

    def __init__(self, port: int, topic: str, *, tls: TlsIdentity | None = None) -> None:
        self.topic = topic
        self._messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = _client("recorder", tls)
        self._client.on_connect = lambda client, *_: client.subscribe(topic, qos=1)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message
        self._port = port

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self._messages.append((message.topic, bytes(message.payload)))

    def __enter__(self) -> TopicRecorder:
        # paho reconnects by itself (a broker restart in a test) and
        # on_connect subscribes again.
        self._client.connect("127.0.0.1", self._port, keepalive=10)
        self._client.loop_start()
        if not self._subscribed.wait(CONNECT_TIMEOUT_SECONDS):
            self.__exit__()
            raise TimeoutError(f"could not subscribe to {self.topic} on port {self._port}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def snapshot(self) -> list[bytes]:
        """Every payload so far."""
        return [payload for _, payload in self.messages()]

    def messages(self) -> list[tuple[str, bytes]]:
        """Every (topic, payload) so far."""
        with self._lock:
            return list(self._messages)


def publish(port: int, messages: list[tuple[str, bytes, bool]], *, tls: TlsIdentity | None = None) -> None:
    """Publish (topic, payload, retain) messages in order with QoS 1, waiting for each acknowledgement."""
    client = _client("publisher", tls)
    client.connect("127.0.0.1", port, keepalive=10)
    client.loop_start()
    try:
        for topic, payload, retain in messages:
            client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(CONNECT_TIMEOUT_SECONDS)
    finally:
        client.disconnect()
        client.loop_stop()
