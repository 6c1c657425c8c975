"""Bundles encrypted to the node they are for, so the broker and its readers do not learn them.

Each node makes an X25519 key pair at join and keeps the private half; the hub
stores the public half. The hub encrypts a render once (a pool's nodes share
it) under a content key made for that one ciphertext, and wraps the content
key to each node's public key inside that node's signed assignment:

    content  data = nonce (12 random bytes) || ChaCha20-Poly1305(content key, nonce, gzip(manifests), aad=DATA_AAD)
             content key: 32 random bytes, used for this one ciphertext and kept only in the hub's memory
    wrap     ephemeral X25519 key pair e; shared = X25519(e, node public key)
             wrap key = HKDF-SHA256(shared, salt=None, info=WRAP_INFO || e.public || node public, 32 bytes)
             wrapped = ChaCha20-Poly1305(wrap key, 12 zero bytes, content key, aad=WRAP_INFO)
             (the wrap key is used once, so a fixed nonce is safe)

On the wire (the ``bundle`` of an assignment body; keys are raw 32 bytes,
everything base64):

    {"encoding": "gzip+chacha20poly1305+base64", "data": ...,
     "key": {"alg": "x25519-hkdf-sha256-chacha20poly1305", "to": node public key, "epk": e.public, "wrapped": ...}}

There is no plaintext digest beside it: a digest of the manifests would let a
reader confirm a guessed secret. The node computes the digest after
decrypting. Every failure to open is a :class:`DecryptionError` (a ProtocolError) saying why.

Every primitive is libsodium's, through PyNaCl (``nacl.bindings``), on both
sides; nothing here is hand-made but HKDF (``hkdf_sha256``: PyNaCl has none;
two HMAC-SHA256 calls of the standard library, checked against
``cryptography``'s HKDF in tests/protocol). Hubs and nodes before this used
``cryptography`` for the same primitives: the bytes on the wire are the same,
which tests/protocol/test_bundle_crypto_is_the_same_on_the_wire.py checks both
ways. PyNaCl, not ``cryptography``, because the agent opens a bundle on every
assignment: libsodium costs a running agent about 1 MiB where ``cryptography``
and the OpenSSL it ships cost about 8 (bench/README.md, "Agent footprint").
The node's private key file is PKCS#8 PEM as before (``edgeprotocol.pem_keys``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from dataclasses import dataclass, field
from typing import Any

from nacl.bindings import (
    crypto_aead_chacha20poly1305_ietf_decrypt,
    crypto_aead_chacha20poly1305_ietf_encrypt,
    crypto_scalarmult,
)
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey

from . import pem_keys
from .errors import DecryptionError, ProtocolError

ENCODING = "gzip+chacha20poly1305+base64"
KEY_ALG = "x25519-hkdf-sha256-chacha20poly1305"
DATA_AAD = b"edgecollab bundle data v1"
WRAP_INFO = b"edgecollab bundle key v1"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16  # Poly1305's
_ZERO_NONCE = bytes(NONCE_BYTES)


def new_node_key() -> PrivateKey:
    return PrivateKey.generate()


def private_key_pem(key: PrivateKey) -> bytes:
    """The node's bundle key file: unencrypted PKCS#8 PEM. Written at join, which has ``cryptography`` loaded
    for its CSR anyway; only reading it (every start) must do without (``pem_keys``)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    return X25519PrivateKey.from_private_bytes(bytes(key)).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def load_private_key_pem(pem: bytes) -> PrivateKey:
    """The node's bundle key from its PEM file; ValueError when it is not an X25519 private key."""
    return PrivateKey(pem_keys.x25519_private_key_from_pem(pem))


def public_key_text(key: PrivateKey | PublicKey) -> str:
    """The public key as the join request and the wire carry it: base64 of its 32 raw bytes."""
    public = key.public_key if isinstance(key, PrivateKey) else key
    return base64.b64encode(bytes(public)).decode()


def load_public_key(text: Any, what: str = "bundle key") -> PublicKey:
    """Parse base64 of a raw X25519 public key; ProtocolError when it is not one."""
    return PublicKey(_raw(text, what, KEY_BYTES))


def check_public_key(text: Any) -> str:
    """A node's public key as sent at join, refused (ProtocolError) unless a bundle can be wrapped to it.

    Beyond the format, this refuses the low-order points whose shared secret
    is all zeros (X25519 refuses to derive it): better at join than at every publish.
    """
    key = load_public_key(text)
    wrap(os.urandom(KEY_BYTES), key)
    return public_key_text(key)


@dataclass(frozen=True, slots=True)
class EncryptedContent:
    """One render's compressed manifests, encrypted once and then wrapped to each node that gets them."""

    data: str  # base64 of nonce || ciphertext
    key: bytes = field(repr=False)  # the content key: never on the wire unwrapped, never logged

    def to_wire(self, to: PublicKey) -> dict[str, Any]:
        return {"encoding": ENCODING, "data": self.data, "key": wrap(self.key, to)}


def encrypt(packed: bytes) -> EncryptedContent:
    """Encrypt ``packed`` (the gzip of a bundle's manifests) under a new content key."""
    key, nonce = os.urandom(KEY_BYTES), os.urandom(NONCE_BYTES)
    sealed = crypto_aead_chacha20poly1305_ietf_encrypt(packed, DATA_AAD, nonce, key)
    return EncryptedContent(data=base64.b64encode(nonce + sealed).decode(), key=key)


