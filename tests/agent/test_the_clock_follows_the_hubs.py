"""The node's clock, corrected by the hub's signed time (``edgeagent.clock``), and TLS dates checked by it.

A small hub stand-in on 127.0.0.1 answers ``GET /api/v1/time`` as the hub
does (``edgeprotocol.hub_facts``, signed by a key the node "pinned"), with its
time moved as a test says: a year ahead of this machine's is a node whose
clock is a year behind. TLS servers on 127.0.0.1 show certificates valid only
in the past or only in the future: OpenSSL refuses them by this machine's
clock, and a node whose corrected time falls inside their validity takes them,
chain and host name still verified (``edgekit.tls_time``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import secrets
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from edgeagent.clock import (
    CLOCK_FILE,
    HIGH_WATER_SLACK_SECONDS,
    ClockError,
    HubClock,
    Measurement,
    describe_offset,
    measure,
)
from edgeagent.identity import NodeIdentity
from edgekit.http import HttpError, JsonHttpClient, tls_context
from edgekit.tls_time import NO_CHECK_TIME, CertificateTimeError, check_time_against
from edgeprotocol.hub_facts import facts_answer, facts_payload
from edgeprotocol.signing import public_key_pem

YEAR = 365 * 86400.0
DAY = 86400.0


class TimeServer:
    """``GET /api/v1/time?nonce=`` as the hub answers it, ``shift`` seconds off this machine's clock."""

    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.shift = 0.0
        self.delay = 0.0
        self.echo: str | None = None  # another nonce to echo, for a replayed answer
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                time.sleep(server.delay)
                facts = {"time": time.time() + server.shift, "nonce": server.echo or query["nonce"][0],
                         "ca_bundle": "-----BEGIN CERTIFICATE-----\n", "issuing_ca": "ab" * 32}
                body = json.dumps(facts_answer(**facts, signature=server.key.sign(facts_payload(**facts)))).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def identity(self, key: Ed25519PrivateKey | None = None) -> NodeIdentity:
        """A node that joined this hub (it pinned ``key``, by default the hub's own)."""
        return NodeIdentity(node="n1", pool="p", labels={}, hub_url=self.url, mqtt_url="mqtt://127.0.0.1:1883",
                            hub_public_key=public_key_pem((key or self.key).public_key()), ca_certificate="")

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hub() -> Iterator[TimeServer]:
    server = TimeServer()
    yield server
    server.close()


# --- measuring ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [YEAR, -YEAR, 90.0, 0.0])
def test_the_offset_is_the_hubs_signed_time_less_this_nodes(hub: TimeServer, tmp_path: Path, shift: float):
    hub.shift = shift
    measurement = measure(hub.identity())
    assert measurement.offset == pytest.approx(shift, abs=1.0)
    assert measurement.round_trip < 1.0 and measurement.facts.issuing_ca == "ab" * 32
    clock = HubClock(tmp_path)
    clock.take(measurement)
    assert clock.now() == pytest.approx(time.time() + shift, abs=1.0)
    kept = json.loads((tmp_path / CLOCK_FILE).read_text())
    assert kept["offset_seconds"] == pytest.approx(shift, abs=1.0) and kept["high_water"] == measurement.hub_time
    # Another process (the renewal's, doctor, status) reads the same offset from the file.
    assert HubClock(tmp_path).now() == pytest.approx(time.time() + shift, abs=1.0)


def test_a_clock_off_by_more_than_a_minute_raises_the_condition_with_the_offset(hub: TimeServer, tmp_path: Path):
    clock = HubClock(tmp_path)
    assert clock.conditions == () and not clock.significant  # never measured: nothing to say
    hub.shift = YEAR
    clock.take(measure(hub.identity()))
    (condition,) = clock.conditions
    assert (condition.type, condition.status, condition.reason) == ("ClockSynchronized", "False", "ClockBehindHub")
    assert condition.message.startswith("the node's clock is 365.0 days behind the hub's (offset +31536000")
    assert condition.message.endswith("); the agent corrects for it")
    # ``since`` is the corrected time: a year after this machine's clock.
    assert dt.datetime.fromisoformat(condition.since).timestamp() == pytest.approx(time.time() + YEAR, abs=2)
    assert clock.significant
    hub.shift = -2 * DAY  # another node, whose clock is two days ahead
    ahead = HubClock(tmp_path / "ahead")
    ahead.path.parent.mkdir()
    ahead.take(measure(hub.identity()))
    (condition,) = HubClock(tmp_path / "ahead").conditions
    assert condition.reason == "ClockAheadOfHub"
    assert condition.message.startswith("the node's clock is 2.0 days ahead of the hub's (offset -172800")


