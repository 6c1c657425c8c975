"""The offline horizon: a node whose certificate expired less than ``offline_horizon_days`` ago renews it with
a proof by its key; beyond, it is refused naming the horizon and the cure; a revoked or reset node never.

The rules (``edgehub.renewal_rules``) take the time as an argument, so the
edges are checked to the second; the real hub on aiohttp's test server
checks them again with certificates its CA issued days or years in the past.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from hub_api import answer, refused, running_hub
from test_certificate_renewal import joined, key_of, renewal, stored_certificate

from edgehub.errors import RenewalRefused
from edgehub.keys import SETTINGS
from edgehub.renewal_rules import check_certificate_age, check_timestamp
from edgehub.settings import HubSettings
from edgeprotocol.enrollment import RENEWAL_WINDOW_SECONDS
from edgesim.fleet import Mosquitto

NOW = dt.datetime(2031, 5, 17, 12, 0, tzinfo=dt.UTC)


# --- the rules, with an injected clock -------------------------------------------------------------


def test_a_certificate_in_force_needs_no_horizon():
    assert check_certificate_age("n1", NOW + dt.timedelta(seconds=1), now=NOW, horizon_days=0) is None
    assert check_certificate_age("n1", NOW + dt.timedelta(days=80), now=NOW, horizon_days=400) is None


@pytest.mark.parametrize("ago", [dt.timedelta(0), dt.timedelta(seconds=1), dt.timedelta(days=60),
                                 dt.timedelta(days=400) - dt.timedelta(seconds=1)])
def test_a_certificate_that_expired_within_the_horizon_may_be_renewed(ago: dt.timedelta):
    note = check_certificate_age("n1", NOW - ago, now=NOW, horizon_days=400)
    assert note is not None and "within this hub's offline horizon of 400 days" in note
    assert (NOW - ago).isoformat() in note


@pytest.mark.parametrize(("ago", "shown"), [(dt.timedelta(days=400), "400 days ago"),
                                            (dt.timedelta(days=410, hours=3), "410 days ago"),
                                            (dt.timedelta(days=3650), "3650 days ago")])
def test_beyond_the_horizon_the_refusal_names_the_horizon_and_the_cure(ago: dt.timedelta, shown: str):
    with pytest.raises(RenewalRefused) as refusal:
        check_certificate_age("n1", NOW - ago, now=NOW, horizon_days=400)
    assert str(refusal.value) == (
        f"the certificate of node 'n1' expired at {(NOW - ago).isoformat()} ({shown}), beyond this hub's offline "
        "horizon of 400 days (offline_horizon_days); an operator can free the name with: edgectl node reset n1, "
        "and the node join again with a new token")


def test_a_horizon_of_zero_refuses_every_expired_certificate_and_fractions_count():
    with pytest.raises(RenewalRefused, match=r"\(0.0 days ago\), beyond this hub's offline horizon of 0 days"):
        check_certificate_age("n1", NOW, now=NOW, horizon_days=0)
    assert check_certificate_age("n1", NOW - dt.timedelta(hours=11), now=NOW, horizon_days=0.5) is not None
    with pytest.raises(RenewalRefused, match="offline horizon of 0.5 days"):
        check_certificate_age("n1", NOW - dt.timedelta(hours=12), now=NOW, horizon_days=0.5)


def test_the_request_time_must_be_within_the_window_of_the_hubs_clock():
    now = NOW.timestamp()
    for timestamp in (now, now - RENEWAL_WINDOW_SECONDS, now + RENEWAL_WINDOW_SECONDS):
        check_timestamp(int(timestamp), now=now)
    for timestamp in (now - RENEWAL_WINDOW_SECONDS - 1, now + RENEWAL_WINDOW_SECONDS + 1, 10**400, -(10**400)):
        with pytest.raises(RenewalRefused, match="a replay, or the node's clock is wrong") as refusal:
            check_timestamp(int(timestamp), now=now)
        assert len(str(refusal.value)) < 300  # a huge number is not echoed whole


# --- the setting ------------------------------------------------------------------------------------


def test_the_horizon_is_400_days_unless_the_settings_file_says_otherwise(tmp_path: Path):
    assert HubSettings(state_dir=tmp_path).offline_horizon_days == 400
    config = tmp_path / "hub.yaml"
    config.write_text("state_dir: state\noffline_horizon_days: 30\n")
    assert HubSettings.from_file(config).offline_horizon_days == 30
    assert HubSettings(state_dir=tmp_path, offline_horizon_days=0).offline_horizon_days == 0


@pytest.mark.parametrize("days", [-1, 3651, float("nan"), float("inf"), "400", True, None])
def test_a_horizon_out_of_bounds_is_refused_naming_the_key(tmp_path: Path, days: object):
    with pytest.raises(ValueError, match="offline_horizon_days .* must be from 0"):
        HubSettings(state_dir=tmp_path, offline_horizon_days=days)  # type: ignore[arg-type]  # wrong types on purpose: refused


# --- the hub, with certificates its CA issued in the past ------------------------------------------


def issued_in_the_past(hub: TestClient, state: Path, node: str, *, expired_days_ago: float) -> str:
    """A certificate of the hub's CA for the node's key, 90 days long, that ended ``expired_days_ago`` days ago
    (negative: it is still in force), put in the hub's store as the one the node holds."""
    state_dir = hub.app[SETTINGS].state_dir
    ca_key = serialization.load_pem_private_key((state_dir / "hub.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((state_dir / "hub-ca.crt").read_bytes())
    end = dt.datetime.now(dt.UTC) - dt.timedelta(days=expired_days_ago)
    pem = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node)]))
           .issuer_name(ca.subject).public_key(key_of(state).public_key()).serial_number(x509.random_serial_number())
           .not_valid_before(end - dt.timedelta(days=90)).not_valid_after(end)
           .sign(ca_key, algorithm=None)).public_bytes(serialization.Encoding.PEM).decode()  # type: ignore[arg-type]  # the hub CA's PEM key is Ed25519
    with contextlib.closing(sqlite3.connect(hub.app[SETTINGS].db_path)) as connection, connection:
        connection.execute("UPDATE nodes SET certificate = ? WHERE name = ?", (pem, node))
    return pem


