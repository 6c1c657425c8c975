"""The certificate keeper: every certificate the hub issues for a service stays current while it runs.

One keeper, one timer (``certificate_check_seconds``, hourly by default), checking at start and then on
the timer. Each certificate it keeps is issued again once less than a third of its life is left (30 days
or more before it ends), so an hourly check is never late:

- ``hub_mqtt``: the hub's own MQTT client certificate (``STATE/hub-mqtt.crt``, user ``hub.edgecollab``,
  365 days). The hub's MQTT session then reconnects with it. (It does not ask the broker to keep its
  session across the reconnect (an MQTT 5 session expiry): Mosquitto 2.0.11 corrupts its memory when
  it is sent SIGHUP while it holds a session for a client that is away; see ``edgehub.app``.)
- ``hub_https``: the API's server certificate (``STATE/hub-server.crt``, 90 days, see ``edgehub.tls``)
  when the API is served over HTTPS. The server's TLS context loads the new pair: new connections get it,
  connections already open keep theirs, no request is dropped.
- ``broker``: the broker's ``broker.crt`` and ``broker.key`` in the directory ``edgehub mosquitto-config
  --out`` wrote (found through ``STATE/broker-files.json``, ``BrokerFiles``). A new pair (same common name
  and names as the certificate there, 365 days) takes the old key's owner, group and mode, and the broker
  is sent SIGHUP. Tried against the real Mosquitto 2.0.11 (``tests/broker/test_broker_certificate_renewal.py``):
  on SIGHUP it reads ``certfile``, ``keyfile`` and ``cafile`` again (with ``crlfile``) for new connections,
  and connections made before stay up; it reads them as the account it switched to (at start too), and
  a key it cannot read then leaves its listener with no certificate at all (every handshake fails) until
  a reload that works. So the keeper first checks that the running broker's account can read the pair
  (``broker_cannot_read``; if not it renews nothing and warns at once: the next signal for the revocation
  list would do the same harm), then checks with a TLS handshake that the broker serves the new
  certificate, and if the broker stops answering handshakes it puts the old pair back, signals again and
  does not try again until the hub restarts. The swap and the signal hold
  ``BrokerRevocations.reload_lock``: a signal for the revocation list never finds a new key beside the
  old certificate.

Where the hub cannot renew the broker's certificate (no ``broker-files.json``: a broker configured on
another machine or in another container; a directory it cannot write; a key whose owner it cannot give a
new file) it warns, from ``WARN_DAYS`` before the certificate the broker serves ends, in ``/healthz``
(so ``edgectl get nodes``), ``edgectl describe hub`` and the web dashboard, naming the command to run.
The hub's CA (ten years) gets the same warning ``CA_WARN_DAYS`` (a year) ahead, naming ``edgehub ca rotate``.
A certificate the hub renews that is within ``WARN_DAYS`` of its end anyway (a renewal that keeps failing, a
broker that does not take its new one) is warned about too, with the reason.

``describe()`` is the inventory behind ``GET /api/v1/hub``: every certificate in the chain (CA, broker,
the hub's two, each node's) with its end and days left; ``gauges()`` feeds ``/metrics`` (as of the last
check: a scrape reads no store).

Decisions take the time from ``clock`` (an injected callable), so they are tested at any day of a
certificate's life. The certificates issued still carry the real time (``HubIdentity.issue``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgekit.mqtt import BrokerAddress
from edgekit.tasks import OwnedTask

from .broker_revocations import (
    BROKER_FILES,
    BROKER_PROCESS,
    BrokerFiles,
    Signalled,
    signal_broker,
)
from .broker_roles import HUB_USER
from .identity import SERVICE_CERT_DAYS, HubIdentity
from .settings import HubSettings
from .tls import (
    SERVER_CERT_FILE,
    SERVER_KEY_FILE,
    ensure_server_certificate,
    server_context,
)

logger = logging.getLogger(__name__)

# Warnings start this long before a certificate ends (the hub renews its own and the broker's a third of
# their life before, 30 days or more, so a warning means something is wrong, or is the operator's to do).
WARN_DAYS = 30
# The CA's warning starts a year ahead: rolling it over is planned work (three steps, docs/security.md), and
# what it signed stops working with it.
CA_WARN_DAYS = 365
# A TLS handshake with the broker (reading the certificate it serves) waits at most this long.
PROBE_TIMEOUT_SECONDS = 5.0
# After a signal, how long the keeper waits for the broker to serve its new certificate (it takes the
# signal within about 100 ms), and how often it looks.
RELOAD_SECONDS = 5.0
RELOAD_INTERVAL_SECONDS = 0.05
# Handshakes refused this long in a row after a signal: the broker did not load the new pair (a reload
# that works answers the next handshake).
REFUSED_SECONDS = 1.0
# What renews each certificate, as ``renewed_by`` says it.
BY_HUB = "hub"
BY_AGENT = "agent"
CA_ROTATE = "edgehub ca rotate"
# The inventory's name of a trusted CA that does not issue (the other CA during a rotation).
TRUSTED_CA = "ca_trusted"

Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def renewal_due(certificate: x509.Certificate, now: dt.datetime) -> bool:
    """True once less than a third of the certificate's life is left (the rule for every certificate the
    hub renews, and the agent's for node certificates)."""
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    return now >= end - (end - start) / 3


