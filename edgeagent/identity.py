"""The node's identity and the join flow.

At join the node makes its own Ed25519 key and X25519 bundle key (neither
leaves the node), sends a certificate request and the bundle key's public half
with a bootstrap token, and stores what the hub answers in its state
directory: the signed certificate, the hub's CA, the hub's public key (pinned:
every assignment must verify against it), the broker URL and its join
generation (every assignment must be sealed for it: one captured before this
join of the name is refused). The hub encrypts the node's bundles to the
bundle key (``edgeprotocol.bundle_crypto``).
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.x509.oid import NameOID

from edgekit.http import HttpError, JsonHttpClient
from edgekit.mqtt import BrokerAddress, TlsIdentity
from edgeprotocol import bundle_crypto
from edgeprotocol.errors import EdgeError
from edgeprotocol.topics import check_name

IDENTITY_FILE = "identity.json"
KEY_FILE = "node.key"
CERT_FILE = "node.crt"
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
    ca_certificate: str
    # The hub's count of accepted joins of this name, this one included; 0 in
    # an identity.json written before generations existed (and by such a hub).
    generation: int = 0

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

    def broker_tls(self, state_dir: Path, mqtt_url: str | None = None) -> TlsIdentity | None:
        """What the node shows a broker with identities (mqtts://): the hub CA to check the broker by, and
        the certificate and key from join (its name is its MQTT user). None for a plain broker."""
        if not BrokerAddress.parse(mqtt_url or self.mqtt_url).tls:
            return None
        return TlsIdentity(ca_pem=self.ca_certificate, cert_file=state_dir / CERT_FILE, key_file=state_dir / KEY_FILE)

    def save(self, state_dir: Path) -> None:
        _write_atomic(state_dir / IDENTITY_FILE, json.dumps(asdict(self), indent=2).encode(), mode=0o644)


def make_private_dir(path: Path) -> None:
    """Create the state directory ``path`` (and parents) or narrow it: mode 0700, the agent's alone.

    It holds the node's private key, its store and its policy; the key's own
    mode is not enough if others may replace files beside it.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)


def _write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_bundle_key(state_dir: Path) -> X25519PrivateKey | None:
    """The node's bundle key; None when the node joined before bundles were encrypted (its hub sends them plain)."""
    path = state_dir / BUNDLE_KEY_FILE
    try:
        return bundle_crypto.load_private_key_pem(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise JoinError(f"{path} is corrupt ({exc}); join again") from exc


def make_csr(key: Ed25519PrivateKey, node: str) -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node)]))
        .sign(key, algorithm=None)
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def join(
    *,
    hub_url: str,
    token: str,
    state_dir: Path,
    node: str | None = None,
    pool: str | None = None,
    labels: dict[str, str] | None = None,
) -> NodeIdentity:
    """Register this node with the hub and store its identity in ``state_dir``."""
    name = node or socket.gethostname().split(".")[0].lower()
    try:
        check_name(name, "node name")
    except ValueError as exc:
        raise JoinError(f"{exc}; pass --name") from exc
    make_private_dir(state_dir)
    key = Ed25519PrivateKey.generate()
    bundle_key = bundle_crypto.new_node_key()
    try:
        answer = JsonHttpClient(hub_url, timeout=JOIN_TIMEOUT_SECONDS).post(
            "/api/v1/join",
            {"token": token, "node": name, "pool": pool, "labels": labels or {}, "csr": make_csr(key, name),
             "bundle_key": bundle_crypto.public_key_text(bundle_key)},
        )
    except HttpError as exc:
        prefix = "hub refused the join: " if exc.status else ""
        raise JoinError(f"{prefix}{exc}") from exc
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _write_atomic(state_dir / KEY_FILE, key_pem, mode=0o600)
    _write_atomic(state_dir / BUNDLE_KEY_FILE, bundle_crypto.private_key_pem(bundle_key), mode=0o600)
    _write_atomic(state_dir / CERT_FILE, answer["certificate"].encode(), mode=0o644)
    identity = NodeIdentity(
        node=answer["node"],
        pool=answer["pool"],
        labels=answer.get("labels", {}),
        hub_url=hub_url,
        mqtt_url=answer["mqtt_url"],
        hub_public_key=answer["hub_public_key"],
        ca_certificate=answer["ca_certificate"],
        generation=answer.get("generation", 0),
    )
    identity.save(state_dir)
    return identity
