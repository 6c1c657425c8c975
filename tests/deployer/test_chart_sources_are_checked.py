"""Where the hub may fetch charts from, and what a failed fetch says.

Whoever may apply a component chooses the URL the hub fetches, so the fetcher
connects only to public addresses and to the networks it is allowed
(chart_sources.allow), checked after DNS and on every redirect; and a fetch
that gets no proper answer says one thing whatever the cause, so the refusal
cannot be used to scan the hub's network. Every server here is a real socket
on 127.0.0.0/8; nothing leaves the machine.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.server
import ipaddress
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from chart_server import ChartServer, closed_port

from deployer_plugin import OciChart, RepoChart
from deployer_plugin.chart_addresses import AddressGuard, not_public
from deployer_plugin.chart_repos import ChartFetcher, ChartUnavailable, unreachable_message

GOOD = Path(__file__).resolve().parent / "charts" / "good"


# --------------------------------------------------------------------------- the address rule


@pytest.mark.parametrize(("address", "why"), [
    ("127.0.0.1", "loopback"), ("127.255.255.254", "loopback"), ("::1", "loopback"),
    ("10.0.0.1", "private"), ("10.255.255.255", "private"), ("172.16.0.1", "private"), ("172.31.255.255", "private"),
    ("192.168.0.1", "private"), ("192.168.255.255", "private"),
    ("fc00::1", "private (unique local)"), ("fdff:ffff::1", "private (unique local)"),
    ("169.254.169.254", "link-local"), ("169.254.0.1", "link-local"), ("fe80::1", "link-local"),
    ("febf::1", "link-local"), ("fe80::1%lo", "link-local"),
    ("100.64.0.1", "shared (carrier-grade NAT)"), ("100.127.255.254", "shared (carrier-grade NAT)"),
    ("0.0.0.0", "unspecified"), ("0.1.2.3", "unspecified"), ("::", "unspecified"),
    ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"), ("ff02::1", "multicast"), ("ff0e::1", "multicast"),
    ("240.0.0.1", "reserved"), ("255.255.255.255", "reserved"), ("192.0.2.1", "reserved"),
    ("198.18.0.1", "reserved"), ("2001:db8::1", "reserved"), ("2001::1", "reserved"), ("fec0::1", "reserved"),
    ("100::1", "reserved"),
    # IPv6 forms that carry an IPv4 address are judged by it.
    ("::ffff:127.0.0.1", "loopback (as 127.0.0.1)"), ("::ffff:169.254.169.254", "link-local (as 169.254.169.254)"),
    ("::ffff:10.0.0.1", "private (as 10.0.0.1)"), ("64:ff9b::10.0.0.1", "private (as 10.0.0.1)"),
    ("2002:7f00:1::", "loopback (as 127.0.0.1)"), ("2002:c0a8:101::1", "private (as 192.168.1.1)"),
])
def test_an_address_that_is_not_public_is_named_as_such(address: str, why: str):
    assert not_public(ipaddress.ip_address(address)) == why
    assert AddressGuard().refusal(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1", "169.253.255.255",
                                     "2606:4700::1111", "2a00:1450:4001::1", "::ffff:8.8.8.8", "64:ff9b::8.8.8.8",
                                     "2002:808:808::1"])
def test_a_public_address_is_allowed(address: str):
    assert not_public(ipaddress.ip_address(address)) is None
    assert AddressGuard().refusal(ipaddress.ip_address(address)) is None


def test_the_allowed_networks_open_just_themselves_in_every_form():
    guard = AddressGuard(["127.0.0.0/8", "10.1.0.0/16", "fd00:1::/64", "169.254.169.253"])
    for allowed in ("127.0.0.1", "127.9.9.9", "::ffff:127.0.0.1", "10.1.200.3", "fd00:1::5", "169.254.169.253"):
        assert guard.refusal(ipaddress.ip_address(allowed)) is None, allowed
    for refused in ("::1", "10.2.0.1", "fd00:2::5", "169.254.169.254", "192.168.1.1"):
        assert guard.refusal(ipaddress.ip_address(refused)) is not None, refused
    assert guard.refusal(ipaddress.ip_address("169.254.169.254")) == \
        "169.254.169.254 (link-local) is not in chart_sources.allow"


# --------------------------------------------------------------------------- servers on loopback


class Counting:
    """How many connections were made to a port (each is closed at once)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connections = 0


