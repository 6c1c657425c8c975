"""The hub's certificate authorities: the one that issues now, every one trusted now, and their files.

Before any rotation the hub has one CA: its key is the hub's own key
(``STATE/hub.key``, which also signs assignments and is what nodes pin) and
its certificate is ``STATE/hub-ca.crt``. ``edgehub ca rotate`` (see
``edgehub.ca_rotation``) rolls it over in three steps, each a new *CA set*:

    steady     one CA, trusted and issuing
    begun      the old CA issues; a new one (its own Ed25519 key) is trusted beside it
    switched   the new CA issues; the old one is still trusted
    (finish)   the old CA is retired: one CA again, the new one

Files, in the state directory:

    ca-set.json       which CAs are trusted, which issues, and the set's generation (raised by every
                      step); absent until the first rotation (then the one CA is hub.key + hub-ca.crt)
    cas/ca-ID.crt     each CA's certificate (ID: the first 16 hex digits of its SHA-256)
    cas/ca-ID.key     each rotated-in CA's key, owner-only (the first CA's key stays hub.key)
    hub-ca.crt        the trust bundle: the PEM of every trusted CA, oldest first. What ``edgectl
                      --ca-file`` and the broker's ``cafile`` trust; derived from ca-set.json and
                      written again whenever it differs (after a crash between the two, say)

``ca-set.json`` is the commit point of a step: the files it names are written
(and synced) before it, the bundle after it, so a crash leaves either the
step undone (a new CA's files nobody names, harmless) or done.

The hub's signing key never changes: nodes pin it at join, and it vouches for
each new CA (it signs the trust bundle nodes fetch, ``GET /api/v1/time``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from edgekit.files import write_atomic, write_if_changed
from edgeprotocol.enrollment import certificate_fingerprint, issuer_among
from edgeprotocol.signing import load_private_key

logger = logging.getLogger(__name__)

HUB_KEY_FILE = "hub.key"
BUNDLE_FILE = "hub-ca.crt"
CA_SET_FILE = "ca-set.json"
CA_DIR = "cas"
CA_CERT_DAYS = 3650
# The first CA's name; each rotated-in CA is named with the day it was made, so no two share a subject
# (a CRL is matched to its CA by name: two CAs of one name would confuse the broker's checks).
FIRST_CA_NAME = "edgecollab hub CA"

Phase = Literal["steady", "begun", "switched"]


class CaSetError(ValueError):
    """The CA files in the state directory cannot be used as they are; the message names the file and why."""


@dataclass(frozen=True, slots=True)
class HubCa:
    """One CA of the hub: its certificate and key."""

    certificate: x509.Certificate
    key: Ed25519PrivateKey
    # Where the key lives, relative to the state directory (the first CA's is hub.key).
    key_file: str
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fingerprint", certificate_fingerprint(self.certificate))

    @property
    def pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def name(self) -> str:
        names = self.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(names[0].value) if names else self.certificate.subject.rfc4514_string()

    @property
    def cert_file(self) -> str:
        return f"{CA_DIR}/ca-{self.fingerprint[:16]}.crt"

    def issued(self, certificate: x509.Certificate) -> bool:
        """Whether this CA signed ``certificate`` (its issuer name is this CA's and the signature verifies)."""
        return issuer_among(certificate, (self.certificate,)) is not None


@dataclass(frozen=True, slots=True)
class RetiredCa:
    """A CA the hub no longer trusts: kept in ca-set.json for the record."""

    fingerprint: str
    name: str
    cert_file: str
    retired_at: str


@dataclass(frozen=True, slots=True)
class CaSet:
    """The hub's CAs at one moment. ``trusted`` oldest first; ``issuing`` is one of them."""

    trusted: tuple[HubCa, ...]
    issuing: HubCa
    # Raised by every rotation step; 0 for a state directory that never rotated.
    generation: int = 0
    retired: tuple[RetiredCa, ...] = ()

    def __post_init__(self) -> None:
        if self.issuing.fingerprint not in {ca.fingerprint for ca in self.trusted}:
            raise CaSetError("the issuing CA must be one of the trusted CAs")

    @property
    def phase(self) -> Phase:
        if len(self.trusted) == 1:
            return "steady"
        return "switched" if self.issuing.fingerprint == self.trusted[-1].fingerprint else "begun"

    @property
    def bundle_pem(self) -> str:
        """Every trusted CA's certificate, PEM, oldest first."""
        return "".join(ca.pem for ca in self.trusted)

    def issuer_of(self, certificate: x509.Certificate) -> HubCa | None:
        """The trusted CA that issued ``certificate``, or None."""
        return next((ca for ca in self.trusted if ca.issued(certificate)), None)

    def names(self) -> set[str]:
        return {ca.name for ca in self.trusted} | {ca.name for ca in self.retired}


# --- the files ---------------------------------------------------------------------------------------------


def load_ca_set(state_dir: Path, hub_key: Ed25519PrivateKey) -> CaSet:
    """The CA set of ``state_dir`` (its hub key given), with the trust bundle written again if it differs.

    Raises CaSetError naming the file at fault. Blocking (files): call it from a thread on the loop.
    """
    path = state_dir / CA_SET_FILE
    if not path.exists():
        first = _first_ca(state_dir, hub_key)
        return CaSet(trusted=(first,), issuing=first)
    try:
        data = json.loads(path.read_text())
        trusted = tuple(_load_ca(state_dir, entry, hub_key) for entry in data["trusted"])
        by_fingerprint = {ca.fingerprint: ca for ca in trusted}
        issuing = by_fingerprint[data["issuing"]]
        retired = tuple(RetiredCa(fingerprint=r["sha256"], name=r["name"], cert_file=r["certificate"],
                                  retired_at=r["retired_at"]) for r in data.get("retired", []))
        generation = int(data["generation"])
    except CaSetError:
        raise
    except KeyError as exc:
        raise CaSetError(f"{path} lacks {exc} (or names an issuing CA it does not trust); restore it from a "
                         "backup") from exc
    except (OSError, ValueError, TypeError) as exc:
        raise CaSetError(f"{path} cannot be read ({exc}); restore it from a backup") from exc
    if not trusted:
        raise CaSetError(f"{path} trusts no CA; restore it from a backup")
    cas = CaSet(trusted=trusted, issuing=issuing, generation=generation, retired=retired)
    write_bundle(state_dir, cas)
    return cas


def write_bundle(state_dir: Path, cas: CaSet) -> bool:
    """Write ``hub-ca.crt`` as ``cas``'s trust bundle if it holds anything else; whether it was written."""
    # World-readable, as before: a certificate is public, and edgectl runs as whoever operates the hub.
    return write_if_changed(state_dir / BUNDLE_FILE, cas.bundle_pem.encode(), mode=0o644)


def save_ca_set(state_dir: Path, cas: CaSet) -> None:
    """Commit ``cas`` (every file it names written already), then write the trust bundle. Blocking."""
    document = {
        "generation": cas.generation,
        "issuing": cas.issuing.fingerprint,
        "trusted": [{"sha256": ca.fingerprint, "name": ca.name, "certificate": ca.cert_file, "key": ca.key_file}
                    for ca in cas.trusted],
        "retired": [{"sha256": r.fingerprint, "name": r.name, "certificate": r.cert_file, "retired_at": r.retired_at}
                    for r in cas.retired],
    }
    write_atomic(state_dir / CA_SET_FILE, json.dumps(document, indent=2) + "\n")
    write_bundle(state_dir, cas)


def _first_ca(state_dir: Path, hub_key: Ed25519PrivateKey) -> HubCa:
    """The CA of a state directory that never rotated: hub-ca.crt, whose key is the hub key."""
    path = state_dir / BUNDLE_FILE
    try:
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CaSetError(f"{path} cannot be read as the hub's CA certificate ({exc})") from exc
    ca = HubCa(certificate=certificate, key=hub_key, key_file=HUB_KEY_FILE)
    if certificate.public_key() != hub_key.public_key():
        raise CaSetError(f"{path} is not the certificate of {state_dir / HUB_KEY_FILE}: restore the pair from a "
                         "backup")
    return ca


def _load_ca(state_dir: Path, entry: dict[str, str], hub_key: Ed25519PrivateKey) -> HubCa:
    cert_path, key_name = state_dir / entry["certificate"], entry["key"]
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CaSetError(f"{cert_path} (a trusted CA in {state_dir / CA_SET_FILE}) cannot be read ({exc})") from exc
    if key_name == HUB_KEY_FILE:
        key = hub_key
    else:
        try:
            key = load_private_key(state_dir / key_name)
        except ValueError as exc:
            raise CaSetError(f"{exc}: the key of CA {cert_path.name}") from exc
    ca = HubCa(certificate=certificate, key=key, key_file=key_name)
    if ca.fingerprint != entry["sha256"]:
        raise CaSetError(f"{cert_path} has SHA-256 {ca.fingerprint}, but {state_dir / CA_SET_FILE} names "
                         f"{entry['sha256']}: restore it from a backup")
    if certificate.public_key() != key.public_key():
        raise CaSetError(f"{cert_path} is not the certificate of {state_dir / key_name}: restore the pair from a "
                         "backup")
    return ca


def self_signed_ca(key: Ed25519PrivateKey, name: str, *, now: dt.datetime | None = None) -> x509.Certificate:
    """A CA certificate for ``key``, valid ``CA_CERT_DAYS`` (from five minutes ago: clocks a little behind)."""
    now = now or dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, algorithm=None)
    )