def warn_due(not_after: dt.datetime, now: dt.datetime, *, days: float = WARN_DAYS) -> bool:
    """True from ``days`` before ``not_after`` on (and after it)."""
    return now >= not_after - dt.timedelta(days=days)


def common_name(certificate: x509.Certificate) -> str:
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else certificate.subject.rfc4514_string()


def subject_names(certificate: x509.Certificate) -> list[str]:
    """The certificate's subject alternative names as ``HubIdentity.issue`` takes them (DNS names, then IPs)."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName), *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]


@dataclass(frozen=True, slots=True)
class Held:
    """One certificate as the inventory shows it."""

    name: str  # "ca", "broker", "hub_mqtt", "hub_https", or "node/NAME"
    certificate: x509.Certificate
    renewed_by: str  # "hub", "agent", or "operator: COMMAND"
    source: str  # the file, or where it was served

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc

    def days_left(self, now: dt.datetime) -> float:
        return (self.not_after - now).total_seconds() / 86400

    def view(self, now: dt.datetime) -> dict[str, Any]:
        return {"name": self.name, "subject": common_name(self.certificate),
                "serial": format(self.certificate.serial_number, "x"),
                "not_before": _iso(self.certificate.not_valid_before_utc), "not_after": _iso(self.not_after),
                "days_left": round(self.days_left(now), 1), "renewed_by": self.renewed_by, "source": self.source}


@dataclass(frozen=True, slots=True)
class NodeExpiries:
    """The node certificates the store holds, summed up (what a gauge may show of 10,000 nodes)."""

    count: int = 0
    soonest: Held | None = None
    expiring: int = 0  # within WARN_DAYS, not yet expired
    expired: int = 0

    @classmethod
    def of(cls, held: Sequence[Held], now: dt.datetime) -> NodeExpiries:
        soonest = min(held, key=lambda h: h.not_after, default=None)
        expired = sum(1 for h in held if h.not_after <= now)
        expiring = sum(1 for h in held if h.not_after > now and warn_due(h.not_after, now))
        return cls(count=len(held), soonest=soonest, expiring=expiring, expired=expired)

    def view(self, now: dt.datetime) -> dict[str, Any]:
        return {"certificates": self.count, "soonest": self.soonest.view(now) if self.soonest else None,
                f"expiring_within_{WARN_DAYS}_days": self.expiring, "expired": self.expired}


def node_certificates(nodes: Sequence[tuple[str, str]]) -> list[Held]:
    """(name, PEM) of each node the store holds a certificate for, as inventory entries (a PEM that does not
    load is left out: the store logs that where it matters). Blocking (parsing): call it from a thread."""
    held = []
    for name, pem in nodes:
        if not pem:
            continue  # reset or revoked: no certificate
        try:
            certificate = x509.load_pem_x509_certificate(pem.encode())
        except ValueError:
            continue
        held.append(Held(f"node/{name}", certificate, BY_AGENT, "the hub's store"))
    held.sort(key=lambda h: h.not_after)
    return held


# --- the broker's certificate ------------------------------------------------------------------------------


def broker_renewal_blocker(files: BrokerFiles | None, state_dir: Path) -> str | None:
    """Why the hub cannot renew the broker's certificate itself, in words; None when it can: it knows the
    directory, the pair is there, and it can put a new file there with the key's owner and group (tried:
    a file made, given them, removed). Blocking (files): call it from a thread."""
    if files is None:
        return (f"it does not know the broker's directory ({state_dir / BROKER_FILES} is missing: "
                "'edgehub mosquitto-config' did not write this broker with this state directory)")
    cert_file, key_file = files.certificate_pair
    for path in (cert_file, key_file):
        if not path.is_file():
            return f"{path} is missing"
    for path in (key_file, cert_file):
        owner = path.stat()
        trial = path.with_name(f".{path.name}.trial-{os.getpid()}")
        try:
            fd = os.open(trial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.fchown(fd, owner.st_uid, owner.st_gid)
            finally:
                os.close(fd)
                trial.unlink(missing_ok=True)
        except PermissionError as exc:
            return (f"it may not write {path.parent} or give a file there the owner of {path.name} (uid "
                    f"{owner.st_uid}, gid {owner.st_gid}) ({exc.strerror}): run the hub as root or as the broker's "
                    "account")
        except OSError as exc:
            return f"it cannot write {path.parent} ({exc.strerror or exc})"
    return None


def _proc_ids(status: str, field_name: str) -> list[int]:
    line = next((ln for ln in status.splitlines() if ln.startswith(f"{field_name}:")), f"{field_name}:")
    return [int(v) for v in line.split(":", 1)[1].split()]


def broker_cannot_read(files: BrokerFiles | None) -> str | None:
    """When the broker runs, whether its account can read its certificate and key, in words (None: it can,
    or the hub cannot tell). Mosquitto reads both again on every SIGHUP, as the account it switched to, and
    a file it cannot read then leaves it refusing every TLS handshake. Blocking (files)."""
    if files is None:
        return None
    try:
        pid = int(files.pid_file.read_text().strip())
        if Path(f"/proc/{pid}/comm").read_text().strip() != BROKER_PROCESS:
            return None
        status = Path(f"/proc/{pid}/status").read_text()
    except (OSError, ValueError):
        return None  # not running (it reads them when it starts), or not the broker
    uid, gid = _proc_ids(status, "Uid")[3], _proc_ids(status, "Gid")[3]  # the ids files are opened with
    groups = {gid, *_proc_ids(status, "Groups")}
    if uid == 0:
        return None
    for path in files.certificate_pair:
        try:
            info = path.stat()
        except OSError:
            continue  # broker_renewal_blocker says it is missing
        mode = info.st_mode
        readable = (mode & 0o400 if info.st_uid == uid else mode & 0o040 if info.st_gid in groups else mode & 0o004)
        if not readable:
            return (f"the broker (process {pid}, uid {uid}) cannot read {path} (owner uid {info.st_uid}, gid "
                    f"{info.st_gid}, mode {mode & 0o777:04o}): at its next SIGHUP (the hub sends one whenever its "
                    "revocation list changes) or restart it would refuse every connection. Give the file to its "
                    f"account (chown {uid}:{gid} {path})")
    return None


def _replace_owned(path: Path, data: bytes, *, mode: int, uid: int, gid: int) -> None:
    """Replace ``path`` whole with ``data``, owned by ``uid``:``gid`` with ``mode`` from its first byte on
    (the broker, which may run as another account, reads it on a signal)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@dataclass(frozen=True, slots=True)
