"""Certificate renewal: the agent gets its node a new certificate before the one it holds expires.

The hub issues node certificates for a limited time (``node_certificate_days``,
90 by default). Once less than a third of the certificate's lifetime is left
(``edgeprotocol.enrollment.renew_after``), the agent makes a new key, sends a
certificate request for it to ``POST /api/v1/nodes/NAME/certificate`` with a
proof signed by its current key (``renewal_payload``: the request, a
timestamp and a random nonce), checks what the hub answers (issued by a hub
CA the node trusts, for this node and the new key) and only then puts the new
key and certificate in place of the old ones. Over HTTPS the hub is verified
against those CAs.

**CA rotations** (``edgehub.ca_rotation``). Each round first asks the hub for
its signed facts (``edgeagent.clock``), which name the CAs the hub trusts and
the one that issues; the node keeps them (``edgeagent.trust``). A certificate
whose CA is not the one that issues (``node.crt.json`` names its CA) is
renewed at once, whatever its dates, once per issuing CA. A round starts on
the timer, when the hub's notice of a rotation step arrives (``wake``, after a
random part of the hub's spread), and when a TLS handshake with the broker
fails (``trust_failed``, at most every ``TLS_WAKE_MIN_SECONDS``, the gap
doubling while rounds change nothing): a node that was away during a
rotation, or cut off, comes back by itself.

Files, in the state directory:

    node.key, node.crt     the key and certificate in force (the MQTT client loads them on each connect)
    node.key.next          the new key, made before the request and kept until it is in force: a
                           renewal retried after an answer was lost asks for the same key
    node.crt.next          the new certificate, written once the hub answered; then node.key.next
                           replaces node.key and node.crt.next replaces node.crt (each an atomic
                           rename). A crash between the renames is finished the next time (``finish_interrupted``).

If the hub took a renewal but its answer was lost, it holds a certificate of
``node.key.next`` and refuses a proof by the old key: the agent then proves
the request with ``node.key.next`` instead and gets the certificate again.

The hub puts the old certificate on the broker's revocation list when it
issues the new one (``edgehub.broker_revocations``): from then on only the new
one connects. So the agent reconnects its MQTT session right after a renewal
(``on_renewed``), which also ends any session of its name still open with the
old certificate; and a renewal whose answer was lost leaves the node off the
broker (its workloads run on) until the retry above gets it the certificate.

``CertificateRenewer`` is the Agent's: it checks when the agent starts and
then on a timer, retries a failed renewal with backoff, and reports
``CertificateRenewed`` and ``CertificateRenewalFailed`` events. Every check
first measures the clock's offset from the hub (``edgeagent.clock``) and
judges the certificate by the hub's time, not the node's. It is also the
uplink's gate (``ready_to_connect``): the broker connection waits for the
first check, and never goes out with a certificate that has expired, so a
node back from months off renews over HTTPS first (the hub takes that within
its offline horizon, ``edgehub.renewal_rules``) and then connects. A running
agent keeps ``cryptography`` out of its memory (about 7 MiB of a 34 MiB agent,
bench/README.md, "Agent footprint"): its checks read the certificate's dates
from the record beside it (``edgeagent.certificate``, written with every
certificate), and a renewal that is due runs ``renew`` in a short-lived
process of its own (``python -m edgeagent.renewal``, the node's identity as
JSON on its stdin), since a module once imported stays in a process until it
ends. Only finishing a renewal a crash interrupted loads it in the agent.
``cryptography`` is imported inside the functions that need it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import math
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from edgeclient.hub import HubClient
from edgekit.files import write_atomic
from edgekit.http import HttpError, Unreachable
from edgekit.processes import reap
from edgekit.tasks import OwnedTask
from edgeprotocol.enrollment import issuer_among, renew_after, renewal_payload
from edgeprotocol.errors import EdgeError
from edgeprotocol.signing import load_private_key

from . import certificate as node_certificate
from .clock import ClockError, HubClock
from .identity import CERT_FILE, KEY_FILE, NodeIdentity, make_csr
from .trust import NodeTrust, TrustError

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

logger = logging.getLogger(__name__)

PENDING_KEY_FILE = "node.key.next"
PENDING_CERT_FILE = "node.crt.next"
# The outcome of the last renewal or renewal attempt, for ``edgeagent status`` (what a person at a dark node sees).
NOTE_FILE = "renewal.json"
# A renewal is one small request; a hub that does not answer in this time is retried later.
RENEW_TIMEOUT_SECONDS = 30.0
# The renewal process: at most two requests (the second proven by the pending key) and an interpreter's start.
RENEW_PROCESS_TIMEOUT_SECONDS = 2 * RENEW_TIMEOUT_SECONDS + 30.0
# The agent looks at its certificate at least this often (a clock set forward,
# a certificate replaced by a new join), and never more often than the minimum.
MAX_CHECK_SECONDS = 3600.0
MIN_CHECK_SECONDS = 1.0
# A failed TLS handshake with the broker starts a round (the hub's CAs fetched) at most this often, the gap
# doubling up to the maximum while the rounds change nothing (edgeagent.trust).
TLS_WAKE_MIN_SECONDS = 10.0
TLS_WAKE_MAX_SECONDS = 600.0
# A failed renewal is retried after this, doubling up to a tenth of the
# certificate's lifetime (at most MAX_CHECK_SECONDS) ...
RETRY_INITIAL_SECONDS = 2.0
# ... or up to this while the certificate has expired (the node is off the broker until it renews) and the
# hub has not refused it: a node back from months off reaches the broker within a minute of the hub.
EXPIRED_RETRY_MAX_SECONDS = 60.0
# How long a broker connection waits, when the agent starts, for the first check: the clock measured (at
# most 25 s) and a renewal that is due run to its end; past it, a certificate still in force is used.
FIRST_ROUND_WAIT_SECONDS = 25.0 + RENEW_PROCESS_TIMEOUT_SECONDS + 5.0

Report = Callable[[str, str], Awaitable[None]]
Renewed = Callable[[], Awaitable[None]]


class RenewalError(EdgeError):
    """The certificate could not be renewed now; the message says why. ``status``: the HTTP status of the hub's
    refusal (403: it will not renew this certificate until an operator acts), 0 when the hub did not refuse."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class _NoCertificate(RenewalError):
    """The node holds no readable certificate: there is nothing to renew."""


