"""When the node certificate in force was issued and expires, known without parsing it each time.

The certificate renewer asks when the agent starts and then every hour at
most (``edgeagent.renewal``); ``edgeagent status`` shows it. Parsing X.509
takes ``cryptography``, which with the OpenSSL it ships costs a running agent
about 8 MiB (bench/README.md, "Agent footprint"). So whatever writes
``node.crt`` (join, a renewal, the end of an interrupted renewal: each has
parsed it with ``cryptography`` already) records its serial and validity
beside it in ``node.crt.json``, with the SHA-256 of the file it describes.

The record also names the hub CA that issued the certificate (the SHA-256
of the one of the CAs the node trusts that signed it, ``issuer_sha256``): during
a CA rotation (``edgehub.ca_rotation``) the renewer compares it with the CA the
hub says issues now, and renews a certificate of another CA at once.

``validity`` reads that record while it describes the ``node.crt`` on disk,
and otherwise parses the certificate (importing ``cryptography``) and writes
the record again: a state directory from before the record (or from before it
named the issuer), a certificate put there by hand or a crash between a
certificate and its record cost one parse, never a wrong date. The record is a
cache of the certificate, never a second truth: it is not trusted for anything
but these dates and which CA signed it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from edgekit.files import write_atomic
from edgeprotocol.enrollment import certificate_fingerprint, issuer_among

logger = logging.getLogger(__name__)

CERT_FILE = "node.crt"
VALIDITY_FILE = "node.crt.json"
# Where the CAs the node trusts are kept (``edgeagent.identity``: its ``ca_certificate``, PEM).
IDENTITY_FILE = "identity.json"


@dataclass(frozen=True, slots=True)
class Validity:
    """The node certificate's serial and validity, by the names ``x509.Certificate`` gives them (so
    ``edgeprotocol.enrollment.renew_after`` takes either)."""

    serial_number: int
    not_valid_before_utc: dt.datetime
    not_valid_after_utc: dt.datetime
    # The SHA-256 (hex, of the DER) of the CA that signed it, among those the node trusted when it was recorded;
    # "" when none of them did.
    issuer_sha256: str = ""

    @property
    def lifetime_seconds(self) -> float:
        return (self.not_valid_after_utc - self.not_valid_before_utc).total_seconds()


def record(state_dir: Path, *, trusted: str | None = None) -> Validity:
    """Parse ``STATE/node.crt`` and record its validity in ``STATE/node.crt.json``: for whatever just wrote it.
    ``trusted``: the PEM of the CAs the node trusts, to name the issuer by (default: ``identity.json``'s).

    Raises FileNotFoundError, OSError or ValueError when the certificate
    cannot be read. A record that cannot be written is logged and left: the
    certificate is parsed again next time.
    """
    pem = (state_dir / CERT_FILE).read_bytes()
    parsed = _parsed(pem, _trusted(state_dir) if trusted is None else trusted)
    _write(state_dir, pem, parsed)
    return parsed


def validity(state_dir: Path, *, save: bool = True) -> Validity:
    """The validity of ``STATE/node.crt``: from its record when that describes this file, else parsed from it
    (and recorded, unless ``save`` is false).

    Raises FileNotFoundError, OSError or ValueError when the certificate cannot be read.
    """
    pem = (state_dir / CERT_FILE).read_bytes()
    recorded = _recorded(state_dir / VALIDITY_FILE, hashlib.sha256(pem).hexdigest())
    if recorded is not None:
        return recorded
    parsed = _parsed(pem, _trusted(state_dir))
    if save:
        _write(state_dir, pem, parsed)
    return parsed


def _trusted(state_dir: Path) -> str:
    """The PEM of the CAs the node trusts, as ``identity.json`` holds them ("" when it cannot be read)."""
    try:
        return str(json.loads((state_dir / IDENTITY_FILE).read_text()).get("ca_certificate") or "")
    except (OSError, ValueError, AttributeError):
        return ""


def _parsed(pem: bytes, trusted: str) -> Validity:
    from cryptography import x509  # only here: see the module's docstring

    certificate = x509.load_pem_x509_certificate(pem)
    issuer = ""
    try:
        cas = x509.load_pem_x509_certificates(trusted.encode()) if trusted.strip() else []
    except ValueError:
        cas = []
    ca = issuer_among(certificate, cas)
    if ca is not None:
        issuer = certificate_fingerprint(ca)
    return Validity(serial_number=certificate.serial_number, not_valid_before_utc=certificate.not_valid_before_utc,
                    not_valid_after_utc=certificate.not_valid_after_utc, issuer_sha256=issuer)


def _write(state_dir: Path, pem: bytes, validity: Validity) -> None:
    data = {"certificate_sha256": hashlib.sha256(pem).hexdigest(), "serial": format(validity.serial_number, "x"),
            "not_before": validity.not_valid_before_utc.isoformat(),
            "not_after": validity.not_valid_after_utc.isoformat(), "issuer_sha256": validity.issuer_sha256}
    try:
        write_atomic(state_dir / VALIDITY_FILE, json.dumps(data, indent=2) + "\n", mode=0o644)
    except OSError as exc:
        logger.warning("Could not record the node certificate's validity in %s (%s): it is read from %s "
                       "again next time", state_dir / VALIDITY_FILE, exc, state_dir / CERT_FILE)


def _recorded(path: Path, sha256: str) -> Validity | None:
    """The record at ``path`` if it describes the certificate of SHA-256 ``sha256``; None if it is missing,
    describes another certificate or cannot be read."""
    try:
        data = json.loads(path.read_text())
        if data["certificate_sha256"] != sha256 or "issuer_sha256" not in data:
            return None  # another certificate's, or from before records named the issuer: parsed once again
        validity = Validity(serial_number=int(data["serial"], 16),
                            not_valid_before_utc=dt.datetime.fromisoformat(data["not_before"]),
                            not_valid_after_utc=dt.datetime.fromisoformat(data["not_after"]),
                            issuer_sha256=str(data["issuer_sha256"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("Ignoring %s (%s): the certificate is read instead", path, exc)
        return None
    if validity.not_valid_before_utc.tzinfo is None or validity.not_valid_after_utc.tzinfo is None:
        logger.warning("Ignoring %s (its dates have no time zone): the certificate is read instead", path)
        return None
    return validity
