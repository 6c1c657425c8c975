"""A node keeps the hub's CAs (one, or two during a rotation) and which one issues, and knows its certificate's.

``edgeagent.trust`` (standard library only: a running agent does not load
``cryptography``) and the issuer in the certificate's record
(``edgeagent.certificate``). Hub CAs from ``edgehub.hub_cas``'s real steps.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeagent import certificate
from edgeagent.identity import NodeIdentity, make_csr
from edgeagent.trust import NodeTrust, TrustError, bundle_fingerprints, checked
from edgehub.hub_cas import begun, switched
from edgehub.identity import HubIdentity


@pytest.fixture
def hub(tmp_path: Path) -> HubIdentity:
    return HubIdentity.load_or_create(tmp_path / "hub")


def node_identity(hub: HubIdentity) -> NodeIdentity:
    return NodeIdentity(node="n1", pool="p", labels={}, hub_url="https://127.0.0.1:9", mqtt_url="mqtts://127.0.0.1:9",
                        hub_public_key=hub.public_key_pem, ca_certificate=hub.trust_bundle_pem, generation=1,
                        issuing_ca=hub.issuing_ca_fingerprint)


def test_fingerprints_are_the_hubs_without_cryptography(hub: HubIdentity, tmp_path: Path) -> None:
    hub.replace_cas(begun(tmp_path / "hub", hub.cas))
    assert bundle_fingerprints(hub.trust_bundle_pem) == [ca.fingerprint for ca in hub.cas.trusted]
    assert checked(hub.trust_bundle_pem, hub.issuing_ca_fingerprint) == [ca.fingerprint for ca in hub.cas.trusted]
    with pytest.raises(TrustError, match="not PEM certificates only"):
        bundle_fingerprints(hub.trust_bundle_pem + "garbage\n")
    with pytest.raises(TrustError, match="not PEM certificates only"):
        bundle_fingerprints("")
    with pytest.raises(TrustError, match="more than a hub trusts at once"):
        bundle_fingerprints(hub.ca_pem * 9)
    with pytest.raises(TrustError, match="is not one of the CAs given"):
        checked(hub.ca_pem, hub.cas.trusted[-1].fingerprint)
    broken = hub.ca_pem.replace(hub.ca_pem.splitlines()[3], "A" * len(hub.ca_pem.splitlines()[3]))
    with pytest.raises(TrustError):
        checked(broken, "")


async def test_the_node_saves_what_the_hub_says_and_tells_who_listens(hub: HubIdentity, tmp_path: Path) -> None:
    state = tmp_path / "node"
    state.mkdir()
    identity = node_identity(hub)
    identity.save(state)
    trust = NodeTrust(state, identity)
    seen: list[NodeIdentity] = []
    trust.on_change(seen.append)
    assert not await trust.take(hub.trust_bundle_pem, hub.issuing_ca_fingerprint, source="test"), "nothing changed"

    hub.replace_cas(begun(tmp_path / "hub", hub.cas))
    assert await trust.take(hub.trust_bundle_pem, hub.issuing_ca_fingerprint, source="test")
    saved = NodeIdentity.load(state)
    assert saved == trust.identity == seen[-1] and len(bundle_fingerprints(saved.ca_certificate)) == 2
    assert saved.hub_public_key == identity.hub_public_key and saved.generation == 1

    hub.replace_cas(switched(tmp_path / "hub", hub.cas))
    assert await trust.take(hub.trust_bundle_pem, hub.issuing_ca_fingerprint, source="test")
    assert NodeIdentity.load(state).issuing_ca == hub.cas.trusted[-1].fingerprint and len(seen) == 2

    with pytest.raises(TrustError):
        await trust.take("not a certificate", "", source="test")
    assert NodeIdentity.load(state) == trust.identity == seen[-1], "what cannot be used is not saved"


def test_the_record_names_the_ca_that_issued_the_certificate(hub: HubIdentity, tmp_path: Path) -> None:
    state = tmp_path / "node"
    state.mkdir()
    key = Ed25519PrivateKey.generate()
    old = hub.issuing_ca_fingerprint
    (state / "node.crt").write_text(hub.sign_node_csr(make_csr(key, "n1"), node="n1", lifetime=dt.timedelta(days=9)))
    hub.replace_cas(begun(tmp_path / "hub", hub.cas))
    node_identity(hub).save(state)
    assert certificate.record(state).issuer_sha256 == old
    assert json.loads((state / certificate.VALIDITY_FILE).read_text())["issuer_sha256"] == old

    hub.replace_cas(switched(tmp_path / "hub", hub.cas))
    (state / "node.crt").write_text(hub.sign_node_csr(make_csr(key, "n1"), node="n1", lifetime=dt.timedelta(days=9)))
    assert certificate.validity(state).issuer_sha256 == hub.issuing_ca_fingerprint != old

    # A record from before records named the issuer is read again from the certificate.
    record = json.loads((state / certificate.VALIDITY_FILE).read_text())
    del record["issuer_sha256"]
    (state / certificate.VALIDITY_FILE).write_text(json.dumps(record))
    assert certificate.validity(state).issuer_sha256 == hub.issuing_ca_fingerprint
    assert "issuer_sha256" in json.loads((state / certificate.VALIDITY_FILE).read_text())
    # A certificate of none of the CAs the node trusts: no issuer, which no issuing CA is.
    assert certificate.record(state, trusted=hub.cas.trusted[0].pem).issuer_sha256 == ""
