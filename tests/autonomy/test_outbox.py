"""Events raised while offline wait in a bounded outbox and reach the broker in order once it is back.

The agent runs in-process against a real Mosquitto that is started only after
the events were raised. The runtime is the in-memory fake: this test is
about the outbox (the node holds no release), and the podman path of events is covered by the fault tests.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fakes import FakeRuntime

from edgeagent.agent import Agent, AgentSettings
from edgeagent.identity import NodeIdentity
from edgeprotocol import Event, topics
from edgeprotocol.signing import public_key_pem
from edgesim.faults import LinkProxy
from edgesim.fleet import Mosquitto, wait_until
from edgesim.watch import TopicRecorder


async def test_the_oldest_events_are_dropped_past_the_bound_and_one_notice_says_how_many(tmp_path: Path):
    broker = await asyncio.to_thread(Mosquitto(tmp_path / "broker").start)
    link = await asyncio.to_thread(LinkProxy(broker.port).start)
    link.cut()  # the node starts offline
    identity = NodeIdentity(node="n1", pool="p", labels={}, hub_url="http://127.0.0.1:9", mqtt_url=link.url,
                            hub_public_key=public_key_pem(Ed25519PrivateKey.generate().public_key()), ca_certificate="")
    # A connect into the cut link gives up after mqtt_timeout: short, so the restored link is used soon.
    settings = AgentSettings(state_dir=tmp_path / "state", outbox_limit=5, reconcile_interval=0.5, mqtt_timeout=1.0)
    try:
        async with Agent(settings, identity, FakeRuntime()) as agent:
            for i in range(8):
                await agent.record_event("Test", f"event {i}")
            assert await agent.store.outbox_size() == 5

            with TopicRecorder(broker.port, topics.events("n1")) as recorder:
                await asyncio.to_thread(link.restore)
                await asyncio.to_thread(wait_until, lambda: len(recorder.snapshot()) >= 6, timeout=60,
                                        what="the outbox to drain")
                events = [Event.decode(p) for p in recorder.snapshot()]
            assert await agent.store.outbox_size() == 0
    finally:
        await asyncio.to_thread(link.close)
        await asyncio.to_thread(broker.stop)
    assert events[0].reason == "EventsDropped" and "3 event(s) dropped" in events[0].message
    assert [e.message for e in events[1:]] == [f"event {i}" for i in range(3, 8)]
