"""A node renews its certificate with a proof by its current key; nothing else renews it.

The real hub on aiohttp's test server with a real Mosquitto (``conftest.py``);
requests are built the way the agent builds them (``edgeagent.renewal``), and
the agent's own ``renew`` runs against the hub for the recovery cases. Every
refusal leaves the certificate the hub holds as it was.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import json
import os
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID
from hub_api import answer, create_token, refused, unique

from edgeagent.certificate import VALIDITY_FILE
from edgeagent.identity import KEY_FILE, NodeIdentity, make_csr
from edgeagent.identity import join as agent_join
from edgeagent.renewal import PENDING_CERT_FILE, PENDING_KEY_FILE, RenewalError, finish_interrupted, renew
from edgehub.keys import SETTINGS
from edgeprotocol.enrollment import RENEWAL_WINDOW_SECONDS, renewal_payload


def stored_certificate(hub: TestClient, node: str) -> str:
    db = hub.app[SETTINGS].db_path
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
        return connection.execute("SELECT certificate FROM nodes WHERE name = ?", (node,)).fetchone()[0]


def renewal(node: str, current: Ed25519PrivateKey, new: Ed25519PrivateKey | None = None, *, csr_name: str | None = None,
            timestamp: int | None = None, csr: str | None = None) -> dict[str, Any]:
    """A renewal request body as the agent sends it: a CSR for ``new`` (or ``csr``), proven by ``current``."""
    csr = csr or make_csr(new or Ed25519PrivateKey.generate(), csr_name or node)
    timestamp = int(time.time()) if timestamp is None else timestamp
    nonce = secrets.token_hex(16)
    proof = current.sign(renewal_payload(node=node, csr=csr, timestamp=timestamp, nonce=nonce))
    return {"csr": csr, "timestamp": timestamp, "nonce": nonce, "proof": base64.b64encode(proof).decode()}


async def joined(hub: TestClient, tmp_path: Path, node: str | None = None) -> tuple[str, NodeIdentity, Path]:
    """A node joined with the agent's own join: its name, identity and state directory."""
    node = node or unique("sh")
    state = tmp_path / node
    identity = await asyncio.to_thread(agent_join, hub_url=str(hub.make_url("")), token=await create_token(hub),
                                       state_dir=state, node=node)
    return node, identity, state


