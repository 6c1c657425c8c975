"""The private parts of aiomqtt that edgekit reaches (edgekit/aiomqtt_private.py) are still there.

An aiomqtt upgrade that renames or removes one fails here, naming the attribute and the aiomqtt version,
instead of in a session that stops acknowledging or draining messages on a live broker."""

from __future__ import annotations

import aiomqtt
import paho.mqtt.client as paho
import pytest

from edgekit import aiomqtt_private
from edgekit.aiomqtt_private import PRIVATE_ATTRIBUTES, AiomqttChanged, paho_client, take_queued


@pytest.mark.parametrize("name", sorted(PRIVATE_ATTRIBUTES))
async def test_each_private_attribute_edgekit_reaches_is_in_the_installed_aiomqtt(name: str) -> None:
    client = aiomqtt.Client("127.0.0.1")
    value = getattr(client, name, None)
    assert isinstance(value, PRIVATE_ATTRIBUTES[name]), (
        f"aiomqtt {aiomqtt.__version__} has no Client.{name} of type {PRIVATE_ATTRIBUTES[name].__qualname__} "
        f"(found {type(value).__name__}): edgekit/aiomqtt_private.py must change with this upgrade")


async def test_the_queue_it_drains_is_the_one_the_message_count_reads() -> None:
    client = aiomqtt.Client("127.0.0.1")
    message = aiomqtt.Message("ec/v1/t", b"x", qos=1, retain=False, mid=7, properties=None)
    client._queue.put_nowait(message)
    assert len(client.messages) == 1
    assert take_queued(client) is message
    assert len(client.messages) == 0


async def test_the_paho_client_it_acknowledges_with_has_manual_acknowledgement() -> None:
    found = paho_client(aiomqtt.Client("127.0.0.1"))
    assert isinstance(found, paho.Client)
    assert callable(found.ack) and callable(found.manual_ack_set) and callable(found.socket)


async def test_a_missing_attribute_is_named_with_the_aiomqtt_version(monkeypatch: pytest.MonkeyPatch) -> None:
    client = aiomqtt.Client("127.0.0.1")
    monkeypatch.delattr(client, "_client")
    with pytest.raises(AiomqttChanged, match=rf"^aiomqtt {aiomqtt.__version__}: Client\._client is NoneType"):
        aiomqtt_private.paho_client(client)
