"""Once a node's certificate is renewed, the old one no longer gets onto the broker; the node never is locked out.

A real Mosquitto from ``edgehub mosquitto-config``, a real ``edgehub serve`` with node certificates of
about 30 seconds (its settings file), nodes joined with ``edgeagent join`` and the agent itself
(``Agent`` with the in-memory runtime: this is about identities, not pods). The test keeps a copy of
the certificate and key a node had before its renewal, as a thief would, and checks what a user
would: whether that copy can still publish the node's status or read its assignments, and whether
the node with its new certificate keeps both.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fakes import FakeRuntime
from fleet_checks import write_spec

from edgeagent.agent import Agent, AgentSettings
from edgeagent.identity import KEY_FILE, NodeIdentity, make_csr
from edgeagent.renewal import PENDING_KEY_FILE
from edgehub.broker_revocations import signal_broker
from edgekit.mqtt import TlsIdentity
from edgeprotocol import topics
from edgeprotocol.enrollment import renew_after, renewal_payload
from edgesim.fleet import Hub, Mosquitto, wait_until

LIFETIME_DAYS = 0.00035  # 30.24 s: the shortest the hub allows is 30 s; renewed about 20 s after it is issued
QUIET_SECONDS = 1.5


@dataclass
class Setup:
    broker: Mosquitto
    hub: Hub
    workdir: Path


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    hub_dir = tmp_path / "hub"
    broker = Mosquitto(tmp_path / "broker", hub_state=Hub.state_dir_of(hub_dir)).start()
    config = tmp_path / "hub.yaml"
    config.write_text(f"node_certificate_days: {LIFETIME_DAYS}\n")
    hub = Hub(hub_dir, broker.url, config=config)
    try:
        hub.start()
        yield Setup(broker, hub, tmp_path)
    finally:
        hub.stop()
        broker.stop()


def join(setup: Setup, name: str) -> Path:
    state = setup.workdir / name
    result = subprocess.run([sys.executable, "-m", "edgeagent.cli", "join", "--hub", setup.hub.url, "--token",
                             setup.hub.token("shanghai"), "--name", name, "--state-dir", str(state)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return state


def keep_copy(state: Path, where: Path) -> TlsIdentity:
    """A copy of the node's certificate and key as they are now (what a thief would hold)."""
    where.mkdir(parents=True)
    for name in ("node.crt", "node.key"):
        shutil.copy2(state / name, where / name)
    ca = json.loads((state / "identity.json").read_text())["ca_certificate"]
    return TlsIdentity(ca_pem=ca, cert_file=where / "node.crt", key_file=where / "node.key")


def current(state: Path) -> TlsIdentity:
    return keep_copy(state, state.parent / f"{state.name}-now-{uuid.uuid4().hex[:6]}")


def serial(tls: TlsIdentity) -> int:
    return x509.load_pem_x509_certificate(tls.cert_file.read_bytes()).serial_number


async def what_it_can_do(broker: Mosquitto, tls: TlsIdentity, node: str) -> set[str]:
    """What a client showing ``tls`` manages as ``node``: {"connect", "read assignments", "publish status"}
    (the last seen by a fresh reader of the topic: the broker kept it)."""
    done: set[str] = set()
    marker = f'{{"probe":"{uuid.uuid4().hex}"}}'.encode()
    try:
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier=node, tls_context=tls.context(),
                                  timeout=5) as mqtt:
            done.add("connect")
            granted = await mqtt.subscribe(topics.assignments_of(node), qos=1)
            if not any(getattr(code, "is_failure", False) for code in granted):
                done.add("read assignments")
            await mqtt.publish(topics.status(node), marker, qos=1, retain=True)
    except aiomqtt.MqttError:
        return done
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="observer", tls_context=broker.identity().context(),
                              timeout=5) as observer:
        await observer.subscribe(topics.status(node), qos=1)
        try:
            async with asyncio.timeout(QUIET_SECONDS):
                async for message in observer.messages:
                    if message.payload == marker:
                        done.add("publish status")
                        break
        except TimeoutError:
            pass
    return done


EVERYTHING = {"connect", "read assignments", "publish status"}