@contextmanager
def accepting(sock: socket.socket, on_connection: Callable[[socket.socket], None]) -> Iterator[None]:
    """Hand every connection ``sock`` accepts to ``on_connection`` on a thread, until the block ends."""

    def serve() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            on_connection(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # wakes accept() on the other thread
        sock.close()
        thread.join(5)


@contextmanager
def counting(host: str) -> Iterator[Counting]:
    sock = socket.create_server((host, 0))
    seen = Counting(sock.getsockname()[1])

    def count(conn: socket.socket) -> None:
        seen.connections += 1
        conn.close()

    with accepting(sock, count):
        yield seen


Answer = tuple[int, dict[str, str], bytes]


@contextmanager
def answering(host: str, port: int, answer: Callable[[str], Answer], *,
              tls: ssl.SSLContext | None = None) -> Iterator[http.server.ThreadingHTTPServer]:
    """An HTTP(S) server on host:port giving ``answer(path)`` to every GET."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, headers, body = answer(self.path)
            self.send_response(status)
            for name, value in {"Content-Length": str(len(body)), **headers}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((host, port), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextmanager
def resetting(host: str, port: int) -> Iterator[None]:
    """A port that accepts and resets every connection (RST: SO_LINGER with a zero time)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen()

    def reset(conn: socket.socket) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    with accepting(sock, reset):
        yield


def untrusted_tls(tmp_path: Path) -> ssl.SSLContext:
    """A server context with a self-signed certificate for 127.0.0.1, which no CA store trusts."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    return context


def status(code: int, headers: dict[str, str] | None = None, body: bytes = b"") -> Callable[[str], Answer]:
    return lambda path: (code, headers or {}, body)


def refusal(fetcher: ChartFetcher, ref: RepoChart | OciChart) -> str:
    with pytest.raises(ChartUnavailable) as caught:
        fetcher.fetch(ref)
    return str(caught.value)


LAB = ChartFetcher(allow=["127.0.0.0/8"], timeout_seconds=5)


# --------------------------------------------------------------------------- the default: public addresses only


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ChartServer]:
    with ChartServer(tmp_path / "server") as server:
        server.add_chart(GOOD, "0.2.0")
        server.push_oci("charts/good", GOOD, "0.3.0")
        yield server


def test_by_default_a_repository_on_loopback_is_refused_before_any_request(server: ChartServer,
                                                                          caplog: pytest.LogCaptureFixture):
    ref = RepoChart(repo=server.repo_url, name="good", version="0.2.0")
    assert refusal(ChartFetcher(), ref) == (
        f"spec.chart: {server.repo_url} could not be fetched (no chart repository answered there, or the address "
        "is not allowed: see chart_sources.allow)")
    oci = OciChart(oci=f"oci://{server.oci_host}/charts/good", version="0.3.0")
    assert refusal(ChartFetcher(), oci) == unreachable_message(oci)
    assert server.requests == []
    # The hub's log says why, for whoever runs it.
    assert "address not allowed: 127.0.0.1 (loopback) is not in chart_sources.allow" in caplog.text
    # Allowed, the same repository answers as before.
    assert ChartFetcher(allow=["127.0.0.0/8"]).fetch(ref).version == "0.2.0"
    assert ChartFetcher(allow=["127.0.0.1"]).fetch(oci).version == "0.3.0"


def test_a_name_is_checked_by_the_addresses_it_resolves_to(caplog: pytest.LogCaptureFixture):
    # localhost: a name, which resolves to loopback (127.0.0.1, or ::1 too) on any machine.
    with counting("127.0.0.1") as v4:
        for ref in (RepoChart(repo=f"http://localhost:{v4.port}/charts", name="good", version="0.2.0"),
                    OciChart(oci=f"oci://localhost:{v4.port}/charts/good", version="0.3.0")):
            assert refusal(ChartFetcher(), ref) == unreachable_message(ref)
        assert v4.connections == 0
        assert "localhost resolves to " in caplog.text and "(loopback) is not in chart_sources.allow" in caplog.text
        # Every address of the name must be allowed: 127.0.0.0/8 alone does not do where it also means ::1.
        names = {info[4][0] for info in socket.getaddrinfo("localhost", v4.port, type=socket.SOCK_STREAM)}
        with_v4_only = ChartFetcher(allow=["127.0.0.0/8"])
        ref = RepoChart(repo=f"http://localhost:{v4.port}/charts", name="good", version="0.2.0")
        assert refusal(with_v4_only, ref) == unreachable_message(ref)
        assert v4.connections == (0 if "::1" in names else 1)


# --------------------------------------------------------------------------- one message for every failure


def test_every_failure_to_get_an_answer_says_the_same(tmp_path: Path):
    port = closed_port()  # every case serves on this port, so the URL and the message are the same
    repo = RepoChart(repo=f"http://127.0.0.1:{port}/charts", name="good", version="0.2.0")
    oci = OciChart(oci=f"oci://127.0.0.1:{port}/charts/good", version="0.3.0")
    said: dict[str, set[str]] = {}

    def fetch(case: str, *, fetcher: ChartFetcher = LAB) -> None:
        said[case] = {refusal(fetcher, repo), refusal(fetcher, oci)}

    fetch("nothing listening")
    with resetting("127.0.0.1", port):
        fetch("reset")
    for code in (401, 403, 404, 500):
        with answering("127.0.0.1", port, status(code, {"WWW-Authenticate": 'Basic realm="x"'})):
            fetch(str(code))
    with answering("127.0.0.1", port, status(200, {"Content-Type": "text/html"}, b"<html>router login</html>")):
        fetch("a web page, not a repository")
    # An OCI registry's token realm is fetched too, and checked: cloud metadata here.
    with answering("127.0.0.1", port, status(401, {"WWW-Authenticate": 'Bearer realm="http://169.254.169.254/t"'})):
        fetch("a token realm at a link-local address")
    with answering("127.0.0.1", port, status(200, body=b"entries: {}")):
        fetch("not allowed", fetcher=ChartFetcher())
    one = (f"spec.chart: http://127.0.0.1:{port}/charts could not be fetched (no chart repository answered there, "
           "or the address is not allowed: see chart_sources.allow)")
    assert said == dict.fromkeys(said, {one, one.replace(repo.repo, oci.oci)})

    # A TLS server whose certificate no CA vouches for: the same words for its https:// URL.
    secure = RepoChart(repo=f"https://127.0.0.1:{port}/charts", name="good", version="0.2.0")
    with answering("127.0.0.1", port, status(200, body=b"entries: {}"), tls=untrusted_tls(tmp_path)):
        assert refusal(LAB, secure) == unreachable_message(repo).replace("http://", "https://")


def test_a_failed_fetch_is_logged_with_its_cause(caplog: pytest.LogCaptureFixture):
    port = closed_port()
    repo = RepoChart(repo=f"http://127.0.0.1:{port}/charts", name="good", version="0.2.0")
    with answering("127.0.0.1", port, status(403)):
        refusal(LAB, repo)
    assert f"Chart {repo} could not be fetched: {repo.repo}/index.yaml answered 403 Forbidden" in caplog.text


# --------------------------------------------------------------------------- redirects


def redirect_to(url: str) -> Callable[[str], Answer]:
    return status(302, {"Location": url})


def test_a_redirect_to_an_address_not_allowed_is_never_connected_to():
    only = ChartFetcher(allow=["127.0.0.2/32"], timeout_seconds=5)
    with counting("127.0.0.3") as target:
        port = closed_port()
        ref = RepoChart(repo=f"http://127.0.0.2:{port}/charts", name="good", version="0.2.0")
        with answering("127.0.0.2", port, redirect_to(f"http://127.0.0.3:{target.port}/charts/index.yaml")):
            assert refusal(only, ref) == unreachable_message(ref)
            assert target.connections == 0
            # The same redirect with 127.0.0.3 allowed does reach it: the count counts.
            refusal(LAB, ref)
            assert target.connections == 1


def test_a_redirect_away_from_http_is_not_followed():
    # urllib would follow a redirect to ftp:// with its FTP handler, which no address check guards.
    with counting("127.0.0.3") as target:
        port = closed_port()
        ref = RepoChart(repo=f"http://127.0.0.2:{port}/charts", name="good", version="0.2.0")
        with answering("127.0.0.2", port, redirect_to(f"ftp://127.0.0.3:{target.port}/index.yaml")):
            assert refusal(LAB, ref) == unreachable_message(ref)
        assert target.connections == 0


def test_an_archive_url_at_an_address_not_allowed_is_never_connected_to():
    only = ChartFetcher(allow=["127.0.0.2/32"], timeout_seconds=5)
    with counting("127.0.0.3") as target:
        index = (f"apiVersion: v1\nentries:\n  good:\n  - name: good\n    version: 0.2.0\n"
                 f"    urls: [http://127.0.0.3:{target.port}/good-0.2.0.tgz]\n").encode()
        port = closed_port()
        ref = RepoChart(repo=f"http://127.0.0.2:{port}/charts", name="good", version="0.2.0")
        with answering("127.0.0.2", port, status(200, body=index)):
            assert refusal(only, ref) == unreachable_message(ref)
        assert target.connections == 0


# --------------------------------------------------------------------------- behind a proxy


def test_behind_a_proxy_the_target_is_checked_before_the_proxy_is_asked(monkeypatch: pytest.MonkeyPatch):
    # The proxy is the hub's own (its environment), so it is connected to as it is (127.0.0.1, not in
    # the allowed networks here); the target is checked first. The proxy here answers nothing.
    only = ChartFetcher(allow=["127.0.0.3/32"], timeout_seconds=5)
    with counting("127.0.0.1") as proxy, counting("127.0.0.3") as target:
        for name in ("no_proxy", "NO_PROXY", "https_proxy", "HTTPS_PROXY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy.port}")
        refused = RepoChart(repo=f"http://127.0.0.2:{target.port}/charts", name="good", version="0.2.0")
        assert refusal(only, refused) == unreachable_message(refused)
        assert proxy.connections == 0
        allowed = RepoChart(repo=f"http://127.0.0.3:{target.port}/charts", name="good", version="0.2.0")
        assert refusal(only, allowed) == unreachable_message(allowed)
        assert (proxy.connections, target.connections) == (1, 0)