def test_a_clock_that_is_right_raises_no_condition(hub: TimeServer, tmp_path: Path):
    clock = HubClock(tmp_path)
    for shift in (-59.0, 0.0, 59.0):  # the hub's time only goes forward
        hub.shift = shift
        clock.take(measure(hub.identity()))
        assert clock.conditions == () and not clock.significant


def test_offsets_are_said_in_the_unit_that_reads_best():
    assert describe_offset(YEAR) == "365.0 days behind"
    assert describe_offset(-2.5 * 3600) == "2.5 hours ahead of"
    assert describe_offset(90) == "1.5 minutes behind"
    assert describe_offset(-61) == "1.0 minutes ahead of"
    assert describe_offset(12.34) == "12.3 seconds behind"


def test_an_answer_not_signed_by_the_pinned_key_or_for_another_nonce_is_refused(hub: TimeServer, tmp_path: Path):
    with pytest.raises(ClockError, match="not signed by the hub key this node pinned at join"):
        measure(hub.identity(key=Ed25519PrivateKey.generate()))
    hub.echo = secrets.token_hex(16)
    with pytest.raises(ClockError, match="echoes nonce"):
        measure(hub.identity())
    assert not (tmp_path / CLOCK_FILE).exists()


def test_an_answer_too_slow_to_tell_the_time_by_is_refused(hub: TimeServer):
    hub.delay = 0.3
    with pytest.raises(ClockError, match=r"took 1[01]\.\d s to arrive \(more than 10 s\)"):
        # The node's boot clock seen running 35 times as fast: 0.3 s become about 10.5 s.
        started = time.monotonic()
        measure(hub.identity(), ticks=lambda: started + (time.monotonic() - started) * 35)


def test_an_unreachable_hub_says_so(tmp_path: Path):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    identity = NodeIdentity(node="n1", pool="p", labels={}, hub_url=f"http://127.0.0.1:{port}",
                            mqtt_url="mqtt://127.0.0.1:1883",
                            hub_public_key=public_key_pem(Ed25519PrivateKey.generate().public_key()), ca_certificate="")
    with pytest.raises(ClockError, match="cannot ask the hub for its time: cannot reach the hub"):
        measure(identity, timeout=2)


# --- the high-water mark and the boot clock ---------------------------------------------------------


def measurement(hub_time: float, local_time: float, ticks: float = 0.0) -> Measurement:
    from edgeprotocol.hub_facts import HubFacts

    return Measurement(offset=hub_time - local_time, hub_time=hub_time, local_time=local_time, round_trip=0.01,
                       ticks=ticks, facts=HubFacts(time=hub_time, ca_bundle="x", issuing_ca="ab" * 32))


class Clocks:
    """A node's wall clock and boot clock, set by the test."""

    def __init__(self) -> None:
        self.wall_now = 1_000_000_000.0
        self.ticks_now = 500.0

    def wall(self) -> float:
        return self.wall_now

    def ticks(self) -> float:
        return self.ticks_now


def test_a_time_before_the_latest_hub_time_seen_is_refused_and_the_offset_kept(tmp_path: Path):
    clocks = Clocks()
    clock = HubClock(tmp_path, wall=clocks.wall, ticks=clocks.ticks)
    hub_time = 2_000_000_000.0
    clock.take(measurement(hub_time, clocks.wall_now, clocks.ticks_now))
    # A signed answer of a day ago (a hub whose clock was set back; an old answer let through): refused.
    with pytest.raises(ClockError, match="before .* the latest hub time this node has seen: refused"):
        clock.take(measurement(hub_time - DAY, clocks.wall_now))
    assert clock.now() == hub_time
    assert json.loads((tmp_path / CLOCK_FILE).read_text())["hub_time"] == hub_time
    # A step back within the slack (an NTP step on the hub) is taken; the mark stays the latest seen.
    clock.take(measurement(hub_time - HIGH_WATER_SLACK_SECONDS / 2, clocks.wall_now))
    assert json.loads((tmp_path / CLOCK_FILE).read_text())["high_water"] == hub_time


