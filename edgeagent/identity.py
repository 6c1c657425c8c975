"""The node's identity and the join flow.

At join the node makes its own Ed25519 key and X25519 bundle key (neither
leaves the node), sends a certificate request and the bundle key's public half
with a bootstrap token, and stores what the hub answers in its state
directory: the signed certificate, the hub's CA, the hub's public key (pinned:
every assignment must verify against it), the broker URL and its join
generation (every assignment must be sealed for it: one captured before this
join of the name is refused). The hub encrypts the node's bundles to the
bundle key (``edgeprotocol.bundle_crypto``).

The token goes to the hub only over a connection the node trusts: HTTPS
verified against the hub's CA (host name checked), which the node first
fetches unverified and checks against the CA fingerprint the token carries
(or takes from ``--ca-file``); or plain HTTP to this machine's loopback. The
CAs the hub's answer names (two during a CA rotation, the pinned one among
them) are kept in ``identity.json`` and verify every later HTTPS call
(certificate renewal, :mod:`edgeagent.renewal`) and the broker; they follow
the hub's CA rotations (:mod:`edgeagent.trust`). The join asks the hub's time
first (:mod:`edgeagent.clock`): a node whose clock is far off checks the
dates of the hub's certificate by it, and keeps the offset once the join's
answer gives the key that signed it.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from edgeclient.hub import HubClient
from edgekit.files import write_atomic
from edgekit.http import HttpError, is_loopback_host, tls_context, unverified_tls_context
from edgekit.mqtt import BrokerAddress, TlsIdentity
from edgekit.tls_time import check_time_against
from edgeprotocol import bundle_crypto
from edgeprotocol.enrollment import TokenFormatError, parse_join_token, pem_fingerprint
from edgeprotocol.errors import EdgeError
from edgeprotocol.topics import check_name

from . import certificate, clock
from .certificate import CERT_FILE

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from nacl.public import PrivateKey

# cryptography (x509, the node's Ed25519 key) is imported inside make_csr and join only: a running agent
# loads the bundle key and the hub's key with PyNaCl (edgeprotocol.pem_keys) and never needs it
# (bench/README.md, "Agent footprint").

IDENTITY_FILE = "identity.json"
KEY_FILE = "node.key"
# The X25519 private key the node's bundles are encrypted to; absent on a
# node that joined before bundles were encrypted.
BUNDLE_KEY_FILE = "node-bundle.key"
# A join is one request; a hub that does not answer in this time is down.
JOIN_TIMEOUT_SECONDS = 30.0


class JoinError(EdgeError):
    """The join failed; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    node: str
    pool: str
    labels: dict[str, str]
    hub_url: str
    mqtt_url: str
    hub_public_key: str
    # The PEM of every hub CA this node trusts: one, or two during a CA rotation (edgeagent.trust).
    ca_certificate: str
    # The hub's count of accepted joins of this name, this one included; 0 in
    # an identity.json written before generations existed (and by such a hub).
    generation: int = 0
    # The SHA-256 of the hub CA that issues certificates now, as the hub last said ("" before it said:
    # an older hub). A node certificate of another CA is renewed at once (edgeagent.renewal).
    issuing_ca: str = ""

    @classmethod
    def load(cls, state_dir: Path) -> NodeIdentity:
        path = state_dir / IDENTITY_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise JoinError(f"{path} not found: run 'edgeagent join --state-dir {state_dir}' first") from exc
        except ValueError as exc:
            raise JoinError(f"{path} is corrupt ({exc}); join again") from exc
        try:
            identity = cls(**data)
        except TypeError as exc:
            raise JoinError(f"{path} is corrupt ({exc}); join again") from exc
        if not isinstance(identity.generation, int) or isinstance(identity.generation, bool) or identity.generation < 0:
            raise JoinError(f"{path} is corrupt (generation {identity.generation!r} is not a whole number); join again")
        return identity

    def broker_tls(self, state_dir: Path, mqtt_url: str | None = None, *,
                   adjust: Callable[[ssl.SSLContext], None] | None = None) -> TlsIdentity | None:
        """What the node shows a broker with identities (mqtts://): the hub CA to check the broker by, and
        the certificate and key from join (its name is its MQTT user). None for a plain broker. ``adjust``:
        the node's clock correction (``edgeagent.clock.HubClock.adjust_tls``), applied to every context."""
        if not BrokerAddress.parse(mqtt_url or self.mqtt_url).tls:
            return None
        return TlsIdentity(ca_pem=self.ca_certificate, cert_file=state_dir / CERT_FILE, key_file=state_dir / KEY_FILE,
                           adjust=adjust)

    def save(self, state_dir: Path) -> None:
        write_atomic(state_dir / IDENTITY_FILE, json.dumps(asdict(self), indent=2).encode(), mode=0o644)

    def hub_client(self, *, timeout: float, adjust: Callable[[ssl.SSLContext], None] | None = None) -> HubClient:
        """A client of the hub this node joined: over HTTPS, trusting only the hub CA kept at join. ``adjust``:
        the node's clock correction, as for ``broker_tls``."""
        context = None
        if urlsplit(self.hub_url).scheme == "https":
            if not self.ca_certificate:
                raise JoinError(f"identity.json holds no hub CA to verify {self.hub_url} with; join again")
            context = tls_context(ca_pem=self.ca_certificate)
            if adjust is not None:
                adjust(context)
        return HubClient.at(self.hub_url, timeout=timeout, ssl_context=context)


