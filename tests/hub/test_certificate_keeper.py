"""The certificate keeper's decisions, at any day of a certificate's life: the clock is injected.

The files are real (``edgehub mosquitto-config`` writes the broker's directory, owned by the
``mosquitto`` account when run as root), the broker is not: its handshake (``served``) and its signal
are stand-ins that record what the keeper does. ``tests/broker/test_broker_certificate_renewal.py``
does the same against the real Mosquitto, and ``tests/e2e/test_the_hub_renews_what_it_issues.py``
with the hub's calendar moved.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeagent.identity import make_csr
from edgehub.broker_config import write_mosquitto_config
from edgehub.broker_revocations import BROKER_FILES, BrokerFiles, Signalled
from edgehub.certificates import (
    WARN_DAYS,
    CertificateKeeper,
    KeeperHooks,
    Unreachable,
    broker_renewal_blocker,
    node_certificates,
    renewal_due,
    subject_names,
)
from edgehub.identity import HubIdentity
from edgehub.settings import HubSettings
from edgehub.tls import SERVER_CERT_FILE

pytestmark = pytest.mark.timeout(60)

BROKER_NAMES = ("broker.example", "10.0.0.7")


class Clock:
    """A settable clock: the keeper's ``clock``."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def day(self, start: dt.datetime, days: float) -> None:
        self.now = start + dt.timedelta(days=days)


@dataclass
class FakeBroker:
    """Serves what its directory holds as of its last signal, as Mosquitto does; ``broken``: a signal
    leaves it refusing every handshake (a key it could not read)."""

    files: BrokerFiles
    serving: x509.Certificate | None = None
    signals: list[Path] = field(default_factory=list)
    answer: Signalled = "sent"
    broken: Callable[[int], bool] = lambda signal_number: False

    def __post_init__(self) -> None:
        self.serving = self.file()

    def file(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.files.certificate_pair[0].read_bytes())

    def signal(self, pid_file: Path) -> tuple[Signalled, str]:
        self.signals.append(pid_file)
        if self.answer == "sent":
            self.serving = None if self.broken(len(self.signals)) else self.file()
        return self.answer, f"stand-in: {self.answer}"

    def served(self) -> x509.Certificate:
        if self.serving is None:
            raise ssl.SSLError("sslv3 alert handshake failure (stand-in)")
        return self.serving


@dataclass
class Setup:
    settings: HubSettings
    identity: HubIdentity
    files: BrokerFiles
    broker: FakeBroker
    clock: Clock

    @property
    def born(self) -> dt.datetime:
        """When the broker's first certificate starts (day 0)."""
        return self.broker.file().not_valid_before_utc

    def keeper(self, **hooks: object) -> CertificateKeeper:
        defaults: dict[str, object] = {"served": self.broker.served, "signal": self.broker.signal}
        return CertificateKeeper(self.settings, self.identity, broker_files=self.files, serve_https=False,
                                 hooks=KeeperHooks(**{**defaults, **hooks}), clock=self.clock, interval=3600)


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    state, out = tmp_path / "state", tmp_path / "broker"
    write_mosquitto_config(state, "127.0.0.1", 8883, out, names=BROKER_NAMES)
    files = BrokerFiles.load(state)
    assert files is not None
    broker = FakeBroker(files)
    settings = HubSettings(state_dir=state, mqtt_url="mqtts://127.0.0.1:8883")
    return Setup(settings, HubIdentity.load_or_create(state), files, broker, Clock(broker.file().not_valid_before_utc))


def broker_warnings(keeper: CertificateKeeper) -> list[str]:
    """The keeper's warnings about the broker. (The hub's own certificates, which it renews with the real
    time, look due again at a clock moved ahead: their warnings are another test's.)"""
    return [w for w in keeper.warnings if w.startswith("The broker's certificate")]


def stat(path: Path) -> tuple[int, int, int]:
    info = path.stat()
    return info.st_uid, info.st_gid, info.st_mode & 0o777