def load_validity(state_dir: Path) -> node_certificate.Validity:
    """The serial and validity of the node's certificate in force; RenewalError if it is missing or unreadable."""
    path = state_dir / CERT_FILE
    try:
        return node_certificate.validity(state_dir)
    except FileNotFoundError as exc:
        raise _NoCertificate(f"{path} not found: join again") from exc
    except (OSError, ValueError) as exc:
        raise _NoCertificate(f"{path} cannot be read ({exc}); join again") from exc


def _load_key(path: Path) -> Ed25519PrivateKey:
    try:
        return load_private_key(path)
    except ValueError as exc:
        raise RenewalError(str(exc)) from exc


def _public(key: PublicKeyTypes) -> bytes:
    """A public key's bytes (SubjectPublicKeyInfo, DER), comparable whatever its type."""
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _note(state_dir: Path, clock: HubClock, message: str) -> None:
    """Keep ``message`` as the last renewal's outcome (``STATE/renewal.json``); blocking (a file)."""
    data = {"at": clock.now_utc().isoformat(timespec="seconds").replace("+00:00", "Z"), "message": message}
    try:
        write_atomic(state_dir / NOTE_FILE, json.dumps(data, indent=2) + "\n", mode=0o644)
    except OSError as exc:
        logger.warning("Could not keep the renewal's outcome in %s: %s", state_dir / NOTE_FILE, exc)


