"""The join token: ``ec1.<id>.<secret>.<pin>``, the pin the SHA-256 of the hub CA's DER; three parts still parse."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from edgehub.errors import JoinRefused
from edgehub.identity import HubIdentity
from edgehub.tokens import new_token, parse_token
from edgeprotocol.enrollment import JoinToken, TokenFormatError, parse_join_token, pem_fingerprint

PIN = "0123456789abcdef" * 4


def test_a_token_with_a_pin_round_trips_and_the_hub_drops_the_pin():
    token = parse_join_token(f"ec1.abc123.s3cr-t_x.{PIN.upper()}")
    assert token == JoinToken(token_id="abc123", secret="s3cr-t_x", ca_pin=PIN)
    assert str(token) == f"ec1.abc123.s3cr-t_x.{PIN}"
    assert parse_token(str(token)) == JoinToken(token_id="abc123", secret="s3cr-t_x")
    assert str(token.without_pin()) == "ec1.abc123.s3cr-t_x"


def test_a_token_of_three_parts_as_older_hubs_printed_still_parses():
    assert parse_join_token(" ec1.abc123.secret\n") == JoinToken(token_id="abc123", secret="secret")
    fresh = new_token()
    assert fresh.ca_pin is None and parse_token(str(fresh.with_pin(PIN))) == fresh


@pytest.mark.parametrize("text", ["ec1.abc.secret.short", f"ec2.abc.secret.{PIN}", "ec1..secret", "ec1.abc",
                                  f"ec1.abc.secret.{PIN}.more", f"ec1.abc.secret.{PIN[:-1]}g"])
def test_a_malformed_token_is_refused(text: str):
    with pytest.raises(TokenFormatError, match="token is malformed"):
        parse_join_token(text)
    with pytest.raises(JoinRefused, match="token is malformed"):
        parse_token(text)


def test_the_pin_is_the_sha256_of_the_ca_certificate_der_as_openssl_prints_it(tmp_path: Path):
    hub = HubIdentity.load_or_create(tmp_path)
    der = hub.ca_certificate.public_bytes(serialization.Encoding.DER)
    assert hub.ca_fingerprint == pem_fingerprint(hub.ca_pem) == hashlib.sha256(der).hexdigest()
    openssl = subprocess.run(["openssl", "x509", "-in", str(tmp_path / "hub-ca.crt"), "-noout", "-fingerprint",
                              "-sha256"], capture_output=True, text=True, check=True).stdout
    assert openssl.strip().split("=", 1)[1].replace(":", "").lower() == hub.ca_fingerprint
