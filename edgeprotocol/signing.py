"""Signed envelopes for hub-to-node assignments.

An envelope is ``{"v": 1, "body": {...}, "sig": base64}``; the Ed25519
signature covers the canonical JSON encoding of ``body`` (sorted keys, no
spaces). The agent pins the hub's public key at join and verifies every
assignment against it, then checks that the body names the receiving node and
the join generation the node holds (so an assignment sealed for an earlier
join of the same name is refused after a re-join).

The hub signs with ``cryptography`` (its key, ``edgehub.identity``); a node
verifies with libsodium through PyNaCl, which keeps ``cryptography`` out of a
running agent (bench/README.md, "Agent footprint"). Both are Ed25519 of RFC
8032: one's signatures verify with the other.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nacl.exceptions import BadSignatureError
from nacl.public import PrivateKey, PublicKey
from nacl.signing import VerifyKey

from . import pem_keys
from .errors import AddressError, ProtocolError, SignatureError
from .messages import VERSION, Assignment, decode_json, encode_json

if TYPE_CHECKING:  # the hub's key types: the hub signs with cryptography (edgehub.identity)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in the PEM file ``path`` (the hub's, a CA's, a node's); ValueError naming the
    file when it cannot be read or holds another kind of key. ``cryptography`` is imported for this call only:
    a running agent keeps it out of its memory (``edgeagent.renewal``)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} cannot be read ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def public_key_pem(key: Ed25519PublicKey) -> str:
    """The hub's public key as join hands it to nodes: PEM (SubjectPublicKeyInfo)."""
    from cryptography.hazmat.primitives import serialization  # the hub's: its key is a cryptography one

    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def load_public_key(pem: str) -> VerifyKey:
    """The hub's public key a node pinned at join (PEM), ready to verify assignments with; ProtocolError if it
    is not an Ed25519 public key."""
    try:
        return VerifyKey(pem_keys.ed25519_public_key_from_pem(pem))
    except ValueError as exc:
        raise ProtocolError(f"hub public key is not a PEM Ed25519 public key ({exc})") from exc


def seal(assignment: Assignment, key: Ed25519PrivateKey, *, bundle_to: PublicKey | None = None) -> bytes:
    """Encode and sign an assignment, ready to publish; its bundle encrypted to ``bundle_to`` when given
    (the node's bundle key, see :mod:`edgeprotocol.bundle_crypto`)."""
    signed = encode_json(assignment.to_body(bundle_to))
    signature = base64.b64encode(key.sign(signed))
    # encode_json({"v": VERSION, "body": body, "sig": ...}) byte for byte, without encoding the body
    # (most of the payload) a second time: the keys in sorted order, the body's canonical JSON inside.
    return b'{"body":' + signed + b',"sig":"' + signature + b'","v":' + str(VERSION).encode() + b"}"


def open_sealed(payload: bytes, key: VerifyKey, *, node: str, generation: int,
                bundle_key: PrivateKey | None = None) -> Assignment:
    """Verify and decode an assignment addressed to ``node`` at join ``generation``; an encrypted bundle
    is opened with the node's ``bundle_key``.

    Raises ProtocolError (or its SignatureError / AddressError / DecryptionError
    subclasses) with a reason fit for the node's status and events.
    """
    envelope: dict[str, Any] = decode_json(payload, "assignment envelope")
    body, sig = envelope.get("body"), envelope.get("sig")
    if not isinstance(body, dict) or not isinstance(sig, str):
        raise ProtocolError("assignment envelope: needs an object 'body' and a string 'sig'")
    try:
        key.verify(encode_json(body), base64.b64decode(sig, validate=True))
    except (BadSignatureError, ValueError) as exc:  # ValueError: not base64 (binascii.Error), not ASCII, not 64 bytes
        raise SignatureError("assignment is not signed by the pinned hub key") from exc
    # The address is checked before the bundle is opened: an assignment for
    # another node or join is refused as such, not as one that does not decrypt.
    # (Types are checked by from_body; absent generation is 0, as there.)
    to_node = body.get("node")
    to_generation = 0 if body.get("generation") is None else body["generation"]
    if to_node != node:
        raise AddressError(f"assignment is addressed to node {to_node!r}, not {node!r}")
    if to_generation != generation:
        raise AddressError(
            f"assignment is for join generation {to_generation!r} of node {node!r}, but this node joined as "
            f"generation {generation}: it was sealed for another join of the name (a replay?)")
    return Assignment.from_body(body, bundle_key=bundle_key)