class _File:
    """A file's bytes with its owner and mode."""

    data: bytes
    uid: int
    gid: int
    mode: int

    @classmethod
    def read(cls, path: Path) -> _File:
        info = path.stat()
        return cls(data=path.read_bytes(), uid=info.st_uid, gid=info.st_gid, mode=info.st_mode & 0o777)

    def like(self, data: bytes) -> _File:
        """Other bytes, with this file's owner and mode."""
        return _File(data=data, uid=self.uid, gid=self.gid, mode=self.mode)

    def write(self, path: Path) -> None:
        _replace_owned(path, self.data, mode=self.mode, uid=self.uid, gid=self.gid)


@dataclass(frozen=True, slots=True)
class _Pair:
    """The broker's certificate and key as its files hold them."""

    cert: _File
    key: _File

    @classmethod
    def read(cls, cert_file: Path, key_file: Path) -> _Pair:
        return cls(cert=_File.read(cert_file), key=_File.read(key_file))

    def write(self, cert_file: Path, key_file: Path) -> None:
        # The key first, as HubIdentity.ensure_certificate: a crash between the two leaves a pair that does
        # not match, which is due at the next check (and the broker is signalled only after both).
        self.key.write(key_file)
        self.cert.write(cert_file)


def issue_broker_pair(identity: HubIdentity, current: x509.Certificate, old: _Pair) -> tuple[_Pair, x509.Certificate]:
    """A new key and certificate for the broker: the common name and names of ``current``, each file with
    the owner and mode of the one in ``old``."""
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = identity.issue(key.public_key(), common_name(current), usage="server",
                                 lifetime=dt.timedelta(days=SERVICE_CERT_DAYS), names=subject_names(current))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return _Pair(cert=old.cert.like(certificate.public_bytes(serialization.Encoding.PEM)),
                 key=old.key.like(pem)), certificate


