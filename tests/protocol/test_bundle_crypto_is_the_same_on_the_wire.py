"""Bundles, signatures and key files made with PyNaCl are byte for byte what ``cryptography`` made before.

Hubs and nodes before PyNaCl sealed and opened bundles with ``cryptography``'s
X25519, HKDF and ChaCha20-Poly1305, and wrote the node's keys with its PEM
serializer. Both kinds stay in the field, so each direction is checked here
against ``cryptography`` itself: ``legacy_wrap`` and ``legacy_open`` are the
code of ``edgeprotocol.bundle_crypto`` before the change, unchanged.
"""

from __future__ import annotations

import base64
import json
import os

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl.public import PrivateKey

from edgeprotocol import Assignment, Bundle, ProtocolError, bundle_crypto, pem_keys
from edgeprotocol.bundle_crypto import DATA_AAD, ENCODING, KEY_ALG, NONCE_BYTES, WRAP_INFO, hkdf_sha256
from edgeprotocol.messages import now
from edgeprotocol.signing import load_public_key, open_sealed, public_key_pem, seal

MANIFESTS = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\ndata:\n  password: czNjcjN0\n"
ZERO_NONCE = bytes(NONCE_BYTES)


def legacy_hkdf(shared: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(shared)


def legacy_seal(packed: bytes, to: X25519PublicKey) -> dict[str, object]:
    """A bundle's wire form as a hub before PyNaCl made it."""
    content_key, nonce = ChaCha20Poly1305.generate_key(), os.urandom(NONCE_BYTES)
    data = nonce + ChaCha20Poly1305(content_key).encrypt(nonce, packed, DATA_AAD)
    ephemeral = X25519PrivateKey.generate()
    epk, recipient = ephemeral.public_key().public_bytes_raw(), to.public_bytes_raw()
    wrap_key = legacy_hkdf(ephemeral.exchange(to), WRAP_INFO + epk + recipient)
    wrapped = ChaCha20Poly1305(wrap_key).encrypt(ZERO_NONCE, content_key, WRAP_INFO)

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return {"encoding": ENCODING, "data": b64(data),
            "key": {"alg": KEY_ALG, "to": b64(recipient), "epk": b64(epk), "wrapped": b64(wrapped)}}


def legacy_open(wire: dict[str, object], key: X25519PrivateKey) -> bytes:
    """The compressed manifests of ``wire``, opened as a node before PyNaCl opened them."""
    wrapped_key = wire["key"]
    assert isinstance(wrapped_key, dict)
    epk, wrapped = base64.b64decode(wrapped_key["epk"]), base64.b64decode(wrapped_key["wrapped"])
    own = key.public_key().public_bytes_raw()
    assert base64.b64decode(wrapped_key["to"]) == own
    wrap_key = legacy_hkdf(key.exchange(X25519PublicKey.from_public_bytes(epk)), WRAP_INFO + epk + own)
    content_key = ChaCha20Poly1305(wrap_key).decrypt(ZERO_NONCE, wrapped, WRAP_INFO)
    data = base64.b64decode(str(wire["data"]))
    return ChaCha20Poly1305(content_key).decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], DATA_AAD)