def wrap(content_key: bytes, to: PublicKey) -> dict[str, str]:
    """``content_key`` wrapped to the node whose public key is ``to``; ProtocolError when ``to`` is unusable."""
    ephemeral = PrivateKey.generate()
    epk, recipient = bytes(ephemeral.public_key), bytes(to)
    try:
        shared = crypto_scalarmult(bytes(ephemeral), recipient)
    except CryptoError as exc:  # libsodium refuses a low-order point: the shared secret would be all zeros
        raise ProtocolError(f"bundle key {public_key_text(to)} cannot be used: X25519 refuses an exchange with it "
                            "(a low-order point)") from exc
    wrapped = crypto_aead_chacha20poly1305_ietf_encrypt(content_key, WRAP_INFO, _ZERO_NONCE,
                                                        _wrap_key(shared, epk, recipient))
    return {"alg": KEY_ALG, "to": base64.b64encode(recipient).decode(), "epk": base64.b64encode(epk).decode(),
            "wrapped": base64.b64encode(wrapped).decode()}


def decrypt(wire: dict[str, Any], key: PrivateKey, where: str) -> bytes:
    """The compressed manifests of an encrypted bundle ``wire``, opened with the node's private ``key``.

    Raises DecryptionError when the bundle is wrapped to another key, or its
    key or data were changed on the way; ProtocolError when it is malformed.
    """
    content_key = unwrap(wire.get("key"), key, where)
    data = _raw(wire.get("data"), f"{where}: bundle data", None)
    if len(data) < NONCE_BYTES:
        raise ProtocolError(f"{where}: bundle data is shorter than its nonce")
    failed = f"{where}: bundle data does not decrypt with its key (changed on the way?)"
    if len(data) < NONCE_BYTES + TAG_BYTES:  # no room for a tag (PyNaCl would fail with a bare ValueError)
        raise DecryptionError(failed)
    try:
        return crypto_aead_chacha20poly1305_ietf_decrypt(data[NONCE_BYTES:], DATA_AAD, data[:NONCE_BYTES],
                                                         content_key)
    except CryptoError as exc:
        raise DecryptionError(failed) from exc


def unwrap(wrapped_key: Any, key: PrivateKey, where: str) -> bytes:
    """The content key in ``wrapped_key`` (the wire's ``bundle.key``), opened with the node's private ``key``."""
    if not isinstance(wrapped_key, dict):
        raise ProtocolError(f"{where}: bundle key must be an object")
    if wrapped_key.get("alg") != KEY_ALG:
        raise ProtocolError(f"{where}: bundle key algorithm {wrapped_key.get('alg')!r} is not {KEY_ALG}")
    to = _raw(wrapped_key.get("to"), f"{where}: bundle key 'to'", KEY_BYTES)
    epk = _raw(wrapped_key.get("epk"), f"{where}: bundle key 'epk'", KEY_BYTES)
    wrapped = _raw(wrapped_key.get("wrapped"), f"{where}: bundle key 'wrapped'", KEY_BYTES + TAG_BYTES)
    own = bytes(key.public_key)
    if to != own:
        raise DecryptionError(
            f"{where}: bundle is encrypted to bundle key {_short(to)}, not this node's {_short(own)} "
            "(another node's assignment, or one sealed before this node joined again)")
    try:
        shared = crypto_scalarmult(bytes(key), epk)  # CryptoError for a low-order epk (an all-zero secret)
        return crypto_aead_chacha20poly1305_ietf_decrypt(wrapped, WRAP_INFO, _ZERO_NONCE, _wrap_key(shared, epk, own))
    except CryptoError as exc:
        raise DecryptionError(f"{where}: bundle key does not open with this node's bundle key "
                              "(changed on the way?)") from exc


def hkdf_sha256(secret: bytes, info: bytes, length: int = KEY_BYTES) -> bytes:
    """HKDF-SHA256 (RFC 5869) without a salt, for at most one hash's length of output (32 bytes).

    Written out because PyNaCl has no HKDF, and the stdlib's HMAC is all it
    takes (tests/protocol check it against ``cryptography``'s HKDF):

        extract  PRK = HMAC-SHA256(key=salt, message=secret); no salt means 32 zero bytes (RFC 5869 2.2)
        expand   T(1) = HMAC-SHA256(key=PRK, message=info || 0x01); the output is T(1)'s first ``length``
                 bytes. A longer output would need T(2) = HMAC(PRK, T(1) || info || 0x02) and so on: refused.
    """
    if not 0 < length <= hashlib.sha256().digest_size:
        raise ValueError(f"this HKDF gives 1 to 32 bytes, not {length}")
    prk = hmac.digest(bytes(hashlib.sha256().digest_size), secret, "sha256")
    return hmac.digest(prk, info + b"\x01", "sha256")[:length]


def _wrap_key(shared: bytes, epk: bytes, recipient: bytes) -> bytes:
    return hkdf_sha256(shared, WRAP_INFO + epk + recipient)


def _raw(text: Any, what: str, length: int | None) -> bytes:
    if not isinstance(text, str):
        raise ProtocolError(f"{what} must be a base64 string")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError(f"{what} is not base64 ({exc})") from exc
    if length is not None and len(raw) != length:
        raise ProtocolError(f"{what} must be {length} bytes, not {len(raw)}")
    return raw


def _short(raw: bytes) -> str:
    return base64.b64encode(raw).decode()[:8] + "..."