async def test_the_broker_certificate_is_kept_at_day_100_and_issued_again_at_day_244(setup: Setup):
    cert_file, key_file = setup.files.certificate_pair
    first = setup.broker.file()
    owners = {path: stat(path) for path in (cert_file, key_file)}
    keeper = setup.keeper()
    setup.clock.day(setup.born, 100)
    await keeper.start()
    assert setup.broker.file() == first and setup.broker.signals == []
    assert not keeper.warnings

    setup.clock.day(setup.born, 244)  # a third of 365 days is 121.7: due from day 243.4
    assert renewal_due(first, setup.clock.now)
    await keeper.check()
    renewed = setup.broker.file()
    assert renewed.serial_number != first.serial_number
    assert renewed.subject == first.subject and subject_names(renewed) == subject_names(first)
    assert set(subject_names(renewed)) >= {"127.0.0.1", "localhost", *BROKER_NAMES}
    renewed.verify_directly_issued_by(setup.identity.ca_certificate)
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    assert key.public_key() == renewed.public_key()
    # The broker (which may run as another account) can read them as before: owner, group and mode kept.
    assert {path: stat(path) for path in (cert_file, key_file)} == owners
    assert setup.broker.signals == [setup.files.pid_file]
    assert setup.broker.serving == renewed and not broker_warnings(keeper)
    assert keeper.renewals["broker"] == 1
    view = {c["name"]: c for c in keeper.describe()["certificates"]}
    assert view["broker"]["serial"] == format(renewed.serial_number, "x") and view["broker"]["renewed_by"] == "hub"

    # A day into the new certificate's life (issued with the real time: the clock follows it): nothing to do.
    setup.clock.day(renewed.not_valid_before_utc, 1)
    await keeper.check()
    assert setup.broker.file() == renewed and setup.broker.signals == [setup.files.pid_file]


async def test_a_broker_the_hub_cannot_renew_is_warned_about_from_30_days_before_its_end(setup: Setup):
    cert_file, _ = setup.files.certificate_pair
    first = cert_file.read_bytes()
    why = f"it may not write {cert_file.parent} (stand-in)"
    keeper = setup.keeper(blocker=lambda files: why)
    setup.clock.day(setup.born, 300)  # due, but the hub cannot: nothing written, nothing said yet
    await keeper.start()
    assert keeper.warnings == [] and cert_file.read_bytes() == first and setup.broker.signals == []

    setup.clock.day(setup.born, 365 - WARN_DAYS + 1)
    await keeper.check()
    (warning,) = broker_warnings(keeper)
    assert "The broker's certificate" in warning and "in 29 days" in warning and why in warning
    command = (f"edgehub mosquitto-config --state {setup.settings.state_dir} --listen 127.0.0.1:8883 "
               f"--out {cert_file.parent} --name broker.example --name 10.0.0.7")
    assert f"'{command}'" in warning
    assert f"kill -HUP $(cat {setup.files.pid_file})" in warning
    assert cert_file.read_bytes() == first and setup.broker.signals == []
    (broker,) = [c for c in keeper.describe()["certificates"] if c["name"] == "broker"]
    assert broker["renewed_by"] == f"operator: {command}" and broker["days_left"] == pytest.approx(29, abs=0.1)

    setup.clock.day(setup.born, 366)
    await keeper.check()
    assert "expired on" in broker_warnings(keeper)[0]


async def test_without_broker_files_the_warning_names_the_missing_file_and_the_command(setup: Setup):
    (setup.settings.state_dir / BROKER_FILES).unlink()
    keeper = CertificateKeeper(setup.settings, setup.identity, broker_files=None, serve_https=False,
                               hooks=KeeperHooks(served=setup.broker.served), clock=setup.clock, interval=3600)
    setup.clock.day(setup.born, 330)
    await keeper.start()
    assert keeper.warnings == []
    setup.clock.day(setup.born, 340)
    await keeper.check()
    (warning,) = broker_warnings(keeper)
    assert f"{setup.settings.state_dir / BROKER_FILES} is missing" in warning
    assert "edgehub mosquitto-config --state" in warning and "--out BROKER_DIR" in warning
    assert "send it SIGHUP or restart it" in warning


