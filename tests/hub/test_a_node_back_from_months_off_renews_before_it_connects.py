"""An agent that starts with a certificate that expired while the node was off renews it over HTTPS first, then
connects to the broker, while its workloads run on; with the hub out of reach it keeps off the broker.

The real hub on aiohttp's test server, a real Mosquitto, the node joined with
the agent's own join and its certificate then replaced on both sides by one
of the hub's CA that ended days ago (as 150 days of a 90-day certificate
leave it); the agent itself (``Agent``, in-memory runtime).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import socket
from pathlib import Path

from aiohttp.test_utils import TestClient
from cryptography import x509
from fakes import FakeRuntime
from test_certificate_renewal import joined, stored_certificate
from test_offline_horizon import issued_in_the_past

from edgeagent import certificate
from edgeagent.agent import Agent, AgentSettings
from edgeagent.clock import CLOCK_FILE
from edgeagent.renewal import NOTE_FILE
from edgesim.fleet import wait_until


def expired_on_both_sides(hub: TestClient, state: Path, node: str, days_ago: float) -> x509.Certificate:
    pem = issued_in_the_past(hub, state, node, expired_days_ago=days_ago)
    (state / "node.crt").write_text(pem)
    certificate.record(state)
    return x509.load_pem_x509_certificate(pem.encode())


async def test_an_agent_with_an_expired_certificate_renews_first_and_connects_once(hub: TestClient, tmp_path: Path):
    node, identity, state = await joined(hub, tmp_path)
    old = expired_on_both_sides(hub, state, node, days_ago=60)
    async with Agent(AgentSettings(state_dir=state, reconcile_interval=0.2), identity, FakeRuntime()) as agent:
        await asyncio.to_thread(wait_until, lambda: agent.session.connected.is_set(), timeout=30,
                                what="the agent connected to the broker")
        renewed = x509.load_pem_x509_certificate((state / "node.crt").read_bytes())
        assert renewed.serial_number != old.serial_number
        assert renewed.not_valid_after_utc > dt.datetime.now(dt.UTC)
        assert stored_certificate(hub, node) == (state / "node.crt").read_text()
        # One connection, made after the renewal: the expired certificate was never shown to the broker
        # (without the gate the agent connects at once and again after the renewal).
        await asyncio.sleep(1.0)
        assert (agent.renewer.renewals, agent.renewer.failures, agent.session.connections) == (1, 0, 1)
    assert json.loads((state / CLOCK_FILE).read_text())["offset_seconds"] < 5
    note = json.loads((state / NOTE_FILE).read_text())
    assert note["message"].startswith("certificate renewed: serial") and ", expired)" in note["message"]


async def test_with_the_hub_out_of_reach_the_agent_keeps_off_the_broker_and_its_workloads_run(
        hub: TestClient, tmp_path: Path):
    node, identity, state = await joined(hub, tmp_path)
    expired_on_both_sides(hub, state, node, days_ago=10)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{closed.getsockname()[1]}"
    offline = dataclasses.replace(identity, hub_url=nowhere)
    async with Agent(AgentSettings(state_dir=state, reconcile_interval=0.2), offline, FakeRuntime()) as agent:
        await asyncio.to_thread(wait_until, lambda: agent.renewer.failures >= 2, timeout=20,
                                what="two failed renewal rounds")
        passes = agent.passes
        await asyncio.sleep(1.0)
        assert agent.passes > passes  # the reconciler never waits for the renewal
        assert agent.session.connections == 0 and not agent.session.connected.is_set()
    note = json.loads((state / NOTE_FILE).read_text())
    assert "renewal failed: cannot ask the hub for its time: cannot reach the hub" in note["message"]
    assert "the renewal waits until the hub can be reached" in note["message"]
