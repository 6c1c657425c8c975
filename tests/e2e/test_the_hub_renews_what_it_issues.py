"""Nothing the hub issues expires while the fleet runs: the calendar moved with libfaketime.

The README's commands (``edgehub mosquitto-config``, ``mosquitto -c``, ``edgehub serve``; the test's
settings file only shortens the certificate check to a second) run the broker and the hub on day 0.
Both are then started again with their calendar moved (libfaketime's ``FAKETIME=+Ns``, the same offset
for both: the certificates the hub issues start at its own now, which the broker must not take for the
future) to 20 seconds before the hub's MQTT certificate is due, a little after the broker's (each a third
of 365 days before its end, about day 243). While they run, the hub re-issues the broker's certificate
and signals the broker, which serves it to the next connection, and re-issues its own MQTT certificate
and reconnects with it. Then, with the hub not knowing the broker's directory (no
``STATE/broker-files.json``), 33 and 28 days before the broker's new certificate ends: the hub warns
only in the second, naming the command.

The calendar is moved by restarting the processes, as an operator would find them after the days went
by: libfaketime 0.9.10 (Debian bookworm) fails Python's ``time.sleep`` with EINVAL when only the wall
clock is faked (FAKETIME_DONT_FAKE_MONOTONIC), and a calendar moved under a running process moves its
monotonic clock too, which fires every timer at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import shutil
import ssl
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from cryptography import x509

from edgehub.broker_revocations import BROKER_FILES
from edgehub.certificates import served_certificate
from edgekit.mqtt import BrokerAddress
from edgesim.fleet import Hub, Mosquitto, wait_until

pytestmark = pytest.mark.timeout(180)

FAKETIME_LIBRARY = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
# How long before the hub's MQTT certificate is due the moved calendar starts: room for both to start.
LEAD_SECONDS = 20


class Calendar:
    """A process environment that moves the calendar ``offset`` seconds ahead (none: the real one)."""

    offset = 0

    def environment(self) -> dict[str, str]:
        return {"LD_PRELOAD": FAKETIME_LIBRARY, "FAKETIME": f"+{self.offset}s"} if self.offset else {}


class DatedMosquitto(Mosquitto):
    def __init__(self, calendar: Calendar, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calendar = calendar

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        super()._spawn(argv, {**(env or {}), **self.calendar.environment()})


class DatedHub(Hub):
    def __init__(self, calendar: Calendar, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calendar = calendar

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        super()._spawn(argv, {**(env or {}), **self.calendar.environment()})

    def describe(self) -> dict[str, Any]:
        return {c["name"]: c for c in self.ctl_json("describe", "hub")["certificates"]}

    def metric(self, name: str) -> float:
        token = self.admin_token_path.read_text().strip()
        request = urllib.request.Request(self.url + "/metrics", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read().decode()
        return float(next(line.split()[1] for line in text.splitlines() if line.startswith(name + " ")))


@pytest.fixture
def calendar() -> Calendar:
    return Calendar()


@pytest.fixture
def processes(tmp_path: Path, calendar: Calendar) -> Iterator[tuple[DatedMosquitto, DatedHub]]:
    # Where the broker's account reaches (pytest's temporary directory is root's alone): the broker runs as
    # ``mosquitto``, and the hub must keep its files readable to it.
    reachable = Path(tempfile.mkdtemp(prefix="edgecollab-calendar-"))
    reachable.chmod(0o755)
    config = tmp_path / "hub.yaml"
    config.write_text("certificate_check_seconds: 1\n")
    broker = DatedMosquitto(calendar, reachable / "broker", hub_state=Hub.state_dir_of(tmp_path / "hub"))
    hub = DatedHub(calendar, tmp_path / "hub", broker.url, config=config)
    try:
        yield broker, hub
    finally:
        hub.stop()
        broker.stop()
        shutil.rmtree(reachable, ignore_errors=True)


def certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def hub_state(broker: Mosquitto) -> dict[str, Any]:
    """The hub's retained ``ec/v1/hub/state``, read with the test's observer identity (the broker's
    certificate is not checked: it starts on the moved calendar, in this process's future)."""
    observer = broker.identity()
    assert observer is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.load_cert_chain(observer.cert_file, observer.key_file)

    async def read() -> dict[str, Any]:
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="observer.edgesim", tls_context=context,
                                  timeout=10) as mqtt:
            await mqtt.subscribe("ec/v1/hub/state", qos=1)
            async with asyncio.timeout(10):
                message = await anext(aiter(mqtt.messages))
            return json.loads(bytes(message.payload))

    return asyncio.run(read())