@pytest.fixture
def hub_settings(tmp_path: Path, broker: Mosquitto) -> HubSettings:
    return HubSettings(state_dir=tmp_path / "state", mqtt_url=broker.url, offline_horizon_days=100)


@pytest.mark.parametrize("expired_days_ago", [1, 60, 99.9])
async def test_the_hub_renews_a_certificate_that_expired_within_its_horizon(
        hub: TestClient, stranger: aiohttp.ClientSession, tmp_path: Path, expired_days_ago: float):
    node, _, state = await joined(hub, tmp_path)
    old = issued_in_the_past(hub, state, node, expired_days_ago=expired_days_ago)
    renewed = await answer(await stranger.post(f"/api/v1/nodes/{node}/certificate",
                                               json=renewal(node, key_of(state))), 200)
    assert stored_certificate(hub, node) == renewed["certificate"] != old
    assert x509.load_pem_x509_certificate(renewed["certificate"].encode()).not_valid_after_utc > dt.datetime.now(dt.UTC)


@pytest.mark.parametrize("expired_days_ago", [100.1, 1000])
async def test_the_hub_refuses_a_certificate_that_expired_beyond_its_horizon_and_changes_nothing(
        hub: TestClient, stranger: aiohttp.ClientSession, tmp_path: Path, expired_days_ago: float):
    node, _, state = await joined(hub, tmp_path)
    old = issued_in_the_past(hub, state, node, expired_days_ago=expired_days_ago)
    error = await refused(await stranger.post(f"/api/v1/nodes/{node}/certificate",
                                              json=renewal(node, key_of(state))), 403)
    assert "beyond this hub's offline horizon of 100 days (offline_horizon_days)" in error
    assert f"edgectl node reset {node}, and the node join again with a new token" in error
    assert stored_certificate(hub, node) == old


async def test_beyond_the_horizon_a_stranger_learns_only_that_the_proof_is_wrong(
        hub: TestClient, stranger: aiohttp.ClientSession, tmp_path: Path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    node, _, state = await joined(hub, tmp_path)
    issued_in_the_past(hub, state, node, expired_days_ago=500)
    error = await refused(await stranger.post(f"/api/v1/nodes/{node}/certificate",
                                              json=renewal(node, Ed25519PrivateKey.generate())), 403)
    assert "does not verify against the current certificate" in error and "expired" not in error


@pytest.mark.parametrize("action", ["revoke", "reset"])
@pytest.mark.parametrize("expired_days_ago", [-80, 10, 99, 150, 1000])
async def test_a_revoked_or_reset_node_is_refused_at_any_age(
        hub: TestClient, stranger: aiohttp.ClientSession, tmp_path: Path, action: str, expired_days_ago: float):
    node, _, state = await joined(hub, tmp_path)
    issued_in_the_past(hub, state, node, expired_days_ago=expired_days_ago)
    await answer(await hub.post(f"/api/v1/nodes/{node}/{action}", json={}), 200)
    held = stored_certificate(hub, node)
    error = await refused(await stranger.post(f"/api/v1/nodes/{node}/certificate",
                                              json=renewal(node, key_of(state))), 403)
    assert ("is revoked" if action == "revoke" else "was reset") in error and "horizon" not in error
    assert stored_certificate(hub, node) == held


async def test_a_hub_with_no_horizon_refuses_a_certificate_a_second_past_its_end(tmp_path: Path, broker: Mosquitto):
    settings = HubSettings(state_dir=tmp_path / "strict", mqtt_url=broker.url, offline_horizon_days=0)
    async with running_hub(settings) as hub, aiohttp.ClientSession(base_url=hub.make_url("")) as stranger:
        node, _, state = await joined(hub, tmp_path)
        issued_in_the_past(hub, state, node, expired_days_ago=1 / 86400)
        error = await refused(await stranger.post(f"/api/v1/nodes/{node}/certificate",
                                                  json=renewal(node, key_of(state))), 403)
        assert "beyond this hub's offline horizon of 0 days" in error
