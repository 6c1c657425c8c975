"""The record of the node certificate's validity (``node.crt.json``, what a running agent reads instead of the
certificate) always gives the dates of the certificate on disk: a replaced certificate, a broken or missing
record are read from the certificate itself, and the record is written again.

Real certificates from a real hub CA (``edgehub.identity``)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeagent import certificate
from edgeagent.cli import certificate_summary
from edgeagent.identity import make_csr
from edgehub.identity import HubIdentity


@pytest.fixture
def hub(tmp_path: Path) -> HubIdentity:
    return HubIdentity.load_or_create(tmp_path / "hub")


def install(hub: HubIdentity, state: Path, days: float) -> x509.Certificate:
    """A new certificate of ``days`` in ``state/node.crt``, as join or a renewal writes it (no record yet)."""
    pem = hub.sign_node_csr(make_csr(Ed25519PrivateKey.generate(), "n1"), node="n1", lifetime=dt.timedelta(days=days))
    state.mkdir(mode=0o700, exist_ok=True)
    (state / "node.crt").write_text(pem)
    return x509.load_pem_x509_certificate(pem.encode())


def dates(cert: x509.Certificate | certificate.Validity) -> tuple[int, dt.datetime, dt.datetime]:
    return cert.serial_number, cert.not_valid_before_utc, cert.not_valid_after_utc


def test_the_record_written_with_a_certificate_gives_its_serial_and_dates(hub: HubIdentity, tmp_path: Path):
    state = tmp_path / "node"
    cert = install(hub, state, days=90)
    assert dates(certificate.record(state)) == dates(cert)
    record = state / certificate.VALIDITY_FILE
    assert stat.S_IMODE(record.stat().st_mode) == 0o644  # as node.crt: nothing secret in it
    assert json.loads(record.read_text())["serial"] == format(cert.serial_number, "x")
    validity = certificate.validity(state)
    assert dates(validity) == dates(cert)
    assert validity.lifetime_seconds == (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds()


def test_a_certificate_replaced_without_its_record_is_read_and_recorded_again(hub: HubIdentity, tmp_path: Path):
    state = tmp_path / "node"
    install(hub, state, days=90)
    certificate.record(state)
    # A new join or a crash between a renewed certificate and its record: the record describes the old one.
    new = install(hub, state, days=30)
    assert dates(certificate.validity(state)) == dates(new)
    assert json.loads((state / certificate.VALIDITY_FILE).read_text())["serial"] == format(new.serial_number, "x")


def test_a_missing_or_broken_record_is_replaced_from_the_certificate(hub: HubIdentity, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture):
    state = tmp_path / "node"
    cert = install(hub, state, days=90)
    assert not (state / certificate.VALIDITY_FILE).exists()  # a node that joined before the record
    assert dates(certificate.validity(state)) == dates(cert)
    assert (state / certificate.VALIDITY_FILE).exists()
    (state / certificate.VALIDITY_FILE).write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="edgeagent.certificate"):
        assert dates(certificate.validity(state)) == dates(cert)
    assert f"Ignoring {state / certificate.VALIDITY_FILE}" in caplog.text
    assert json.loads((state / certificate.VALIDITY_FILE).read_text())["serial"] == format(cert.serial_number, "x")


def test_a_record_that_cannot_be_written_leaves_the_dates_right_and_says_so(hub: HubIdentity, tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture):
    state = tmp_path / "node"
    cert = install(hub, state, days=90)
    (state / certificate.VALIDITY_FILE).mkdir()  # nothing can be renamed over it (whoever runs the test)
    with caplog.at_level(logging.WARNING, logger="edgeagent.certificate"):
        assert dates(certificate.validity(state)) == dates(cert)
    assert "Could not record the node certificate's validity" in caplog.text


def test_a_missing_or_unreadable_certificate_is_an_error_whatever_the_record_says(hub: HubIdentity, tmp_path: Path):
    state = tmp_path / "node"
    install(hub, state, days=90)
    certificate.record(state)
    (state / "node.crt").write_text("garbage")
    with pytest.raises(ValueError):
        certificate.validity(state)
    (state / "node.crt").unlink()
    with pytest.raises(FileNotFoundError):
        certificate.validity(state)


def test_status_reads_the_dates_without_writing_the_record(hub: HubIdentity, tmp_path: Path):
    state = tmp_path / "node"
    cert = install(hub, state, days=90)
    summary = certificate_summary(state)
    assert summary is not None and summary["serial"] == format(cert.serial_number, "x")
    assert not (state / certificate.VALIDITY_FILE).exists()