class Unreachable(Exception):
    """No TCP connection to the broker (it is down): it reads its files when it starts."""


def served_certificate(broker: BrokerAddress, client: tuple[Path, Path] | None = None, *,
                       timeout: float = PROBE_TIMEOUT_SECONDS) -> x509.Certificate:
    """The certificate the broker serves, read from a TLS handshake that trusts nothing (it only reads what
    is served). Unreachable when no TCP connection is made; ssl.SSLError when the broker makes none.
    Blocking: call it from a thread."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if client is not None:
        with contextlib.suppress(OSError, ssl.SSLError):  # shown only if it loads: TLS 1.3 serves without one
            context.load_cert_chain(*client)
    try:
        raw = socket.create_connection((broker.host, broker.port), timeout=timeout)
    except OSError as exc:
        raise Unreachable(f"the broker at {broker} cannot be reached ({exc})") from exc
    with raw, context.wrap_socket(raw, server_hostname=broker.host) as tls:
        der = tls.getpeercert(binary_form=True)
    if der is None:
        raise ssl.SSLError(f"the broker at {broker} served no certificate")
    return x509.load_der_x509_certificate(der)


@dataclass(slots=True)
class _BrokerState:
    """What the keeper last learnt of the broker's certificate."""

    served: x509.Certificate | None = None  # from a handshake at the last check
    file: x509.Certificate | None = None  # broker.crt, when the hub knows the directory
    blocker: str | None = None  # why the hub cannot renew it
    trouble: str = ""  # what went wrong with the last renewal or signal
    # The broker refused handshakes with a new pair and got its old one back: not tried again (each try
    # costs the fleet seconds of refused connections) until the hub restarts; warned about at once.
    refused: str = ""
    # The broker's account cannot read its pair: no renewal is signalled; warned about at once.
    unreadable: str = ""


# --- the keeper ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class KeeperHooks:
    """What the keeper acts through besides files: all optional (a hub without a broker with identities,
    a test)."""

    # (name, PEM) of every node certificate the store holds.
    node_certificates: Callable[[], Awaitable[list[tuple[str, str]]]] | None = None
    # Called after the hub's MQTT certificate was issued again: the session reconnects with it.
    hub_mqtt_renewed: Callable[[], Awaitable[None]] | None = None
    # Held while the broker's pair is replaced and the broker signalled (BrokerRevocations.reload_lock).
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # The certificate the broker serves (default: a TLS handshake with mqtt_url).
    served: Callable[[], x509.Certificate] | None = None
    # Why the hub cannot renew the broker's certificate (default: broker_renewal_blocker).
    blocker: Callable[[BrokerFiles | None], str | None] | None = None
    # Sends the broker SIGHUP (default: signal_broker with the pid file).
    signal: Callable[[Path], tuple[Signalled, str]] = signal_broker