def key_of(state: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key((state / KEY_FILE).read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


@pytest.fixture
async def stranger(hub: TestClient) -> AsyncIterator[aiohttp.ClientSession]:
    """A client without the operator token: renewal needs none."""
    async with aiohttp.ClientSession(base_url=hub.make_url("")) as session:
        yield session


async def test_a_renewal_proven_by_the_current_key_gets_a_new_certificate_and_keeps_the_generation(
        hub: TestClient, stranger: aiohttp.ClientSession, tmp_path: Path):
    node, identity, state = await joined(hub, tmp_path)
    before = await answer(await hub.get(f"/api/v1/nodes/{node}"), 200)
    new = Ed25519PrivateKey.generate()
    renewed = await answer(await stranger.post(f"/api/v1/nodes/{node}/certificate",
                                               json=renewal(node, key_of(state), new)), 200)
    cert = x509.load_pem_x509_certificate(renewed["certificate"].encode())
    assert cert.public_key() == new.public_key() and cert.subject.rfc4514_string() == f"CN={node}"
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(identity.ca_certificate.encode()))
    assert stored_certificate(hub, node) == renewed["certificate"]
    after = await answer(await hub.get(f"/api/v1/nodes/{node}"), 200)
    assert after["certificate"]["serial"] == format(cert.serial_number, "x") != before["certificate"]["serial"]
    assert (after["generation"], after["standing"]) == (before["generation"], "joined") == (1, "joined")
    # The old key proves nothing any more.
    again = renewal(node, key_of(state))
    assert "does not verify against" in await refused(
        await stranger.post(f"/api/v1/nodes/{node}/certificate", json=again), 403)
    assert stored_certificate(hub, node) == renewed["certificate"]


async def test_a_replayed_renewal_is_refused_and_changes_nothing(
        hub: TestClient, stranger: aiohttp.ClientSession, tmp_path: Path):
    node, _, state = await joined(hub, tmp_path)
    captured = renewal(node, key_of(state), key_of(state))  # same key asked again: the proof key stays valid
    first = await answer(await stranger.post(f"/api/v1/nodes/{node}/certificate", json=captured), 200)
    held = stored_certificate(hub, node)
    assert held == first["certificate"]
    assert "taken before (a replay?)" in await refused(
        await stranger.post(f"/api/v1/nodes/{node}/certificate", json=captured), 403)
    assert stored_certificate(hub, node) == held
    # A request captured long ago (or made with a clock far off) is refused for its time.
    old = renewal(node, key_of(state), timestamp=int(time.time()) - RENEWAL_WINDOW_SECONDS - 5)
    assert "a replay, or the node's clock is wrong" in await refused(
        await stranger.post(f"/api/v1/nodes/{node}/certificate", json=old), 403)
    assert stored_certificate(hub, node) == held


async def test_a_proof_by_another_key_is_refused_and_changes_nothing(
        hub: TestClient, stranger: aiohttp.ClientSession, tmp_path: Path):
    node, _, _ = await joined(hub, tmp_path)
    held = stored_certificate(hub, node)
    forged = renewal(node, Ed25519PrivateKey.generate())
    error = await refused(await stranger.post(f"/api/v1/nodes/{node}/certificate", json=forged), 403)
    assert f"does not verify against the current certificate of node {node!r}" in error
    assert stored_certificate(hub, node) == held


async def test_a_csr_for_another_name_is_refused_and_changes_nothing(
        hub: TestClient, stranger: aiohttp.ClientSession, tmp_path: Path):
    node, _, state = await joined(hub, tmp_path)
    held = stored_certificate(hub, node)
    other = renewal(node, key_of(state), csr_name="bj-1")
    await refused(await stranger.post(f"/api/v1/nodes/{node}/certificate", json=other), 400, field="csr")
    assert stored_certificate(hub, node) == held


@pytest.mark.parametrize("action", ["revoke", "reset"])
async def test_a_revoked_or_reset_node_cannot_renew(
        hub: TestClient, stranger: aiohttp.ClientSession, tmp_path: Path, action: str):
    node, _, state = await joined(hub, tmp_path)
    await answer(await hub.post(f"/api/v1/nodes/{node}/{action}", json={}), 200)
    held = stored_certificate(hub, node)
    error = await refused(await stranger.post(f"/api/v1/nodes/{node}/certificate", json=renewal(node, key_of(state))),
                          403)
    assert ("is revoked" if action == "revoke" else "was reset") in error
    assert stored_certificate(hub, node) == held
    assert (await answer(await hub.get(f"/api/v1/nodes/{node}"), 200))["standing"] == {"revoke": "revoked",
                                                                                        "reset": "reset"}[action]
    # And the agent's renew says so, changing nothing on the node either.
    before = (state / KEY_FILE).read_bytes()
    with pytest.raises(RenewalError, match="the hub refused the renewal"):
        await asyncio.to_thread(renew, state, NodeIdentity.load(state))
    assert (state / KEY_FILE).read_bytes() == before


# An expired certificate: renewed within the hub's offline horizon, refused beyond it (test_offline_horizon.py).


@pytest.mark.parametrize(("change", "status", "field"), [
    ({"nonce": "xyz"}, 400, "nonce"),
    ({"nonce": None}, 400, "nonce"),
    ({"proof": "not base64!"}, 400, "proof"),
    ({"timestamp": 10**400}, 403, None),
    ({"timestamp": "now"}, 400, "timestamp"),
    ({"csr": "hello"}, 400, "csr"),  # proven as it is: only the request itself is wrong
])
async def test_a_malformed_renewal_is_refused_by_field(
        hub: TestClient, stranger: aiohttp.ClientSession, tmp_path: Path, change: dict[str, Any], status: int,
        field: str | None):
    node, _, state = await joined(hub, tmp_path)
    held = stored_certificate(hub, node)
    body = {**renewal(node, key_of(state), csr=change.get("csr")), **change}
    await refused(await stranger.post(f"/api/v1/nodes/{node}/certificate", json=body), status, field=field)
    assert stored_certificate(hub, node) == held
    unknown = renewal("nobody", key_of(state))
    assert "is not registered" in await refused(
        await stranger.post("/api/v1/nodes/nobody/certificate", json=unknown), 403)


async def test_renewals_over_the_rate_limit_are_refused_with_429(renewals_limited: TestClient, tmp_path: Path):
    node, _, state = await joined(renewals_limited, tmp_path)
    held = stored_certificate(renewals_limited, node)
    async with aiohttp.ClientSession(base_url=renewals_limited.make_url("")) as stranger:
        for _ in range(2):
            await refused(await stranger.post(f"/api/v1/nodes/{node}/certificate",
                                              json=renewal(node, Ed25519PrivateKey.generate())), 403)
        response = await stranger.post(f"/api/v1/nodes/{node}/certificate", json=renewal(node, key_of(state)))
        assert "too many certificate renewal requests" in await refused(response, 429)
        assert stored_certificate(renewals_limited, node) == held
        await asyncio.sleep(0.3)
        await answer(await stranger.post(f"/api/v1/nodes/{node}/certificate", json=renewal(node, key_of(state))), 200)


# --- the agent's side: renew, and what a lost answer or a crash leaves ----------------------


async def test_the_agent_renews_and_keeps_nothing_but_the_new_key_and_certificate(hub: TestClient, tmp_path: Path):
    node, identity, state = await joined(hub, tmp_path)
    old_key = (state / KEY_FILE).read_bytes()
    cert = await asyncio.to_thread(renew, state, identity)
    assert (state / KEY_FILE).read_bytes() != old_key and (state / KEY_FILE).stat().st_mode & 0o077 == 0
    assert x509.load_pem_x509_certificate((state / "node.crt").read_bytes()) == cert
    assert cert.public_key() == key_of(state).public_key()
    assert stored_certificate(hub, node) == cert.public_bytes(serialization.Encoding.PEM).decode()
    assert not (state / PENDING_KEY_FILE).exists() and not (state / PENDING_CERT_FILE).exists()
    # (clock.json: the offset from the hub's time the join measured.)
    assert sorted(p.name for p in state.iterdir()) == ["clock.json", "identity.json", "node-bundle.key", "node.crt",
                                                      "node.crt.json", "node.key"]
    # The record a running agent reads its renewal time from is the new certificate's.
    recorded = json.loads((state / VALIDITY_FILE).read_text())
    assert (recorded["serial"], recorded["not_after"]) == (format(cert.serial_number, "x"),
                                                          cert.not_valid_after_utc.isoformat())


async def test_a_renewal_whose_answer_was_lost_is_asked_again_with_the_same_new_key(
        hub: TestClient, stranger: aiohttp.ClientSession, tmp_path: Path):
    node, identity, state = await joined(hub, tmp_path)
    # The agent made its new key and sent the request; the hub took it, the answer never came.
    pending = Ed25519PrivateKey.generate()
    (state / PENDING_KEY_FILE).write_bytes(pending.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    os.chmod(state / PENDING_KEY_FILE, 0o600)
    await answer(await stranger.post(f"/api/v1/nodes/{node}/certificate", json=renewal(node, key_of(state), pending)),
                 200)
    # The hub now holds the new key: the old one's proof is refused, the agent proves with the new one.
    cert = await asyncio.to_thread(renew, state, identity)
    assert cert.public_key() == pending.public_key() == key_of(state).public_key()
    assert stored_certificate(hub, node) == (state / "node.crt").read_text()


def test_a_renewal_a_crash_left_half_in_force_is_finished(tmp_path: Path):
    state = tmp_path
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()

    def pem_key(key: Ed25519PrivateKey) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    def pem_cert(key: Ed25519PrivateKey) -> bytes:
        now = dt.datetime.now(dt.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "n1")])
        return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
                .sign(key, algorithm=None)).public_bytes(serialization.Encoding.PEM)

    # Crashed after the hub answered, before either rename.
    (state / KEY_FILE).write_bytes(pem_key(old))
    (state / "node.crt").write_bytes(pem_cert(old))
    (state / PENDING_KEY_FILE).write_bytes(pem_key(new))
    (state / PENDING_CERT_FILE).write_bytes(pem_cert(new))
    assert finish_interrupted(state)
    assert (state / KEY_FILE).read_bytes() == pem_key(new) and not (state / PENDING_KEY_FILE).exists()
    assert x509.load_pem_x509_certificate((state / "node.crt").read_bytes()).public_key() == new.public_key()
    assert json.loads((state / VALIDITY_FILE).read_text())["certificate_sha256"] == \
        hashlib.sha256((state / "node.crt").read_bytes()).hexdigest()
    # Crashed between the renames: the key is in force, the certificate not yet.
    (state / PENDING_CERT_FILE).write_bytes(pem_cert(new))
    (state / "node.crt").write_bytes(pem_cert(old))
    assert finish_interrupted(state)
    assert x509.load_pem_x509_certificate((state / "node.crt").read_bytes()).public_key() == new.public_key()
    # A certificate for no key the node holds is dropped, and what is in force stays.
    (state / PENDING_CERT_FILE).write_bytes(pem_cert(Ed25519PrivateKey.generate()))
    assert not finish_interrupted(state) and not (state / PENDING_CERT_FILE).exists()
    assert (state / KEY_FILE).read_bytes() == pem_key(new)
    assert not finish_interrupted(state)
