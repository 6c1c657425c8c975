"""A certificate renewal runs in a process of its own (``python -m edgeagent.renewal``); when it fails, the
agent's renewer gets the reason that process gave, and the key and certificate in force stay as they were.

A real certificate from a real hub CA, due for renewal (a lifetime of two seconds), and a hub address where
nothing listens."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeagent import certificate
from edgeagent.identity import KEY_FILE, NodeIdentity, make_csr
from edgeagent.renewal import PENDING_KEY_FILE, CertificateRenewer, RenewalError
from edgehub.identity import HubIdentity


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_a_renewal_the_hub_cannot_be_reached_for_fails_with_the_reason_and_changes_nothing(tmp_path: Path):
    hub = HubIdentity.load_or_create(tmp_path / "hub")
    state = tmp_path / "node"
    state.mkdir(mode=0o700)
    key = Ed25519PrivateKey.generate()
    (state / KEY_FILE).write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
    (state / "node.crt").write_text(hub.sign_node_csr(make_csr(key, "n1"), node="n1",
                                                      lifetime=dt.timedelta(seconds=2)))
    certificate.record(state)
    before = {name: (state / name).read_bytes() for name in (KEY_FILE, "node.crt")}
    url = f"http://127.0.0.1:{closed_port()}"
    identity = NodeIdentity(node="n1", pool="p", labels={}, hub_url=url, mqtt_url="mqtt://127.0.0.1:9",
                            hub_public_key=hub.public_key_pem, ca_certificate=hub.ca_pem, generation=1)
    await asyncio.sleep(2)  # past two thirds of its life: due

    with pytest.raises(RenewalError, match=r"127\.0\.0\.1.*(refused|cannot)"):
        await CertificateRenewer(state, identity).check()

    assert {name: (state / name).read_bytes() for name in before} == before
    assert (state / PENDING_KEY_FILE).exists()  # the next try asks for the same new key
