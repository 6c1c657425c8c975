"""Old node certificates stop working on the broker: the hub's certificate revocation list.

A renewal gives a node a new certificate with the same common name, which is
its MQTT user name (``use_identity_as_username``) and client ID. The dynamic
security plugin and the ``%u`` patterns of ``nodes.acl`` see only that name, so
nothing there can tell the old certificate from the new one; a common name that
changed with each renewal would move the node off its own topics, which are
named by the node. What can tell them apart is the TLS handshake: Mosquitto
checks every client certificate against the listener's ``crlfile``.

So every node certificate the hub no longer stands behind (replaced by a
renewal, voided by ``node reset`` or ``node revoke``) stays in the store's
``void_certificates`` until it expires, and ``BrokerRevocations`` writes them
as a CRL signed by each hub CA into the broker's directory and sends the broker
SIGHUP, on which Mosquitto reads the file again. ``edgehub mosquitto-config``
puts both into ``mosquitto.conf`` (``crlfile``, ``pid_file``) and tells the
hub where they are (``STATE/broker-files.json``).

What Mosquitto 2.0.11 does (tried against the real broker; the tests in
``tests/broker/test_old_certificates_are_refused.py`` hold it to it):

- it reads ``crlfile`` at start and again on SIGHUP (``mosquitto_security_apply``);
- it checks the list at each TLS handshake only: a connection made before
  stays up. A client that connects with the same client ID replaces it: the
  agent reconnects with its new certificate right after a renewal, which ends
  any session of its name made with the old one;
- a list past its ``nextUpdate`` refuses every client, so the list's
  ``nextUpdate`` is the CA's own expiry (the hub rewrites it whenever it changes);
- a file it cannot read at a reload leaves the listener checking no list at
  all, so the file is only ever replaced whole (``write_atomic``);
- it takes SIGHUP up to about 100 ms later (signals wait while it polls), and a
  connection accepted meanwhile is checked against the list before;
- on SIGHUP it builds the listener's TLS context again: ``cafile``, ``certfile``
  and ``keyfile`` are read again too (the CA rotation relies on it);
- it refuses a client whose CA has no list in ``crlfile`` (the handshake ends
  "unknown ca"), and ignores a list of a CA its ``cafile`` does not hold: with
  two CAs trusted (``edgehub.ca_rotation``) the file holds a list signed by
  each, one after the other, and ``cafile`` the hub's trust bundle
  (``write_trust``), written here too.

So the hub does not take a signal sent for a list in force: each list also
revokes a probe certificate made for it alone (``PROBE_NAME``, minutes of
life, its key only in memory), and after the signal the hub opens TLS
handshakes with it until the broker refuses it. Only then is the renewal
answered: once the node holds its new certificate, the old one is refused.
A broker that does not take the list (unreadable file, no permission to
signal) is logged as such instead of being assumed.

Cost: the list holds the certificates replaced within the last third of a
lifetime (renewals) and voided ones, not the fleet: at 10,000 nodes with 90-day
certificates about 3,300 entries, some 130 KB. Writes are coalesced (at most
one per ``MIN_INTERVAL_SECONDS``, the renewals of that time together) and
built in a thread; each reload costs the broker a pass over its connected
clients (docs/scaling.md). The broker may be down: the file is written anyway
and read when it starts, and the hub writes it again on every connect to the
broker and whenever the store's list changes (another hub sharing the store,
an entry that expired), checked every ``RECHECK_SECONDS``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import signal
import socket
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgekit.files import write_atomic, write_if_changed
from edgekit.mqtt import BrokerAddress
from edgekit.tasks import OwnedTask

from .hub_cas import HubCa
from .identity import HubIdentity

logger = logging.getLogger(__name__)

CRL_FILE = "revoked.crl"
PID_FILE = "mosquitto.pid"
# The broker's cafile, beside the CRL: the hub's trust bundle (``write_trust``).
CA_FILE = "ca.crt"
# The broker's TLS listener's certificate and key (``certfile``, ``keyfile``), beside the CRL.
BROKER_CERT_FILE = "broker.crt"
BROKER_KEY_FILE = "broker.key"
# In the hub's state directory: where ``edgehub mosquitto-config`` put the two files above.
BROKER_FILES = "broker-files.json"
# The broker's process name, checked before it is signalled: a stale pid file may name another process,
# which SIGHUP would end.
BROKER_PROCESS = "mosquitto"
# A CRL's lastUpdate is backdated like the certificates (edgehub.identity.BACKDATE): a broker whose clock
# is a little behind must not take it for one not yet valid (which refuses every client).
BACKDATE = dt.timedelta(minutes=5)
# The broker reloads at most this often: renewals that arrive meanwhile share one write and one reload.
MIN_INTERVAL_SECONDS = 1.0
# How often the store's list is compared with what was last written.
RECHECK_SECONDS = 60.0
# A renewal waits at most this long for the list to reach the broker before it is answered anyway.
REFRESH_WAIT_SECONDS = 10.0
# The probe certificate's name: it holds a dot, so it is no node's (broker_roles), and the plugin does not
# know it; it never gets as far as MQTT anyway.
PROBE_NAME = "crl-probe.edgecollab"
PROBE_LIFETIME = dt.timedelta(minutes=10)
# How long the hub tries the probe after a signal (the broker takes it within about 100 ms), and how often.
PROBE_SECONDS = 5.0
PROBE_INTERVAL_SECONDS = 0.05

Signalled = Literal["sent", "not running", "not sent"]
# (serial number, when it was voided, UNIX seconds)
Voided = tuple[int, float]
VoidedList = Callable[[], Awaitable[list[Voided]]]


@dataclass(frozen=True, slots=True)
class BrokerFiles:
    """The broker's CRL, which the hub writes, its pid file, which names the process to signal, and its
    certificate and key, which the hub renews (``edgehub.certificates``)."""

    crl_file: Path
    pid_file: Path
    # A broker-files.json from before the hub renewed the broker's certificate names neither: the
    # command always wrote them beside the CRL, under these names, and they are taken from there.
    cert_file: Path | None = None
    key_file: Path | None = None

    @property
    def directory(self) -> Path:
        """The directory ``edgehub mosquitto-config --out`` wrote."""
        return self.crl_file.parent

    @property
    def certificate_pair(self) -> tuple[Path, Path]:
        """(certificate, key) of the broker's TLS listener."""
        return (self.cert_file or self.directory / BROKER_CERT_FILE, self.key_file or self.directory / BROKER_KEY_FILE)

    @property
    def ca_file(self) -> Path:
        """The broker's ``cafile``: ``edgehub mosquitto-config`` writes it beside the CRL."""
        return self.crl_file.with_name(CA_FILE)

    def save(self, state_dir: Path) -> None:
        cert, key = self.certificate_pair
        write_atomic(state_dir / BROKER_FILES, json.dumps(
            {"crl_file": str(self.crl_file), "pid_file": str(self.pid_file), "cert_file": str(cert),
             "key_file": str(key)}, indent=2).encode())

    @classmethod
    def load(cls, state_dir: Path) -> BrokerFiles | None:
        """What ``edgehub mosquitto-config`` wrote for this state directory; None if it never ran with it.
        Blocking (a file): call it from a thread."""
        path = state_dir / BROKER_FILES
        try:
            data = json.loads(path.read_text())
            return cls(crl_file=Path(data["crl_file"]), pid_file=Path(data["pid_file"]),
                       cert_file=Path(data["cert_file"]) if data.get("cert_file") else None,
                       key_file=Path(data["key_file"]) if data.get("key_file") else None)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path} cannot be read ({exc}); run 'edgehub mosquitto-config' again") from exc