def test_the_hub_renews_its_own_and_the_brokers_certificates_and_warns_where_it_cannot(
        processes: tuple[DatedMosquitto, DatedHub], calendar: Calendar):
    broker, hub = processes
    broker.start()
    hub.start()
    cert_file = broker.config_dir / "broker.crt"
    first_broker, first_hub = certificate(cert_file), certificate(hub.state_dir / "hub-mqtt.crt")
    day0 = hub.describe()
    assert day0["broker"]["serial"] == format(first_broker.serial_number, "x")
    assert day0["hub_mqtt"]["serial"] == format(first_hub.serial_number, "x")
    assert day0["broker"]["renewed_by"] == "hub" and 364 < day0["broker"]["days_left"] <= 365
    hub.stop()
    broker.stop()

    # --- day ~243: both come due while the hub runs -------------------------------------------------------
    start, end = first_hub.not_valid_before_utc, first_hub.not_valid_after_utc
    due = start + (end - start) * 2 / 3
    calendar.offset = int((due - dt.datetime.now(dt.UTC)).total_seconds()) - LEAD_SECONDS
    broker.start()
    hub.start()
    assert certificate(hub.state_dir / "hub-mqtt.crt") == first_hub, (
        "the hub's MQTT certificate was due when the hub started: it took longer than "
        f"{LEAD_SECONDS} s to start, so this test no longer sees a renewal while it runs")
    # Its API answers before its MQTT session is up (a loaded machine shows it): counted from its first connect.
    connections_before = wait_until(lambda: hub.metric("edgecollab_mqtt_connections_total"), timeout=15,
                                    what="the hub's first connection to the broker on the moved calendar")

    def renewed() -> dict[str, Any] | None:
        view = hub.describe()
        done = (view["broker"]["serial"] != day0["broker"]["serial"]
                and view["hub_mqtt"]["serial"] != day0["hub_mqtt"]["serial"])
        return view if done else None

    view = wait_until(renewed, timeout=LEAD_SECONDS + 30, what="the hub to renew the broker's and its certificate")
    second_broker = certificate(cert_file)
    assert view["broker"]["serial"] == format(second_broker.serial_number, "x")  # what the broker serves
    # A fresh TLS connection gets the new certificate: it ends past day 365, where the first one ended.
    served = served_certificate(BrokerAddress.parse(broker.url))
    assert served == second_broker and served.not_valid_after_utc > first_broker.not_valid_after_utc
    assert served.not_valid_after_utc - first_broker.not_valid_after_utc > dt.timedelta(days=240)
    assert 364 < view["broker"]["days_left"] <= 365 and 364 < view["hub_mqtt"]["days_left"] <= 365
    assert view["broker"]["renewed_by"] == "hub" and view["hub_mqtt"]["renewed_by"] == "hub"
    # The broker's account still reads its files (the hub kept their owner and mode).
    assert (cert_file.stat().st_uid, (broker.config_dir / "broker.key").stat().st_uid) == \
           (broker.config_dir.stat().st_uid,) * 2
    # The hub reconnected with its new certificate and is online; edgectl works, with nothing to warn about.
    wait_until(lambda: hub.metric("edgecollab_mqtt_connections_total") == connections_before + 1, timeout=15,
               what="the hub to reconnect with its new certificate")
    state = wait_until(lambda: (s := hub_state(broker))["online"] and s, timeout=15, what="the hub online")
    assert state["online"] is True
    nodes = hub.ctl("get", "nodes")
    assert nodes.returncode == 0 and "warning" not in nodes.stderr
    assert hub.api("/healthz")["warnings"] == []
    assert "Reloading config." in broker.log_tail(400)
    hub.stop()
    broker.stop()

    # --- the hub does not know the broker's directory: a warning from 30 days before the end ---------------
    renewed_end = second_broker.not_valid_after_utc
    for days_left, warned in ((33, False), (28, True)):
        calendar.offset = int((renewed_end - dt.timedelta(days=days_left) - dt.datetime.now(dt.UTC)).total_seconds())
        broker.start()  # (mosquitto-config, run again as the harness starts it, writes broker-files.json)
        (hub.state_dir / BROKER_FILES).unlink()
        hub.start()
        warnings = hub.api("/healthz")["warnings"]
        about_broker = [w for w in warnings if w.startswith("The broker's certificate")]
        if not warned:
            assert about_broker == [], warnings
        else:
            (warning,) = about_broker
            # 28 days less the seconds the two took to start
            assert re.search(rf"expires on \S+ \(in ({days_left - 1}|{days_left}) days\)", warning), warning
            assert "the hub cannot renew it" in warning
            assert f"{hub.state_dir / BROKER_FILES} is missing" in warning
            assert f"edgehub mosquitto-config --state {hub.state_dir} --listen 127.0.0.1:{broker.port}" in warning
            assert "SIGHUP" in warning
            nodes = hub.ctl("get", "nodes")
            assert nodes.returncode == 0 and f"warning: {warning[:60]}" in nodes.stderr
            (broker_entry,) = [c for c in hub.ctl_json("describe", "hub")["certificates"] if c["name"] == "broker"]
            assert broker_entry["renewed_by"].startswith("operator: edgehub mosquitto-config")
            assert certificate(cert_file) == second_broker  # not renewed: the hub does not know it
        hub.stop()
        broker.stop()
