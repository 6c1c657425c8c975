"""The hub signs a node's own key at join (the node keeps its private key) and nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeagent.identity import make_csr
from edgehub.identity import CsrError, HubIdentity


def test_a_node_certificate_names_the_node_carries_its_key_and_is_signed_by_the_hub_ca(tmp_path: Path):
    hub = HubIdentity.load_or_create(tmp_path)
    node_key = Ed25519PrivateKey.generate()
    cert = x509.load_pem_x509_certificate(hub.sign_node_csr(make_csr(node_key, "sh-1"), node="sh-1").encode())
    assert cert.subject.rfc4514_string() == "CN=sh-1"
    assert cert.public_key() == node_key.public_key()
    cert.verify_directly_issued_by(hub.ca_certificate)


def test_a_csr_for_another_name_is_refused(tmp_path: Path):
    hub = HubIdentity.load_or_create(tmp_path)
    with pytest.raises(CsrError, match="common name 'sh-1'"):
        hub.sign_node_csr(make_csr(Ed25519PrivateKey.generate(), "bj-9"), node="sh-1")
    with pytest.raises(CsrError, match="not a PEM certificate request"):
        hub.sign_node_csr("hello", node="sh-1")


def test_the_hub_key_survives_a_restart_and_is_private_to_its_owner(tmp_path: Path):
    first = HubIdentity.load_or_create(tmp_path)
    again = HubIdentity.load_or_create(tmp_path)
    assert first.public_key_pem == again.public_key_pem
    assert (tmp_path / "hub.key").stat().st_mode & 0o077 == 0
