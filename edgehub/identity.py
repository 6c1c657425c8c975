"""The hub's own key and its CAs: it signs every assignment, its CA every certificate.

One Ed25519 key, kept in the state directory with owner-only permissions, is
the assignment-signing key agents pin at join, and the key of the hub's first
CA, which signs node certificate requests (the kubelet TLS-bootstrap pattern:
the node keeps its private key and only sends a CSR). A CA rotation
(``edgehub.hub_cas``, ``edgehub.ca_rotation``) brings in CAs with keys of
their own; the signing key stays.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgekit.files import write_atomic
from edgeprotocol.signing import load_private_key, public_key_pem

from .errors import CsrError
from .hub_cas import FIRST_CA_NAME, CaSet, HubCa, load_ca_set, self_signed_ca

# The default lifetime of a node certificate (HubSettings.node_certificate_days):
# the agent renews it once less than a third is left.
NODE_CERT_DAYS = 90
# Certificates the hub issues for services it runs or configures (the broker,
# its own MQTT client, dashboards); re-issued when a third of the life is left.
SERVICE_CERT_DAYS = 365

Usage = Literal["client", "server"]
_USAGE_OIDS = {"client": ExtendedKeyUsageOID.CLIENT_AUTH, "server": ExtendedKeyUsageOID.SERVER_AUTH}
# How far back a certificate's validity starts, for clocks a little behind the
# hub's: five minutes, or a twentieth of a short (test) lifetime.
BACKDATE = dt.timedelta(minutes=5)


class HubIdentity:
    """The hub's signing key and its CAs (``edgehub.hub_cas``).

    ``key`` never changes. The CA set does, when a rotation step is taken
    (``replace_cas``): everything that issues, checks or hands out certificates
    reads it from here at the time, so the running hub follows at once. A step
    replaces the whole set in one assignment, and each method reads it once.
    """

    __slots__ = ("_cas", "key")

    def __init__(self, key: Ed25519PrivateKey, cas: CaSet | None = None, *,
                 ca_certificate: x509.Certificate | None = None) -> None:
        """``cas``; or ``ca_certificate`` alone: one CA whose key is ``key`` (a hub that never rotated)."""
        if cas is None:
            if ca_certificate is None:
                raise TypeError("HubIdentity needs cas or ca_certificate")
            first = HubCa(certificate=ca_certificate, key=key, key_file="hub.key")
            cas = CaSet(trusted=(first,), issuing=first)
        self.key = key
        self._cas = cas

    @property
    def cas(self) -> CaSet:
        return self._cas

    def replace_cas(self, cas: CaSet) -> None:
        self._cas = cas

    @property
    def public_key_pem(self) -> str:
        return public_key_pem(self.key.public_key())

    @property
    def ca_certificate(self) -> x509.Certificate:
        """The certificate of the CA that issues now."""
        return self._cas.issuing.certificate

    @property
    def ca_pem(self) -> str:
        """The issuing CA's certificate, PEM."""
        return self._cas.issuing.pem

    @property
    def ca_fingerprint(self) -> str:
        """The SHA-256 of the issuing CA's certificate (DER), hex: the pin a join token carries."""
        return self._cas.issuing.fingerprint

    @property
    def trust_bundle_pem(self) -> str:
        """The PEM of every CA trusted now, oldest first (one, but during a rotation): what ``GET /api/v1/time``
        signs for nodes."""
        return self._cas.bundle_pem

    @property
    def issuing_ca_fingerprint(self) -> str:
        """The SHA-256 (hex, of the DER) of the CA that issues now."""
        return self._cas.issuing.fingerprint

    @classmethod
    def load_or_create(cls, state_dir: Path) -> HubIdentity:
        """Load the hub key and its CAs, creating the key and the first CA on first start.

        Raises ValueError (``CaSetError``) naming a file that cannot be used. Blocking (files)."""
        key_path, ca_path = state_dir / "hub.key", state_dir / "hub-ca.crt"
        state_dir.mkdir(parents=True, exist_ok=True)
        if key_path.exists():
            key = load_private_key(key_path)
            return cls(key=key, cas=load_ca_set(state_dir, key))
        key = Ed25519PrivateKey.generate()
        ca = self_signed_ca(key, FIRST_CA_NAME)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        first = HubCa(certificate=ca, key=key, key_file="hub.key")
        return cls(key=key, cas=CaSet(trusted=(first,), issuing=first))

    def sign_node_csr(self, csr_pem: str, *, node: str, lifetime: dt.timedelta = dt.timedelta(days=NODE_CERT_DAYS),
                      ) -> str:
        """Sign a node's CSR, valid for ``lifetime``, after checking that it names the node and is self-consistent."""
        return self.sign_csr(csr_pem, common_name=node, lifetime=lifetime)

    def sign_csr(self, csr_pem: str, *, common_name: str,
                 lifetime: dt.timedelta = dt.timedelta(days=SERVICE_CERT_DAYS)) -> str:
        """Sign a client certificate request that names exactly ``common_name``; CsrError says what is wrong."""
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
        if len(names) != 1 or names[0].value != common_name:
            raise CsrError(f"must have exactly the common name {common_name!r}")
        cert = self.issue(public_key, common_name, usage="client", lifetime=lifetime)
        return cert.public_bytes(serialization.Encoding.PEM).decode()

    def issue(self, public_key: CertificatePublicKeyTypes, common_name: str, *, usage: Usage,
              lifetime: dt.timedelta, names: Sequence[str] = ()) -> x509.Certificate:
        """A certificate for ``common_name`` signed by the hub's issuing CA.

        On the broker with identities the common name is the MQTT user name
        (Mosquitto's use_identity_as_username), so it decides what the holder may
        publish and read. ``names`` become subject alternative names (IP
        addresses or DNS names) for a server.
        """
        now = dt.datetime.now(dt.UTC)
        issuing = self._cas.issuing
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(issuing.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - min(BACKDATE, lifetime / 20))
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([_USAGE_OIDS[usage]]), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]),
                                            critical=False)
        return builder.sign(issuing.key, algorithm=None)

    def ensure_certificate(self, key_path: Path, cert_path: Path, common_name: str, *, usage: Usage,
                           names: Sequence[str] = (), days: float = SERVICE_CERT_DAYS,
                           now: dt.datetime | None = None) -> str | None:
        """Make sure ``cert_path`` holds a certificate of this CA for ``common_name`` and exactly ``names``, for
        the key in ``key_path``, with more than a third of its life left; otherwise issue a new pair (an ECDSA
        P-256 key, which every TLS client takes; the key written owner-only, first). Returns why it issued one,
        or None when the stored one serves. Blocking: call it from a thread."""
        now = now or dt.datetime.now(dt.UTC)
        why = _why_reissue(self, key_path, cert_path, common_name, names, now)
        if why is None:
            return None
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self.issue(key.public_key(), common_name, usage=usage, lifetime=dt.timedelta(days=days), names=names)
        # The key first: a crash between the two leaves a pair that does not match, issued again next time.
        write_atomic(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
        write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
        return why



def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name.strip("[]")))
    except ValueError:
        return x509.DNSName(name)


def _why_reissue(identity: HubIdentity, key_path: Path, cert_path: Path, common_name: str, names: Sequence[str],
                 now: dt.datetime) -> str | None:
    """Why the stored pair cannot serve as it is; None when it can."""
    if not key_path.exists() or not cert_path.exists():
        return "there is none yet"
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        return f"the stored one does not load ({exc})"
    if key.public_key() != cert.public_key():
        return "the stored key and certificate do not match"
    if not identity.cas.issuing.issued(cert):
        return "the stored one is not issued by this hub's CA (the one that issues now)"
    held = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not held or held[0].value != common_name:
        return f"the stored one is not for {common_name!r}"
    try:
        sans = {str(n.value) for n in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value}
    except x509.ExtensionNotFound:
        sans = set()
    if sans != {str(_general_name(n).value) for n in names}:
        return "the names it must hold have changed"
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now >= end - (end - start) / 3:
        return f"it expires on {end:%Y-%m-%d}"
    return None
