"""The hub's CA set on disk: the rotation's steps, their refusals, which CA issues, and what a crash leaves.

Files only (``edgehub.hub_cas``, ``HubIdentity``): no hub runs here. What the
running hub does with each step is ``test_ca_rotation.py``'s.
"""

from __future__ import annotations

import datetime as dt
import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgehub.broker_revocations import build_crls, ensure_crl, write_crl, write_trust
from edgehub.hub_cas import (
    BUNDLE_FILE,
    CA_SET_FILE,
    CaSetError,
    StepRefused,
    begun,
    finished,
    load_ca_set,
    switched,
)
from edgehub.identity import HubIdentity
from edgeprotocol.enrollment import certificate_fingerprint


def bundle_of(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def crls_of(data: bytes) -> list[x509.CertificateRevocationList]:
    end = b"-----END X509 CRL-----"
    return [x509.load_pem_x509_crl(part + end) for part in data.split(end) if part.strip()]


def issued_by_whom(identity: HubIdentity) -> str:
    """The SHA-256 of the CA that signs what ``identity`` issues now, found by verifying against each trusted CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = identity.issue(key.public_key(), "probe", usage="client", lifetime=dt.timedelta(days=1))
    (ca,) = [ca for ca in identity.cas.trusted if ca.issued(certificate)]
    return ca.fingerprint


def test_a_state_directory_that_never_rotated_has_one_ca_whose_key_is_the_hub_key(tmp_path: Path) -> None:
    identity = HubIdentity.load_or_create(tmp_path)
    cas = identity.cas
    assert cas.phase == "steady" and cas.generation == 0 and len(cas.trusted) == 1
    assert cas.issuing.certificate.public_key() == identity.key.public_key()
    assert not (tmp_path / CA_SET_FILE).exists(), "nothing is written for a hub that never rotated"
    assert identity.trust_bundle_pem == identity.ca_pem == (tmp_path / BUNDLE_FILE).read_text()
    assert identity.issuing_ca_fingerprint == identity.ca_fingerprint == certificate_fingerprint(
        bundle_of(tmp_path / BUNDLE_FILE)[0])
    again = HubIdentity.load_or_create(tmp_path)
    assert again.ca_fingerprint == identity.ca_fingerprint


def test_begin_switch_finish_move_issuing_and_trust_step_by_step(tmp_path: Path) -> None:
    identity = HubIdentity.load_or_create(tmp_path)
    old = identity.cas.issuing
    first_signing_key = identity.public_key_pem

    after_begin = begun(tmp_path, identity.cas)
    identity.replace_cas(after_begin)
    new = after_begin.trusted[-1]
    assert after_begin.phase == "begun" and after_begin.generation == 1
    assert [ca.fingerprint for ca in after_begin.trusted] == [old.fingerprint, new.fingerprint]
    assert new.name.startswith("edgecollab hub CA 20") and new.name != old.name
    assert new.certificate.public_key() != identity.key.public_key(), "the new CA has a key of its own"
    key_file = tmp_path / new.key_file
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert new.certificate.not_valid_after_utc - new.certificate.not_valid_before_utc > dt.timedelta(days=3649)
    assert [certificate_fingerprint(c) for c in bundle_of(tmp_path / BUNDLE_FILE)] == [old.fingerprint,
                                                                                         new.fingerprint]
    assert issued_by_whom(identity) == old.fingerprint, "begin changes what is trusted, not what issues"
    assert identity.ca_fingerprint == old.fingerprint

    after_switch = switched(tmp_path, identity.cas)
    identity.replace_cas(after_switch)
    assert after_switch.phase == "switched" and after_switch.generation == 2
    assert issued_by_whom(identity) == new.fingerprint
    assert identity.ca_fingerprint == identity.issuing_ca_fingerprint == new.fingerprint
    assert len(bundle_of(tmp_path / BUNDLE_FILE)) == 2, "the old CA stays trusted until finish"

    after_finish = finished(tmp_path, identity.cas)
    identity.replace_cas(after_finish)
    assert after_finish.phase == "steady" and after_finish.generation == 3
    assert [ca.fingerprint for ca in after_finish.trusted] == [new.fingerprint]
    assert [r.fingerprint for r in after_finish.retired] == [old.fingerprint]
    assert [certificate_fingerprint(c) for c in bundle_of(tmp_path / BUNDLE_FILE)] == [new.fingerprint]
    assert identity.public_key_pem == first_signing_key, "the key nodes pin never changes"

    # What a restarted hub reads back is the same set.
    reloaded = HubIdentity.load_or_create(tmp_path)
    assert reloaded.cas.phase == "steady" and reloaded.cas.generation == 3
    assert reloaded.ca_fingerprint == new.fingerprint and reloaded.public_key_pem == first_signing_key
    assert issued_by_whom(reloaded) == new.fingerprint
    assert [r.name for r in reloaded.cas.retired] == [old.name]


def test_each_step_is_refused_out_of_order_saying_what_to_run(tmp_path: Path) -> None:
    identity = HubIdentity.load_or_create(tmp_path)
    with pytest.raises(StepRefused, match="no new CA to switch to.*'edgehub ca rotate begin' starts one"):
        switched(tmp_path, identity.cas)
    with pytest.raises(StepRefused, match="no old CA to retire.*'edgehub ca rotate begin'"):
        finished(tmp_path, identity.cas)
    cas = begun(tmp_path, identity.cas)
    with pytest.raises(StepRefused, match="under way already.*'edgehub ca rotate switch'"):
        begun(tmp_path, cas)
    with pytest.raises(StepRefused, match="no old CA to retire.*'edgehub ca rotate switch'"):
        finished(tmp_path, cas)
    cas = switched(tmp_path, cas)
    with pytest.raises(StepRefused, match="under way already.*'edgehub ca rotate finish'"):
        begun(tmp_path, cas)
    with pytest.raises(StepRefused, match="no new CA to switch to.*'edgehub ca rotate finish'"):
        switched(tmp_path, cas)
    # A refusal changes nothing on disk.
    assert load_ca_set(tmp_path, identity.key).generation == cas.generation == 2


def test_a_second_rotation_on_the_same_day_makes_a_ca_of_another_name(tmp_path: Path) -> None:
    identity = HubIdentity.load_or_create(tmp_path)
    cas = finished(tmp_path, switched(tmp_path, begun(tmp_path, identity.cas)))
    second = finished(tmp_path, switched(tmp_path, begun(tmp_path, cas)))
    names = [ca.name for ca in second.trusted] + [r.name for r in second.retired]
    assert len(set(names)) == 3, names
    identity.replace_cas(second)
    assert issued_by_whom(identity) == second.issuing.fingerprint
    # The retired CA of the second rotation had a key of its own; the hub key stays the first CA's.
    assert HubIdentity.load_or_create(tmp_path).cas.issuing.fingerprint == second.issuing.fingerprint


def test_the_bundle_is_written_again_when_a_crash_left_it_behind(tmp_path: Path) -> None:
    identity = HubIdentity.load_or_create(tmp_path)
    cas = begun(tmp_path, identity.cas)
    # As if the hub stopped between ca-set.json and hub-ca.crt (or a restore put the old CA file back).
    (tmp_path / BUNDLE_FILE).write_text(cas.trusted[0].pem)
    HubIdentity.load_or_create(tmp_path)
    assert len(bundle_of(tmp_path / BUNDLE_FILE)) == 2


def test_a_begin_that_crashed_before_its_commit_leaves_the_old_set(tmp_path: Path) -> None:
    identity = HubIdentity.load_or_create(tmp_path)
    cas = begun(tmp_path, identity.cas)
    # Undo the commit only: the new CA's files stay, as after a crash just before ca-set.json was written.
    (tmp_path / CA_SET_FILE).unlink()
    (tmp_path / BUNDLE_FILE).write_text(cas.trusted[0].pem)
    again = HubIdentity.load_or_create(tmp_path)
    assert again.cas.phase == "steady" and again.ca_fingerprint == identity.ca_fingerprint
    assert begun(tmp_path, again.cas).phase == "begun", "the next begin goes through"


def test_ca_files_that_do_not_fit_are_named(tmp_path: Path) -> None:
    identity = HubIdentity.load_or_create(tmp_path)
    cas = begun(tmp_path, identity.cas)
    new = cas.trusted[-1]
    document = json.loads((tmp_path / CA_SET_FILE).read_text())

    (tmp_path / new.cert_file).write_text(cas.trusted[0].pem)  # another CA's certificate in its place
    with pytest.raises(CaSetError, match=f"{new.cert_file}.* has SHA-256 .* but .*ca-set.json names"):
        HubIdentity.load_or_create(tmp_path)
    (tmp_path / new.cert_file).write_text(new.pem)

    own_key = (tmp_path / new.key_file).read_bytes()
    (tmp_path / new.key_file).write_bytes((tmp_path / "hub.key").read_bytes())  # the key of another CA
    with pytest.raises(CaSetError, match=f"is not the certificate of .*{new.key_file}"):
        HubIdentity.load_or_create(tmp_path)
    (tmp_path / new.key_file).write_bytes(own_key)
    assert HubIdentity.load_or_create(tmp_path).cas.phase == "begun"

    document["issuing"] = "0" * 64
    (tmp_path / CA_SET_FILE).write_text(json.dumps(document))
    with pytest.raises(CaSetError, match="ca-set.json lacks"):
        HubIdentity.load_or_create(tmp_path)
    (tmp_path / CA_SET_FILE).write_text("{not json")
    with pytest.raises(CaSetError, match="ca-set.json cannot be read"):
        HubIdentity.load_or_create(tmp_path)


def test_a_stored_certificate_of_the_old_ca_is_issued_again_after_the_switch(tmp_path: Path) -> None:
    identity = HubIdentity.load_or_create(tmp_path)
    key, cert = tmp_path / "svc.key", tmp_path / "svc.crt"
    assert identity.ensure_certificate(key, cert, "svc", usage="server", names=["127.0.0.1"]) == "there is none yet"
    identity.replace_cas(begun(tmp_path, identity.cas))
    assert identity.ensure_certificate(key, cert, "svc", usage="server", names=["127.0.0.1"]) is None
    identity.replace_cas(switched(tmp_path, identity.cas))
    why = identity.ensure_certificate(key, cert, "svc", usage="server", names=["127.0.0.1"])
    assert why is not None and "not issued by this hub's CA" in why
    issued = x509.load_pem_x509_certificate(cert.read_bytes())
    assert identity.cas.issuing.issued(issued)


def test_the_broker_gets_a_revocation_list_per_trusted_ca_and_the_bundle(tmp_path: Path) -> None:
    identity = HubIdentity.load_or_create(tmp_path / "state")
    crl_file, ca_file = tmp_path / "revoked.crl", tmp_path / "ca.crt"
    write_crl(identity, crl_file, [(0x1234, 1_700_000_000.0)])
    assert write_trust(identity, ca_file) and not write_trust(identity, ca_file), "written only when it differs"
    identity.replace_cas(begun(tmp_path / "state", identity.cas))
    ensure_crl(identity, crl_file)  # the new CA has no list in it yet: all written again
    crls = crls_of(crl_file.read_bytes())
    assert sorted(c.issuer.rfc4514_string() for c in crls) == sorted(
        ca.certificate.subject.rfc4514_string() for ca in identity.cas.trusted)
    for crl, ca in zip(crls, identity.cas.trusted, strict=True):
        assert crl.is_signature_valid(ca.key.public_key())
    write_crl(identity, crl_file, [(0x1234, 1_700_000_000.0)])
    before = crl_file.read_bytes()
    ensure_crl(identity, crl_file)
    assert crl_file.read_bytes() == before, "a list of each CA is kept as it is"
    assert all(c.get_revoked_certificate_by_serial_number(0x1234) for c in crls_of(before))
    assert write_trust(identity, ca_file)
    assert [certificate_fingerprint(c) for c in bundle_of(ca_file)] == [ca.fingerprint for ca in identity.cas.trusted]
    assert build_crls(identity, []).count(b"BEGIN X509 CRL") == 2
    pem_key = serialization.load_pem_private_key((tmp_path / "state" / identity.cas.trusted[-1].key_file).read_bytes(),
                                                 password=None)
    assert pem_key.public_key() == identity.cas.trusted[-1].certificate.public_key()