def make_private_dir(path: Path) -> None:
    """Create the state directory ``path`` (and parents) or narrow it: mode 0700, the agent's alone.

    It holds the node's private key, its store and its policy; the key's own
    mode is not enough if others may replace files beside it.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)



def load_bundle_key(state_dir: Path) -> PrivateKey | None:
    """The node's bundle key; None when the node joined before bundles were encrypted (its hub sends them plain)."""
    path = state_dir / BUNDLE_KEY_FILE
    try:
        return bundle_crypto.load_private_key_pem(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise JoinError(f"{path} is corrupt ({exc}); join again") from exc


def make_csr(key: Ed25519PrivateKey, node: str) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node)]))
        .sign(key, algorithm=None)
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _fingerprint(pem: str, what: str) -> str:
    try:
        return pem_fingerprint(pem)
    except ValueError as exc:
        raise JoinError(f"{what} is not a PEM certificate ({exc})") from exc


def fetch_hub_ca(hub_url: str, pin: str) -> str:
    """The hub's CA certificate (PEM), fetched over TLS that verifies nothing, then checked against ``pin``."""
    client = HubClient.at(hub_url, timeout=JOIN_TIMEOUT_SECONDS, ssl_context=unverified_tls_context())
    try:
        answer = client.ca()
    except HttpError as exc:
        raise JoinError(f"cannot fetch the hub's CA certificate to check it against the token: {exc}") from exc
    pem = answer.get("ca_certificate") if isinstance(answer, dict) else None
    if not isinstance(pem, str):
        raise JoinError(f"{hub_url} answered GET /api/v1/ca without a CA certificate: is it an edgecollab hub?")
    found = _fingerprint(pem, f"the CA certificate {hub_url} answered")
    if found != pin and _still_trusted(answer.get("ca_bundle"), pin):
        # Said by an answer nothing verified, so only ever a reason not to send the token.
        raise JoinError(
            f"the hub at {hub_url} says the CA the token pins ({pin}) no longer issues (its CA was rolled over "
            f"since the token was made; it issues with {found} now): make a new token with 'edgectl token create'; "
            "the token was not sent")
    if found != pin:
        raise JoinError(
            f"the hub at {hub_url} presented a CA certificate with SHA-256 {found}, but the token pins {pin}: it is "
            "not the hub that created the token (or someone is in between); the token was not sent")
    return pem