def last_note(state_dir: Path) -> dict[str, str] | None:
    """The last renewal's outcome as ``_note`` kept it (``at``, ``message``); None when there is none readable."""
    try:
        data = json.loads((state_dir / NOTE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("at", "message")):
        return None
    return {"at": data["at"], "message": data["message"]}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def finish_interrupted(state_dir: Path) -> bool:
    """Put in force a new key and certificate a crash left half installed; True if there was one.

    Blocking (files): call it from a thread.
    """
    cert_next, key_next = state_dir / PENDING_CERT_FILE, state_dir / PENDING_KEY_FILE
    if not cert_next.exists():
        return False
    from cryptography import x509

    try:
        certificate = x509.load_pem_x509_certificate(cert_next.read_bytes())
        key = _load_key(key_next if key_next.exists() else state_dir / KEY_FILE)
    except (OSError, ValueError, RenewalError):
        cert_next.unlink(missing_ok=True)
        return False
    if _public(certificate.public_key()) != _public(key.public_key()):
        cert_next.unlink(missing_ok=True)  # not for the key it would go with: the next renewal starts over
        return False
    if key_next.exists():
        os.replace(key_next, state_dir / KEY_FILE)
    os.replace(cert_next, state_dir / CERT_FILE)
    _fsync_dir(state_dir)
    node_certificate.record(state_dir)
    logger.info("Finished putting in force the certificate renewed before a restart (serial %x)",
                certificate.serial_number)
    return True


def _request(client: HubClient, node: str, csr: str, prover: Ed25519PrivateKey, clock: HubClock
             ) -> dict[str, object]:
    # The hub's time, as measured: the hub refuses a timestamp more than 300 s from its clock.
    timestamp, nonce = int(clock.now()), secrets.token_hex(16)
    proof = prover.sign(renewal_payload(node=node, csr=csr, timestamp=timestamp, nonce=nonce))
    answer = client.renew_certificate(node, csr=csr, timestamp=timestamp, nonce=nonce,
                                      proof=base64.b64encode(proof).decode())
    if not isinstance(answer, dict):
        raise RenewalError("the hub answered the renewal with something other than a JSON object")
    return answer


def answered_trust(answer: dict[str, object], identity: NodeIdentity) -> tuple[str, str]:
    """The CAs (PEM) and the issuing CA's SHA-256 a renewal answer names; the node's own when it names none (a hub
    from before CA rotations). The answer came over HTTPS verified against the CAs the node trusts (or plain HTTP
    on loopback, as the join): the hub's word."""
    bundle, issuing = answer.get("ca_bundle"), answer.get("issuing_ca")
    if not isinstance(bundle, str) or not bundle.strip():
        return identity.ca_certificate, identity.issuing_ca
    return bundle, issuing if isinstance(issuing, str) else ""


def _checked(answer: dict[str, object], identity: NodeIdentity, key: Ed25519PrivateKey, clock: HubClock
             ) -> x509.Certificate:
    """The certificate the hub answered, after checking it is for this node and ``key``, issued directly by a CA
    the node trusts or the answer names (a CA rotation's new CA: ``edgeagent.trust``)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    pem = answer.get("certificate")
    try:
        certificate = x509.load_pem_x509_certificate(str(pem).encode())
        names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError as exc:
        raise RenewalError(f"the hub answered the renewal with no usable certificate ({exc})") from exc
    if [n.value for n in names] != [identity.node]:
        raise RenewalError(f"the hub answered a certificate for {certificate.subject.rfc4514_string()}, "
                           f"not CN={identity.node}")
    if _public(certificate.public_key()) != _public(key.public_key()):
        raise RenewalError("the hub answered a certificate for another key than the one this node asked for")
    if identity.ca_certificate:
        trusted = identity.ca_certificate + answered_trust(answer, identity)[0]
        try:
            cas = x509.load_pem_x509_certificates(trusted.encode())
        except ValueError as exc:
            raise RenewalError(f"the hub answered the renewal with CAs that cannot be read ({exc})") from exc
        if issuer_among(certificate, cas) is None:
            raise RenewalError("the certificate the hub answered is not issued by a hub CA this node trusts")
    if certificate.not_valid_after_utc <= clock.now_utc():
        raise RenewalError(f"the hub answered a certificate that expired at {certificate.not_valid_after_utc}")
    return certificate


def renew(state_dir: Path, identity: NodeIdentity, clock: HubClock | None = None) -> x509.Certificate:
    """``renew_and_trust``'s certificate."""
    return renew_and_trust(state_dir, identity, clock)[0]


def renew_and_trust(state_dir: Path, identity: NodeIdentity, clock: HubClock | None = None
                    ) -> tuple[x509.Certificate, str, str]:
    """Renew the node's certificate now: a new key, the hub's certificate for it, both put in force; with the CAs
    (PEM) and the issuing CA's SHA-256 the hub's answer named, for the running agent's ``NodeTrust`` to keep.

    Blocking (HTTP, key generation, files): call it from a thread. RenewalError when it cannot be
    done now; the key and certificate in force are then unchanged. ``clock``: the hub's time as the node
    measured it (default: as ``STATE/clock.json`` says), for the proof's timestamp and certificate dates.
    """
    clock = clock or HubClock(state_dir)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    finish_interrupted(state_dir)
    current = _load_key(state_dir / KEY_FILE)
    pending_path = state_dir / PENDING_KEY_FILE
    retried = pending_path.exists()
    if retried:
        pending = _load_key(pending_path)
    else:
        pending = Ed25519PrivateKey.generate()
        write_atomic(pending_path, pending.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), mode=0o600)
    csr = make_csr(pending, identity.node)
    try:
        client = identity.hub_client(timeout=RENEW_TIMEOUT_SECONDS, adjust=clock.adjust_tls)
        try:
            answer = _request(client, identity.node, csr, current, clock)
        except HttpError as exc:
            if not (retried and exc.status == 403):
                raise
            # An earlier renewal may have been taken with its answer lost: the hub then holds the new key.
            try:
                answer = _request(client, identity.node, csr, pending, clock)
            except HttpError:
                raise exc from None
    except HttpError as exc:
        prefix = "the hub refused the renewal: " if exc.status else ""
        raise RenewalError(f"{prefix}{exc}", status=exc.status) from exc
    except EdgeError as exc:  # JoinError: no CA to verify the hub with
        raise RenewalError(str(exc)) from exc
    certificate = _checked(answer, identity, pending, clock)
    write_atomic(state_dir / PENDING_CERT_FILE, certificate.public_bytes(serialization.Encoding.PEM), mode=0o644)
    os.replace(pending_path, state_dir / KEY_FILE)
    os.replace(state_dir / PENDING_CERT_FILE, state_dir / CERT_FILE)
    _fsync_dir(state_dir)
    bundle, issuing = answered_trust(answer, identity)
    # The issuer is named among the CAs the hub answered (its new CA after a rotation's switch).
    node_certificate.record(state_dir, trusted=bundle)
    return certificate, bundle, issuing