def pkcs8(key: X25519PrivateKey | Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.mark.parametrize("secret_size", [32, 1, 0, 64, 100])
@pytest.mark.parametrize("info_size", [0, 1, 24 + 64, 200])
@pytest.mark.parametrize("length", [32, 16, 1])
def test_hkdf_gives_what_cryptographys_hkdf_gives(secret_size: int, info_size: int, length: int):
    for _ in range(5):
        secret, info = os.urandom(secret_size), os.urandom(info_size)
        assert hkdf_sha256(secret, info, length) == legacy_hkdf(secret, info, length)


def test_hkdf_gives_the_rfc_5869_test_vector_without_a_salt():
    # RFC 5869, appendix A.3 (SHA-256, zero-length salt and info), the first 32 of its 42 bytes.
    okm = hkdf_sha256(bytes.fromhex("0b" * 22), b"", 32)
    assert okm.hex() == "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d"


@pytest.mark.parametrize("length", [0, 33, 42])
def test_hkdf_refuses_a_length_it_does_not_compute(length: int):
    with pytest.raises(ValueError, match=f"1 to 32 bytes, not {length}"):
        hkdf_sha256(b"secret", b"info", length)


def test_a_bundle_sealed_by_an_older_hub_opens_on_a_node_now():
    node_key = X25519PrivateKey.generate()
    loaded = bundle_crypto.load_private_key_pem(pkcs8(node_key))  # the key file as nodes kept it
    wire = legacy_seal(Bundle.of(MANIFESTS).packed(), node_key.public_key())
    opened = Bundle.from_wire(json.loads(json.dumps(wire)), "assignment", loaded)
    assert opened.manifests == MANIFESTS and opened.digest == Bundle.of(MANIFESTS).digest


def test_a_bundle_sealed_by_a_hub_now_opens_on_an_older_node():
    key = bundle_crypto.new_node_key()
    # An older node reads the key file with cryptography: the file must be one it reads.
    older = serialization.load_pem_private_key(bundle_crypto.private_key_pem(key), password=None)
    assert isinstance(older, X25519PrivateKey)
    bundle = Bundle.of(MANIFESTS)
    wire = bundle.to_wire(bundle_crypto.load_public_key(bundle_crypto.public_key_text(key)))
    assert legacy_open(wire, older) == bundle.packed()


def test_a_signed_assignment_from_the_hubs_cryptography_key_opens_with_the_key_pinned_at_join():
    hub, node_key = Ed25519PrivateKey.generate(), bundle_crypto.new_node_key()
    assignment = Assignment(node="sh-1", namespace="demo", release="db", revision=1, kind="release",
                            issued_at=now(), bundle=Bundle.of(MANIFESTS), generation=1)
    payload = seal(assignment, hub, bundle_to=node_key.public_key)
    # What the hub hands over at join is what cryptography writes, and a node loads it.
    pem = public_key_pem(hub.public_key())
    assert pem == hub.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    opened = open_sealed(payload, load_public_key(pem), node="sh-1", generation=1, bundle_key=node_key)
    assert opened.bundle is not None and opened.bundle.manifests == MANIFESTS


def test_the_node_key_files_are_what_cryptography_writes_and_reads():
    for _ in range(20):
        key = X25519PrivateKey.generate()
        raw = key.private_bytes_raw()
        assert bundle_crypto.private_key_pem(PrivateKey(raw)) == pkcs8(key)
        loaded = bundle_crypto.load_private_key_pem(pkcs8(key))
        assert bytes(loaded) == raw
        assert bytes(loaded.public_key) == key.public_key().public_bytes_raw()
        hub = Ed25519PrivateKey.generate().public_key()
        assert pem_keys.ed25519_public_key_from_pem(public_key_pem(hub)) == hub.public_bytes_raw()


def test_a_key_file_laid_out_otherwise_loads_to_the_same_key():
    key = X25519PrivateKey.generate()
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    text = base64.b64encode(der).decode()
    # Text before it (as openssl pkcs12 writes), CRLF line ends, a body cut at 16 characters.
    odd = "Bag Attributes\r\n-----BEGIN PRIVATE KEY-----\r\n" + \
        "\r\n".join(text[i:i + 16] for i in range(0, len(text), 16)) + "\r\n-----END PRIVATE KEY-----\r\n"
    loaded = serialization.load_pem_private_key(odd.encode(), password=None)
    assert loaded.private_bytes_raw() == key.private_bytes_raw()
    assert bytes(bundle_crypto.load_private_key_pem(odd.encode())) == key.private_bytes_raw()


def test_a_key_file_that_holds_no_x25519_private_key_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="not an X25519 private key"):
        bundle_crypto.load_private_key_pem(pkcs8(Ed25519PrivateKey.generate()))
    encrypted = X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw"))
    with pytest.raises(ValueError, match="encrypted"):
        bundle_crypto.load_private_key_pem(encrypted)
    with pytest.raises(ValueError):
        bundle_crypto.load_private_key_pem(public_key_pem(Ed25519PrivateKey.generate().public_key()).encode())


def test_a_hub_key_that_is_not_an_ed25519_public_key_is_refused_with_the_reason():
    p256 = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    with pytest.raises(ProtocolError,
                       match="hub public key is not a PEM Ed25519 public key .*not an Ed25519 public key"):
        load_public_key(p256)
    with pytest.raises(ProtocolError, match="hub public key is not a PEM Ed25519 public key"):
        load_public_key("")