def _still_trusted(bundle: object, pin: str) -> bool:
    """Whether ``bundle`` (PEM, as a hub answers ``ca_bundle``) holds the CA of SHA-256 ``pin``."""
    from .trust import TrustError, bundle_fingerprints

    try:
        return isinstance(bundle, str) and pin in bundle_fingerprints(bundle)
    except TrustError:
        return False


def trust_for_join(hub_url: str, pin: str | None, ca_file: Path | None) -> tuple[ssl.SSLContext | None, str | None]:
    """The TLS context to send the token with (None: plain HTTP to loopback), and the CA (PEM) the hub must have.

    Refuses (JoinError) before the token is sent: plain HTTP off loopback, HTTPS with neither a pin nor
    a CA file, a CA file that is not the pinned CA, and a hub whose CA is not the pinned one.
    """
    parts = urlsplit(hub_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise JoinError(f"--hub {hub_url!r} must look like https://HOST:PORT (or http://127.0.0.1:PORT on the "
                        "hub's own machine)")
    expected: str | None = None
    if ca_file is not None:
        try:
            expected = ca_file.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise JoinError(f"--ca-file {ca_file} cannot be read: {exc}") from exc
        found = _fingerprint(expected, f"--ca-file {ca_file}")
        if pin is not None and found != pin:
            raise JoinError(f"--ca-file {ca_file} has SHA-256 {found}, but the token pins {pin}: it is not the CA "
                            "of the hub that created the token")
    if parts.scheme == "http":
        if not is_loopback_host(parts.hostname):
            raise JoinError(
                f"refusing to send the join token over plain HTTP to {parts.hostname}: anyone on the way could "
                f"read it and answer for the hub. Use --hub https://{parts.netloc} (a hub serves HTTPS off "
                "loopback by default)")
        return None, expected
    if expected is None:
        if pin is None:
            raise JoinError("the token carries no hub CA fingerprint (a token from an older hub?), so the hub at "
                            f"{hub_url} cannot be checked: create a new token with 'edgectl token create', or pass "
                            "--ca-file with the hub's CA (STATE/hub-ca.crt on the hub)")
        expected = fetch_hub_ca(hub_url, pin)
    return tls_context(ca_pem=expected), expected


def _time_for_join(hub_url: str, context: ssl.SSLContext | None) -> clock.Asked | None:
    """The hub's time, asked before the join (None when the hub cannot say: a hub older than its time
    endpoint). A node whose clock is far off checks the dates of the hub's HTTPS certificate by it (chain and
    host name still verified against the pinned CA): its own clock would refuse a certificate that is right.
    The answer is verified once the join's answer gives the hub's key (``_verified_time``)."""
    try:
        asked = clock.ask(hub_url, timeout=JOIN_TIMEOUT_SECONDS)
        offset = asked.offset
    except clock.ClockError:
        return None  # the join goes on by the node's own clock, as before the hub had a time endpoint
    if context is not None and abs(offset) > clock.SIGNIFICANT_OFFSET_SECONDS:
        check_time_against(context, asked.now)
    return asked


def _verified_time(asked: clock.Asked | None, hub_public_key: object, context: ssl.SSLContext | None
                   ) -> clock.Measurement | None:
    """The time asked before the join, verified with the hub key the join answered. A time the join's TLS
    relied on (a clock far off) that does not verify refuses the join: nothing is stored."""
    if asked is None:
        return None
    try:
        return asked.verified(str(hub_public_key))
    except clock.ClockError as exc:
        if context is not None and abs(asked.offset) > clock.SIGNIFICANT_OFFSET_SECONDS:
            raise JoinError(f"the hub's certificate was checked by a time the hub did not sign ({exc}): nothing "
                            "was stored; set this node's clock right and join again") from exc
        return None  # not relied on: the agent measures again when it runs


def join(
    *,
    hub_url: str,
    token: str,
    state_dir: Path,
    node: str | None = None,
    pool: str | None = None,
    labels: dict[str, str] | None = None,
    ca_file: Path | None = None,
) -> NodeIdentity:
    """Register this node with the hub and store its identity in ``state_dir``.

    Over HTTPS the hub is checked first (``trust_for_join``): a refusal sends nothing to it.
    """
    name = node or socket.gethostname().split(".")[0].lower()
    try:
        check_name(name, "node name")
    except ValueError as exc:
        raise JoinError(f"{exc}; pass --name") from exc
    try:
        parsed = parse_join_token(token)
    except TokenFormatError as exc:
        raise JoinError(str(exc)) from exc
    context, expected_ca = trust_for_join(hub_url, parsed.ca_pin, ca_file)
    asked = _time_for_join(hub_url, context)
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    make_private_dir(state_dir)
    key = Ed25519PrivateKey.generate()
    bundle_key = bundle_crypto.new_node_key()
    try:
        answer = HubClient.at(hub_url, timeout=JOIN_TIMEOUT_SECONDS, ssl_context=context).join(
            token=str(parsed.without_pin()), node=name, pool=pool, labels=labels or {}, csr=make_csr(key, name),
            bundle_key=bundle_crypto.public_key_text(bundle_key))
    except HttpError as exc:
        prefix = "hub refused the join: " if exc.status else ""
        raise JoinError(f"{prefix}{exc}") from exc
    # The CA kept must be the one checked (over loopback HTTP: the one the token pins, if it does).
    answered = _fingerprint(answer["ca_certificate"], "the CA certificate the hub answered")
    wanted = pem_fingerprint(expected_ca) if expected_ca is not None else parsed.ca_pin
    if wanted is not None and answered != wanted:
        raise JoinError(f"the hub answered the join with a CA certificate of SHA-256 {answered}, not {wanted}: "
                        "nothing was stored; ask the hub's operator")
    try:
        x509.load_pem_x509_certificate(str(answer.get("certificate")).encode())
    except ValueError as exc:
        raise JoinError(f"the hub answered the join with no readable certificate ({exc}): nothing was stored; ask "
                        "the hub's operator") from exc
    # Every CA the hub trusts now (a hub from before CA rotations answers its one CA only). It came over the
    # connection checked above, and must hold the CA checked.
    bundle, issuing = answer.get("ca_bundle") or answer["ca_certificate"], answer.get("issuing_ca") or answered
    from .trust import TrustError, checked

    try:
        trusted = checked(bundle, issuing)
    except TrustError as exc:
        raise JoinError(f"the hub answered the join with CAs that cannot be used ({exc}): nothing was stored; ask "
                        "the hub's operator") from exc
    if answered not in trusted:
        raise JoinError(f"the hub answered the join with CAs that do not hold its CA {answered}: nothing was stored; "
                        "ask the hub's operator")
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    write_atomic(state_dir / KEY_FILE, key_pem, mode=0o600)
    write_atomic(state_dir / BUNDLE_KEY_FILE, bundle_crypto.private_key_pem(bundle_key), mode=0o600)
    measurement = _verified_time(asked, answer.get("hub_public_key"), context)
    write_atomic(state_dir / CERT_FILE, answer["certificate"].encode(), mode=0o644)
    certificate.record(state_dir, trusted=bundle)  # checked above: it parses
    if measurement is not None:
        # The first offset, kept as the agent keeps it. A state directory that saw a later hub time (a join
        # again) keeps its high-water mark and its offset: the agent measures again when it runs.
        with contextlib.suppress(clock.ClockError):
            clock.HubClock(state_dir).take(measurement)
    identity = NodeIdentity(
        node=answer["node"],
        pool=answer["pool"],
        labels=answer.get("labels", {}),
        hub_url=hub_url,
        mqtt_url=answer["mqtt_url"],
        hub_public_key=answer["hub_public_key"],
        ca_certificate=bundle,
        generation=answer.get("generation", 0),
        issuing_ca=issuing,
    )
    identity.save(state_dir)
    return identity
