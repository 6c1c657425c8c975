"""The hub CAs a node trusts, and which one issues: kept in ``identity.json``, followed through a CA rotation.

A node trusts the CAs of its ``identity.json`` (``ca_certificate``: PEM, one
or more) for the hub's HTTPS and the broker's TLS, and keeps which one the hub
said issues now (``issuing_ca``, a SHA-256). During a CA rotation
(``edgehub.ca_rotation``) the hub changes both; the node learns them from:

- the hub's signed facts (``GET /api/v1/time``, ``edgeprotocol.hub_facts``),
  fetched at every certificate check (``edgeagent.renewal``): over TLS that
  verifies nothing, trusted because the hub key pinned at join signed them over
  the node's fresh nonce. This is how a node that was away during a rotation,
  or that no longer verifies the broker or the hub, comes back by itself;
- the answer to a renewal (over HTTPS verified against the CAs it trusts);
- the join.

``NodeTrust`` is the one writer of that part of ``identity.json`` in a running
agent (atomic replace, off the event loop) and tells the uplink and the
renewer, which take the new CAs for their next connection. Only the standard
library here: a running agent does not load ``cryptography``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import re
import ssl
from collections.abc import Callable
from pathlib import Path

from edgeprotocol.errors import EdgeError

from .identity import NodeIdentity

logger = logging.getLogger(__name__)

_PEM = re.compile(r"-----BEGIN CERTIFICATE-----\s.*?-----END CERTIFICATE-----\s*", re.DOTALL)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# More CAs than any rotation has at once (two) is not the hub's bundle.
MAX_CAS = 8

Listener = Callable[[NodeIdentity], None]


# What a failed TLS handshake says (Python's ssl, through paho and aiomqtt) when the CAs may be the cause: the
# broker's certificate does not verify, or the broker does not take the node's (a CA it no longer trusts).
_TLS_TROUBLE = ("certificate verify failed", "unknown ca", "bad certificate", "certificate unknown",
                "certificate revoked", "certificate expired")


def tls_trouble(exc: BaseException) -> bool:
    """Whether a failed connection looks like a TLS handshake refused over certificates."""
    text = f"{exc} {exc.__cause__ or ''}".lower().replace("_", " ")
    return isinstance(exc, ssl.SSLError) or any(words in text for words in _TLS_TROUBLE)


class TrustError(EdgeError):
    """CAs that cannot be taken as they are; the message says why."""


def bundle_fingerprints(bundle: str) -> list[str]:
    """The SHA-256 (hex, of the DER) of each certificate in the PEM ``bundle``, in order; TrustError if it holds
    none or something that is not one."""
    blocks = _PEM.findall(bundle)
    if not blocks or "".join(blocks).strip() != bundle.strip():
        raise TrustError("the CAs are not PEM certificates only")
    if len(blocks) > MAX_CAS:
        raise TrustError(f"{len(blocks)} CAs are more than a hub trusts at once ({MAX_CAS})")
    try:
        return [hashlib.sha256(ssl.PEM_cert_to_DER_cert(block.strip())).hexdigest() for block in blocks]
    except ValueError as exc:
        raise TrustError(f"the CAs are not PEM certificates ({exc})") from exc


def checked(bundle: str, issuing: str) -> list[str]:
    """``bundle``'s fingerprints, once it is certificates an SSL context loads and holds ``issuing`` (when
    given); TrustError saying what is wrong."""
    fingerprints = bundle_fingerprints(bundle)
    if issuing and (not _SHA256.match(issuing) or issuing not in fingerprints):
        raise TrustError(f"the issuing CA {issuing[:64]!r} is not one of the CAs given ({', '.join(fingerprints)})")
    try:
        ssl.create_default_context(cadata=bundle)
    except (ssl.SSLError, ValueError) as exc:
        raise TrustError(f"the CAs do not load ({exc})") from exc
    return fingerprints


class NodeTrust:
    """The running node's identity as its trust changes (``identity``), and the one place that changes it."""

    def __init__(self, state_dir: Path, identity: NodeIdentity) -> None:
        self.state_dir = state_dir
        self._identity = identity
        self._listeners: list[Listener] = []
        self._lock = asyncio.Lock()

    @property
    def identity(self) -> NodeIdentity:
        return self._identity

    def on_change(self, listener: Listener) -> None:
        """Call ``listener(identity)`` (on the loop; it must not block) after every change is saved."""
        self._listeners.append(listener)

    async def take(self, bundle: str, issuing: str, *, source: str) -> bool:
        """Trust the CAs of ``bundle`` (PEM) from now on, ``issuing`` being the one that issues, as ``source``
        (words: where they came from) says; whether anything changed. The caller has checked ``source``: a
        signature by the pinned hub key, or a verified HTTPS answer. TrustError if they cannot be used."""
        async with self._lock:
            before = self._identity
            if bundle == before.ca_certificate and (not issuing or issuing == before.issuing_ca):
                return False
            fingerprints = checked(bundle, issuing)
            issuing = issuing or before.issuing_ca
            # Saved before it is used, so a restart finds what the node was told; into identity.json as it is on
            # disk (the running identity may hold a flag's override, ``edgeagent run --mqtt``, never saved).
            await asyncio.to_thread(self._save, bundle, issuing)
            after = self._identity = dataclasses.replace(before, ca_certificate=bundle, issuing_ca=issuing)
        try:
            was = bundle_fingerprints(before.ca_certificate) if before.ca_certificate else []
        except TrustError:
            was = []
        added, dropped = [f for f in fingerprints if f not in was], [f for f in was if f not in fingerprints]
        logger.warning("Node %s: the hub's CAs changed (from %s): trusting %s%s%s; the CA that issues is %s",
                       after.node, source, ", ".join(f[:16] for f in fingerprints),
                       f", added {', '.join(f[:16] for f in added)}" if added else "",
                       f", no longer {', '.join(f[:16] for f in dropped)}" if dropped else "",
                       (after.issuing_ca or "not said")[:16])
        for listener in self._listeners:
            listener(after)
        return True

    def _save(self, bundle: str, issuing: str) -> None:
        try:
            on_disk = NodeIdentity.load(self.state_dir)
        except EdgeError as exc:
            raise TrustError(f"the hub's CAs cannot be kept: {exc}") from exc
        dataclasses.replace(on_disk, ca_certificate=bundle, issuing_ca=issuing).save(self.state_dir)