def build_crl(ca: HubCa, voided: Iterable[Voided], *, now: dt.datetime | None = None) -> bytes:
    """The CRL (PEM) of ``voided`` certificates, signed by ``ca``."""
    now = now or dt.datetime.now(dt.UTC)
    revoked = [x509.RevokedCertificateBuilder().serial_number(serial)
               .revocation_date(dt.datetime.fromtimestamp(at, dt.UTC)).build()
               for serial, at in sorted(voided)]
    # The revoked list given at once: adding entries one by one copies the list each time.
    builder = x509.CertificateRevocationListBuilder(
        issuer_name=ca.certificate.subject, last_update=now - BACKDATE,
        # Past nextUpdate the broker refuses every client: the list lasts as long as the CA it speaks for.
        next_update=ca.certificate.not_valid_after_utc, revoked_certificates=revoked)
    return builder.sign(ca.key, algorithm=None).public_bytes(serialization.Encoding.PEM)


def build_crls(identity: HubIdentity, voided: Iterable[Voided], *, now: dt.datetime | None = None) -> bytes:
    """One CRL per CA the hub trusts, each listing every voided serial, PEM one after the other.

    Mosquitto 2.0.11 (OpenSSL) refuses a client whose CA has no CRL in ``crlfile`` (the handshake fails
    with "unknown ca"), so while two CAs are trusted (a rotation) the file holds a list of each. Serial
    numbers are 159 random bits, so listing every voided serial under both CAs revokes nothing else, and
    a certificate the hub voided is refused whichever CA issued it. A list of a CA the broker does not
    trust (any more) is ignored by it."""
    voided = list(voided)
    return b"".join(build_crl(ca, voided, now=now) for ca in identity.cas.trusted)


