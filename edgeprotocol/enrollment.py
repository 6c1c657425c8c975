"""What hub and agent agree on about a node's identity: the join token, the CA pin, and certificate renewal.

**The join token** is ``ec1.<id>.<secret>.<pin>``, printed by ``edgectl token
create``. ``<id>`` finds the token's row on the hub, ``<secret>`` proves the
holder may join, and ``<pin>`` is the SHA-256 (64 hex digits) of the hub CA's
certificate (DER): the agent fetches the CA over an unverified TLS connection,
checks it against the pin, and only then sends the token over TLS verified
against that CA (the kubeadm discovery-hash pattern). The hub ignores the pin;
a token of the first three parts only (as hubs before the pin printed) joins
too, but an agent takes it over HTTPS only with the CA given by hand.

**A certificate renewal** (``POST /api/v1/nodes/NAME/certificate``) carries a
new certificate request, a timestamp, a random nonce and a *proof*: the
node's current key's Ed25519 signature over ``renewal_payload`` (those fields
and the node's name). The hub checks the proof against the key of the
certificate it holds for the node, so only the node's current key can renew
it, and once it is renewed the old key proves nothing; the hub takes a
request only within ``RENEWAL_WINDOW_SECONDS`` of its timestamp and each
nonce once, so a captured request cannot be used again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from .messages import encode_json

if TYPE_CHECKING:
    from cryptography import x509

TOKEN_PREFIX = "ec1"
TOKEN_FORMAT = "ec1.<id>.<secret>.<pin>"
_PIN = re.compile(r"^[0-9a-f]{64}$")
RENEWAL_CONTEXT = b"edgecollab certificate renewal v1\0"
# A renewal's timestamp may be this far from the hub's clock (seconds); the
# hub remembers the nonces it took for this long, so a request is taken once.
RENEWAL_WINDOW_SECONDS = 300
# A node renews its certificate once less than this part of its lifetime is left.
RENEW_WHEN_LEFT = 1 / 3


class TokenFormatError(ValueError):
    """A join token that is not of the form ``ec1.<id>.<secret>[.<pin>]``."""


@dataclass(frozen=True, slots=True)
class JoinToken:
    token_id: str
    secret: str
    # The hub CA's SHA-256 (hex) when the token carries it.
    ca_pin: str | None = None

    def __str__(self) -> str:
        text = f"{TOKEN_PREFIX}.{self.token_id}.{self.secret}"
        return f"{text}.{self.ca_pin}" if self.ca_pin else text

    def with_pin(self, pin: str) -> JoinToken:
        return replace(self, ca_pin=pin)

    def without_pin(self) -> JoinToken:
        """What the hub needs: the pin is for the agent alone."""
        return replace(self, ca_pin=None)


def parse_join_token(text: str) -> JoinToken:
    """Split a token as printed by ``edgectl token create``; TokenFormatError if it is not one."""
    parts = text.strip().split(".")
    if len(parts) not in (3, 4) or parts[0] != TOKEN_PREFIX or not parts[1] or not parts[2]:
        raise TokenFormatError(f"token is malformed: expected {TOKEN_FORMAT} as printed by 'edgectl token create'")
    pin = parts[3].lower() if len(parts) == 4 else None
    if pin is not None and not _PIN.match(pin):
        raise TokenFormatError("token is malformed: its last part must be the hub CA's SHA-256 (64 hex digits) "
                               "as printed by 'edgectl token create'")
    return JoinToken(token_id=parts[1], secret=parts[2], ca_pin=pin)


# cryptography is imported in the functions below, not here: a running agent imports this module (renewal
# times, the renewal proof) but parses certificates only at join and renewal (bench/README.md, "Agent footprint").


class HasValidity(Protocol):
    """What ``renew_after`` reads: an ``x509.Certificate``, or ``edgeagent.certificate.Validity``."""

    @property
    def not_valid_before_utc(self) -> dt.datetime: ...

    @property
    def not_valid_after_utc(self) -> dt.datetime: ...


def certificate_fingerprint(certificate: x509.Certificate) -> str:
    """The SHA-256 of ``certificate``'s DER encoding, in hex (``openssl x509 -outform der | sha256sum``)."""
    from cryptography.hazmat.primitives import serialization

    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


def issuer_among(certificate: x509.Certificate, cas: Iterable[x509.Certificate]) -> x509.Certificate | None:
    """The CA of ``cas`` that signed ``certificate`` (its issuer name is the CA's and the signature verifies);
    None when none did."""
    from cryptography.exceptions import InvalidSignature

    for ca in cas:
        if certificate.issuer != ca.subject:
            continue
        try:
            certificate.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return ca
    return None


def pem_fingerprint(pem: str) -> str:
    """``certificate_fingerprint`` of a PEM certificate; ValueError if it is not one."""
    from cryptography import x509

    return certificate_fingerprint(x509.load_pem_x509_certificate(pem.encode()))


def renewal_payload(*, node: str, csr: str, timestamp: int, nonce: str) -> bytes:
    """The bytes a renewal's proof signs: the node's name and the request's fields, canonical JSON."""
    return RENEWAL_CONTEXT + encode_json({"node": node, "csr": csr, "timestamp": timestamp, "nonce": nonce})


def renew_after(certificate: HasValidity) -> dt.datetime:
    """When a node should renew ``certificate``: once less than a third of its lifetime is left."""
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    return end - (end - start) * RENEW_WHEN_LEFT
