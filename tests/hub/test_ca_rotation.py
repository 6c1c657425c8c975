"""The running hub takes the CA rotation's steps: what it answers, issues, refuses and tells nodes at each.

The real hub on aiohttp's test server with a real Mosquitto (``conftest.py``);
joins and renewals are requests as the agent sends them. ``edgehub ca`` runs
against this hub too. The broker's side and the agents are the end-to-end
test's (``tests/e2e/test_ca_rotation.py``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import ssl
import time
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from aiohttp.test_utils import TestClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID
from hub_api import answer, create_token, refused, unique

from edgeagent import certificate
from edgeagent.identity import NodeIdentity, make_csr
from edgeagent.identity import join as agent_join
from edgeagent.renewal import TLS_WAKE_MIN_SECONDS, CertificateRenewer
from edgehub import ca_rotation, hub_cas
from edgehub import cli as hub_cli
from edgehub.ca_cli import HUB_API_FILE
from edgehub.identity import HubIdentity
from edgehub.keys import IDENTITY, SETTINGS
from edgeprotocol.enrollment import certificate_fingerprint, parse_join_token, renewal_payload
from edgeprotocol.notices import CaNotice, open_notice
from edgeprotocol.signing import load_public_key
from edgesim.fleet import Mosquitto


def pems(text: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(text.encode())


def fingerprints(text: str) -> list[str]:
    return [certificate_fingerprint(c) for c in pems(text)]


def issuer(hub: TestClient, certificate_pem: str) -> str:
    """The SHA-256 of the hub CA (trusted now) that issued ``certificate_pem``."""
    certificate = x509.load_pem_x509_certificate(certificate_pem.encode())
    ca = hub.app[IDENTITY].cas.issuer_of(certificate)
    assert ca is not None, "issued by no CA the hub trusts"
    return ca.fingerprint


class Node:
    """A node as the agent is to the hub: its key, joined through the API, renewing with proofs."""

    def __init__(self, hub: TestClient, name: str | None = None) -> None:
        self.hub = hub
        self.name = name or unique("sh")
        self.key = Ed25519PrivateKey.generate()
        self.certificate = ""

    async def join(self) -> dict[str, Any]:
        body = {"token": str(parse_join_token(await create_token(self.hub)).without_pin()), "node": self.name,
                "csr": make_csr(self.key, self.name)}
        joined = await answer(await self.hub.post("/api/v1/join", json=body), 201)
        self.certificate = joined["certificate"]
        return joined

    async def renew(self) -> dict[str, Any]:
        new = Ed25519PrivateKey.generate()
        csr, timestamp, nonce = make_csr(new, self.name), int(time.time()), secrets.token_hex(16)
        proof = self.key.sign(renewal_payload(node=self.name, csr=csr, timestamp=timestamp, nonce=nonce))
        body = {"csr": csr, "timestamp": timestamp, "nonce": nonce, "proof": base64.b64encode(proof).decode()}
        renewed = await answer(await self.hub.post(f"/api/v1/nodes/{self.name}/certificate", json=body), 200)
        self.key, self.certificate = new, renewed["certificate"]
        return renewed


async def step(hub: TestClient, name: str, *, force: bool = False, status: int = 200) -> Any:
    return await answer(await hub.post("/api/v1/ca/rotation", json={"step": name, "force": force}), status)


@contextlib.asynccontextmanager
async def notices_seen(broker: Mosquitto):
    """Every CA notice published while inside, by topic (the test's broker is anonymous: anyone may read)."""
    seen: dict[str, bytes] = {}
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier=unique("notice-watch")) as mqtt:
        await mqtt.subscribe("ec/v1/nodes/+/releases/-/ca", qos=1)

        async def collect() -> None:
            async for message in mqtt.messages:
                seen[message.topic.value] = bytes(message.payload)

        task = asyncio.create_task(collect())
        try:
            yield seen
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def wait_for_notices(seen: dict[str, bytes], count: int) -> None:
    async with asyncio.timeout(10):
        while len(seen) < count:
            await asyncio.sleep(0.05)