def write_crl(identity: HubIdentity, path: Path, voided: Iterable[Voided]) -> None:
    """Replace the CRL file at ``path`` whole (``build_crls``). World-readable (a CRL is public): the broker
    reads it again on SIGHUP as the account it switched to. Blocking: call it from a thread."""
    write_atomic(path, build_crls(identity, voided), mode=0o644)


def ensure_crl(identity: HubIdentity, path: Path) -> None:
    """Keep the CRL file at ``path`` if it holds a list signed by each CA the hub trusts, else write empty ones:
    the broker refuses every client while it has none to read (and a client of a CA without a list)."""
    try:
        crls = [x509.load_pem_x509_crl(block) for block in _pem_blocks(path.read_bytes(), b"X509 CRL")]
        if all(any(crl.issuer == ca.certificate.subject and crl.is_signature_valid(ca.key.public_key())
                   for crl in crls) for ca in identity.cas.trusted):
            return
    except (OSError, ValueError, TypeError, InvalidSignature):
        pass
    write_crl(identity, path, [])


def write_trust(identity: HubIdentity, path: Path) -> bool:
    """Write the broker's ``cafile`` at ``path`` as the hub's trust bundle (every CA trusted now) if it holds
    anything else; whether it was written. The broker reads it at start and on SIGHUP (Mosquitto 2.0.11
    rebuilds a listener's TLS context then: its cafile, certfile, keyfile and crlfile). Blocking."""
    return write_if_changed(path, identity.trust_bundle_pem.encode(), mode=0o644)


def _pem_blocks(data: bytes, label: bytes) -> list[bytes]:
    """Each ``-----BEGIN label-----`` ... ``-----END label-----`` block of ``data``."""
    begin, end = b"-----BEGIN " + label + b"-----", b"-----END " + label + b"-----"
    blocks, at = [], 0
    while (start := data.find(begin, at)) != -1:
        stop = data.find(end, start)
        if stop == -1:
            break
        blocks.append(data[start:stop + len(end)] + b"\n")
        at = stop + len(end)
    return blocks


