"""Enrollment: a node's join, the renewal of its certificate, and an operator's reset or revoke of it.

``Enrollment`` is what the HTTP API calls for these; it speaks in tokens, CSRs, proofs and records, never
in requests or responses. Refusals are raised from the
hub's error tree (:mod:`edgehub.errors`): a join refused (a bad token, a name registered to another key or
revoked) is a ``JoinRefused``, a renewal refused a ``RenewalRefused``, a CSR that does not name the node a
``CsrError``, a node that does not exist a ``NotFound``.

A renewal is proven by the node's current key: ``proof`` is its Ed25519 signature over
``edgeprotocol.enrollment.renewal_payload``, checked against the key of the certificate the hub holds for the
node. The timestamp must be within ``RENEWAL_WINDOW_SECONDS`` of the hub's clock and the nonce new; the
certificate held must not have expired longer than ``offline_horizon_days`` ago (``edgehub.renewal_rules``).
The node's generation and assignments stay. The new certificate is answered once the broker refuses the
replaced one (``edgehub.broker_revocations``); a retry after a lost answer is proven by the new key, which the
hub then holds.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgeprotocol.enrollment import RENEWAL_WINDOW_SECONDS, renewal_payload

from .broker_access import BrokerAccess
from .broker_revocations import BrokerRevocations
from .dispatch import Dispatcher
from .errors import JoinRefused, NotFound, RenewalRefused
from .identity import HubIdentity
from .renewal_rules import check_certificate_age, check_timestamp
from .store.enrollment import EnrollmentStore, NodeRecord, Registration
from .tokens import TokenParts

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Renewal:
    """A node's renewed certificate (PEM) and its end."""

    certificate: str
    not_after: dt.datetime


@dataclass(frozen=True, slots=True)
class ShutOut:
    """A node reset or revoked: its record after the change, and how many assignments it held (kept in the
    store, no longer published to it)."""

    node: NodeRecord
    assignments: int


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeCertificates:
    """How node certificates are issued: for how long, and how long after its end one may still be renewed."""

    lifetime: dt.timedelta
    offline_horizon_days: float


class Enrollment:
    """The hub's enrollment service, shared by every request."""

    def __init__(self, store: EnrollmentStore, identity: HubIdentity, dispatcher: Dispatcher, access: BrokerAccess,
                 revocations: BrokerRevocations, certificates: NodeCertificates) -> None:
        self._store = store
        self._identity = identity
        self._dispatcher = dispatcher
        self._access = access
        self._revocations = revocations
        self._certificates = certificates

    async def join(self, token: TokenParts, *, node: str, requested_pool: str | None, labels: dict[str, str],
                   csr: str, bundle_key: str) -> Registration:
        """Spend a use of ``token`` to register ``node`` with a certificate for ``csr``; the broker admits it and
        its assignments are published before this returns (the agent connects right after its answer)."""
        identity, lifetime = self._identity, self._certificates.lifetime
        try:
            joined = await self._store.register_node(
                token, node=node, requested_pool=requested_pool, labels=labels,
                sign=lambda name: identity.sign_node_csr(csr, node=name, lifetime=lifetime),
                bundle_key=bundle_key,
            )
        except JoinRefused as exc:
            # Worth a warning: someone holds a token that no longer works, or guesses.
            logger.warning("Join of %s refused: %s", node, exc)
            raise
        logger.info("Node %s joined pool %s (join generation %d%s)", node, joined.pool, joined.generation,
                    "" if bundle_key else "; no bundle key: its bundles go unencrypted")
        await self._access.admit_node(node)
        await self._dispatcher.sync(node=node)
        if joined.rejoined:
            # What was kept for the name is sealed again for the new generation.
            await self._dispatcher.publish_node(node)
        return joined

    async def renew(self, node: str, *, csr: str, timestamp: int, nonce: str, proof: bytes) -> Renewal:
        """A new certificate for ``csr`` (a new key), when ``proof`` by the node's current key verifies."""
        now = time.time()
        check_timestamp(timestamp, now=now)
        identity, certificates = self._identity, self._certificates
        notes: list[str] = []

        def renew(current_pem: str) -> str:
            # Called by the store only for a node that is joined: a revoked or reset one is refused before, at any age.
            current = x509.load_pem_x509_certificate(current_pem.encode())
            key = current.public_key()
            payload = renewal_payload(node=node, csr=csr, timestamp=timestamp, nonce=nonce)
            try:
                if not isinstance(key, Ed25519PublicKey):
                    raise InvalidSignature
                key.verify(proof, payload)
            except InvalidSignature as exc:
                raise RenewalRefused(
                    f"the proof does not verify against the current certificate of node {node!r} "
                    f"(serial {current.serial_number:x}): only the node's own key can renew it") from exc
            # After the proof: only the node itself learns how its certificate stands.
            note = check_certificate_age(node, current.not_valid_after_utc, now=dt.datetime.fromtimestamp(now, dt.UTC),
                                         horizon_days=certificates.offline_horizon_days)
            if note:
                notes.append(note)
            return identity.sign_node_csr(csr, node=node, lifetime=certificates.lifetime)

        try:
            certificate = await self._store.renew_certificate(node, nonce=nonce, at=float(timestamp),
                                                              forget_before=now - RENEWAL_WINDOW_SECONDS, renew=renew)
        except RenewalRefused as exc:
            logger.warning("Certificate renewal of %s refused: %s", node, exc)
            raise
        # The replaced certificate is refused by the broker before the node holds the new one. Should the
        # answer be lost, the node retries with a proof by its new key (the hub holds that key now) and gets
        # its certificate again; until then its MQTT link waits, its workloads run on.
        await self._revocations.refresh()
        issued = x509.load_pem_x509_certificate(certificate.encode())
        logger.info("Node %s renewed its certificate (serial %x, valid until %s)%s", node, issued.serial_number,
                    issued.not_valid_after_utc.isoformat(), f"; {notes[0]}" if notes else "")
        return Renewal(certificate=certificate, not_after=issued.not_valid_after_utc)

    async def reset(self, name: str) -> ShutOut:
        """Free a node's name: the next join with it is accepted (at the next generation) and gets the node's
        assignments, which are kept; until then nothing is published to the name and nothing it sends is taken."""
        shut_out = await self._shut_out(name, self._store.reset_node)
        logger.warning("Node %s reset by the operator: its name is free for the next join; %d assignment(s) kept",
                       name, shut_out.assignments)
        return shut_out

    async def revoke(self, name: str) -> ShutOut:
        """Refuse a node: its messages are ignored, its retained assignments cleared and nothing more published
        to it, and its name cannot join until ``reset``. Its assignments are kept in the store."""
        shut_out = await self._shut_out(name, self._store.revoke_node)
        logger.warning("Node %s revoked by the operator: %d assignment(s) withheld; it is refused until reset",
                       name, shut_out.assignments)
        return shut_out

    async def _shut_out(self, name: str, change: Callable[[str], Awaitable[NodeRecord | None]]) -> ShutOut:
        """Change the node's standing (NotFound if there is none), clear its retained assignments and expel it
        from the broker."""
        node = await change(name)
        if node is None:
            raise NotFound(f"node {name!r} not found")
        held = await self._dispatcher.withdraw_node(name)
        await self._access.expel_node(name)
        # The plugin refuses the name until it joins again; the revocation list refuses this certificate after
        # that too (a reset node's old certificate would otherwise serve the next holder's name until it expires).
        await self._revocations.refresh()
        return ShutOut(node=node, assignments=held)
