"""The broker with identities limits the size of what a client may publish, above the hub's largest assignment.

A real Mosquitto started from the configuration ``edgehub mosquitto-config`` writes; the test connects
with certificates of the hub's CA: a node's (its name as common name, so the broker's node patterns
let it write its own status) and the hub's. Mosquitto 2.0's ``max_packet_size`` is one limit for
every client, so it is set above the largest assignment the hub can send (``MAX_ASSIGNMENT_BYTES``,
derived from the protocol's ``MAX_BUNDLE_BYTES``): this checks that bound against a real worst case,
that an assignment of that size passes, and that a node sending more is cut off with nothing kept.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
from nacl.public import PrivateKey

from edgehub.broker_config import MAX_PACKET_BYTES
from edgehub.broker_roles import HUB_USER
from edgehub.identity import HubIdentity
from edgekit.mqtt import TlsIdentity
from edgeprotocol import topics
from edgeprotocol.messages import MAX_ASSIGNMENT_BYTES, MAX_BUNDLE_BYTES, Assignment, Bundle, now
from edgeprotocol.signing import seal
from edgesim.fleet import Mosquitto

# A message the broker delivers arrives in milliseconds (a 21 MiB one in well under a second here).
QUIET_SECONDS = 3.0
NODE = "store-17"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    workdir = tmp_path_factory.mktemp("limits")
    mosquitto = Mosquitto(workdir / "broker", hub_state=workdir / "hub-state").start()
    yield mosquitto
    mosquitto.stop()


def connect(broker: Mosquitto, tls: TlsIdentity | None) -> aiomqtt.Client:
    assert tls is not None
    return aiomqtt.Client("127.0.0.1", broker.port, identifier=f"t-{uuid.uuid4().hex[:6]}", tls_context=tls.context(),
                          timeout=20)


async def retained(broker: Mosquitto, tls: TlsIdentity | None, topic: str) -> list[bytes]:
    """What a fresh subscriber to ``topic`` is sent: the retained message, if the broker holds one."""
    got: list[bytes] = []
    async with connect(broker, tls) as mqtt:
        await mqtt.subscribe(topic, qos=1)
        while True:
            try:
                async with asyncio.timeout(QUIET_SECONDS):
                    message = await anext(aiter(mqtt.messages))
            except TimeoutError:
                return got
            got.append(bytes(message.payload))


def largest_assignment(hub_state: Path) -> bytes:
    """The largest assignment the hub can send: a bundle of MAX_BUNDLE_BYTES that does not compress at all
    (random bytes, compressed as ``Bundle.packed`` does), encrypted to a node and signed by the hub."""
    bundle = Bundle.of("placeholder")
    object.__setattr__(bundle, "_packed", gzip.compress(os.urandom(MAX_BUNDLE_BYTES), mtime=0))
    assignment = Assignment(node=NODE, namespace="demo", release="r" * 53, revision=2**31, kind="release",
                            issued_at=now(), pool="p" * 63, chart={"name": "c" * 63, "version": "1.0.0-" + "v" * 50},
                            bundle=bundle, generation=2**31)
    return seal(assignment, HubIdentity.load_or_create(hub_state).key, bundle_to=PrivateKey.generate().public_key)


def test_the_limit_is_derived_from_the_bundle_bound_with_headroom(broker: Mosquitto):
    written = int(re.search(r"^max_packet_size (\d+)$", broker.config.read_text(), re.MULTILINE).group(1))  # type: ignore[union-attr]  # no such line fails the test
    assert written == MAX_PACKET_BYTES
    assert MAX_BUNDLE_BYTES < MAX_ASSIGNMENT_BYTES < MAX_PACKET_BYTES < 32 * 1024 * 1024


async def test_the_largest_assignment_passes_from_the_hub_to_its_node(broker: Mosquitto):
    assert broker.hub_state is not None
    payload = await asyncio.to_thread(largest_assignment, broker.hub_state)
    assert MAX_BUNDLE_BYTES < len(payload) <= MAX_ASSIGNMENT_BYTES
    topic = topics.assignment(NODE, "demo", "big")
    async with connect(broker, broker.identity(HUB_USER)) as hub:
        await hub.publish(topic, payload, qos=1, retain=True)
    # The node reads it whole, as a retained message.
    assert await retained(broker, broker.identity(NODE), topics.assignments_of(NODE)) == [payload]


async def test_a_node_sending_more_than_the_limit_is_cut_off_and_nothing_is_kept(broker: Mosquitto):
    topic = topics.status(NODE)
    before = b'{"v":1,"node":"store-17","seq":1}'
    async with connect(broker, broker.identity(NODE)) as node:
        await node.publish(topic, before, qos=1, retain=True)
    assert await retained(broker, broker.identity(), topic) == [before]
    # 30 MB retained on its own status topic, then just over the limit: the broker drops the connection
    # after reading the packet's length (aiomqtt notices at its timeout: it waits for the PUBACK).
    for size in (30_000_000, MAX_PACKET_BYTES):
        with pytest.raises(aiomqtt.MqttError):
            async with connect(broker, broker.identity(NODE)) as node:
                await node.publish(topic, b"x" * size, qos=1, retain=True, timeout=5)
    assert broker.log_tail(200).count(f"Client {NODE} disconnected due to oversize packet") == 2
    # A fresh subscriber gets what the node retained before, nothing of the oversized ones.
    assert await retained(broker, broker.identity(), topic) == [before]
    assert broker.running