def test_the_corrected_time_never_goes_below_the_high_water_mark(tmp_path: Path):
    clocks = Clocks()
    HubClock(tmp_path, wall=clocks.wall, ticks=clocks.ticks).take(
        measurement(2_000_000_000.0, clocks.wall_now, clocks.ticks_now))
    # The node reboots with its clock reset years back (a flat RTC battery); the offset on file is stale.
    clocks.wall_now -= 10 * YEAR
    assert HubClock(tmp_path, wall=clocks.wall).now() == 2_000_000_000.0


def test_within_the_measuring_process_time_runs_on_by_the_boot_clock_whatever_the_wall_clock_does(tmp_path: Path):
    clocks = Clocks()
    clock = HubClock(tmp_path, wall=clocks.wall, ticks=clocks.ticks)
    clock.take(measurement(2_000_000_000.0, clocks.wall_now, clocks.ticks_now))
    clocks.ticks_now += 30
    clocks.wall_now += YEAR  # NTP comes back and steps the node's clock a year forward
    assert clock.now() == 2_000_000_030.0
    # The condition still names the offset measured (until the next measurement says otherwise).
    assert clock.conditions[0].reason == "ClockBehindHub"


def test_a_corrupt_clock_file_is_ignored(tmp_path: Path):
    (tmp_path / CLOCK_FILE).write_text("{not json")
    assert HubClock(tmp_path).record is None
    (tmp_path / CLOCK_FILE).write_text(json.dumps({"offset_seconds": "NaN", "hub_time": 1, "local_time": 1,
                                                   "round_trip_seconds": 0, "high_water": 1}))
    assert HubClock(tmp_path).record is None


# --- TLS dates by the corrected time, against real TLS servers on 127.0.0.1 ------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class Pki:
    """A CA valid from ``start`` to ``end`` and a server certificate for 127.0.0.1 valid from ``start + 1 day``
    to ``end - 1 day`` (``start``/``end`` in days from now)."""

    def __init__(self, tmp_path: Path, start: float, end: float, *, ca_start: float | None = None,
                 ca_end: float | None = None) -> None:
        now = dt.datetime.now(dt.UTC)
        self.not_before, self.not_after = now + dt.timedelta(days=start + 1), now + dt.timedelta(days=end - 1)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = (x509.CertificateBuilder().subject_name(_name("test CA")).issuer_name(_name("test CA"))
              .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now + dt.timedelta(days=start if ca_start is None else ca_start))
              .not_valid_after(now + dt.timedelta(days=end if ca_end is None else ca_end))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .sign(ca_key, hashes.SHA256()))
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = (x509.CertificateBuilder().subject_name(_name("127.0.0.1")).issuer_name(ca.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(self.not_before).not_valid_after(self.not_after)
                .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        self.ca_pem = ca.public_bytes(serialization.Encoding.PEM).decode()
        self.cert_file, self.key_file = tmp_path / f"server-{start}.crt", tmp_path / f"server-{start}.key"
        self.cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        self.key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))

    def moment(self, days_after_start: float) -> float:
        return (self.not_before + dt.timedelta(days=days_after_start)).timestamp()