def _new_ca_name(taken: Iterable[str], now: dt.datetime) -> str:
    taken = set(taken)
    for name in (f"{FIRST_CA_NAME} {now:%Y-%m-%d}", f"{FIRST_CA_NAME} {now:%Y-%m-%d %H:%M:%S}"):
        if name not in taken:
            return name
    return f"{FIRST_CA_NAME} {now:%Y-%m-%d %H:%M:%S} {secrets.token_hex(4)}"


# --- the steps ---------------------------------------------------------------------------------------------


class StepRefused(Exception):
    """A rotation step that cannot be taken in the set's phase (or with the fleet as it is); the message says why
    and what to run instead."""


def begun(state_dir: Path, cas: CaSet, *, now: dt.datetime | None = None) -> CaSet:
    """Make a new CA beside the issuing one and commit the set that trusts both (the old one still issuing).

    Blocking (key generation, files)."""
    if cas.phase != "steady":
        raise StepRefused(f"a rotation is under way already ({_phase_words(cas)}): {_next_words(cas)}")
    now = now or dt.datetime.now(dt.UTC)
    key = Ed25519PrivateKey.generate()
    certificate = self_signed_ca(key, _new_ca_name(cas.names(), now), now=now)
    fingerprint = certificate_fingerprint(certificate)
    key_file = f"{CA_DIR}/ca-{fingerprint[:16]}.key"
    new = HubCa(certificate=certificate, key=key, key_file=key_file)
    (state_dir / CA_DIR).mkdir(mode=0o700, exist_ok=True)
    # Everything ca-set.json will name is on disk first; the old CA's certificate too, since hub-ca.crt
    # becomes the bundle of both.
    write_atomic(state_dir / key_file, key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    for ca in (*cas.trusted, new):
        write_atomic(state_dir / ca.cert_file, ca.pem, mode=0o644)
    result = CaSet(trusted=(*cas.trusted, new), issuing=cas.issuing, generation=cas.generation + 1,
                   retired=cas.retired)
    save_ca_set(state_dir, result)
    return result


def switched(state_dir: Path, cas: CaSet) -> CaSet:
    """Commit the set in which the newest CA issues. Blocking (files)."""
    if cas.phase != "begun":
        raise StepRefused(f"there is no new CA to switch to ({_phase_words(cas)}): {_next_words(cas)}")
    result = replace(cas, issuing=cas.trusted[-1], generation=cas.generation + 1)
    save_ca_set(state_dir, result)
    return result


def finished(state_dir: Path, cas: CaSet, *, now: dt.datetime | None = None) -> CaSet:
    """Commit the set that trusts the issuing CA alone, the others retired. The caller checks the fleet first.
    Blocking (files)."""
    if cas.phase != "switched":
        raise StepRefused(f"there is no old CA to retire yet ({_phase_words(cas)}): {_next_words(cas)}")
    now = now or dt.datetime.now(dt.UTC)
    for ca in cas.trusted:  # a set from before the first rotation named its CA hub-ca.crt: kept apart now
        if not (state_dir / ca.cert_file).exists():
            write_atomic(state_dir / ca.cert_file, ca.pem, mode=0o644)
    retired = tuple(RetiredCa(fingerprint=ca.fingerprint, name=ca.name, cert_file=ca.cert_file,
                              retired_at=now.isoformat())
                    for ca in cas.trusted if ca.fingerprint != cas.issuing.fingerprint)
    result = CaSet(trusted=(cas.issuing,), issuing=cas.issuing, generation=cas.generation + 1,
                   retired=cas.retired + retired)
    save_ca_set(state_dir, result)
    return result


def _phase_words(cas: CaSet) -> str:
    return {"steady": "one CA, no rotation under way", "begun": "a new CA is trusted, the old one still issues",
            "switched": "the new CA issues, the old one is still trusted"}[cas.phase]


def _next_words(cas: CaSet) -> str:
    return {"steady": "'edgehub ca rotate begin' starts one",
            "begun": "the next step is 'edgehub ca rotate switch'",
            "switched": "the next step is 'edgehub ca rotate finish'"}[cas.phase]


def next_step(cas: CaSet) -> str:
    """What to run next, in words."""
    return _next_words(cas)
