"""``GET /api/v1/time?nonce=HEX``: the hub's time and trust bundle, signed over the caller's nonce, for anyone.

A node checks the answer with the hub key it pinned at join and nothing else
(``edgeprotocol.hub_facts.open_facts``, PyNaCl): a changed field, another
nonce or another key's signature is refused.
"""

from __future__ import annotations

import secrets
import time

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hub_api import answer, refused

from edgehub.identity import HubIdentity
from edgehub.keys import IDENTITY
from edgeprotocol.errors import ProtocolError, SignatureError
from edgeprotocol.hub_facts import facts_answer, facts_payload, open_facts
from edgeprotocol.signing import load_public_key, public_key_pem


async def test_anyone_gets_the_hubs_time_and_trust_signed_over_their_nonce(
        hub: TestClient, stranger: aiohttp.ClientSession):
    identity: HubIdentity = hub.app[IDENTITY]
    nonce = secrets.token_hex(16)
    before = time.time()
    response = await stranger.get(f"/api/v1/time?nonce={nonce}")
    after = time.time()
    assert response.headers["Cache-Control"] == "no-store"
    body = await answer(response, 200)
    assert set(body) == {"time", "nonce", "ca_bundle", "issuing_ca", "signature"}
    facts = open_facts(body, load_public_key(identity.public_key_pem), nonce=nonce)
    assert before <= facts.time <= after and isinstance(body["time"], float)
    assert facts.ca_bundle == identity.ca_pem == identity.trust_bundle_pem
    assert facts.issuing_ca == identity.ca_fingerprint == identity.issuing_ca_fingerprint


@pytest.mark.parametrize("query", ["", "?nonce=", "?nonce=abc", f"?nonce={'A' * 32}", f"?nonce={'a' * 65}",
                                   f"?nonce={'g' * 32}"])
async def test_a_nonce_that_is_not_32_to_64_lower_case_hex_digits_is_refused(
        stranger: aiohttp.ClientSession, query: str):
    await refused(await stranger.get(f"/api/v1/time{query}"), 400, field="nonce")


async def test_only_get_is_open(stranger: aiohttp.ClientSession):
    nonce = secrets.token_hex(16)
    # Any other method is no open route: the operator token is asked for first, as for any unknown route.
    assert (await stranger.head(f"/api/v1/time?nonce={nonce}")).status == 401
    assert (await stranger.post(f"/api/v1/time?nonce={nonce}", json={})).status == 401


def signed(key: Ed25519PrivateKey, nonce: str, **change: object) -> dict[str, object]:
    facts = {"time": 1_900_000_000.25, "nonce": nonce, "ca_bundle": "-----BEGIN CERTIFICATE-----\n...",
             "issuing_ca": "ab" * 32}
    return {**facts_answer(**facts, signature=key.sign(facts_payload(**facts))), **change}  # type: ignore[arg-type]  # one dict, so **change can alter any fact


def test_a_node_refuses_an_answer_changed_replayed_or_signed_by_another_key():
    hub_key, nonce = Ed25519PrivateKey.generate(), secrets.token_hex(16)
    pinned = load_public_key(public_key_pem(hub_key.public_key()))
    assert open_facts(signed(hub_key, nonce), pinned, nonce=nonce).time == 1_900_000_000.25
    for changed in ({"time": 1_900_000_001.25}, {"ca_bundle": "-----BEGIN CERTIFICATE-----\nother"},
                    {"issuing_ca": "cd" * 32}, {"signature": "AAAA"}):
        with pytest.raises(SignatureError, match="not signed by the hub key this node pinned at join"):
            open_facts(signed(hub_key, nonce, **changed), pinned, nonce=nonce)
    with pytest.raises(SignatureError):
        open_facts(signed(Ed25519PrivateKey.generate(), nonce), pinned, nonce=nonce)
    # An answer to another request, signed and all: its time was the hub's then, not now.
    with pytest.raises(ProtocolError, match="echoes nonce .*, not the"):
        open_facts(signed(hub_key, secrets.token_hex(16)), pinned, nonce=nonce)


@pytest.mark.parametrize(("change", "field"), [({"time": "now"}, "'time'"), ({"time": True}, "'time'"),
                                               ({"time": float("nan")}, "'time'"), ({"time": -5}, "'time'"),
                                               ({"ca_bundle": 5}, "'ca_bundle'"), ({"ca_bundle": "x" * 70_000},
                                                                                   "'ca_bundle'"),
                                               ({"issuing_ca": "AB" * 32}, "'issuing_ca'"),
                                               ({"signature": None}, "'signature'")])
def test_a_malformed_answer_is_refused_naming_the_field(change: dict[str, object], field: str):
    hub_key, nonce = Ed25519PrivateKey.generate(), secrets.token_hex(16)
    with pytest.raises(ProtocolError, match=field):
        open_facts(signed(hub_key, nonce, **change), load_public_key(public_key_pem(hub_key.public_key())),
                   nonce=nonce)
    with pytest.raises(ProtocolError, match="not a JSON object"):
        open_facts(["time"], load_public_key(public_key_pem(hub_key.public_key())), nonce=nonce)


async def test_time_requests_over_the_rate_limit_are_refused_with_429(renewals_limited: TestClient):
    async with aiohttp.ClientSession(base_url=renewals_limited.make_url("")) as stranger:
        for _ in range(2):
            await answer(await stranger.get(f"/api/v1/time?nonce={secrets.token_hex(16)}"), 200)
        response = await stranger.get(f"/api/v1/time?nonce={secrets.token_hex(16)}")
        assert "too many hub time requests" in await refused(response, 429)
        assert int(response.headers["Retry-After"]) >= 1
