"""The agent renews its node certificate by itself before it expires, over HTTPS verified against the pinned CA.

A real ``edgehub serve`` (``--tls on``, node certificates of 30 seconds from
its settings file), a real Mosquitto, the node joined with ``edgeagent
join``, and the agent itself (``Agent``, with the in-memory runtime: this is
about its identity, not its pods). Nothing is called by hand: the agent
renews two thirds into the certificate's life, and the files on disk, the
hub's view (``edgectl describe node -o json``) and the node's events say so.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from fakes import FakeRuntime

from edgeagent.agent import Agent, AgentSettings
from edgeagent.certificate import VALIDITY_FILE
from edgeagent.doctor import certificate_check
from edgeagent.identity import NodeIdentity
from edgeagent.renewal import PENDING_CERT_FILE, PENDING_KEY_FILE
from edgeprotocol.enrollment import renew_after
from edgesim.fleet import Hub, Mosquitto, wait_until

LIFETIME_DAYS = 0.00035  # 30.24 s: the shortest the hub allows is 30 s


@pytest.fixture
def hub(tmp_path: Path, broker: Mosquitto) -> Iterator[Hub]:
    config = tmp_path / "hub.yaml"
    config.write_text(f"state_dir: hub/state\nnode_certificate_days: {LIFETIME_DAYS}\n")
    hub = Hub(tmp_path / "hub", broker.url, tls="on", config=config).start()
    try:
        yield hub
    finally:
        hub.stop()


def certificate(state: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((state / "node.crt").read_bytes())


async def test_the_agent_renews_its_certificate_before_expiry_and_the_hub_shows_the_new_one(hub: Hub, tmp_path: Path):
    state = tmp_path / "node"
    token = await asyncio.to_thread(hub.token, "shanghai")
    joined = await asyncio.to_thread(subprocess.run, [
        sys.executable, "-m", "edgeagent.cli", "join", "--hub", hub.url, "--token", token, "--name", "renew-1",
        "--state-dir", str(state)], capture_output=True, text=True, timeout=60)
    assert joined.returncode == 0, joined.stderr
    assert hub.url.startswith("https://")
    first, first_key = certificate(state), (state / "node.key").read_bytes()
    lifetime = first.not_valid_after_utc - first.not_valid_before_utc
    assert 30 <= lifetime.total_seconds() <= 33  # 30.24 s, backdated by a twentieth
    identity = NodeIdentity.load(state)

    async with Agent(AgentSettings(state_dir=state), identity, FakeRuntime()) as agent:
        # The renewal's process writes the new certificate, then the agent counts the renewal once that
        # process has ended: both are waited for.
        renewed = await asyncio.to_thread(
            wait_until, lambda: certificate(state) != first and agent.renewer.renewals >= 1 and certificate(state),
            timeout=45, what="the agent to renew its certificate", interval=0.2)
        seen_at = dt.datetime.now(dt.UTC)
        assert agent.renewer.failures == 0
        events = await asyncio.to_thread(wait_until, lambda: [
            e for e in hub.api("/api/v1/nodes/renew-1/events") if e["reason"] == "CertificateRenewed"],
            timeout=20, what="the CertificateRenewed event at the hub")
    # Renewed in the last third of the old certificate's life, before it expired.
    assert renew_after(first) <= seen_at < first.not_valid_after_utc
    assert renewed.not_valid_after_utc > first.not_valid_after_utc
    assert renewed.serial_number != first.serial_number
    assert f"certificate renewed: serial {renewed.serial_number:x}" in events[0]["message"]
    assert f"was serial {first.serial_number:x}" in events[0]["message"]
    # A new key, owner-only, for the new certificate; nothing half-done is left.
    assert (state / "node.key").read_bytes() != first_key and (state / "node.key").stat().st_mode & 0o077 == 0
    assert not (state / PENDING_KEY_FILE).exists() and not (state / PENDING_CERT_FILE).exists()
    assert certificate_check(state, identity).ok
    # The record the agent reads its next renewal time from describes the certificate in force.
    recorded = json.loads((state / VALIDITY_FILE).read_text())
    assert recorded["serial"] == format(certificate(state).serial_number, "x")
    assert recorded["not_after"] == certificate(state).not_valid_after_utc.isoformat()
    # The hub holds what the node holds; the join generation is the same, so its assignments stay valid.
    view = await asyncio.to_thread(hub.ctl_json, "describe", "node", "renew-1")
    assert view["certificate"]["serial"] == format(certificate(state).serial_number, "x")
    assert (view["generation"], view["standing"]) == (1, "joined")


def test_a_running_agent_renews_in_a_process_of_its_own_and_never_loads_cryptography(hub: Hub, tmp_path: Path):
    """The real ``edgeagent run`` (dry-run runtime: this is about its identity) renews, and Python's own import
    log of that process (``PYTHONPROFILEIMPORTTIME``) names no ``cryptography`` module: the renewal ran in a
    process of its own, so the agent does not keep cryptography's ~7 MiB after it (bench/README.md)."""
    state, log = tmp_path / "node", tmp_path / "agent.log"
    token = hub.token("shanghai")
    joined = subprocess.run([sys.executable, "-m", "edgeagent.cli", "join", "--hub", hub.url, "--token", token,
                             "--name", "renew-2", "--state-dir", str(state)], capture_output=True, text=True,
                             timeout=60)
    assert joined.returncode == 0, joined.stderr
    first = certificate(state)
    with log.open("wb") as out:
        agent = subprocess.Popen([sys.executable, "-m", "edgeagent.cli", "run", "--state-dir", str(state),
                                  "--runtime", "dry-run"], stdout=out, stderr=subprocess.STDOUT,
                                 env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
    try:
        events = wait_until(lambda: [e for e in hub.api("/api/v1/nodes/renew-2/events")
                                     if e["reason"] == "CertificateRenewed"], timeout=60,
                            what="the running agent's CertificateRenewed event at the hub")
        assert agent.poll() is None, log.read_text()[-2000:]
    finally:
        agent.terminate()
        agent.wait(timeout=30)
    renewed = certificate(state)
    assert renewed.serial_number != first.serial_number
    assert f"was serial {first.serial_number:x}" in events[0]["message"]
    imported = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)", log.read_text(), re.M))
    assert {"edgeagent.renewal", "nacl.bindings"} <= imported
    assert sorted(m for m in imported if m.split(".")[0] == "cryptography") == []