async def wait_for(predicate, *, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(interval)


async def test_after_a_renewal_the_old_certificate_is_refused_and_the_node_works_on_with_the_new_one(setup: Setup):
    state = await asyncio.to_thread(join, setup, "renew-1")
    old = keep_copy(state, setup.workdir / "stolen")
    assert await what_it_can_do(setup.broker, old, "renew-1") == EVERYTHING
    identity = NodeIdentity.load(state)
    async with Agent(AgentSettings(state_dir=state), identity, FakeRuntime()) as agent:
        await wait_for(lambda: agent.renewer.renewals >= 1, timeout=45, what="the agent's renewal")
        new = current(state)
        assert serial(new) != serial(old)
        # In force as soon as the node has it: the old certificate connects no more.
        assert await what_it_can_do(setup.broker, old, "renew-1") == set()
        # The agent reconnected with its new certificate, and takes a component applied now.
        await wait_for(lambda: agent.session.connected.is_set() and agent.session.connections >= 2, timeout=20,
                       what="the agent to reconnect with its new certificate")
        await asyncio.to_thread(setup.hub.ctl, "apply", "-f", str(write_spec(setup.workdir / "web.yaml")))
        await wait_for(lambda: agent.runtime.applies, timeout=30, what="the assignment to reach the agent")  # type: ignore[attr-defined]  # the dry-run runtime counts its applies
        view = await asyncio.to_thread(wait_until, lambda: [
            r for r in setup.hub.ctl_json("describe", "node", "renew-1")["releases"] if r["phase"] == "Deployed"],
            timeout=30, what="the node's Deployed status at the hub")
        assert view
    # A broker restart reads the list at its start: still refused, the new one still admitted.
    await asyncio.to_thread(setup.broker.restart)
    assert await what_it_can_do(setup.broker, old, "renew-1") == set()
    assert await what_it_can_do(setup.broker, new, "renew-1") == EVERYTHING
    assert "Wrote the broker's certificate revocation list (1 certificate(s))" in setup.hub.log_path.read_text()


def lose_a_renewal_answer(hub: Hub, state: Path, node: str) -> str:
    """Do what the agent's renewal does up to the hub's answer, which is then lost: a new key in
    node.key.next, a request proven by the key in force, taken by the hub. The certificate it answered."""
    pending = Ed25519PrivateKey.generate()
    (state / PENDING_KEY_FILE).write_bytes(pending.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    os.chmod(state / PENDING_KEY_FILE, 0o600)
    current_key = serialization.load_pem_private_key((state / KEY_FILE).read_bytes(), password=None)
    assert isinstance(current_key, Ed25519PrivateKey)
    csr, timestamp, nonce = make_csr(pending, node), int(time.time()), secrets.token_hex(16)
    proof = current_key.sign(renewal_payload(node=node, csr=csr, timestamp=timestamp, nonce=nonce))
    body = json.dumps({"csr": csr, "timestamp": timestamp, "nonce": nonce,
                       "proof": base64.b64encode(proof).decode()}).encode()
    request = urllib.request.Request(f"{hub.url}/api/v1/nodes/{node}/certificate", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["certificate"]


async def test_a_renewal_whose_answer_was_lost_does_not_lock_the_node_out(setup: Setup):
    state = await asyncio.to_thread(join, setup, "renew-2")
    before = keep_copy(state, setup.workdir / "before")
    due = renew_after(x509.load_pem_x509_certificate(before.cert_file.read_bytes()))
    await asyncio.sleep(max(0.0, (due - dt.datetime.now(dt.UTC)).total_seconds()))
    lost = await asyncio.to_thread(lose_a_renewal_answer, setup.hub, state, "renew-2")
    # The hub holds the new certificate and the broker refuses the one the node has: off the broker for now.
    assert await what_it_can_do(setup.broker, before, "renew-2") == set()
    started = time.monotonic()
    async with Agent(AgentSettings(state_dir=state), NodeIdentity.load(state), FakeRuntime()) as agent:
        # Its renewal, due, is refused for the old key's proof, proven again by the new key, and answered.
        await wait_for(lambda: agent.renewer.renewals >= 1 and agent.session.connected.is_set(), timeout=30,
                       what="the agent to get its certificate again and connect")
        back_after = time.monotonic() - started
        now_held = current(state)
        assert await what_it_can_do(setup.broker, now_held, "renew-2") == EVERYTHING
    assert back_after < 15, f"the node was off the broker {back_after:.1f} s after its agent started"
    # Issued again for the same new key: the one whose answer was lost is void too, and so is the old one.
    assert serial(now_held) != x509.load_pem_x509_certificate(lost.encode()).serial_number
    assert x509.load_pem_x509_certificate(lost.encode()).public_key() == \
        x509.load_pem_x509_certificate(now_held.cert_file.read_bytes()).public_key()
    assert await what_it_can_do(setup.broker, before, "renew-2") == set()


async def test_a_renewal_while_the_broker_is_down_is_in_force_when_it_starts(setup: Setup):
    from edgeagent.renewal import renew

    state = await asyncio.to_thread(join, setup, "renew-3")
    old = keep_copy(state, setup.workdir / "old")
    await asyncio.to_thread(setup.broker.stop)
    await asyncio.to_thread(renew, state, NodeIdentity.load(state))
    await asyncio.to_thread(setup.broker.start)
    assert await what_it_can_do(setup.broker, old, "renew-3") == set()
    assert await what_it_can_do(setup.broker, current(state), "renew-3") == EVERYTHING


async def test_a_reset_nodes_old_certificate_stays_refused_after_its_name_joins_again(setup: Setup):
    state = await asyncio.to_thread(join, setup, "renew-4")
    old = keep_copy(state, setup.workdir / "old")
    await asyncio.to_thread(setup.hub.ctl, "node", "reset", "renew-4")
    shutil.rmtree(state)
    state = await asyncio.to_thread(join, setup, "renew-4")
    # The plugin let the name back in at the join; the list still refuses the certificate from before.
    await wait_for(lambda: "Wrote the broker's certificate revocation list (1 certificate(s))"
                   in setup.hub.log_path.read_text(), timeout=10, what="the list with the reset certificate")
    assert await what_it_can_do(setup.broker, old, "renew-4") == set()
    assert await what_it_can_do(setup.broker, current(state), "renew-4") == EVERYTHING


def test_only_the_broker_is_signalled(tmp_path: Path):
    """A pid file left by a broker that died may name another process by now: SIGHUP would end it."""
    other = subprocess.Popen(["sleep", "60"])
    try:
        pid_file = tmp_path / "mosquitto.pid"
        pid_file.write_text(f"{other.pid}\n")
        sent, said = signal_broker(pid_file)
        assert sent == "not sent" and "not the broker" in said
        assert other.poll() is None
        sent, said = signal_broker(tmp_path / "none.pid")
        assert sent == "not running" and "not running" in said
    finally:
        other.kill()
        other.wait()