class CertificateKeeper:
    """Renews the certificates the hub issues for services and keeps their inventory. An async context
    manager: entering it checks once (raising if the hub's own certificates cannot be issued: the hub
    cannot run without them), then a task it owns checks every ``interval`` seconds until it is left."""

    def __init__(self, settings: HubSettings, identity: HubIdentity, *, broker_files: BrokerFiles | None,
                 serve_https: bool, hooks: KeeperHooks | None = None, clock: Clock = utc_now,
                 interval: float | None = None) -> None:
        self._settings = settings
        self._identity = identity
        self._files = broker_files
        self._hooks = hooks or KeeperHooks()
        self._clock = clock
        self.interval = settings.certificate_check_seconds if interval is None else interval
        self._https = serve_https
        self._broker_address = BrokerAddress.parse(settings.mqtt_url)
        self._task = OwnedTask("certificate-keeper")
        self._broker = _BrokerState()
        self._troubles: dict[str, str] = {}  # certificate name -> why its last renewal failed
        self._nodes: list[Held] = []
        self.tls_context: ssl.SSLContext | None = None
        self.warnings: list[str] = []
        self.checked_at: dt.datetime | None = None
        self.checks = 0
        self.renewals: dict[str, int] = {}  # certificate name -> renewals since start (tests, logs)

    async def __aenter__(self) -> Self:
        await self.start()
        self._task.start(self._run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._task.stop()

    async def start(self) -> None:
        """The check at start: the hub's own certificates must be there (errors raised), then the rest."""
        now = self._clock()
        if self._settings.broker_identities:
            await asyncio.to_thread(self._ensure_hub_mqtt, now)
        if self._https:
            await asyncio.to_thread(ensure_server_certificate, self._settings, self._identity, now=now)
            self.tls_context = await asyncio.to_thread(server_context, self._settings.state_dir)
        await self.check(own=False)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except Exception:  # a bug: logged, and the next check tries again
                logger.exception("The certificate check failed; trying again in %.0f s", self.interval)

    async def check(self, *, own: bool = True) -> None:
        """Renew what is due, then say what an operator should know (``warnings``). ``own``: the hub's own
        certificates too (the check at start has just issued them)."""
        now = self._clock()
        if own:
            if self._settings.broker_identities:
                await self._renew("hub_mqtt", self._renew_hub_mqtt, now)
            if self._https:
                await self._renew("hub_https", self._renew_hub_https, now)
        if self._settings.broker_identities:
            await self._check_broker(now)
        await self._refresh_nodes()
        self.warnings = await asyncio.to_thread(self._warnings, now)
        self.checked_at = now
        self.checks += 1

    async def _renew(self, name: str, renew: Callable[[dt.datetime], Awaitable[bool]], now: dt.datetime) -> None:
        try:
            if await renew(now):
                self.renewals[name] = self.renewals.get(name, 0) + 1
            self._troubles.pop(name, None)
        except (OSError, ValueError, ssl.SSLError) as exc:
            self._troubles[name] = f"{type(exc).__name__}: {exc}"
            logger.exception("Could not renew the %s certificate; trying again in %.0f s", name, self.interval)

    # --- the hub's own ---

    def _ensure_hub_mqtt(self, now: dt.datetime) -> bool:
        settings = self._settings
        why = self._identity.ensure_certificate(settings.mqtt_key_path, settings.mqtt_cert_path, HUB_USER,
                                                usage="client", now=now)
        if why is not None:
            logger.info("Issued the hub's MQTT client certificate %s (%s), valid %d days", settings.mqtt_cert_path,
                        why, SERVICE_CERT_DAYS)
        return why is not None

    async def _renew_hub_mqtt(self, now: dt.datetime) -> bool:
        if not await asyncio.to_thread(self._ensure_hub_mqtt, now):
            return False
        if self._hooks.hub_mqtt_renewed is not None:
            # The session reads its certificate files on each connect; the broker keeps its session meanwhile.
            await self._hooks.hub_mqtt_renewed()
        return True

    async def _renew_hub_https(self, now: dt.datetime) -> bool:
        state = self._settings.state_dir
        if not await asyncio.to_thread(ensure_server_certificate, self._settings, self._identity, now=now):
            return False
        if self.tls_context is not None:
            # New connections get the new certificate; open ones keep theirs.
            await asyncio.to_thread(self.tls_context.load_cert_chain, state / SERVER_CERT_FILE,
                                    state / SERVER_KEY_FILE)
        return True

    # --- the broker's ---

    def _served(self) -> x509.Certificate:
        if self._hooks.served is not None:
            return self._hooks.served()
        client = (self._settings.mqtt_cert_path, self._settings.mqtt_key_path)
        return served_certificate(self._broker_address, client)

    def _blocker(self) -> str | None:
        if self._hooks.blocker is not None:
            return self._hooks.blocker(self._files)
        return broker_renewal_blocker(self._files, self._settings.state_dir)

    def _read_broker_file(self) -> x509.Certificate | None:
        if self._files is None:
            return None
        cert_file, _ = self._files.certificate_pair
        try:
            return x509.load_pem_x509_certificate(cert_file.read_bytes())
        except (OSError, ValueError) as exc:
            logger.warning("The broker's certificate %s cannot be read (%s)", cert_file, exc)
            return None

    async def _check_broker(self, now: dt.datetime) -> None:
        state = self._broker
        try:
            state.served = await asyncio.to_thread(self._served)
        except (Unreachable, OSError, ssl.SSLError, ValueError) as exc:
            logger.debug("Could not read the certificate the broker serves: %s", exc)
            state.served = None
        state.file = await asyncio.to_thread(self._read_broker_file)
        unreadable = await asyncio.to_thread(broker_cannot_read, self._files)
        state.unreadable = unreadable or ""
        state.blocker = state.refused or state.unreadable or await asyncio.to_thread(self._blocker)
        # Due by its dates, or issued by a CA that no longer issues (a CA rotation's switch: edgehub.ca_rotation).
        due = state.file is not None and (renewal_due(state.file, now)
                                          or not self._identity.cas.issuing.issued(state.file))
        if state.file is None or state.blocker is not None or not due:
            if state.served is not None and state.file is not None and state.served == state.file:
                state.trouble = ""
            return
        try:
            async with self._hooks.reload_lock:
                state.trouble = await asyncio.to_thread(self._renew_broker, state.file,
                                                        probed=state.served is not None)
        except (OSError, ValueError) as exc:
            state.trouble = f"renewing it failed: {type(exc).__name__}: {exc}"
            logger.exception("Could not renew the broker's certificate; trying again in %.0f s", self.interval)
        state.file = await asyncio.to_thread(self._read_broker_file)

    def _renew_broker(self, current: x509.Certificate, *, probed: bool) -> str:
        """Issue the broker a new pair, signal it and check it serves the new certificate; what went wrong
        ("" if nothing). ``probed``: a handshake with the broker worked before (so one that fails after the
        signal is the broker's doing). Blocking: runs in a thread, under the reload lock."""
        assert self._files is not None
        cert_file, key_file = self._files.certificate_pair
        old = _Pair.read(cert_file, key_file)
        pair, issued = issue_broker_pair(self._identity, current, old)
        pair.write(cert_file, key_file)
        self.renewals["broker"] = self.renewals.get("broker", 0) + 1
        logger.info("Issued the broker a new certificate %s (serial %x, valid until %s, for %s), replacing serial "
                    "%x, which ends %s", cert_file, issued.serial_number, _iso(issued.not_valid_after_utc),
                    ", ".join(subject_names(issued)), current.serial_number, _iso(current.not_valid_after_utc))
        signalled, what = self._hooks.signal(self._files.pid_file)
        if signalled == "not running":
            logger.info("The broker reads its new certificate when it starts: %s", what)
            return ""
        if signalled == "not sent":
            logger.warning("The broker keeps serving its old certificate until it is signalled or restarted: %s",
                           what)
            return f"the broker was not told to load its new certificate: {what}"
        served, how = self._wait_served(issued.serial_number)
        if served:
            logger.info("The broker serves its new certificate (serial %x)", issued.serial_number)
            return ""
        if probed and how.startswith("refused"):
            # The broker took the signal but not the pair (a key it cannot read): its listener now has no
            # certificate. The old pair (still valid) brings it back until the cause is fixed.
            logger.error("The broker %s after it was told to load its new certificate; putting the old pair back "
                         "and signalling it again", how)
            old.write(cert_file, key_file)
            self._hooks.signal(self._files.pid_file)
            back, _ = self._wait_served(current.serial_number)
            self._broker.refused = (
                f"the broker {how} after it was told to load the new certificate the hub issued it on "
                f"{_iso(self._clock())}, so the old one was put back{'' if back else ' (and it does not answer yet)'}"
                "; the hub does not try again until it restarts: check the broker's log (can it read "
                f"{key_file}?)")
            return self._broker.refused
        logger.warning("The broker was signalled but %s", how)
        return f"the broker was signalled but {how}"

    def _wait_served(self, serial: int) -> tuple[bool, str]:
        """Handshake with the broker until it serves the certificate ``serial`` (RELOAD_SECONDS at most, or
        REFUSED_SECONDS of refused handshakes in a row): (whether it did, what it did otherwise)."""
        deadline = time.monotonic() + RELOAD_SECONDS
        refused_since: float | None = None
        while True:
            try:
                served = self._served()
            except Unreachable as exc:
                return False, f"cannot be reached ({exc}); it reads the new certificate when it starts"
            except (OSError, ssl.SSLError) as exc:
                how = f"refused the TLS handshake ({exc})"
                refused_since = refused_since or time.monotonic()
                if time.monotonic() - refused_since >= REFUSED_SECONDS:
                    return False, how
            else:
                if served.serial_number == serial:
                    self._broker.served = served
                    return True, ""
                how, refused_since = "still serves its old certificate", None
            if time.monotonic() >= deadline:
                return False, how + f" {RELOAD_SECONDS:.0f} s after it was signalled"
            time.sleep(RELOAD_INTERVAL_SECONDS)

    # --- inventory and warnings ---

    async def _refresh_nodes(self) -> None:
        if self._hooks.node_certificates is None:
            return
        try:
            nodes = await self._hooks.node_certificates()
        except Exception:  # the store is down: the inventory keeps what it had
            logger.exception("Could not read the node certificates for the inventory")
            return
        self._nodes = await asyncio.to_thread(node_certificates, nodes)

    def _broker_renewed_by(self) -> str:
        if self._broker.blocker is None and self._files is not None:
            return BY_HUB
        return f"operator: {self.mosquitto_config_command()}"

    def held(self) -> list[Held]:
        """The CA, the broker's, and the hub's own certificates, as last read. Blocking (files)."""
        settings = self._settings
        cas = self._identity.cas
        # "ca" is the CA that issues; during a CA rotation the other one trusted is "ca_trusted".
        held = [Held("ca" if ca.fingerprint == cas.issuing.fingerprint else TRUSTED_CA, ca.certificate,
                     f"operator: {CA_ROTATE}", str(settings.ca_certificate_path)) for ca in cas.trusted]
        held.sort(key=lambda h: h.name != "ca")
        broker = self._broker.served or self._broker.file
        if broker is not None:
            source = (f"served at {self._broker_address}" if self._broker.served is not None
                      else str(self._files.certificate_pair[0]) if self._files else "")
            held.append(Held("broker", broker, self._broker_renewed_by(), source))
        own = [("hub_mqtt", settings.mqtt_cert_path)] if settings.broker_identities else []
        if self._https:
            own.append(("hub_https", settings.state_dir / SERVER_CERT_FILE))
        for name, path in own:
            try:
                held.append(Held(name, x509.load_pem_x509_certificate(path.read_bytes()), BY_HUB, str(path)))
            except (OSError, ValueError) as exc:
                logger.warning("The %s certificate %s cannot be read (%s)", name, path, exc)
        return held

    def mosquitto_config_command(self) -> str:
        """The command that issues the broker a new certificate, as far as the hub can tell its arguments."""
        directory = str(self._files.directory) if self._files is not None else "BROKER_DIR"
        host = self._broker_address.host
        shown = self._broker.served or self._broker.file
        names = [n for n in subject_names(shown) if n not in ("127.0.0.1", "::1", "localhost", host)] if shown else []
        listen = f"[{host}]" if ":" in host else host
        extra = "".join(f" --name {n}" for n in names)
        return (f"edgehub mosquitto-config --state {self._settings.state_dir} --listen "
                f"{listen}:{self._broker_address.port} --out {directory}{extra}")

    def _warnings(self, now: dt.datetime) -> list[str]:
        warnings = []
        if self._broker.unreadable:
            warnings.append(f"The broker's certificate cannot be renewed: {self._broker.unreadable}")
        if self._broker.refused:
            warnings.append(f"The broker's certificate was not renewed: {self._broker.refused}. Once the cause is "
                            f"fixed, issue it one with '{self.mosquitto_config_command()}' and have the broker load "
                            f"it: {self._restart_hint()}")
        for held in self.held():
            said = self._broker.refused or self._broker.unreadable
            ahead = CA_WARN_DAYS if held.name in ("ca", TRUSTED_CA) else WARN_DAYS
            if not warn_due(held.not_after, now, days=ahead) or (held.name == "broker" and said):
                continue
            days = held.days_left(now)
            whole = int(days)  # days left, counted as a calendar does: 29.5 days are 29 full days
            when = (f"expired on {held.not_after:%Y-%m-%d}" if days <= 0 else
                    f"expires on {held.not_after:%Y-%m-%d} (in {whole} day{'' if whole == 1 else 's'})")
            serial = format(held.certificate.serial_number, "x")[:16]
            if held.name in ("ca", TRUSTED_CA):
                warnings.append(f"The hub's CA certificate ({held.source}, serial {serial}) {when}: every "
                                f"certificate it issued stops working with it. Roll it over with '{CA_ROTATE}' "
                                "(docs/security.md)")
            elif held.name == "broker":
                warnings.append(self._broker_warning(serial, when))
            else:
                why = self._troubles.get(held.name, "the hub has not renewed it")
                warnings.append(f"The hub's {held.name} certificate ({held.source}, serial {serial}) {when} and "
                                f"the hub could not renew it ({why}); see its log")
        return warnings

    def _restart_hint(self) -> str:
        if self._files is not None:
            return f"kill -HUP $(cat {self._files.pid_file}), or restart it"
        return "send it SIGHUP or restart it"

    def _broker_warning(self, serial: str, when: str) -> str:
        head = f"The broker's certificate (serial {serial}) {when}"
        restart = self._restart_hint()
        if self._broker.blocker is not None:
            return (f"{head} and the hub cannot renew it: {self._broker.blocker}. Issue a new one with "
                    f"'{self.mosquitto_config_command()}' (the broker's listen address, its directory and its "
                    f"names), then have the broker load it: {restart}")
        trouble = self._broker.trouble or "the broker does not serve the one the hub issued"
        return f"{head}: {trouble}. Have the broker load its certificate: {restart}"

    # --- views ---

    def describe(self, now: dt.datetime | None = None) -> dict[str, Any]:
        """The inventory (``GET /api/v1/hub``). Blocking (files): call it from a thread."""
        now = now or self._clock()
        held = self.held()
        return {
            "checked_at": _iso(self.checked_at) if self.checked_at else None,
            "check_interval_seconds": self.interval,
            "certificates": [h.view(now) for h in [*held, *self._nodes]],
            "nodes": NodeExpiries.of(self._nodes, now).view(now),
            "warnings": list(self.warnings),
        }

    async def describe_now(self) -> dict[str, Any]:
        """The inventory with the node certificates read from the store now."""
        await self._refresh_nodes()
        return await asyncio.to_thread(self.describe)

    def gauges(self) -> tuple[dict[str, float], NodeExpiries]:
        """Each kept certificate's end (UNIX seconds) by name, and the node certificates' summary, as of the
        last check (``/metrics``). Blocking (files)."""
        now = self._clock()
        return ({h.name: h.not_after.timestamp() for h in self.held()}, NodeExpiries.of(self._nodes, now))
