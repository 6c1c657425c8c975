"""A running node verifies, decrypts and stores an assignment and checks its certificate's renewal time without
loading ``cryptography`` (about 8 MiB of a ~40 MiB agent: bench/README.md, "Agent footprint").

A fresh interpreter takes the path ``edgeagent run`` takes with a state directory as ``edgeagent join`` leaves
it (the keys, a certificate from a real hub CA and the record of its validity): the CLI's parser, the podman
runtime, the agent built around it, the uplink's own message handler with the real local store (the hub's
signature checked, the bundle key unwrapped, the bundle decrypted and stored), and the certificate renewer's
check. A state directory from before the certificate's record costs one parse with ``cryptography``, and the
record it leaves makes the next start lean."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeagent import certificate
from edgeagent.identity import BUNDLE_KEY_FILE, NodeIdentity, make_csr
from edgehub.identity import HubIdentity
from edgeprotocol import Assignment, Bundle, bundle_crypto, topics
from edgeprotocol.messages import now
from edgeprotocol.signing import seal

MANIFESTS = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\ndata:\n  password: czNjcjN0\n"
TOPIC = topics.assignment("n1", "demo", "db")

SCRIPT = textwrap.dedent("""
    import asyncio, json, sys
    from pathlib import Path
    from edgeagent.agent import Agent, AgentSettings
    from edgeagent.cli import build_parser, runtime_from_args
    from edgeagent.health import NodeHealth
    from edgeagent.identity import NodeIdentity
    from edgeagent.renewal import CertificateRenewer
    from edgeagent.store import AgentStore
    from edgeagent.uplink import Uplink

    state, topic = Path(sys.argv[1]), sys.argv[2]

    async def main():
        args = build_parser().parse_args(["run", "--state-dir", str(state), "--runtime", "podman"])
        runtime = runtime_from_args(args, state)
        identity = NodeIdentity.load(state)
        settings = AgentSettings(state_dir=state)
        Agent(settings, identity, runtime)
        async with AgentStore(settings.db_path) as store:
            uplink = Uplink(settings, identity, store, runtime_name=runtime.name, health=NodeHealth(runtime),
                            on_assignment=lambda: None)
            await uplink._on_message(topic, (state / "assignment").read_bytes())
            stored = [r.manifests for r in await store.releases()]
        next_check = await CertificateRenewer(state, identity).check()
        return {"stored": stored, "next_check": next_check, "modules": sorted(sys.modules)}

    print(json.dumps(asyncio.run(main())))
""")


@pytest.fixture
def joined(tmp_path: Path) -> tuple[Path, x509.Certificate]:
    """A node's state directory as join leaves it, and an assignment for it sealed by its hub."""
    hub = HubIdentity.load_or_create(tmp_path / "hub")
    state = tmp_path / "node"
    state.mkdir(mode=0o700)
    key, bundle_key = Ed25519PrivateKey.generate(), bundle_crypto.new_node_key()
    (state / "node.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    (state / BUNDLE_KEY_FILE).write_bytes(bundle_crypto.private_key_pem(bundle_key))
    pem = hub.sign_node_csr(make_csr(key, "n1"), node="n1", lifetime=dt.timedelta(days=90))
    (state / "node.crt").write_text(pem)
    certificate.record(state)
    NodeIdentity(node="n1", pool="p", labels={}, hub_url="https://127.0.0.1:9", mqtt_url="mqtts://127.0.0.1:9",
                 hub_public_key=hub.public_key_pem, ca_certificate=hub.ca_pem, generation=1).save(state)
    assignment = Assignment(node="n1", namespace="demo", release="db", revision=1, kind="release", issued_at=now(),
                            bundle=Bundle.of(MANIFESTS), generation=1)
    (state / "assignment").write_bytes(seal(assignment, hub.key, bundle_to=bundle_key.public_key))
    return state, x509.load_pem_x509_certificate(pem.encode())


def run_once(state: Path) -> dict[str, object]:
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(state), TOPIC], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def cryptography_modules(out: dict[str, object]) -> list[str]:
    modules = out["modules"]
    assert isinstance(modules, list) and "edgeagent.uplink" in modules and "nacl.bindings" in modules
    return [m for m in modules if m.split(".")[0] == "cryptography"]


def test_a_joined_node_takes_an_encrypted_assignment_and_checks_its_certificate_without_cryptography(
        joined: tuple[Path, x509.Certificate]):
    state, cert = joined
    out = run_once(state)
    assert out["stored"] == [MANIFESTS]  # verified, decrypted and stored
    # Not due for two thirds of 90 days: the renewer looks again at its longest interval (an hour).
    assert out["next_check"] == 3600.0
    assert cryptography_modules(out) == []


def test_a_state_directory_from_before_the_record_is_parsed_once_and_then_started_without_cryptography(
        joined: tuple[Path, x509.Certificate]):
    state, cert = joined
    (state / certificate.VALIDITY_FILE).unlink()
    first = run_once(state)
    assert first["stored"] == [MANIFESTS] and first["next_check"] == 3600.0
    assert "cryptography.x509" in cryptography_modules(first)
    recorded = json.loads((state / certificate.VALIDITY_FILE).read_text())
    assert recorded["serial"] == format(cert.serial_number, "x")
    assert recorded["not_after"] == cert.not_valid_after_utc.isoformat()
    assert cryptography_modules(run_once(state)) == []