async def test_begin_switch_finish_through_the_api(hub: TestClient, broker: Mosquitto) -> None:
    status = await answer(await hub.get("/api/v1/ca/rotation"), 200)
    assert status["phase"] == "steady" and len(status["cas"]) == 1 and status["cas"][0]["issuing"]
    old = status["cas"][0]["sha256"]
    early = Node(hub)
    joined = await early.join()
    assert fingerprints(joined["ca_bundle"]) == [old] and joined["issuing_ca"] == old
    assert (await answer(await hub.get("/api/v1/ca/rotation"), 200))["cas"][0]["nodes"] == 1

    async with notices_seen(broker) as seen:
        began = await step(hub, "begin")
        await wait_for_notices(seen, 1)
    assert began["did"][0].startswith("began: the new CA 'edgecollab hub CA 20")
    assert any(line.startswith("sent 1 of 1 joined node(s) a notice") for line in began["did"]), began["did"]
    assert began["phase"] == "begun" and began["next"] == "the next step is 'edgehub ca rotate switch'"
    new = began["cas"][1]["sha256"]
    assert [ca["issuing"] for ca in began["cas"]] == [True, False] and began["issuing"] == old
    payload = seen[f"ec/v1/nodes/{early.name}/releases/-/ca"]
    notice = open_notice(payload, load_public_key(hub.app[IDENTITY].public_key_pem), node=early.name, generation=1)
    assert notice == CaNotice(node=early.name, generation=1, ca_generation=1, spread_seconds=notice.spread_seconds,
                              at=notice.at) and 0 <= notice.spread_seconds < 1

    ca = await answer(await hub.get("/api/v1/ca"), 200)
    assert ca["sha256"] == old and fingerprints(ca["ca_bundle"]) == [old, new]
    assert fingerprints((hub.app[SETTINGS].state_dir / "hub-ca.crt").read_text()) == [old, new]
    late = Node(hub)
    joined = await late.join()
    assert fingerprints(joined["ca_bundle"]) == [old, new] and joined["issuing_ca"] == old
    assert issuer(hub, late.certificate) == old, "the old CA issues until the switch"

    switched = await step(hub, "switch")
    assert switched["did"][0].startswith("switched: ") and switched["issuing"] == new
    token = (await answer(await hub.post("/api/v1/tokens", json={"pool": "p"}), 201))["token"]
    assert parse_join_token(token).ca_pin == new, "a token made now pins the CA that issues now"
    assert (await answer(await hub.get("/api/v1/ca"), 200))["sha256"] == new
    renewed = await early.renew()
    assert issuer(hub, early.certificate) == new
    assert fingerprints(renewed["ca_bundle"]) == [old, new] and renewed["issuing_ca"] == new

    error = await refused(await hub.post("/api/v1/ca/rotation", json={"step": "finish"}), 409)
    assert error.startswith(f"1 joined node(s) still hold a certificate of the old CA: {late.name}."), error
    status = await answer(await hub.get("/api/v1/ca/rotation"), 200)
    assert status["nodes_to_renew"] == 1 and status["nodes_to_renew_named"] == [late.name]
    assert [ca["nodes"] for ca in status["cas"]] == [1, 1]
    assert status["phase"] == "switched", "a refused finish changes nothing"

    await late.renew()
    finished = await step(hub, "finish")
    assert finished["did"][0].startswith("finished: 'edgecollab hub CA' retired")
    assert finished["phase"] == "steady" and [(ca["state"], ca["nodes"]) for ca in finished["cas"]] == [
        ("trusted", 2), ("retired", None)]
    ca = await answer(await hub.get("/api/v1/ca"), 200)
    assert fingerprints(ca["ca_bundle"]) == [new] and ca["sha256"] == new
    # Nodes renew from the CA that is left, and the hub key they pinned signs as before.
    assert issuer(hub, (await early.renew())["certificate"]) == new


async def test_a_forced_finish_says_whom_it_shuts_out(hub: TestClient) -> None:
    behind = Node(hub)
    await behind.join()
    await step(hub, "begin")
    await step(hub, "switch")
    finished = await step(hub, "finish", force=True)
    assert any(line.startswith("forced: 1 node(s) still hold a certificate of the retired CA") and behind.name in line
               for line in finished["did"]), finished["did"]
    assert finished["nodes_to_renew"] == 1 and finished["nodes_of_no_trusted_ca"] == 1
    # Its key still proves a renewal: the node renews by itself when it comes back.
    await behind.renew()
    assert issuer(hub, behind.certificate) == finished["issuing"]