def signal_broker(pid_file: Path) -> tuple[Signalled, str]:
    """Send the broker SIGHUP, so it reads its CRL again: whether it was sent ("not running": the broker reads
    the list when it starts; "not sent": the operator should hear why), and what happened in words.
    Blocking (files)."""
    try:
        pid = int(pid_file.read_text().strip())
    except FileNotFoundError:
        return "not running", f"the broker is not running ({pid_file} does not exist): it reads the list when it starts"
    except (OSError, ValueError) as exc:
        return "not sent", (f"the broker's pid file {pid_file} cannot be read ({exc}): it reads the list when it next "
                            "starts")
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "not running", f"the broker is not running (no process {pid}): it reads the list when it starts"
    if name != BROKER_PROCESS:
        return "not sent", (f"process {pid} (from {pid_file}) is {name!r}, not the broker, so it was not signalled: "
                            "the broker reads the list when it next starts")
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return "not running", f"the broker (process {pid}) has just ended: it reads the list when it starts"
    except PermissionError:
        return "not sent", (f"the hub may not signal the broker (process {pid}), so the broker keeps accepting the "
                            "replaced certificates until it restarts: run both as the same account, or the hub as root")
    return "sent", f"the broker (process {pid}) was told to read it again"


@dataclass(frozen=True, slots=True)
class Probe:
    """A client certificate the next list revokes: while the broker still completes a TLS handshake with
    it, that list is not in force yet."""

    serial: int
    cert_pem: bytes
    key_pem: bytes = b""

    @classmethod
    def make(cls, identity: HubIdentity) -> Probe:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = identity.issue(key.public_key(), PROBE_NAME, usage="client", lifetime=PROBE_LIFETIME)
        return cls(serial=cert.serial_number, cert_pem=cert.public_bytes(serialization.Encoding.PEM),
                   key_pem=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))

    def context(self, ca_pem: str) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_pem)
        # TLS 1.2: the server's verdict on the client certificate ends the handshake itself (in 1.3 it
        # comes after the client has finished, on the first read).
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_2
        with tempfile.TemporaryDirectory(prefix="edgehub-probe-") as folder:  # ssl loads keys from files only
            cert, key = Path(folder) / "probe.crt", Path(folder) / "probe.key"
            cert.write_bytes(self.cert_pem)
            write_atomic(key, self.key_pem)
            context.load_cert_chain(cert, key)
        return context

    def refused_by(self, broker: BrokerAddress, ca_pem: str, *, seconds: float = PROBE_SECONDS) -> tuple[bool, str]:
        """Handshake with ``broker`` until it refuses this certificate: (whether it did within ``seconds``,
        how it ended, in words). Blocking: call it from a thread."""
        context = self.context(ca_pem)
        deadline = time.monotonic() + seconds
        while True:
            try:
                with socket.create_connection((broker.host, broker.port), timeout=seconds) as raw, \
                        context.wrap_socket(raw, server_hostname=broker.host):
                    pass  # the handshake went through: the broker still reads the list before this one
            except ssl.SSLError as exc:
                if "revoked" in str(exc).lower():
                    return True, "the broker refuses the certificates on it now"
                return False, f"the broker's handshake with the probe certificate failed otherwise ({exc})"
            except OSError as exc:
                return False, f"the broker cannot be reached ({exc}): it reads the list when it starts"
            if time.monotonic() >= deadline:
                return False, (f"the broker still accepted a certificate on the list {seconds:.0f} s after it was "
                               "signalled: does it run the configuration 'edgehub mosquitto-config' wrote?")
            time.sleep(PROBE_INTERVAL_SECONDS)


