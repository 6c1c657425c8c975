"""The hub's CA is rolled over with the fleet running, and no node joins again.

The README's commands as a user runs them: ``edgehub mosquitto-config`` and
``mosquitto -c``, ``edgehub serve`` (over HTTPS here, so the hub's own server
certificate moves to the new CA too and nodes must follow it), ``edgeagent
join``/``run`` with podman, and ``edgehub ca rotate begin|switch|finish``.
What is checked is what a user would look at: the nodes' certificates and
CAs on disk, the certificate the broker presents, the hub's answers, and a
new revision reaching the nodes.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from fleet_checks import link_test_options, node_view, wait_deployed, write_spec

from edgehub.hub_cas import HubCa
from edgehub.identity import HubIdentity
from edgeprotocol.enrollment import certificate_fingerprint
from edgesim.fleet import Fleet, Hub, Mosquitto, Node, wait_until

# Each wait: a notice reaches a node at once and its round (the hub's time, its CAs, a renewal in a process of
# its own) takes a few seconds; a node that starts renews before it connects.
STEP_SECONDS = 30
# A node whose link returns tries the broker within its reconnect backoff (30 s at most), then its round.
LINK_BACK_SECONDS = 60


@pytest.fixture
def hub_flags() -> tuple[str, ...]:
    # HTTPS on loopback: the API's certificate is issued from the new CA at the switch as well.
    return ("--tls", "on")


def rotate(hub: Hub, *args: str) -> subprocess.CompletedProcess[str]:
    """``edgehub ca rotate ARGS --state STATE``, as the README has it."""
    return subprocess.run([sys.executable, "-m", "edgehub.cli", "ca", "rotate", *args, "--state", str(hub.state_dir)],
                          capture_output=True, text=True, timeout=150, check=False)


def hub_cas(hub: Hub) -> list[HubCa]:
    return list(HubIdentity.load_or_create(hub.state_dir).cas.trusted)


def issuer(certificate: x509.Certificate, cas: list[HubCa]) -> str:
    """The SHA-256 of the CA of ``cas`` that issued ``certificate`` ("" when none did)."""
    return next((ca.fingerprint for ca in cas if ca.issued(certificate)), "")


def node_certificate(node: Node) -> x509.Certificate:
    return x509.load_pem_x509_certificate((node.state_dir / "node.crt").read_bytes())


def node_trusts(node: Node) -> list[str]:
    """The SHA-256 of each CA in the node's identity.json."""
    pem = json.loads((node.state_dir / "identity.json").read_text())["ca_certificate"]
    return [certificate_fingerprint(c) for c in x509.load_pem_x509_certificates(pem.encode())]