async def test_steps_out_of_order_and_bad_requests_are_refused(hub: TestClient,
                                                               stranger: aiohttp.ClientSession) -> None:
    error = await refused(await hub.post("/api/v1/ca/rotation", json={"step": "switch"}), 409)
    assert "no new CA to switch to" in error and "'edgehub ca rotate begin' starts one" in error
    await refused(await hub.post("/api/v1/ca/rotation", json={"step": "rotate"}), 400, field="step")
    await refused(await hub.post("/api/v1/ca/rotation", json={"step": "begin", "force": "yes"}), 400, field="force")
    await refused(await stranger.post("/api/v1/ca/rotation", json={"step": "begin"}), 401)
    await refused(await stranger.get("/api/v1/ca/rotation"), 401)
    assert (await answer(await hub.get("/api/v1/ca/rotation"), 200))["phase"] == "steady"


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = hub_cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err


async def test_edgehub_ca_asks_the_hub_running_on_the_state_directory(hub: TestClient, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    state = hub.app[SETTINGS].state_dir
    node = Node(hub)
    await node.join()
    code, _, err = await asyncio.to_thread(run_cli, ["ca", "status", "--state", str(state)], capsys)
    assert code == 2 and f"{state / HUB_API_FILE} is missing: is 'edgehub serve --state {state}' running?" in err

    (state / HUB_API_FILE).write_text(json.dumps({"url": str(hub.make_url("")).rstrip("/")}))
    code, out, err = await asyncio.to_thread(run_cli, ["ca", "rotate", "--state", str(state)], capsys)
    assert code == 2 and out.startswith("phase steady (CA set generation 0)")
    assert "name the step to take" in err and "'edgehub ca rotate begin' starts one" in err
    code, out, err = await asyncio.to_thread(run_cli, ["ca", "rotate", "begin", "--state", str(state)], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("began: the new CA") and "  - sent 1 of 1 joined node(s) a notice" in out
    assert "phase begun (CA set generation 1): the next step is 'edgehub ca rotate switch'" in out
    code, out, err = await asyncio.to_thread(run_cli, ["ca", "rotate", "begin", "--state", str(state)], capsys)
    assert code == 1 and "the hub refused: a rotation is under way already" in err
    await asyncio.to_thread(run_cli, ["ca", "rotate", "switch", "--state", str(state)], capsys)
    code, out, _ = await asyncio.to_thread(run_cli, ["ca", "status", "--state", str(state)], capsys)
    assert code == 0
    assert f"1 joined node(s) hold a certificate of a CA that does not issue: {node.name}" in out
    header, old_row, new_row = out.splitlines()[1:4]
    assert header.split() == ["CA", "SHA256", "STATE", "ISSUES", "NOT", "AFTER", "NODES"]
    assert old_row.split()[-1] == "1" and " no " in old_row and new_row.split()[-1] == "0" and " yes " in new_row
    code, out, _ = await asyncio.to_thread(run_cli, ["ca", "status", "--state", str(state), "-o", "json"], capsys)
    assert json.loads(out)["phase"] == "switched"

    (state / HUB_API_FILE).write_text(json.dumps({"url": "http://127.0.0.1:9"}))
    code, _, err = await asyncio.to_thread(run_cli, ["ca", "status", "--state", str(state)], capsys)
    assert code == 3 and "a CA rotation needs the hub running" in err


def dashboard_csr(name: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"dashboard.{name}")]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


async def test_dashboard_credentials_are_named_until_they_are_issued_again(hub: TestClient) -> None:
    await answer(await hub.post("/api/v1/credentials", json={"role": "dashboard", "name": "grafana",
                                                               "csr": dashboard_csr("grafana")}), 201)
    began = await step(hub, "begin")
    assert began["dashboards_to_renew"] == [], "the old CA still issues"
    during = await answer(await hub.post("/api/v1/credentials", json={"role": "dashboard", "name": "nodered",
                                                                       "csr": dashboard_csr("nodered")}), 201)
    assert fingerprints(during["ca_certificate"]) == [ca["sha256"] for ca in began["cas"]], \
        "a dashboard's ca.crt trusts both CAs: the broker may present either's certificate"
    switched = await step(hub, "switch")
    assert switched["dashboards_to_renew"] == ["grafana", "nodered"]
    assert any(line.startswith("2 dashboard credential(s) hold a certificate of a CA that does not issue: grafana, "
                               "nodered") for line in switched["did"]), switched["did"]
    await answer(await hub.delete("/api/v1/credentials/grafana"), 200)
    await answer(await hub.post("/api/v1/credentials", json={"role": "dashboard", "name": "grafana",
                                                               "csr": dashboard_csr("grafana")}), 201)
    assert (await answer(await hub.get("/api/v1/ca/rotation"), 200))["dashboards_to_renew"] == ["nodered"]


async def test_the_agents_renewer_follows_each_step_by_itself(hub: TestClient, tmp_path: Path) -> None:
    """The agent's own renewer against the hub, round by round (a round is what a notice or a failed TLS
    handshake starts): it takes the hub's CAs from the signed facts and renews when its CA no longer issues."""
    node = unique("sh")
    state = tmp_path / node
    identity = await asyncio.to_thread(agent_join, hub_url=str(hub.make_url("")), token=await create_token(hub),
                                       state_dir=state, node=node)
    renewer = CertificateRenewer(state, identity)

    async def round_() -> float:
        await renewer._measure_clock()
        return await renewer.check()

    old = hub.app[IDENTITY].issuing_ca_fingerprint
    assert NodeIdentity.load(state).issuing_ca == old and certificate.validity(state).issuer_sha256 == old
    await step(hub, "begin")
    assert await round_() > 1 and renewer.renewals == 0, "nothing to renew: the old CA still issues"
    new = hub.app[IDENTITY].cas.trusted[-1].fingerprint
    assert fingerprints(NodeIdentity.load(state).ca_certificate) == [old, new]

    await step(hub, "switch")
    await round_()
    assert renewer.renewals == 1 and certificate.validity(state).issuer_sha256 == new
    assert NodeIdentity.load(state).issuing_ca == new
    await round_()
    assert renewer.renewals == 1, "renewed once: the new certificate is of the CA that issues"

    await step(hub, "finish")
    await round_()
    saved = NodeIdentity.load(state)
    assert fingerprints(saved.ca_certificate) == [new] and saved.hub_url == identity.hub_url
    assert renewer.renewals == 1


async def test_failed_handshakes_ask_the_hub_at_most_so_often(tmp_path: Path) -> None:
    hub_identity = HubIdentity.load_or_create(tmp_path / "hub")
    identity = NodeIdentity(node="n1", pool="p", labels={}, hub_url="http://127.0.0.1:9", mqtt_url="mqtt://127.0.0.1:9",
                            hub_public_key=hub_identity.public_key_pem, ca_certificate=hub_identity.ca_pem)
    renewer = CertificateRenewer(tmp_path, identity)
    woken: list[float] = []
    renewer.wake = lambda after=0.0: woken.append(after)  # type: ignore[method-assign]  # the wake-up recorded instead of done
    failure = ssl.SSLCertVerificationError("certificate verify failed")
    renewer.trust_failed(failure)
    renewer.trust_failed(failure)
    assert len(woken) == 1, "a second failure right after the first asks nothing"
    renewer._tls_woken_at -= TLS_WAKE_MIN_SECONDS  # as if the minimum gap had passed: the gap has doubled
    renewer.trust_failed(failure)
    assert len(woken) == 1
    renewer._tls_woken_at -= TLS_WAKE_MIN_SECONDS
    renewer.trust_failed(failure)
    assert len(woken) == 2


async def test_a_step_whose_files_cannot_all_be_written_leaves_the_hub_on_what_the_disk_holds(
        hub: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ca_rotation, "begun", disk_full)
    error = await refused(await hub.post("/api/v1/ca/rotation", json={"step": "begin"}), 409)
    assert error.startswith("the begin step could not be written ([Errno 28] No space left on device); nothing "
                            "changed"), error
    assert (await answer(await hub.get("/api/v1/ca/rotation"), 200))["phase"] == "steady"
    monkeypatch.undo()

    await step(hub, "begin")
    # The commit (ca-set.json) is written, the bundle after it is not: the step was taken.
    real_write_bundle, calls = hub_cas.write_bundle, []

    def bundle_once(*args: Any) -> bool:
        calls.append(args)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return real_write_bundle(*args)

    monkeypatch.setattr(hub_cas, "write_bundle", bundle_once)
    switched = await step(hub, "switch")
    assert switched["phase"] == "switched" and hub.app[IDENTITY].cas.phase == "switched"
    assert fingerprints((hub.app[SETTINGS].state_dir / "hub-ca.crt").read_text()) == [
        ca.fingerprint for ca in hub.app[IDENTITY].cas.trusted], "written again as the set was read back"