class BrokerRevocations:
    """Keeps the broker's CRL in step with the store's void certificates. An async context manager: its
    task runs while entered. Without ``files`` (a broker not written by ``edgehub mosquitto-config`` for
    this hub, or an anonymous one) every call does nothing."""

    def __init__(self, identity: HubIdentity, voided: VoidedList, files: BrokerFiles | None, *,
                 broker: BrokerAddress | None = None) -> None:
        self._identity = identity
        self._voided = voided
        self.files = files
        self._broker = broker  # where the probe checks that a list is in force (None: not checked)
        self._task = OwnedTask("broker-revocations")
        self._wake = asyncio.Event()
        self._force = False
        self._asked = 0  # refreshes asked for
        self._done = 0  # of those, how many a finished write covers
        self._progress = asyncio.Condition()
        self.writes = 0  # lists written (tests and logs)
        # Held while the broker's files are changed and it is signalled: Mosquitto reads its CRL, its
        # certificate and key (and CA) again on every SIGHUP, so a signal sent for the list must not find
        # a new key beside the old certificate (edgehub.certificates takes it while it replaces the two).
        self.reload_lock = asyncio.Lock()

    async def __aenter__(self) -> BrokerRevocations:
        if self.files is not None:
            self._force = True  # the broker may have started from an older list
            self._task.start(self._run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._task.stop()

    def changed(self, *, force: bool = False) -> None:
        """Write the list again soon (``force``: even if the store's list looks the same, as after the hub
        reconnects to a broker that may have been restored from an older directory)."""
        if self.files is None:
            return
        self._force = self._force or force
        self._asked += 1
        self._wake.set()

    async def refresh(self, *, force: bool = False) -> None:
        """Write the list as the store now holds it and signal the broker, then return (at most
        ``REFRESH_WAIT_SECONDS``: a slow write is logged and finishes in the background). ``force``: even if
        the store's list has not changed (the hub's CAs have: the cafile and a list per CA follow them)."""
        if self.files is None:
            return
        self.changed(force=force)
        ticket = self._asked
        try:
            async with asyncio.timeout(REFRESH_WAIT_SECONDS), self._progress:
                await self._progress.wait_for(lambda: self._done >= ticket)
        except TimeoutError:
            logger.warning("The broker's certificate revocation list was not written within %.0f s; it will be",
                           REFRESH_WAIT_SECONDS)

    async def _run(self) -> None:
        assert self.files is not None
        written: frozenset[int] | None = None
        while True:
            try:
                async with asyncio.timeout(RECHECK_SECONDS):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            ticket, force, self._force = self._asked, self._force, False
            try:
                voided = await self._voided()
                serials = frozenset(serial for serial, _ in voided)
                if force or serials != written:
                    async with self.reload_lock:
                        fine, what = await asyncio.to_thread(self._write_and_signal, voided)
                    written = serials
                    self.writes += 1
                    logger.log(logging.INFO if fine else logging.WARNING,
                               "Wrote the broker's certificate revocation list (%d certificate(s)) to %s; %s",
                               len(voided), self.files.crl_file, what)
            except Exception:  # a full disk, a permission: logged, tried again at the next change or check
                logger.exception("Could not bring the broker's certificate revocation list %s up to date; replaced "
                                 "node certificates still connect until it is", self.files.crl_file)
                written = None
            async with self._progress:
                self._done = max(self._done, ticket)
                self._progress.notify_all()
            await asyncio.sleep(MIN_INTERVAL_SECONDS)

    def _write_and_signal(self, voided: list[Voided]) -> tuple[bool, str]:
        assert self.files is not None
        probe = Probe.make(self._identity) if self._broker is not None else None
        listed = [*voided, (probe.serial, time.time())] if probe is not None else voided
        # The lists first: a CA new to the cafile must have one when the broker reads both (else its clients
        # are refused); a CA gone from the cafile leaves a list the broker ignores.
        write_crl(self._identity, self.files.crl_file, listed)
        write_trust(self._identity, self.files.ca_file)
        signalled, what = signal_broker(self.files.pid_file)
        if signalled != "sent" or probe is None or self._broker is None:
            return signalled != "not sent", what
        in_force, how = probe.refused_by(self._broker, self._identity.trust_bundle_pem)
        return in_force, f"{what}; {how}"
