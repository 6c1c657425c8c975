"""The PEM files of the protocol's 32-byte keys, read without an ASN.1 parser.

Two keys the agent reads every time it starts are in PEM files: the hub's
Ed25519 public key (``identity.json``, SubjectPublicKeyInfo, as the hub sends
it at join) and the node's X25519 bundle key (``node-bundle.key``, PKCS#8).
RFC 8410 gives each of these exactly one DER encoding: a fixed header, then
the 32 raw key bytes (the header bytes below are the RFC's section 10
examples'; ``cryptography`` and ``openssl genpkey`` write the same). So the key
is the PEM's base64 with that header taken off: no ASN.1 parsing at all,
which keeps ``cryptography`` (and its own OpenSSL, about 8 MiB resident) out
of a running agent (bench/README.md, "Agent footprint"). The files are
written where ``cryptography`` is loaded anyway (the hub; a node's join), by
``cryptography``.

The PEM's layout (line length, CRLF, text before the BEGIN line) does not
matter. A PEM whose DER is not exactly that form (an encrypted key, another
key type, anything else) is handed to ``cryptography``'s parser, imported for
that call only: it loads what it can and says why it cannot.
"""

from __future__ import annotations

import base64
import binascii
import re

KEY_BYTES = 32
# RFC 8410 section 4 (SubjectPublicKeyInfo, id-Ed25519 = 1.3.101.112) and section 7
# (OneAsymmetricKey version 0 with id-X25519 = 1.3.101.110, the key as an OCTET STRING in an OCTET STRING).
ED25519_PUBLIC_HEADER = bytes.fromhex("302a300506032b6570032100")
X25519_PRIVATE_HEADER = bytes.fromhex("302e020100300506032b656e04220420")
_PUBLIC_LABEL = "PUBLIC KEY"
_PRIVATE_LABEL = "PRIVATE KEY"
_PEM = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\s*([A-Za-z0-9+/=\s]*?)\s*-----END \1-----")


def ed25519_public_key_from_pem(pem: str | bytes) -> bytes:
    """The 32 raw bytes of the Ed25519 public key in ``pem``; ValueError saying why when it holds none."""
    der = _der(pem, _PUBLIC_LABEL)
    if der is not None and der.startswith(ED25519_PUBLIC_HEADER) and len(der) == len(ED25519_PUBLIC_HEADER) + KEY_BYTES:
        return der[len(ED25519_PUBLIC_HEADER):]
    # Not the one encoding RFC 8410 gives: only a full parser can say what it is.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    key = serialization.load_pem_public_key(_bytes(pem))  # ValueError when it is no PEM public key
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"not an Ed25519 public key but {type(key).__name__}")
    return key.public_bytes_raw()


def x25519_private_key_from_pem(pem: str | bytes) -> bytes:
    """The 32 raw bytes of the X25519 private key in ``pem``; ValueError saying why when it holds none."""
    der = _der(pem, _PRIVATE_LABEL)
    if der is not None and der.startswith(X25519_PRIVATE_HEADER) and len(der) == len(X25519_PRIVATE_HEADER) + KEY_BYTES:
        return der[len(X25519_PRIVATE_HEADER):]
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    try:
        key = serialization.load_pem_private_key(_bytes(pem), password=None)
    except (TypeError, UnsupportedAlgorithm) as exc:  # encrypted, or a key type this build cannot read
        raise ValueError(str(exc)) from exc
    if not isinstance(key, X25519PrivateKey):
        raise ValueError("not an X25519 private key")
    return key.private_bytes_raw()


def _bytes(pem: str | bytes) -> bytes:
    return pem.encode() if isinstance(pem, str) else pem


def _der(pem: str | bytes, label: str) -> bytes | None:
    """The DER inside the first PEM block of ``pem`` when that block is labelled ``label``; else None."""
    try:
        text = pem.decode("ascii") if isinstance(pem, bytes) else pem
    except UnicodeDecodeError:
        return None
    match = _PEM.search(text)
    if match is None or match.group(1) != label:
        return None
    try:
        return base64.b64decode("".join(match.group(2).split()), validate=True)
    except (binascii.Error, ValueError):
        return None
