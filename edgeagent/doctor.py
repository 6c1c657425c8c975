"""``edgeagent doctor``: is this node able to run the agent? One line per check.

The checks: the identity files from join are readable and the node's keys are
private; the node's clock against the hub's (its offset measured as the agent
measures it, ``edgeagent.clock``; a warning when it is off by more than a
minute, which the agent corrects for); the node's certificate is for that key,
from the hub's CA, and not expired by the hub's time (a warning once its
renewal is overdue: the agent renews it when less than a third of its lifetime
is left); the broker the agent would use accepts connections; then the
runtime's own preflight (for podman: podman answers, its storage root is
writable, its OCI runtime is there, and a pod can be created, started and
removed). The runtime part is exactly what the agent runs at start and after a
failed apply, and what the test suite runs once before any podman test.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import ssl
import stat
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edgekit.mqtt import BrokerAddress, TlsIdentity
from edgeprotocol.enrollment import issuer_among, renew_after

from .clock import ClockError, HubClock
from .identity import BUNDLE_KEY_FILE, CERT_FILE, IDENTITY_FILE, KEY_FILE, JoinError, NodeIdentity
from .runtime import PreflightCheck, Runtime

# A broker that does not accept a TCP connection in this time is unreachable
# for the agent too (its MQTT connect waits no longer).
CONNECT_TIMEOUT_SECONDS = 5.0


def identity_checks(state_dir: Path, *, clock: HubClock | None = None
                    ) -> tuple[tuple[PreflightCheck, ...], NodeIdentity | None]:
    """Checks of the files join wrote, and the identity when it loads; dates by ``clock`` (default: as
    ``STATE/clock.json`` says)."""
    checks: list[PreflightCheck] = []
    identity: NodeIdentity | None = None
    try:
        identity = NodeIdentity.load(state_dir)
        checks.append(PreflightCheck("identity", True, f"node {identity.node} in pool {identity.pool} "
                                                       f"({state_dir / IDENTITY_FILE})"))
    except (JoinError, TypeError, OSError) as exc:
        checks.append(PreflightCheck("identity", False, f"{exc}" if isinstance(exc, JoinError)
                                     else f"{state_dir / IDENTITY_FILE} is unreadable: {exc}"))
    checks.append(_private_key_check("node-key", state_dir / KEY_FILE, "node's private key"))
    bundle_key = state_dir / BUNDLE_KEY_FILE
    if bundle_key.exists():
        checks.append(_private_key_check("bundle-key", bundle_key, "key the node's bundles are encrypted to"))
    else:
        # Not a failure: the node works, and its hub sends its bundles plain.
        checks.append(PreflightCheck("bundle-key", True, f"none ({bundle_key}): the node joined before bundles were "
                                                         "encrypted, so they arrive unencrypted; join again to "
                                                         "encrypt them"))
    checks.append(certificate_check(state_dir, identity, now=(clock or HubClock(state_dir)).now_utc()))
    return tuple(checks), identity


def _iso(moment: dt.datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def certificate_check(state_dir: Path, identity: NodeIdentity | None, *,
                      now: dt.datetime | None = None) -> PreflightCheck:
    """The node certificate: for the node's key, from the pinned CA, not expired (warned once renewal is overdue);
    ``now`` by default the hub's time as this node last measured it."""
    path = state_dir / CERT_FILE
    now = now or HubClock(state_dir).now_utc()
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        return PreflightCheck("node-cert", False, f"{path} not found: join again")
    except (OSError, ValueError) as exc:
        return PreflightCheck("node-cert", False, f"{path} is unreadable: {exc}")
    try:
        key = serialization.load_pem_private_key((state_dir / KEY_FILE).read_bytes(), password=None)
        matches = key.public_key() == cert.public_key()
    except (OSError, ValueError, TypeError):
        matches = True  # the node-key check says what is wrong with the key
    if not matches:
        return PreflightCheck("node-cert", False,
                              f"{path} is not the certificate of {state_dir / KEY_FILE}: join again")
    other_ca = False
    if identity is not None and identity.ca_certificate:
        # The hub's CAs: one, or two during a CA rotation (edgeagent.trust).
        try:
            cas = x509.load_pem_x509_certificates(identity.ca_certificate.encode())
        except ValueError as exc:
            return PreflightCheck("node-cert", False, f"the hub CAs in {IDENTITY_FILE} cannot be read ({exc}): "
                                                      "join again")
        issuer = issuer_among(cert, cas)
        if issuer is None:
            return PreflightCheck("node-cert", False, f"{path} is not issued by a hub CA in {IDENTITY_FILE}: if the "
                                                      "hub retired its CA (edgehub ca rotate finish --force), "
                                                      "'edgeagent run' renews it by itself; else join again")
        fingerprint = hashlib.sha256(issuer.public_bytes(serialization.Encoding.DER)).hexdigest()
        other_ca = bool(identity.issuing_ca) and fingerprint != identity.issuing_ca
    expires, due = cert.not_valid_after_utc, renew_after(cert)
    name = identity.node if identity else "NAME"
    if now >= expires:
        return PreflightCheck("node-cert", False, f"expired at {_iso(expires)}: the broker refuses it; 'edgeagent run' "
                                                  "renews it before it connects, which the hub takes until its "
                                                  "offline horizon (offline_horizon_days, 400 by default) after the "
                                                  "expiry; past that an operator frees the name (edgectl node reset "
                                                  f"{name}) and the node joins again")
    serial = f"serial {cert.serial_number:x}"
    if other_ca:
        return PreflightCheck("node-cert", True, f"issued by a hub CA that no longer issues (a CA rotation); "
                                                 f"'edgeagent run' renews it at its next check ({serial})",
                                                 warning=True)
    if now >= due:
        return PreflightCheck("node-cert", True,
                              f"renewal overdue since {_iso(due)}; expires {_iso(expires)} ({serial}): "
                              "is 'edgeagent run' running, and can it reach the hub?", warning=True)
    return PreflightCheck("node-cert", True, f"valid until {_iso(expires)}, renewed from {_iso(due)} ({serial})")


