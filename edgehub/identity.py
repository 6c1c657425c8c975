"""The hub's own key: it signs every assignment and every node certificate.

One Ed25519 key, kept in the state directory with owner-only permissions, is
both the assignment-signing key agents pin at join and the key of the small CA
that signs node certificate requests (the kubelet TLS-bootstrap pattern: the
node keeps its private key and only sends a CSR).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from edgeprotocol.enrollment import certificate_fingerprint
from edgeprotocol.signing import public_key_pem

from .errors import CsrError

# The default lifetime of a node certificate (HubSettings.node_certificate_days):
# the agent renews it once less than a third is left.
NODE_CERT_DAYS = 90
CA_CERT_DAYS = 3650
# How far back a certificate's validity starts, for clocks a little behind the
# hub's: five minutes, or a twentieth of a short (test) lifetime.
BACKDATE = dt.timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class HubIdentity:
    key: Ed25519PrivateKey
    ca_certificate: x509.Certificate

    @property
    def public_key_pem(self) -> str:
        return public_key_pem(self.key.public_key())

    @property
    def ca_pem(self) -> str:
        return self.ca_certificate.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def ca_fingerprint(self) -> str:
        """The SHA-256 of the CA certificate (DER), hex: the pin a join token carries."""
        return certificate_fingerprint(self.ca_certificate)

    @classmethod
    def load_or_create(cls, state_dir: Path) -> HubIdentity:
        """Load the hub key and CA certificate, creating them on first start."""
        key_path, ca_path = state_dir / "hub.key", state_dir / "hub-ca.crt"
        state_dir.mkdir(parents=True, exist_ok=True)
        if key_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError(f"{key_path} is not an Ed25519 private key")
            ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
            return cls(key=key, ca_certificate=ca)
        key = Ed25519PrivateKey.generate()
        ca = _self_signed_ca(key)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        return cls(key=key, ca_certificate=ca)

    def sign_node_csr(self, csr_pem: str, *, node: str, lifetime: dt.timedelta = dt.timedelta(days=NODE_CERT_DAYS),
                      ) -> str:
        """Sign a node's CSR, valid for ``lifetime``, after checking that it names the node and is self-consistent."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except ValueError as exc:
            raise CsrError(f"is not a PEM certificate request ({exc})") from exc
        try:
            # These parse lazily: a request with an odd key or subject fails here.
            signature_ok = csr.is_signature_valid
            names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            public_key = csr.public_key()
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise CsrError(f"cannot be read ({exc})") from exc
        if not signature_ok:
            raise CsrError("signature does not verify")
        if len(names) != 1 or names[0].value != node:
            raise CsrError(f"must have exactly the common name {node!r}")
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node)]))
            .issuer_name(self.ca_certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - min(BACKDATE, lifetime / 20))
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self.key, algorithm=None)
        )
        return cert.public_bytes(serialization.Encoding.PEM).decode()


def _self_signed_ca(key: Ed25519PrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgecollab hub CA")])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, algorithm=None)
    )
