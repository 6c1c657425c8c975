"""``edgeagent doctor`` and ``status`` say when the node certificate expires: doctor fails an expired one,
warns once its renewal is overdue, and refuses a certificate of another key or CA."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeagent.cli import certificate_summary
from edgeagent.doctor import certificate_check, report
from edgeagent.identity import NodeIdentity, make_csr
from edgehub.identity import HubIdentity
from edgeprotocol.enrollment import renew_after


@pytest.fixture
def node(tmp_path: Path) -> tuple[Path, NodeIdentity, x509.Certificate]:
    """A node's state directory as join leaves it: its key, a 90-day certificate and the hub CA."""
    hub = HubIdentity.load_or_create(tmp_path / "hub")
    key = Ed25519PrivateKey.generate()
    state = tmp_path / "node"
    state.mkdir()
    (state / "node.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    (state / "node.key").chmod(0o600)
    pem = hub.sign_node_csr(make_csr(key, "n1"), node="n1", lifetime=dt.timedelta(days=90))
    (state / "node.crt").write_text(pem)
    identity = NodeIdentity(node="n1", pool="p", labels={}, hub_url="https://hub.example:8470",
                            mqtt_url="mqtt://hub.example:1883", hub_public_key=hub.public_key_pem,
                            ca_certificate=hub.ca_pem, generation=1)
    return state, identity, x509.load_pem_x509_certificate(pem.encode())


def test_a_fresh_certificate_passes_with_its_expiry(node: tuple[Path, NodeIdentity, x509.Certificate]):
    state, identity, cert = node
    check = certificate_check(state, identity)
    assert check.ok and not check.warning
    assert f"valid until {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%S}Z" in check.detail
    assert report([check]).startswith("ok      node-cert  valid until")


def test_an_overdue_renewal_warns_and_an_expired_certificate_fails(node: tuple[Path, NodeIdentity, x509.Certificate]):
    state, identity, cert = node
    overdue = certificate_check(state, identity, now=renew_after(cert) + dt.timedelta(hours=1))
    assert overdue.ok and overdue.warning and "renewal overdue since" in overdue.detail
    assert report([overdue]).startswith("WARN    node-cert  renewal overdue")
    expired = certificate_check(state, identity, now=cert.not_valid_after_utc + dt.timedelta(seconds=1))
    assert not expired.ok and "expired at" in expired.detail and "edgectl node reset n1" in expired.detail
    assert report([expired]).startswith("FAILED  node-cert  expired at")


def test_a_certificate_of_another_key_or_ca_fails(node: tuple[Path, NodeIdentity, x509.Certificate], tmp_path: Path):
    state, identity, _ = node
    other_hub = HubIdentity.load_or_create(tmp_path / "other")
    own_key = serialization.load_pem_private_key((state / "node.key").read_bytes(), None)
    (state / "node.crt").write_text(other_hub.sign_node_csr(make_csr(own_key, "n1"), node="n1"))  # type: ignore[arg-type]  # the node's PEM key is Ed25519
    check = certificate_check(state, identity)
    assert not check.ok and "not issued by a hub CA in identity.json" in check.detail
    (state / "node.crt").write_text(other_hub.sign_node_csr(make_csr(Ed25519PrivateKey.generate(), "n1"), node="n1"))
    check = certificate_check(state, identity)
    assert not check.ok and "is not the certificate of" in check.detail
    (state / "node.crt").unlink()
    assert "not found: join again" in certificate_check(state, identity).detail


def test_status_shows_the_certificate_serial_and_expiry(node: tuple[Path, NodeIdentity, x509.Certificate]):
    state, _, cert = node
    summary = certificate_summary(state)
    assert summary is not None
    assert summary["serial"] == format(cert.serial_number, "x")
    assert summary["not_after"] == cert.not_valid_after_utc.isoformat().replace("+00:00", "Z")
    assert json.dumps(summary)
    (state / "node.crt").write_text("garbage")
    assert certificate_summary(state) is None