def _private_key_check(name: str, key: Path, what: str) -> PreflightCheck:
    try:
        mode = stat.S_IMODE(key.stat().st_mode)
        with key.open("rb"):
            pass
    except OSError as exc:
        return PreflightCheck(name, False, f"{key} is unreadable: {exc.strerror or exc}")
    if mode & 0o077:
        return PreflightCheck(name, False, f"{key} has mode {mode:04o}: others may read the {what}; "
                                           f"run: chmod 600 {key}")
    return PreflightCheck(name, True, f"{key} is private (mode {mode:04o})")


async def broker_check(mqtt_url: str, tls: TlsIdentity | None) -> PreflightCheck:
    """Whether the broker at ``mqtt_url`` accepts a connection now; for a broker with identities, whether
    the TLS handshake with the node's certificate succeeds and the broker's certificate is the hub CA's."""
    try:
        broker = BrokerAddress.parse(mqtt_url)
        broker.require_identities()
    except ValueError as exc:
        return PreflightCheck("mqtt", False, str(exc))
    where = f"broker {broker.host}:{broker.port}"
    if broker.tls and tls is None:
        return PreflightCheck("mqtt", False, f"{mqtt_url} is a broker with identities and this node has no "
                                             "certificate from the hub yet: join first")
    try:
        context = await asyncio.to_thread(tls.context) if broker.tls and tls else None
    except (OSError, ssl.SSLError, ValueError) as exc:
        return PreflightCheck("mqtt", False, f"cannot load the node's certificate and key for {mqtt_url}: {exc}")
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(broker.host, broker.port, ssl=context,
                                    server_hostname=broker.host if context else None),
            CONNECT_TIMEOUT_SECONDS)
    except TimeoutError:
        return PreflightCheck("mqtt", False, f"{where} did not answer within {CONNECT_TIMEOUT_SECONDS:.0f} s "
                                             f"({mqtt_url})")
    except ssl.SSLCertVerificationError as exc:
        return PreflightCheck("mqtt", False, f"{where} shows a certificate the hub's CA did not issue for that "
                                             f"address: {exc.verify_message} ({mqtt_url})")
    except (OSError, ssl.SSLError) as exc:
        return PreflightCheck("mqtt", False, f"{where} is unreachable: {getattr(exc, 'strerror', None) or exc} "
                                             f"({mqtt_url})")
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()
    how = "TLS with the node's certificate" if context else "plain TCP (anonymous broker, loopback only)"
    return PreflightCheck("mqtt", True, f"{where} accepts connections: {how} ({mqtt_url})")


async def clock_check(state_dir: Path, clock: HubClock) -> PreflightCheck | None:
    """The node's clock against the hub's, measured now as the agent measures it (and kept, as the agent keeps
    it); None when there is no identity to ask the hub with (the identity check says why)."""
    try:
        identity = NodeIdentity.load(state_dir)
    except (JoinError, TypeError, OSError):
        return None
    try:
        await clock.refresh(identity)
    except (ClockError, TimeoutError) as exc:
        record = clock.record
        measured_at = _iso(dt.datetime.fromtimestamp(record.hub_time, dt.UTC)) if record else ""
        using = (f"the offset of {record.offset_seconds:+.1f} s measured at {measured_at}"
                 if record else "the node's own clock")
        return PreflightCheck("clock", True, f"could not ask the hub for its time ({exc or 'timed out'}); the agent "
                                             f"uses {using}", warning=True)
    if clock.conditions:
        return PreflightCheck("clock", True, clock.conditions[0].message, warning=True)
    return PreflightCheck("clock", True, f"within {clock.threshold:.0f} s of the hub's "
                                         f"(offset {clock.offset:+.1f} s)")


async def diagnose(state_dir: Path, runtime: Runtime, *, mqtt_url: str | None = None) -> tuple[PreflightCheck, ...]:
    """Every check, in order: identity files, the clock, broker, then the runtime's preflight."""
    clock = HubClock(state_dir)
    measured = await clock_check(state_dir, clock)  # first: the certificate's dates are judged by its time
    checks, identity = identity_checks(state_dir, clock=clock)
    if measured is not None:
        checks = (*checks, measured)
    url = mqtt_url or (identity.mqtt_url if identity else None)
    if url is None:
        broker = PreflightCheck("mqtt", False, "no broker URL: join first, or pass --mqtt")
    else:
        try:
            tls = identity.broker_tls(state_dir, url, adjust=clock.adjust_tls) if identity else None
        except ValueError:
            tls = None  # broker_check names what is wrong with the URL
        broker = await broker_check(url, tls)
    return (*checks, broker, *await runtime.preflight())


def report(checks: Sequence[PreflightCheck]) -> str:
    """One line per check: ``ok``, ``WARN`` (passed, but look at it) or ``FAILED``, its name, what was found or why."""
    width = max((len(c.name) for c in checks), default=0)
    return "\n".join(f"{('WARN' if c.warning else 'ok') if c.ok else 'FAILED':6}  {c.name:{width}}  {c.detail}"
                     for c in checks)
