"""The parts of ``aiomqtt.Client`` that edgekit needs and aiomqtt does not offer publicly, touched only here.

aiomqtt 2.x has no way to set paho's options per connection (manual acknowledgement, the socket's
TCP_NODELAY), no acknowledgement of its own (aiomqtt issue #345), and hands out queued messages one per
two turns of the event loop. Each of these reaches a private attribute of the client; an aiomqtt release
may rename it, so every reach goes through ``_private``, which names the attribute and the aiomqtt version
when it is gone, and tests/kit/test_aiomqtt_private.py checks them all against the installed aiomqtt.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiomqtt
import paho.mqtt.client as paho

# Client attribute -> what it must be.
PRIVATE_ATTRIBUTES: dict[str, type] = {"_client": paho.Client, "_queue": asyncio.Queue}


class AiomqttChanged(RuntimeError):
    """The installed aiomqtt no longer has a private attribute edgekit reaches (see the module docstring)."""


def _private(client: aiomqtt.Client, name: str) -> Any:
    value = getattr(client, name, None)
    if not isinstance(value, PRIVATE_ATTRIBUTES[name]):
        raise AiomqttChanged(
            f"aiomqtt {aiomqtt.__version__}: Client.{name} is {type(value).__name__}, not the "
            f"{PRIVATE_ATTRIBUTES[name].__module__}.{PRIVATE_ATTRIBUTES[name].__qualname__} edgekit/aiomqtt_private.py "
            "reaches; pin the aiomqtt that had it or change that module"
        )
    return value


def paho_client(client: aiomqtt.Client) -> paho.Client:
    """The paho client under ``client``: its per-connection options and its socket."""
    found: paho.Client = _private(client, "_client")
    return found


def take_queued(client: aiomqtt.Client) -> aiomqtt.Message:
    """The next message already queued (``len(client.messages)`` says how many are), without waiting."""
    queue: asyncio.Queue[aiomqtt.Message] = _private(client, "_queue")
    return queue.get_nowait()


def acknowledge(client: aiomqtt.Client, message: aiomqtt.Message) -> None:
    """Send the acknowledgement of ``message`` (a session with paho's manual acknowledgement on)."""
    paho_client(client).ack(message.mid, message.qos)