@contextlib.contextmanager
def tls_server(pki: Pki) -> Iterator[tuple[int, list[bytes]]]:
    """An HTTPS server on 127.0.0.1 with ``pki``'s certificate answering ``{"ok": true}``; the requests it got."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.cert_file, pki.key_file)
    listener = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            with contextlib.suppress(OSError), context.wrap_socket(raw, server_side=True) as conn:
                conn.settimeout(2)
                request = conn.recv(65536)
                if request:
                    received.append(request)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n"
                                 b"Connection: close\r\n\r\n{\"ok\": true}")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], received
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def clock_at(tmp_path: Path, moment: float) -> HubClock:
    """A node clock whose corrected time is ``moment``, as measured from a hub."""
    clock = HubClock(tmp_path / f"node-{moment}", wall=time.time)
    clock.path.parent.mkdir(exist_ok=True)
    clock.take(measurement(moment, time.time(), ticks=time.clock_gettime(time.CLOCK_BOOTTIME)))
    return clock


@pytest.mark.parametrize(("start", "end"), [(-800, -400), (400, 800)], ids=["valid-only-in-the-past",
                                                                            "valid-only-in-the-future"])
def test_a_certificate_valid_only_at_the_hubs_time_is_taken_with_the_corrected_clock(
        tmp_path: Path, start: float, end: float):
    pki = Pki(tmp_path, start, end)
    with tls_server(pki) as (port, received):
        client = JsonHttpClient(f"https://127.0.0.1:{port}", timeout=5, ssl_context=tls_context(ca_pem=pki.ca_pem))
        with pytest.raises(HttpError, match="certificate has expired|certificate is not yet valid"):
            client.get("/")  # by this machine's clock: refused
        clock = clock_at(tmp_path, pki.moment(100))
        assert clock.significant
        context = tls_context(ca_pem=pki.ca_pem)
        clock.adjust_tls(context)
        assert context.verify_flags & NO_CHECK_TIME
        assert JsonHttpClient(f"https://127.0.0.1:{port}", timeout=5, ssl_context=context).get("/") == {"ok": True}
        assert len(received) == 1


@pytest.mark.parametrize("days", [-2, 400])
def test_a_certificate_outside_its_validity_at_the_corrected_time_is_refused_before_a_byte_is_sent(
        tmp_path: Path, days: float):
    pki = Pki(tmp_path, -800, -400)  # the server's certificate: valid for 398 days, two years ago
    with tls_server(pki) as (port, received):
        context = tls_context(ca_pem=pki.ca_pem)
        clock_at(tmp_path, pki.moment(days)).adjust_tls(context)
        with pytest.raises(HttpError) as refusal:
            JsonHttpClient(f"https://127.0.0.1:{port}", timeout=5, ssl_context=context).get("/")
        assert refusal.value.certificate_error
        expected = "is not yet valid: valid from" if days < 0 else "has expired: valid until"
        assert f"the server's certificate {expected}" in str(refusal.value)
        assert "and the corrected time is" in str(refusal.value)
        assert received == []


def test_with_the_dates_left_to_the_corrected_clock_the_chain_and_the_host_name_are_still_verified(tmp_path: Path):
    pki, stranger = Pki(tmp_path, -800, -400), Pki(tmp_path, -801, -401)
    with tls_server(pki) as (port, received):
        wrong_ca = tls_context(ca_pem=stranger.ca_pem)
        clock_at(tmp_path, pki.moment(100)).adjust_tls(wrong_ca)
        # Another CA of the same name: its signature does not verify the server's certificate.
        with pytest.raises(HttpError, match="does not verify: certificate signature failure"):
            JsonHttpClient(f"https://127.0.0.1:{port}", timeout=5, ssl_context=wrong_ca).get("/")
        right = tls_context(ca_pem=pki.ca_pem)
        clock_at(tmp_path, pki.moment(100)).adjust_tls(right)
        with pytest.raises(HttpError, match="Hostname mismatch"):
            JsonHttpClient(f"https://localhost:{port}", timeout=5, ssl_context=right).get("/")
        assert received == []


def test_the_ca_that_issued_the_certificate_is_checked_too(tmp_path: Path):
    # The CA expired before the end of the server's certificate: at a time in between, the CA is out.
    pki = Pki(tmp_path, -800, -400, ca_end=-600)
    with tls_server(pki) as (port, received):
        context = tls_context(ca_pem=pki.ca_pem)
        clock_at(tmp_path, pki.moment(300)).adjust_tls(context)
        with pytest.raises(HttpError, match="the CA that issued the server's certificate has expired"):
            JsonHttpClient(f"https://127.0.0.1:{port}", timeout=5, ssl_context=context).get("/")
        assert received == []


def test_a_clock_within_a_minute_leaves_the_dates_to_openssl(tmp_path: Path):
    pki = Pki(tmp_path, -800, -400)
    context = tls_context(ca_pem=pki.ca_pem)
    clock_at(tmp_path, time.time() + 30).adjust_tls(context)
    assert not context.verify_flags & NO_CHECK_TIME
    assert context.sslsocket_class is ssl.SSLSocket


async def test_asyncio_streams_check_the_dates_by_the_corrected_clock_too(tmp_path: Path):
    pki = Pki(tmp_path, 400, 800)
    with tls_server(pki) as (port, _):
        for moment, outcome in ((pki.moment(1), None), (pki.moment(-1), "is not yet valid")):
            context = tls_context(ca_pem=pki.ca_pem)
            check_time_against(context, lambda moment=moment: moment)
            if outcome is None:
                _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=context), 5)
                writer.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await writer.wait_closed()
            else:
                with pytest.raises(CertificateTimeError, match=outcome):
                    await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=context), 5)


def test_a_context_that_verifies_nothing_has_no_dates_to_check():
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with pytest.raises(ValueError, match="verifies no certificate"):
        check_time_against(context, time.time)
