"""The hub renews the broker's certificate and the real Mosquitto 2.0 takes it on SIGHUP.

A real Mosquitto from ``edgehub mosquitto-config`` (started as root, it switches to the ``mosquitto``
account, which owns its directory), the certificate keeper with its clock set 244 days into the broker
certificate's 365 (the broker and the handshakes keep the real time: the new certificate is valid for
them). What was measured, and is held here:

- on SIGHUP Mosquitto 2.0.11 reads ``certfile`` and ``keyfile`` again: the next TLS connection gets the
  new certificate, a connection made before keeps working;
- it reads ``cafile`` again too (a client of a second CA, with that CA's revocation list beside the
  first's in ``crlfile``, is let in after a SIGHUP, not before), which a CA rotation can build on;
- it reads them as the account it switched to: a key that account cannot read leaves the listener with
  no certificate (every handshake refused), so the keeper does not renew then, and says why at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import signal
import socket
import ssl
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from edgehub.broker_revocations import CRL_FILE, PID_FILE, BrokerFiles, build_crls
from edgehub.broker_roles import HUB_USER
from edgehub.certificates import CertificateKeeper, served_certificate
from edgehub.identity import HubIdentity
from edgehub.settings import HubSettings
from edgekit.mqtt import BrokerAddress, TlsIdentity
from edgesim.fleet import Mosquitto, wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """The broker as a root-run ``mosquitto-config`` sets it up where the ``mosquitto`` account can reach:
    it runs as that account (pytest's own temporary directory is root's alone, so this one is not in it)."""
    reachable = Path(tempfile.mkdtemp(prefix="edgecollab-broker-"))
    reachable.chmod(0o755)
    mosquitto = Mosquitto(reachable / "broker", hub_state=tmp_path / "state")
    try:
        mosquitto.start()
        yield mosquitto
    finally:
        mosquitto.stop()
        shutil.rmtree(reachable, ignore_errors=True)


def served(broker: Mosquitto) -> x509.Certificate:
    return served_certificate(BrokerAddress.parse(broker.url))


def keeper_at_day(broker: Mosquitto, days: float) -> CertificateKeeper:
    assert broker.hub_state is not None
    files = BrokerFiles.load(broker.hub_state)
    assert files is not None
    born = x509.load_pem_x509_certificate(files.certificate_pair[0].read_bytes()).not_valid_before_utc
    settings = HubSettings(state_dir=broker.hub_state, mqtt_url=broker.url)
    return CertificateKeeper(settings, HubIdentity.load_or_create(broker.hub_state), broker_files=files,
                             serve_https=False, clock=lambda: born + dt.timedelta(days=days), interval=3600)


def owner(path: Path) -> tuple[int, int, int]:
    info = path.stat()
    return info.st_uid, info.st_gid, info.st_mode & 0o777


async def test_the_broker_serves_its_renewed_certificate_to_new_connections_and_keeps_the_old_ones(
        broker: Mosquitto):
    cert_file, key_file = broker.config_dir / "broker.crt", broker.config_dir / "broker.key"
    before, owners = served(broker), {p: owner(p) for p in (cert_file, key_file)}
    observer = broker.identity()
    assert observer is not None
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="observer.edgesim", timeout=10,
                              tls_context=observer.context()) as early:
        await early.subscribe("probe/#", qos=1)
        keeper = keeper_at_day(broker, 244)
        await keeper.start()
        assert keeper.renewals == {"broker": 1} and keeper.warnings == []

        renewed = x509.load_pem_x509_certificate(cert_file.read_bytes())
        after = served(broker)  # a new TLS connection
        assert after.serial_number == renewed.serial_number != before.serial_number
        # Verified as a node verifies it: the hub CA, the name dialled.
        context = ssl.create_default_context(cadata=observer.ca_pem)
        with socket.create_connection(("127.0.0.1", broker.port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)) == renewed
        assert {p: owner(p) for p in (cert_file, key_file)} == owners  # the broker's account still reads them
        assert broker.log_tail().count("Reloading config.") == 1

        # A client connects as before, and the connection made before the reload goes on: it gets what
        # the new one publishes.
        hub = broker.identity(HUB_USER)
        assert hub is not None
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier=HUB_USER, timeout=10,
                                  tls_context=hub.context()) as later:
            await later.publish("probe/x", b"still here", qos=1)
        async with asyncio.timeout(10):
            message = await anext(aiter(early.messages))
        assert message.payload == b"still here"


async def test_a_key_the_broker_account_cannot_read_is_not_renewed_and_said_at_once(broker: Mosquitto):
    key_file = broker.config_dir / "broker.key"
    first = served(broker)
    os.chown(key_file, 0, 0)  # as an operator's chown by mistake would: the broker loaded it before
    keeper = keeper_at_day(broker, 244)
    await keeper.start()
    assert keeper.renewals == {}
    (warning,) = keeper.warnings
    assert f"cannot read {key_file}" in warning and "would refuse every connection" in warning
    assert "chown" in warning
    assert served(broker) == first  # not signalled: it still serves


def test_mosquitto_reads_its_ca_file_again_on_sighup(broker: Mosquitto, tmp_path: Path):
    """What a CA rotation can build on: a second CA appended to ``cafile`` (and its revocation list to
    ``crlfile``: a CA without one there is refused as unknown) is trusted after a SIGHUP."""
    key = Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "another CA")])
    now = dt.datetime.now(dt.UTC)
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).sign(key, algorithm=None))
    second = HubIdentity(key=key, ca_certificate=ca)
    client_key, client_cert = tmp_path / "c.key", tmp_path / "c.crt"
    second.ensure_certificate(client_key, client_cert, f"observer-{uuid.uuid4().hex[:6]}.edgesim", usage="client")
    assert broker.hub_state is not None
    first = HubIdentity.load_or_create(broker.hub_state)

    def handshake() -> str:
        context = TlsIdentity(first.ca_pem, client_cert, client_key).context()
        context.maximum_version = ssl.TLSVersion.TLSv1_2  # the broker's verdict on the client in the handshake
        try:
            with socket.create_connection(("127.0.0.1", broker.port), timeout=10) as raw, \
                    context.wrap_socket(raw, server_hostname="127.0.0.1"):
                return "accepted"
        except ssl.SSLError as exc:
            return f"refused: {exc}"

    assert "unknown ca" in handshake()
    ca_file, crl_file = broker.config_dir / "ca.crt", broker.config_dir / CRL_FILE
    ca_file.write_text(first.ca_pem + second.ca_pem)
    crl_file.write_bytes(crl_file.read_bytes() + build_crls(second, []))
    time.sleep(0.2)
    assert "unknown ca" in handshake()  # not before it is told
    os.kill(int((broker.config_dir / PID_FILE).read_text()), signal.SIGHUP)
    wait_until(lambda: handshake() == "accepted", timeout=5, what="the broker to trust the second CA", interval=0.05)