class CertificateRenewer:
    """The Agent's certificate renewal: a check at start and on a timer, renewals in a process of their own.

    An async context manager: its task runs while entered and is cancelled and awaited on exit.
    ``report(reason, message)`` records an event (the uplink's outbox); ``on_renewed()`` is awaited once a
    new certificate is in force (the agent reconnects to the broker with it). Each round first measures the
    clock's offset from the hub (``clock``, ``edgeagent.clock``), then checks the certificate by the hub's
    time. ``ready_to_connect`` is the uplink's gate: a broker connection waits for the first round (the
    certificate renewed if it was due) and never goes out with a certificate that has expired.
    """

    def __init__(self, state_dir: Path, identity: NodeIdentity, *, report: Report | None = None,
                 on_renewed: Renewed | None = None, clock: HubClock | None = None,
                 trust: NodeTrust | None = None) -> None:
        self.state_dir = state_dir
        # The node's identity as its trusted CAs change (edgeagent.trust): read from here at every use.
        self.trust = trust or NodeTrust(state_dir, identity)
        self.report = report
        self.on_renewed = on_renewed
        self.clock = clock or HubClock(state_dir)
        self._task = OwnedTask(f"certificate renewal of {identity.node}")
        self.renewals = 0
        self.failures = 0
        # Set once the first round (clock measured, certificate renewed if due) is over, failed or not.
        self._first_round = asyncio.Event()
        # Set (and replaced) at the end of every round: what the gate waits for while the certificate is expired.
        self._round = asyncio.Event()
        # Why the hub could not be asked for its time in this round, when it could not be reached at all.
        self._unreachable: ClockError | None = None
        # An early next round: ``wake`` sets when (monotonic seconds) and the event.
        self._wake_at: float | None = None
        self._woken = asyncio.Event()
        # TLS failures wake a round at most this often (doubling while they change nothing: see trust_failed).
        self._tls_wake_gap = TLS_WAKE_MIN_SECONDS
        self._tls_woken_at = -math.inf
        # The issuing CA a renewal was made for because the certificate's CA did not issue: one such renewal
        # per issuing CA, so a hub that answers a certificate of another CA cannot make the node renew in a loop.
        self._renewed_for_issuer = ""

    @property
    def identity(self) -> NodeIdentity:
        return self.trust.identity

    def wake(self, after: float = 0.0) -> None:
        """Start the next round (the clock measured, the hub's CAs taken, the certificate checked) within ``after``
        seconds instead of at its time: the hub's notice of a CA rotation step (``edgeprotocol.notices``)."""
        at = time.monotonic() + max(0.0, after)
        self._wake_at = at if self._wake_at is None else min(self._wake_at, at)
        self._woken.set()

    def trust_failed(self, why: BaseException) -> None:
        """A TLS handshake with the broker failed (``why``): the hub's CAs may have changed while this node was
        away or cut off, so a round starts now. At most every ``TLS_WAKE_MIN_SECONDS``, doubling up to
        ``TLS_WAKE_MAX_SECONDS`` while rounds change nothing (a broker misconfigured for the whole fleet must
        not turn into a storm of requests to the hub); back to the minimum once the hub's CAs changed."""
        now = time.monotonic()
        if now - self._tls_woken_at < self._tls_wake_gap:
            return
        logger.warning("The TLS handshake with the broker failed (%s): asking the hub for its CAs now", why)
        self._tls_woken_at = now
        self._tls_wake_gap = min(TLS_WAKE_MAX_SECONDS, self._tls_wake_gap * 2)
        self.wake()

    async def _sleep(self, delay: float) -> None:
        """Until the next round: ``delay`` seconds, or sooner when woken."""
        deadline = time.monotonic() + delay
        while True:
            target = deadline if self._wake_at is None else min(deadline, self._wake_at)
            remaining = target - time.monotonic()
            if remaining <= 0:
                break
            self._woken.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._woken.wait()
        self._wake_at = None

    async def __aenter__(self) -> CertificateRenewer:
        self._task.start(self._run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._task.stop()

    async def _run(self) -> None:
        failures_in_a_row = 0
        while True:
            await self._measure_clock()
            try:
                delay = await self.check()
                failures_in_a_row = 0
            except _NoCertificate as exc:
                # Nothing to renew (a node set up by hand, or a test): said once, looked at again later.
                if failures_in_a_row == 0:
                    logger.warning("Certificate renewal: %s", exc)
                failures_in_a_row = 1
                delay = MAX_CHECK_SECONDS
            except RenewalError as exc:
                failures_in_a_row += 1
                self.failures += 1
                delay = await asyncio.to_thread(self._retry_delay, failures_in_a_row, refused=exc.status == 403)
                logger.warning("Could not renew the node certificate (try %d; again in %.0f s): %s",
                               failures_in_a_row, delay, exc)
                await asyncio.to_thread(_note, self.state_dir, self.clock, f"renewal failed: {exc}")
                if failures_in_a_row == 1:
                    await self._event("CertificateRenewalFailed", f"{exc}; retrying")
            except Exception:  # a full disk, a bug: the timer must outlive it
                failures_in_a_row += 1
                self.failures += 1
                delay = await asyncio.to_thread(self._retry_delay, failures_in_a_row)
                logger.exception("Certificate renewal failed unexpectedly; trying again in %.0f s", delay)
            self._first_round.set()
            done, self._round = self._round, asyncio.Event()
            done.set()
            await self._sleep(delay)

    async def _measure_clock(self) -> None:
        """Measure the clock's offset from the hub; a failure is logged (the last offset taken stays in use)."""
        try:
            measurement = await self.clock.refresh(self.identity)
            self._unreachable = None
        except (ClockError, TimeoutError) as exc:
            reachable = isinstance(exc, ClockError) and not isinstance(exc.__cause__, Unreachable)
            self._unreachable = None if reachable else ClockError(str(exc) or "the hub did not answer in time")
            logger.warning("Could not measure the clock's offset from the hub (%s); using %s", exc or "timed out",
                           f"the offset of {self.clock.record.offset_seconds:+.1f} s measured before"
                           if self.clock.record else "the node's own clock")
        except Exception:  # a bug: the renewal still runs, by the last offset taken
            logger.exception("Measuring the clock's offset from the hub failed unexpectedly")
        else:
            # The same signed answer names the CAs the hub trusts and the one that issues: a node that was away
            # during a CA rotation, or that no longer verifies the hub or the broker, learns them here.
            await self._take_trust(measurement.facts.ca_bundle, measurement.facts.issuing_ca,
                                   "the hub's signed facts")

    async def _take_trust(self, bundle: str, issuing: str, source: str) -> None:
        try:
            if await self.trust.take(bundle, issuing, source=source):
                self._tls_wake_gap = TLS_WAKE_MIN_SECONDS
        except TrustError as exc:
            logger.warning("Not taking the hub's CAs from %s: %s", source, exc)

    def _retry_delay(self, failures: int, *, refused: bool = False) -> float:
        try:
            validity = load_validity(self.state_dir)
            cap = validity.lifetime_seconds / 10
            # A node whose certificate expired is off the broker until it renews: it asks again soon (a
            # cheap request for the hub's time while the hub cannot be reached), unless the hub refused it.
            if not refused and self.clock.now_utc() >= validity.not_valid_after_utc:
                cap = min(cap, EXPIRED_RETRY_MAX_SECONDS)
        except RenewalError:
            cap = MAX_CHECK_SECONDS
        cap = min(MAX_CHECK_SECONDS, max(MIN_CHECK_SECONDS, cap))
        return min(cap, RETRY_INITIAL_SECONDS * 2 ** min(failures - 1, 30))

    async def check(self) -> float:
        """Renew the certificate if it is due by the hub's time; the seconds until the next check. RenewalError
        if it failed."""
        await asyncio.to_thread(finish_interrupted, self.state_dir)
        current = await asyncio.to_thread(load_validity, self.state_dir)
        due = renew_after(current)
        now = self.clock.now_utc()
        # A CA rotation: the certificate's CA no longer issues (the hub switched to its new CA, or retired the
        # old one), so it is renewed now, whatever its dates, once per issuing CA.
        issuing = self.identity.issuing_ca
        other_ca = bool(issuing) and current.issuer_sha256 != issuing and self._renewed_for_issuer != issuing
        if now >= due or other_ca:
            if self._unreachable is not None:
                # The renewal would go to the same hub: no process started for a request that cannot arrive.
                raise RenewalError(f"{self._unreachable}; the renewal waits until the hub can be reached")
            if other_ca:
                logger.warning("The node certificate (serial %x) is of the CA %s, but the hub's CA %s issues now: "
                               "renewing it", current.serial_number, (current.issuer_sha256 or "unknown")[:16],
                               issuing[:16])
            await self._take_trust(*await self._renew_in_a_process(), "the hub's renewal answer")
            renewed = await asyncio.to_thread(load_validity, self.state_dir)
            if other_ca:
                self._renewed_for_issuer = issuing
            self.renewals += 1
            message = (f"certificate renewed: serial {renewed.serial_number:x}, valid until "
                       f"{renewed.not_valid_after_utc.isoformat()} (was serial {current.serial_number:x}, "
                       f"until {current.not_valid_after_utc.isoformat()}"
                       f"{', expired' if now >= current.not_valid_after_utc else ''}"
                       f"{', of a CA that no longer issues' if other_ca else ''})")
            logger.info("Node %s %s", self.identity.node, message)
            await asyncio.to_thread(_note, self.state_dir, self.clock, message)
            if self.on_renewed is not None:
                # The broker refuses the old certificate from now on: a connection made with it would end at
                # the next drop and not come back, so the new one is put to use at once.
                try:
                    await self.on_renewed()
                except Exception:  # the renewal stands; the link reconnects by itself when it drops
                    logger.exception("Could not reconnect to the broker with the renewed certificate")
            await self._event("CertificateRenewed", message)
            due, now = renew_after(renewed), self.clock.now_utc()
        return min(MAX_CHECK_SECONDS, max(MIN_CHECK_SECONDS, (due - now).total_seconds()))

    async def ready_to_connect(self) -> None:
        """Return once the node may connect to the broker (the uplink's ``MqttSession`` awaits it before each
        attempt): after the first round, at most ``FIRST_ROUND_WAIT_SECONDS`` (so a certificate that was due is
        renewed first), and while the certificate in force has expired by the hub's time, after each later
        round until one renewed it: the broker refuses an expired certificate, and retrying it would only
        hammer the broker. The workloads run on meanwhile (the reconciler never waits for this)."""
        if not self._first_round.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._first_round.wait(), FIRST_ROUND_WAIT_SECONDS)
        said = False
        while True:
            try:
                validity = await asyncio.to_thread(load_validity, self.state_dir)
            except RenewalError:
                return  # nothing to renew: the connection says what is wrong
            if self.clock.now_utc() < validity.not_valid_after_utc:
                return
            if not said:
                logger.warning("The node certificate (serial %x) expired at %s by the hub's time: not connecting to "
                               "the broker, which refuses it, until it is renewed", validity.serial_number,
                               validity.not_valid_after_utc.isoformat())
                said = True
            await self._round.wait()

    async def _renew_in_a_process(self) -> tuple[str, str]:
        """``renew`` in ``python -m edgeagent.renewal``, which the module's docstring explains; RenewalError with
        its reason (and the hub's status, when it refused) when it failed. Killed when it takes too long or the
        agent stops: ``renew`` is made to be interrupted at any point (``finish_interrupted``, ``node.key.next``).
        It reads the offset this round measured from ``STATE/clock.json``."""
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", __name__, str(self.state_dir), stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            raise RenewalError(f"cannot start the renewal process {sys.executable} -m {__name__}: {exc}") from exc
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(json.dumps(dataclasses.asdict(self.identity)).encode()), RENEW_PROCESS_TIMEOUT_SECONDS)
        except TimeoutError:
            raise RenewalError(f"the renewal process did not finish within {RENEW_PROCESS_TIMEOUT_SECONDS:.0f} s; "
                               "it was stopped") from None
        finally:
            await reap(proc)
        if proc.returncode == 0:
            try:
                said = json.loads(out)
                return str(said["ca_bundle"]), str(said["issuing_ca"])
            except (ValueError, KeyError, TypeError):  # renewed; the next round's signed facts name the CAs
                logger.warning("The renewal process named no CAs: the hub's are taken at the next check")
                return self.identity.ca_certificate, self.identity.issuing_ca
        status = 0
        try:
            said = json.loads(out)
            reason, status = said["error"], int(said.get("status", 0))
        except (ValueError, KeyError, TypeError, AttributeError):  # it died before it could say: its last words
            lines = err.decode(errors="replace").strip().splitlines()
            reason = f"the renewal process exited with {proc.returncode}: {lines[-1] if lines else 'no output'}"
        raise RenewalError(reason, status=status)

    async def _event(self, reason: str, message: str) -> None:
        if self.report is not None:
            await self.report(reason, message)


def main(argv: list[str] | None = None) -> int:
    """``python -m edgeagent.renewal STATE_DIR``, the node's identity as JSON on stdin: ``renew`` now.

    Exit 0 once the new key and certificate are in force (and recorded,
    ``edgeagent.certificate``), with ``{"ca_bundle": PEM, "issuing_ca": SHA256}`` on stdout (the hub's CAs, as its
    answer named them); else 1, with ``{"error": reason}`` on stdout.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(json.dumps({"error": "usage: python -m edgeagent.renewal STATE_DIR < identity.json"}))
        return 1
    try:
        _, bundle, issuing = renew_and_trust(Path(args[0]), NodeIdentity(**json.load(sys.stdin)))
    except RenewalError as exc:
        print(json.dumps({"error": str(exc), "status": exc.status}))
        return 1
    except (ValueError, TypeError) as exc:  # the identity on stdin
        print(json.dumps({"error": str(exc)}))
        return 1
    print(json.dumps({"ca_bundle": bundle, "issuing_ca": issuing}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
