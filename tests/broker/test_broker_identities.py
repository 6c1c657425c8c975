"""The broker with identities, as ``edgehub mosquitto-config`` writes it, against a foreign client.

A real Mosquitto started from the generated configuration, a real hub (``edgehub serve``) and nodes
joined with ``edgeagent join``; the test then acts as those nodes with their own certificate and key
(no agent runs, so no podman is needed) and checks what each identity receives, and what the hub
shows, not only return codes.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import aiomqtt
import pytest
from fleet_checks import write_spec

from edgeagent.doctor import broker_check
from edgehub.broker_roles import HUB_USER
from edgehub.identity import HubIdentity
from edgekit.mqtt import TlsIdentity
from edgeprotocol import topics
from edgeprotocol.messages import NodeStatus, ReleaseStatus, now
from edgesim.fleet import Fleet, Hub, Mosquitto, Node

# A message the broker delivers arrives in milliseconds; this long without one means none is coming.
QUIET_SECONDS = 1.5


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    """Broker with identities and hub, nodes a and b of pool shanghai joined (their agents not started),
    and a component on both, so each has a retained assignment on the broker."""
    with Fleet(tmp_path / "fleet") as fleet:
        for name in ("a", "b"):
            fleet.add_node(name, "shanghai", start=False)
        assert fleet.hub is not None
        fleet.hub.ctl("apply", "-f", str(write_spec(tmp_path / "web.yaml")))
        yield fleet


def node_tls(node: Node) -> TlsIdentity:
    """What the node got at join: the hub CA, its certificate and its key."""
    ca = json.loads((node.state_dir / "identity.json").read_text())["ca_certificate"]
    return TlsIdentity(ca_pem=ca, cert_file=node.state_dir / "node.crt", key_file=node.state_dir / "node.key")


def client(fleet: Fleet, tls: TlsIdentity | None, *, client_id: str | None = None,
           context: ssl.SSLContext | None = None) -> aiomqtt.Client:
    assert fleet.broker is not None
    return aiomqtt.Client("127.0.0.1", fleet.broker.port, identifier=client_id or f"t-{uuid.uuid4().hex[:6]}",
                          tls_context=context or (tls.context() if tls else None), timeout=10)


async def received(mqtt: aiomqtt.Client, seconds: float = QUIET_SECONDS) -> list[tuple[str, bytes]]:
    """Every message that arrives until ``seconds`` pass without one."""
    got: list[tuple[str, bytes]] = []
    while True:
        try:
            async with asyncio.timeout(seconds):
                message = await anext(aiter(mqtt.messages))
        except TimeoutError:
            return got
        got.append((message.topic.value, bytes(message.payload)))


def refused(granted: Iterable[object]) -> bool:
    return all(getattr(code, "is_failure", False) for code in granted)


def hub_node(fleet: Fleet, name: str) -> dict[str, object]:
    assert fleet.hub is not None
    return next(n for n in fleet.hub.ctl_json("get", "nodes") if n["name"] == name)


async def test_a_node_reads_its_own_assignments_and_nothing_of_another_node(fleet: Fleet):
    async with client(fleet, node_tls(fleet.nodes["a"])) as mqtt:
        own = await mqtt.subscribe(topics.assignments_of("a"), qos=1)
        # The broker's ACL file may grant a wider filter; it delivers only what the node may read.
        for wider in ("#", "ec/v1/#", topics.assignments_of("b"), topics.ALL_STATUS, "$CONTROL/#"):
            await mqtt.subscribe(wider, qos=1)
        got = await received(mqtt)
    assert not refused(own)
    # Once per matching filter: only ever its own.
    assert {t for t, _ in got} == {topics.assignment("a", "demo", "web")}
    assert b'"node":"a"' in got[0][1]


async def test_a_node_cannot_speak_for_another_node_or_the_hub(fleet: Fleet):
    before = hub_node(fleet, "b")
    forged = NodeStatus(node="b", seq=10**5, observed_at=now(), agent_version="x", runtime="podman",
                        releases=(ReleaseStatus(namespace="demo", release="web", desired_revision=1,
                                                applied_revision=1, phase="Deployed"),))
    assert fleet.broker is not None
    async with client(fleet, fleet.broker.identity()) as observer:
        await observer.subscribe("#", qos=1)
        await received(observer)  # the retained messages of before
        async with client(fleet, node_tls(fleet.nodes["a"])) as attacker:
            for topic, payload in [(topics.status("b"), forged.encode()),
                                   (topics.presence("b"), b'{"v":1,"node":"b","state":"offline"}'),
                                   (topics.events("b"), b'{"v":1,"node":"b","seq":9223372036854775807}'),
                                   (topics.resync("b"), b'{"v":1,"node":"b","held":{}}'),
                                   (topics.assignment("b", "demo", "evil"), b"{}"),
                                   (f"{topics.PREFIX}/hub/state", b'{"online":false}'),
                                   (f"{topics.PREFIX}/summary/fleet", b'{"nodes":0}'),
                                   ("$CONTROL/dynamic-security/v1", b'{"commands":[{"command":"listClients"}]}')]:
                await attacker.publish(topic, payload, qos=1)
        seen = await received(observer)
    assert seen == [], "the broker delivered a forged message"
    after = hub_node(fleet, "b")
    assert after["releases"] == before["releases"] == [] and after["presence"] == before["presence"]


async def test_a_client_id_cannot_take_over_another_identitys_session(fleet: Fleet):
    assert fleet.hub is not None
    hub_connects = fleet.hub.log_path.read_text().count("Connected to mqtts://")
    async with client(fleet, node_tls(fleet.nodes["b"])) as victim:
        await victim.subscribe(topics.assignments_of("b"), qos=1)
        await received(victim)
        for stolen_id in ("edgehub", HUB_USER, "b", "edgeagent-b"):
            async with client(fleet, node_tls(fleet.nodes["a"]), client_id=stolen_id) as attacker:
                await attacker.publish(topics.status("a"), b"{}", qos=1)
        # The victim's session is still the one the broker holds: it keeps receiving.
        fleet.hub.ctl("apply", "-f", str(write_spec(fleet.workdir / "v2.yaml", values={"message": "v2"})))
        got = await received(victim, seconds=5)
    assert [t for t, _ in got] == [topics.assignment("b", "demo", "web")]
    assert fleet.hub.log_path.read_text().count("Connected to mqtts://") == hub_connects, "the hub was kicked off"


async def test_a_client_without_a_certificate_of_the_hub_ca_is_refused(fleet: Fleet, tmp_path: Path):
    stranger_ca = HubIdentity.load_or_create(tmp_path / "stranger")
    key, cert = tmp_path / "hub.key", tmp_path / "hub.crt"
    stranger_ca.ensure_certificate(key, cert, HUB_USER, usage="client")
    assert fleet.broker is not None
    real_ca = fleet.broker.identity().ca_pem  # type: ignore[union-attr]  # a broker with identities has them
    no_certificate = ssl.create_default_context(cadata=real_ca)
    foreign = TlsIdentity(ca_pem=real_ca, cert_file=cert, key_file=key).context()
    plain: ssl.SSLContext | None = None
    for context in (no_certificate, foreign, plain):
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client("127.0.0.1", fleet.broker.port, tls_context=context, timeout=5) as mqtt:
                await mqtt.subscribe("#", qos=1)


async def test_a_dashboard_credential_reads_summaries_and_nothing_else(fleet: Fleet, tmp_path: Path):
    assert fleet.hub is not None and fleet.broker is not None
    made = fleet.hub.ctl("credentials", "create", "--role", "dashboard", "--name", "grafana",
                         "--out", str(tmp_path / "grafana"))
    assert "dashboard.grafana" in made.stdout and "ec/v1/summary/#" in made.stdout
    assert (tmp_path / "grafana" / "client.key").stat().st_mode & 0o777 == 0o600
    files = tmp_path / "grafana"
    dashboard = TlsIdentity(ca_pem=(files / "ca.crt").read_text(), cert_file=files / "client.crt",
                            key_file=files / "client.key")
    async with client(fleet, dashboard) as mqtt:
        summaries = await mqtt.subscribe(f"{topics.PREFIX}/summary/#", qos=1)
        others = [await mqtt.subscribe(f, qos=1) for f in ("#", topics.ALL_STATUS, topics.assignments_of("a"))]
        retained = await received(mqtt)
        await mqtt.publish(f"{topics.PREFIX}/summary/fleet", b'{"forged":true}', qos=1)
        # Only the hub writes summaries: stand in for it (stopped, so nothing is kicked).
        fleet.hub.stop()
        async with client(fleet, fleet.broker.identity(HUB_USER)) as hub:
            await hub.publish(f"{topics.PREFIX}/summary/fleet", b'{"nodes":2}', qos=1)
            await hub.publish(topics.assignment("a", "demo", "x"), b"{}", qos=1)
        got = await received(mqtt)
    assert not refused(summaries) and all(refused(g) for g in others)
    # The hub's retained summaries, and nothing of the assignments and statuses the broker also retains.
    assert {t for t, _ in retained} >= {f"{topics.PREFIX}/summary/fleet", f"{topics.PREFIX}/summary/nodes/a"}
    assert all(t.startswith(f"{topics.PREFIX}/summary/") for t, _ in retained)
    assert (f"{topics.PREFIX}/summary/fleet", b'{"nodes":2}') in got
    assert all(b"forged" not in p and t.startswith(f"{topics.PREFIX}/summary/") for t, p in got)
    listed = fleet.hub.start().ctl_json("credentials", "list")
    assert [c["username"] for c in listed] == ["dashboard.grafana"]


async def test_revoking_a_node_disconnects_it_and_the_broker_refuses_it(fleet: Fleet):
    assert fleet.hub is not None
    tls = node_tls(fleet.nodes["a"])
    async with client(fleet, tls) as node:
        assert not refused(await node.subscribe(topics.assignments_of("a"), qos=1))
        assert len(await received(node)) == 1
        said = fleet.hub.ctl("node", "revoke", "a").stdout
        assert "the broker has disconnected it and refuses it every topic" in said
        with pytest.raises(aiomqtt.MqttError):
            await received(node, seconds=10)  # the broker closes the connection
    # Its certificate is on the broker's revocation list: refused at the TLS handshake.
    with pytest.raises(aiomqtt.MqttError):
        async with client(fleet, tls) as again:
            await again.subscribe(topics.assignments_of("a"), qos=1)
    # Any other certificate of the name (here one the test issues) is refused every topic by the plugin.
    async with client(fleet, fleet.broker.identity("a")) as again:  # type: ignore[union-attr]  # the fleet's broker is up
        assert refused(await again.subscribe(topics.assignments_of("a"), qos=1))
        await again.publish(topics.status("a"), b"{}", qos=1)
        assert await received(again) == []
    # A reset and a new join (a new key) are admitted again.
    fleet.hub.ctl("node", "reset", "a")
    result = fleet.nodes["a"].join(fleet.hub.token("shanghai"))
    assert result.returncode == 0, result.stderr
    async with client(fleet, node_tls(fleet.nodes["a"])) as rejoined:
        assert not refused(await rejoined.subscribe(topics.assignments_of("a"), qos=1))
        assert [t for t, _ in await received(rejoined)] == [topics.assignment("a", "demo", "web")]


async def test_a_broker_that_lost_its_identities_is_put_right_when_the_hub_reconnects(fleet: Fleet):
    """A broker restored from an older file (here: a new one) refuses the revoked node again once the hub
    is back, and the joined ones keep their own topics throughout (they are not in the plugin's file)."""
    assert fleet.hub is not None and fleet.broker is not None
    fleet.hub.ctl("node", "revoke", "b")
    fleet.broker.stop()
    (fleet.broker.config_dir / "dynamic-security.json").unlink()
    fleet.broker.start()  # mosquitto-config writes a fresh file: the hub and the roles only

    async def admitted(tls: TlsIdentity | None, name: str) -> bool:
        async with client(fleet, tls) as mqtt:
            return not refused(await mqtt.subscribe(topics.assignments_of(name), qos=1))

    # b's own certificate is on the revocation list the broker read at its start: this is about the plugin,
    # so b shows a certificate of its name that the list does not hold (one the test issues).
    assert await admitted(node_tls(fleet.nodes["a"]), "a")
    async with asyncio.timeout(60):  # the hub reconnects with backoff, then reconciles
        while await admitted(fleet.broker.identity("b"), "b"):
            await asyncio.sleep(0.5)
    assert await admitted(node_tls(fleet.nodes["a"]), "a")


def test_a_plain_broker_is_refused_off_loopback_and_warned_about_on_it(tmp_path: Path):
    result = subprocess.run([sys.executable, "-m", "edgehub.cli", "serve", "--listen", "127.0.0.1:0",
                             "--mqtt", "mqtt://192.0.2.10:1883", "--state", str(tmp_path / "state")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "mqtts://" in result.stderr and "192.0.2.10" in result.stderr
    assert not (tmp_path / "state").exists()
    broker = Mosquitto(tmp_path / "broker").start()
    hub = Hub(tmp_path / "hub", broker.url)
    try:
        hub.start()
        nodes = hub.ctl("get", "nodes")
        assert "warning: the broker is anonymous" in nodes.stderr
        assert "the broker is anonymous" in hub.log_path.read_text()
    finally:
        hub.stop()
        broker.stop()


def test_with_identities_edgectl_warns_of_nothing(fleet: Fleet):
    assert fleet.hub is not None
    assert "warning" not in fleet.hub.ctl("get", "nodes").stderr


async def test_doctor_checks_the_tls_handshake_with_the_nodes_certificate(fleet: Fleet, tmp_path: Path):
    assert fleet.broker is not None
    tls = node_tls(fleet.nodes["a"])
    good = await broker_check(fleet.broker.url, tls)
    assert good.ok and "TLS with the node's certificate" in good.detail
    stranger = HubIdentity.load_or_create(tmp_path / "stranger").ca_pem
    wrong_ca = await broker_check(fleet.broker.url, TlsIdentity(stranger, tls.cert_file, tls.key_file))
    assert not wrong_ca.ok and "certificate the hub's CA did not issue" in wrong_ca.detail
    unjoined = await broker_check(fleet.broker.url, None)
    assert not unjoined.ok and "join first" in unjoined.detail
    plain_far = await broker_check("mqtt://192.0.2.10:1883", None)
    assert not plain_far.ok and "mqtts://" in plain_far.detail
