"""The API over HTTPS and the join that checks the hub first: real ``edgehub serve`` processes, real TLS.

Only loopback can be bound here, so the hub is told ``--tls on``; which
listen addresses ``auto`` serves HTTPS on is checked by itself. The token
``edgectl token create`` prints pins the hub CA (SHA-256 of its DER); the
agent fetches the CA unverified, compares, and only then sends the token over
TLS verified against that CA. A wrong pin, an impostor hub, plain HTTP off
loopback and an unpinned token without ``--ca-file`` are refused with nothing
sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import socket
import sqlite3
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgeagent.identity import JoinError, NodeIdentity, join
from edgehub.identity import HubIdentity
from edgehub.keys import SETTINGS
from edgehub.settings import HubSettings
from edgehub.tls import SERVER_CERT_FILE, ServerNames, ensure_server_certificate, server_context, serves_tls, tls_ctx
from edgekit.http import HttpError
from edgeprotocol.enrollment import parse_join_token
from edgesim.fleet import Hub, Mosquitto


@pytest.fixture(scope="module")
def tls_hub(tmp_path_factory: pytest.TempPathFactory, broker: Mosquitto) -> Iterator[Hub]:
    hub = Hub(tmp_path_factory.mktemp("tls-hub"), broker.url, tls="on").start()
    yield hub
    hub.stop()


def token_of(hub: Hub, pool: str = "shanghai", uses: int = 1) -> str:
    return hub.ctl("token", "create", "--pool", pool, "--uses", str(uses)).stdout.strip()


def uses_left(hub: Hub, token: str) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{hub.state_dir / 'hub.db'}?mode=ro", uri=True)) as db:
        (left,) = db.execute("SELECT uses_left FROM tokens WHERE token_id = ?",
                             (parse_join_token(token).token_id,)).fetchone()
    return left


def der_sha256(pem_path: Path) -> str:
    cert = x509.load_pem_x509_certificate(pem_path.read_bytes())
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def agent_join(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeagent.cli", "join", *args], capture_output=True, text=True,
                          timeout=60)


# --- when the hub serves HTTPS --------------------------------------------------------


@pytest.mark.parametrize(("listen_host", "tls", "https"), [
    ("127.0.0.1", "auto", False), ("127.0.0.2", "auto", False), ("::1", "auto", False),
    ("localhost", "auto", False), ("0.0.0.0", "auto", True), ("::", "auto", True), ("192.0.2.7", "auto", True),
    ("hub.example", "auto", True), ("127.0.0.1", "on", True), ("192.0.2.7", "off", False),
])
def test_auto_serves_https_on_every_listen_address_but_loopback(listen_host: str, tls: str, https: bool):
    assert serves_tls(HubSettings(state_dir=Path("/s"), listen_host=listen_host, tls=tls)) is https


def test_the_tls_setting_is_read_from_the_file_and_flag_and_refused_when_unknown(tmp_path: Path):
    config = tmp_path / "hub.yaml"
    config.write_text("state_dir: state\ntls: off\n")  # YAML 1.1 reads a bare off as false
    assert HubSettings.from_file(config).tls == "off"
    assert HubSettings.from_file(config, tls="on").tls == "on"
    assert HubSettings(state_dir=tmp_path).tls == "auto"
    with pytest.raises(ValueError, match="tls 'yes please' must be one of auto, on, off"):
        HubSettings(state_dir=tmp_path, tls="yes please")


async def test_tls_off_on_a_non_loopback_address_is_served_plain_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture):
    app = web.Application()
    app[SETTINGS] = HubSettings(state_dir=tmp_path, listen_host="0.0.0.0", tls="off")
    with caplog.at_level(logging.WARNING, logger="edgehub.tls"):
        async for _ in tls_ctx(app):
            pass
    (record,) = [r for r in caplog.records if r.name == "edgehub.tls"]
    assert "plain HTTP on 0.0.0.0 (tls: off)" in record.getMessage() and "in clear" in record.getMessage()


def test_the_hub_says_https_and_serves_a_p256_certificate_from_its_ca_for_loopback(tls_hub: Hub):
    log = tls_hub.log_path.read_text()
    assert f"edgehub listening on https://127.0.0.1:{tls_hub.port}" in log
    assert f"SHA-256 {der_sha256(tls_hub.ca_path)}" in log
    context = ssl.create_default_context(cafile=str(tls_hub.ca_path))
    for name in ("127.0.0.1", "localhost"):  # host names checked against the certificate
        with socket.create_connection(("127.0.0.1", tls_hub.port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname=name) as tls:
            served = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
    assert isinstance(served.public_key(), ec.EllipticCurvePublicKey) and served.public_key().curve.name == "secp256r1"
    served.verify_directly_issued_by(x509.load_pem_x509_certificate(tls_hub.ca_path.read_bytes()))
    assert ServerNames.in_certificate(served) == ServerNames(dns=frozenset({"localhost"}),
                                                             ips=frozenset({"127.0.0.1", "::1"}))
    # Another name is refused by the client; plain HTTP gets no answer.
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"), \
            socket.create_connection(("127.0.0.1", tls_hub.port), timeout=10) as raw:
        context.wrap_socket(raw, server_hostname="hub.example")
    with socket.create_connection(("127.0.0.1", tls_hub.port), timeout=10) as raw:
        raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert b"HTTP/1.1 200" not in raw.recv(4096)


def test_the_server_certificate_is_kept_and_issued_again_when_its_names_change_or_it_nears_expiry(tmp_path: Path):
    identity = HubIdentity.load_or_create(tmp_path)
    settings = HubSettings(state_dir=tmp_path, tls="on")
    assert ensure_server_certificate(settings, identity)
    first = (tmp_path / SERVER_CERT_FILE).read_bytes()
    assert not ensure_server_certificate(settings, identity)  # kept across restarts
    assert (tmp_path / "hub-server.key").stat().st_mode & 0o077 == 0
    named = HubSettings(state_dir=tmp_path, tls="on", listen_host="hub.lan", allowed_hosts=("hub.example", "192.0.2.7"))
    assert ensure_server_certificate(named, identity)
    cert = x509.load_pem_x509_certificate((tmp_path / SERVER_CERT_FILE).read_bytes())
    assert ServerNames.in_certificate(cert) == ServerNames(dns=frozenset({"localhost", "hub.lan", "hub.example"}),
                                                           ips=frozenset({"127.0.0.1", "::1", "192.0.2.7"}))
    assert not ensure_server_certificate(named, identity)
    end = cert.not_valid_after_utc
    assert not ensure_server_certificate(named, identity, now=end - (end - cert.not_valid_before_utc) / 3 * 1.01)
    assert ensure_server_certificate(named, identity, now=end - (end - cert.not_valid_before_utc) / 3)
    assert (tmp_path / SERVER_CERT_FILE).read_bytes() != first
    server_context(tmp_path)  # the pair written loads as a server's
    # A certificate of another CA (a state directory put back from elsewhere) is issued again.
    other = HubIdentity.load_or_create(tmp_path / "other")
    assert ensure_server_certificate(named, other)


# --- edgectl ----------------------------------------------------------------------------


def test_edgectl_trusts_the_hub_ca_given_by_file_and_prints_tokens_that_pin_it(tls_hub: Hub, tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGECOLLAB_")}
    without = subprocess.run([sys.executable, "-m", "edgectl.cli", "--hub", tls_hub.url, "get", "pools"],
                             capture_output=True, text=True, timeout=60,
                             env={**env, "EDGECOLLAB_TOKEN_FILE": str(tls_hub.admin_token_path)})
    assert without.returncode == 1
    assert "presented a TLS certificate that does not verify" in without.stderr
    assert "pass --ca-file or set EDGECOLLAB_CA_FILE" in without.stderr
    wrong = tmp_path / "other-ca.crt"
    wrong.write_text(HubIdentity.load_or_create(tmp_path / "other").ca_pem)
    refused = tls_hub.ctl("--ca-file", str(wrong), "get", "pools", check=False)
    assert refused.returncode == 1 and "is --ca-file the hub's STATE/hub-ca.crt?" in refused.stderr
    # The CA from EDGECOLLAB_CA_FILE (Hub.ctl sets it): the token pins the CA.
    created = json.loads(tls_hub.ctl("token", "create", "--pool", "shanghai", "-o", "json").stdout)
    token = parse_join_token(created["token"])
    assert token.ca_pin == created["ca_sha256"] == der_sha256(tls_hub.ca_path)
    assert len(created["token"].split(".")) == 4


# --- the join -----------------------------------------------------------------------------


def test_a_join_over_https_with_a_pinned_token_then_talks_to_the_hub_verified_against_that_ca(
        tls_hub: Hub, tmp_path: Path):
    token = token_of(tls_hub)
    state = tmp_path / "node"
    result = agent_join("--hub", tls_hub.url, "--token", token, "--name", "tls-1", "--state-dir", str(state))
    assert result.returncode == 0, result.stderr
    identity = NodeIdentity.load(state)
    assert identity.hub_url == tls_hub.url and identity.ca_certificate == tls_hub.ca_path.read_text()
    assert uses_left(tls_hub, token) == 0
    assert tls_hub.ctl_json("describe", "node", "tls-1")["certificate"]["serial"]
    # Later calls trust that CA and no other: the same hub under another CA does not verify.
    assert identity.hub_client(timeout=10).ca()["sha256"] == der_sha256(tls_hub.ca_path)
    impostor_ca = HubIdentity.load_or_create(tmp_path / "impostor").ca_pem
    other = dataclasses.replace(identity, ca_certificate=impostor_ca)
    with pytest.raises(HttpError) as refused:
        other.hub_client(timeout=10).ca()
    assert refused.value.certificate_error


def test_a_wrong_pin_is_refused_naming_both_fingerprints_and_spends_nothing(tls_hub: Hub, tmp_path: Path):
    token = token_of(tls_hub)
    wrong = str(parse_join_token(token).with_pin("ab" * 32))
    result = agent_join("--hub", tls_hub.url, "--token", wrong, "--name", "tls-2", "--state-dir", str(tmp_path / "n"))
    assert result.returncode == 1
    assert f"presented a CA certificate with SHA-256 {der_sha256(tls_hub.ca_path)}" in result.stderr
    assert f"the token pins {'ab' * 32}" in result.stderr and "the token was not sent" in result.stderr
    assert uses_left(tls_hub, token) == 1
    assert tls_hub.ctl("describe", "node", "tls-2", check=False).returncode == 4  # not found: nothing registered
    assert not (tmp_path / "n" / "identity.json").exists()
    # The right pin joins with the same (unspent, single-use) token.
    assert agent_join("--hub", tls_hub.url, "--token", token, "--name", "tls-2",
                      "--state-dir", str(tmp_path / "n")).returncode == 0


@pytest.fixture
async def impostor(tmp_path: Path) -> AsyncIterator[tuple[str, list[str]]]:
    """A TLS server with a CA of its own that answers /api/v1/ca and records every request it gets."""
    settings = HubSettings(state_dir=tmp_path / "impostor", tls="on")
    identity = HubIdentity.load_or_create(settings.state_dir)
    ensure_server_certificate(settings, identity)
    seen: list[str] = []

    async def anything(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.path} {await request.text()}")
        if request.path == "/api/v1/ca":
            return web.json_response({"ca_certificate": identity.ca_pem, "sha256": identity.ca_fingerprint})
        return web.json_response({"error": "no"}, status=500)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context(settings.state_dir))
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"https://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


async def test_an_impostor_at_the_hubs_address_gets_the_ca_request_and_never_the_token(
        tls_hub: Hub, impostor: tuple[str, list[str]], tmp_path: Path):
    url, seen = impostor
    token = await asyncio.to_thread(token_of, tls_hub)
    with pytest.raises(JoinError, match=f"but the token pins {parse_join_token(token).ca_pin}"):
        await asyncio.to_thread(join, hub_url=url, token=token, state_dir=tmp_path / "n", node="tls-3")
    assert [line.split()[:2] for line in seen] == [["GET", "/api/v1/ca"]]
    assert all(parse_join_token(token).secret not in line for line in seen)
    assert await asyncio.to_thread(uses_left, tls_hub, token) == 1


def test_a_token_without_a_pin_joins_over_https_only_with_the_ca_file(tls_hub: Hub, tmp_path: Path):
    token = token_of(tls_hub)
    unpinned = str(parse_join_token(token).without_pin())
    state = str(tmp_path / "n")
    refused = agent_join("--hub", tls_hub.url, "--token", unpinned, "--name", "tls-4", "--state-dir", state)
    assert refused.returncode == 1 and "carries no hub CA fingerprint" in refused.stderr
    assert "--ca-file" in refused.stderr and uses_left(tls_hub, token) == 1
    other = tmp_path / "other-ca.crt"
    other.write_text(HubIdentity.load_or_create(tmp_path / "other").ca_pem)
    wrong_file = agent_join("--hub", tls_hub.url, "--token", token, "--ca-file", str(other), "--name", "tls-4",
                            "--state-dir", state)
    assert wrong_file.returncode == 1 and "is not the CA of the hub that created the token" in wrong_file.stderr
    joined = agent_join("--hub", tls_hub.url, "--token", unpinned, "--ca-file", str(tls_hub.ca_path),
                        "--name", "tls-4", "--state-dir", state)
    assert joined.returncode == 0, joined.stderr
    assert uses_left(tls_hub, token) == 0


def test_plain_http_off_loopback_is_refused_before_anything_is_sent(tmp_path: Path):
    token = "ec1.0123456789ab.secret." + "0" * 64
    with pytest.raises(JoinError, match="refusing to send the join token over plain HTTP to 192.0.2.1.*"
                                        "https://192.0.2.1:8470"):
        join(hub_url="http://192.0.2.1:8470", token=token, state_dir=tmp_path / "n", node="n1")
    assert not (tmp_path / "n").exists()