async def test_a_broker_that_refuses_handshakes_with_its_new_pair_gets_the_old_one_back_and_no_second_try(
        setup: Setup):
    cert_file, key_file = setup.files.certificate_pair
    old_cert, old_key = cert_file.read_bytes(), key_file.read_bytes()
    setup.broker.broken = lambda signal_number: signal_number == 1  # the first reload fails, the next works
    keeper = setup.keeper()
    setup.clock.day(setup.born, 250)
    await keeper.start()
    assert (cert_file.read_bytes(), key_file.read_bytes()) == (old_cert, old_key)
    assert len(setup.broker.signals) == 2 and setup.broker.serving == setup.broker.file()
    (warning,) = broker_warnings(keeper)
    assert "refused the TLS handshake" in warning and "the old one was put back" in warning
    assert f"can it read {key_file}?" in warning and "edgehub mosquitto-config" in warning
    await keeper.check()  # not tried again: each try would cost the fleet refused connections
    assert len(setup.broker.signals) == 2 and cert_file.read_bytes() == old_cert


async def test_a_broker_that_cannot_be_signalled_serves_its_old_certificate_and_that_is_said_near_its_end(
        setup: Setup):
    first = setup.broker.file()
    setup.broker.answer = "not sent"
    keeper = setup.keeper()
    setup.clock.day(setup.born, 250)
    await keeper.start()
    assert setup.broker.file() != first and setup.broker.serving == first  # written, not loaded
    assert broker_warnings(keeper) == []  # the old one has 115 days: the broker takes the new one when it restarts
    setup.clock.day(setup.born, 340)
    await keeper.check()
    (warning,) = broker_warnings(keeper)
    assert "the broker was not told to load its new certificate" in warning and "kill -HUP" in warning


async def test_the_hub_mqtt_certificate_is_renewed_at_day_244_and_the_session_told_to_reconnect(setup: Setup):
    reconnects: list[dt.datetime] = []

    async def renewed() -> None:
        reconnects.append(setup.clock.now)

    keeper = setup.keeper(hub_mqtt_renewed=renewed, served=lambda: (_ for _ in ()).throw(Unreachable("down")))
    await keeper.start()  # issues it: there is none yet
    path = setup.settings.mqtt_cert_path
    first = x509.load_pem_x509_certificate(path.read_bytes())
    start = first.not_valid_before_utc
    setup.clock.day(start, 100)
    await keeper.check()
    assert x509.load_pem_x509_certificate(path.read_bytes()) == first and reconnects == []
    setup.clock.day(start, 244)
    await keeper.check()
    second = x509.load_pem_x509_certificate(path.read_bytes())
    assert second.serial_number != first.serial_number and reconnects == [setup.clock.now]
    assert keeper.renewals.get("hub_mqtt") == 1


async def test_the_https_certificate_is_renewed_for_new_connections_while_open_ones_keep_theirs(tmp_path: Path):
    settings = HubSettings(state_dir=tmp_path, tls="on")
    identity = HubIdentity.load_or_create(tmp_path)
    clock = Clock(dt.datetime.now(dt.UTC))
    keeper = CertificateKeeper(settings, identity, broker_files=None, serve_https=True, clock=clock, interval=3600)
    await keeper.start()
    assert keeper.tls_context is not None

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(100):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=keeper.tls_context)
    port = server.sockets[0].getsockname()[1]
    client = ssl.create_default_context(cadata=identity.ca_pem)

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=client,
                                                                        server_hostname="localhost"), 10)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return reader, writer, x509.load_der_x509_certificate(der).serial_number

    async with server:
        reader, writer, before = await connect()
        start = x509.load_pem_x509_certificate((tmp_path / SERVER_CERT_FILE).read_bytes()).not_valid_before_utc
        clock.day(start, 59)
        await keeper.check()
        assert keeper.renewals == {}
        clock.day(start, 61)  # a third of 90 days left from day 60
        await keeper.check()
        assert keeper.renewals == {"hub_https": 1}
        _, second_writer, after = await connect()
        assert after != before
        assert after == x509.load_pem_x509_certificate((tmp_path / SERVER_CERT_FILE).read_bytes()).serial_number
        writer.write(b"still here")  # the connection made before goes on with its certificate
        assert await asyncio.wait_for(reader.readexactly(10), 10) == b"still here"
        for w in (writer, second_writer):
            w.close()