def broker_certificate(broker: Mosquitto) -> x509.Certificate:
    """The certificate the broker presents (read from a handshake that checks nothing)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def handshake(broker: Mosquitto, cert: Path, key: Path, cas: str) -> str:
    """How a TLS handshake with the broker showing ``cert`` ends: "" when it is taken, else the error. TLS 1.2,
    where the broker's verdict on the client's certificate ends the handshake itself."""
    context = ssl.create_default_context(cadata=cas)
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    try:
        with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1"):
            return ""
    except ssl.SSLError as exc:
        return str(exc)


def generations(hub: Hub) -> dict[str, int]:
    return {n["name"]: n["generation"] for n in hub.ctl_json("get", "nodes")}


def test_the_ca_is_rolled_over_with_the_nodes_online(fleet: Fleet, tmp_path: Path) -> None:
    hub, broker = fleet.hub, fleet.broker
    assert hub is not None and broker is not None
    nodes = [fleet.add_node("sh-1", "shanghai"), fleet.add_node("sh-2", "shanghai")]
    hub.ctl("apply", "-f", str(write_spec(tmp_path / "web.yaml", values={"message": "before"})))
    wait_deployed(hub, "demo/web", revision=1, nodes=2)
    (old,) = hub_cas(hub)
    joined = generations(hub)
    signing_key = json.loads((nodes[0].state_dir / "identity.json").read_text())["hub_public_key"]

    began = rotate(hub, "begin")
    assert began.returncode == 0, began.stderr
    assert began.stdout.startswith("began: the new CA 'edgecollab hub CA 20"), began.stdout
    assert "sent 2 of 2 joined node(s) a notice to check their certificate and the hub's CAs now (2 online;" in \
        began.stdout and "next step is 'edgehub ca rotate switch'" in began.stdout
    _, new = hub_cas(hub)
    both = [old.fingerprint, new.fingerprint]
    assert [certificate_fingerprint(c) for c in x509.load_pem_x509_certificates(
        (broker.config_dir / "ca.crt").read_bytes())] == both, "the broker trusts both CAs"
    described = hub.ctl("describe", "hub").stdout
    assert "CA rotation: begun: the next step is 'edgehub ca rotate switch'; 0 node(s) hold a certificate of a CA " \
           "that does not issue" in described, described
    assert {c["name"] for c in hub.ctl_json("describe", "hub")["certificates"]} >= {"ca", "ca_trusted"}
    for node in nodes:  # told by the hub's notice, each node takes both CAs at once
        wait_until(lambda n=node: node_trusts(n) == both, timeout=STEP_SECONDS, what=f"{node.name} to trust both CAs")
        assert issuer(node_certificate(node), [old, new]) == old.fingerprint

    early_token = hub.token("beijing")  # pins the CA that issues now, the old one
    kept = tmp_path / "kept"  # a copy of sh-1's certificate of the old CA, as a thief would keep it
    kept.mkdir()
    for name in ("node.crt", "node.key"):
        (kept / name).write_bytes((nodes[0].state_dir / name).read_bytes())
    assert handshake(broker, kept / "node.crt", kept / "node.key", old.pem + new.pem) == ""

    switched = rotate(hub, "switch")
    assert switched.returncode == 0, switched.stderr
    assert "issued again from the CA that issues now: broker, hub_https, hub_mqtt" in switched.stdout, switched.stdout
    assert issuer(broker_certificate(broker), [old, new]) == new.fingerprint, "the broker presents the new CA's"
    for node in nodes:  # and each node renews its certificate from the new CA by itself
        wait_until(lambda n=node: issuer(node_certificate(n), [old, new]) == new.fingerprint, timeout=STEP_SECONDS,
                   what=f"{node.name} to renew its certificate from the new CA")

    # A token made before the switch pins a CA that no longer issues: the joining agent says so and sends
    # nothing; one made now joins over HTTPS verified against the new CA.
    late = Node("bj-1", tmp_path / "nodes", hub, fleet.node_options)
    refused_join = late.join(early_token)
    assert refused_join.returncode != 0
    assert "no longer issues" in refused_join.stderr and "make a new token" in refused_join.stderr, refused_join.stderr
    joined_late = late.join(hub.token("beijing"))
    assert joined_late.returncode == 0, joined_late.stderr
    assert issuer(node_certificate(late), [old, new]) == new.fingerprint and node_trusts(late) == both

    # The broker checks each CA's revocation list: the certificate sh-1 replaced is refused, though its CA is
    # still trusted.
    assert "revoked" in handshake(broker, kept / "node.crt", kept / "node.key", old.pem + new.pem)

    finished = rotate(hub, "finish")
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.startswith("finished: 'edgecollab hub CA' retired"), finished.stdout
    assert (broker.config_dir / "ca.crt").read_text() == new.pem, "the broker trusts the new CA alone"
    assert (hub.state_dir / "hub-ca.crt").read_text() == new.pem, "so does edgectl --ca-file"
    for node in nodes:
        wait_until(lambda n=node: node_trusts(n) == [new.fingerprint], timeout=STEP_SECONDS,
                   what=f"{node.name} to drop the old CA")

    # The fleet runs on the new CA: a new revision reaches both nodes over the broker.
    hub.ctl("apply", "-f", str(write_spec(tmp_path / "web.yaml", values={"message": "after"})))
    view = wait_deployed(hub, "demo/web", revision=2, nodes=2)
    assert {r["node"] for r in view["nodes"]} == {"sh-1", "sh-2"}
    assert all(n["presence"] == "online" for n in hub.ctl_json("get", "nodes") if n["name"] in joined)
    # Nobody joined again: the same join generations, the same hub key pinned.
    assert generations(hub) == {**joined, "bj-1": 1} and joined == {"sh-1": 1, "sh-2": 1}
    assert all(json.loads((n.state_dir / "identity.json").read_text())["hub_public_key"] == signing_key
               for n in nodes)
    status = json.loads(subprocess.run(
        [sys.executable, "-m", "edgehub.cli", "ca", "status", "--state", str(hub.state_dir), "-o", "json"],
        capture_output=True, text=True, timeout=60, check=True).stdout)
    assert status["phase"] == "steady" and status["nodes_to_renew"] == 0
    assert [(ca["state"], ca["nodes"]) for ca in status["cas"]] == [("trusted", 3), ("retired", None)]


def test_a_node_off_during_the_whole_rotation_comes_back_by_itself(fleet: Fleet, tmp_path: Path) -> None:
    hub, broker = fleet.hub, fleet.broker
    assert hub is not None and broker is not None
    away = fleet.add_node("sh-away", "shanghai")
    hub.ctl("apply", "-f", str(write_spec(tmp_path / "web.yaml", values={"message": "before"})))
    wait_deployed(hub, "demo/web", revision=1, nodes=1)
    away.stop()  # switched off: its pods stay, its agent is gone until after the rotation
    (old,) = hub_cas(hub)

    for step in ("begin", "switch"):
        done = rotate(hub, step)
        assert done.returncode == 0, done.stderr
        assert "joined node(s) a notice to check their certificate and the hub's CAs now (0 online;" in done.stdout
    _, new = hub_cas(hub)
    refused = rotate(hub, "finish")
    assert refused.returncode == 1
    assert "1 joined node(s) still hold a certificate of the old CA: sh-away" in refused.stderr, refused.stderr
    forced = rotate(hub, "finish", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "forced: 1 node(s) still hold a certificate of the retired CA" in forced.stdout, forced.stdout
    hub.ctl("apply", "-f", str(write_spec(tmp_path / "web.yaml", values={"message": "after"})))
    assert node_trusts(away) == [old.fingerprint], "the node knows nothing of the new CA"

    # It trusts neither the broker's certificate nor the hub's any more, and the broker refuses its own: it
    # learns the hub's CAs from the hub's signed facts, renews, connects and runs the new revision.
    away.start()
    wait_until(lambda: issuer(node_certificate(away), [new]) == new.fingerprint, timeout=STEP_SECONDS,
               what="the node to renew its certificate from the new CA")
    assert node_trusts(away) == [new.fingerprint]
    wait_deployed(hub, "demo/web", revision=2, nodes=1)
    assert generations(hub) == {"sh-away": 1}, "it did not join again"


def test_a_running_node_cut_off_during_the_rotation_catches_up_when_its_link_returns(fleet: Fleet,
                                                                                      tmp_path: Path) -> None:
    hub = fleet.hub
    assert hub is not None
    link = fleet.link("sh-cut")
    node = fleet.add_node("sh-cut", "shanghai", link=link, options=link_test_options(fleet))
    hub.ctl("apply", "-f", str(write_spec(tmp_path / "web.yaml", values={"message": "before"})))
    wait_deployed(hub, "demo/web", revision=1, nodes=1)
    (old,) = hub_cas(hub)

    link.cut()  # the agent runs on, its MQTT link black-holed: it hears no notice
    wait_until(lambda: node_view(hub, "sh-cut")["presence"] == "offline", timeout=STEP_SECONDS,
               what="the hub to see the node offline")
    for args in (("begin",), ("switch",), ("finish", "--force")):
        done = rotate(hub, *args)
        assert done.returncode == 0, done.stderr
    (new,) = hub_cas(hub)
    hub.ctl("apply", "-f", str(write_spec(tmp_path / "web.yaml", values={"message": "after"})))
    assert node_trusts(node) == [old.fingerprint]

    # Back on the link, the broker's certificate no longer verifies: the agent asks the hub for its CAs at once
    # (not at its hourly check), renews from the new CA and reconnects.
    link.restore()
    wait_until(lambda: issuer(node_certificate(node), [new]) == new.fingerprint, timeout=LINK_BACK_SECONDS,
               what="the node to renew its certificate from the new CA")
    wait_deployed(hub, "demo/web", revision=2, nodes=1, timeout=LINK_BACK_SECONDS)
    assert "The TLS handshake with the broker failed" in node.log_path.read_text()