async def test_the_ca_is_warned_about_a_year_before_its_end_naming_the_rotation(tmp_path: Path):
    settings = HubSettings(state_dir=tmp_path)  # an anonymous broker: only the CA to look at
    identity = HubIdentity.load_or_create(tmp_path)
    end = identity.ca_certificate.not_valid_after_utc
    clock = Clock(end - dt.timedelta(days=366))
    keeper = CertificateKeeper(settings, identity, broker_files=None, serve_https=False, clock=clock, interval=3600)
    await keeper.start()
    assert keeper.warnings == []
    clock.now = end - dt.timedelta(days=364, hours=12)
    await keeper.check()
    (warning,) = keeper.warnings
    assert "The hub's CA certificate" in warning and "in 364 days" in warning and "'edgehub ca rotate'" in warning
    (ca,) = keeper.describe()["certificates"]
    assert ca["name"] == "ca" and ca["renewed_by"] == "operator: edgehub ca rotate"


async def test_the_inventory_lists_each_node_certificate_and_sums_them_up(tmp_path: Path):
    settings = HubSettings(state_dir=tmp_path)
    identity = HubIdentity.load_or_create(tmp_path)
    pems = []
    for name, days in (("n1", 90), ("n2", 20), ("n3", 1)):
        csr = make_csr(Ed25519PrivateKey.generate(), name)
        pems.append((name, identity.sign_node_csr(csr, node=name, lifetime=dt.timedelta(days=days))))
    pems.append(("gone", ""))  # reset: no certificate
    clock = Clock(dt.datetime.now(dt.UTC) + dt.timedelta(days=2))

    async def nodes() -> list[tuple[str, str]]:
        return pems

    keeper = CertificateKeeper(settings, identity, broker_files=None, serve_https=False,
                               hooks=KeeperHooks(node_certificates=nodes), clock=clock, interval=3600)
    await keeper.start()
    view = keeper.describe()
    assert [c["name"] for c in view["certificates"]] == ["ca", "node/n3", "node/n2", "node/n1"]
    assert all(c["renewed_by"] == "agent" for c in view["certificates"][1:])
    assert view["nodes"]["certificates"] == 3 and view["nodes"]["soonest"]["name"] == "node/n3"
    assert view["nodes"][f"expiring_within_{WARN_DAYS}_days"] == 1 and view["nodes"]["expired"] == 1
    ends, summary = keeper.gauges()
    assert set(ends) == {"ca"} and summary.soonest is not None and summary.soonest.name == "node/n3"
    assert [h.name for h in node_certificates([("x", "not a certificate")])] == []


def test_the_hub_can_renew_only_a_broker_whose_directory_it_knows_and_finds_whole(setup: Setup):
    state = setup.settings.state_dir
    assert broker_renewal_blocker(setup.files, state) is None  # this test runs as root, or as the owner
    assert "broker-files.json is missing" in (broker_renewal_blocker(None, state) or "")
    setup.files.certificate_pair[1].unlink()
    assert broker_renewal_blocker(setup.files, state) == f"{setup.files.certificate_pair[1]} is missing"


def test_broker_files_from_before_name_the_certificate_beside_the_list_and_are_written_with_it(tmp_path: Path):
    (tmp_path / BROKER_FILES).write_text(json.dumps({"crl_file": "/b/revoked.crl", "pid_file": "/b/mosquitto.pid"}))
    old = BrokerFiles.load(tmp_path)
    assert old is not None and old.certificate_pair == (Path("/b/broker.crt"), Path("/b/broker.key"))
    old.save(tmp_path)
    saved = json.loads((tmp_path / BROKER_FILES).read_text())
    assert saved["cert_file"] == "/b/broker.crt" and saved["key_file"] == "/b/broker.key"
    assert BrokerFiles.load(tmp_path) == BrokerFiles(Path("/b/revoked.crl"), Path("/b/mosquitto.pid"),
                                                     Path("/b/broker.crt"), Path("/b/broker.key"))
