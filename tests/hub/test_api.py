"""The hub's HTTP API in-process: every refusal is a JSON 4xx naming the field, applies store and dispatch.

The hub is the real application (``create_app``) on aiohttp's test server,
with its SQLite store in a temporary directory and a real Mosquitto; no
podman, so ``pytest -m "not fleet"`` runs these. The client sends the operator
token (fixtures in ``conftest.py``); what the hub refuses to strangers is in
``test_api_refuses_attackers.py``.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import logging
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hub_api import JSON, answer, create_token, join, operator_token, refused, unique

from deployer_plugin import SpecError, package_chart
from edgeagent.identity import make_csr
from edgectl.cli import main as edgectl
from edgectl.views import notes_section
from edgehub.errors import (
    BadRequest,
    ConcurrentChange,
    CsrError,
    HubError,
    JoinRefused,
    NotFound,
    SpecRefused,
)
from edgehub.keys import COMPONENT_STORE, REPORT_STORE
from edgehub.routes.error_answers import INTERNAL_ERROR, status_of
from edgehub.routes.parsing import MAX_REQUEST_BYTES
from edgeprotocol import topics
from edgeprotocol.messages import Event
from edgeprotocol.signing import load_public_key, open_sealed
from edgesim.fleet import Mosquitto

REPO = Path(__file__).resolve().parents[2]
CHARTS = REPO / "tests" / "deployer" / "charts"
THIRTY_DAYS = 30 * 24 * 3600


# --- tokens --------------------------------------------------------------------


async def test_a_token_is_created_for_a_pool_with_the_default_life_and_uses(hub: TestClient):
    before = time.time()
    token = await answer(await hub.post("/api/v1/tokens", json={"pool": "shanghai"}), 201)
    assert token["pool"] == "shanghai" and token["uses"] == 1 and token["token"].startswith("ec1.")
    assert before + 3600 <= token["expires_at"] <= time.time() + 3600
    longest = await answer(await hub.post("/api/v1/tokens", json={"pool": "p", "ttl_seconds": THIRTY_DAYS,
                                                                   "uses": 10_000}), 201)
    assert longest["uses"] == 10_000


@pytest.mark.parametrize(("body", "field"), [
    ('{"pool": "p", "ttl_seconds": 0}', "ttl_seconds"),
    ('{"pool": "p", "ttl_seconds": -5}', "ttl_seconds"),
    (f'{{"pool": "p", "ttl_seconds": {THIRTY_DAYS + 1}}}', "ttl_seconds"),
    ('{"pool": "p", "ttl_seconds": NaN}', "ttl_seconds"),
    ('{"pool": "p", "ttl_seconds": Infinity}', "ttl_seconds"),
    ('{"pool": "p", "ttl_seconds": 1e400}', "ttl_seconds"),
    ('{"pool": "p", "ttl_seconds": ' + "9" * 400 + "}", "ttl_seconds"),
    ('{"pool": "p", "ttl_seconds": "1h"}', "ttl_seconds"),
    ('{"pool": "p", "uses": 0}', "uses"),
    ('{"pool": "p", "uses": 10001}', "uses"),
    ('{"pool": "p", "uses": ' + "9" * 30 + "}", "uses"),
    ('{"pool": "p", "uses": 1.5}', "uses"),
    ('{"pool": "p", "uses": true}', "uses"),
    ('{"ttl_seconds": 60}', "pool"),
    ('{"pool": "Not A Pool"}', "pool"),
    ('{"pool": "' + "x" * 100_000 + '"}', "pool"),
])
async def test_a_token_out_of_bounds_is_refused_naming_the_field(hub: TestClient, body: str, field: str):
    error = await refused(await hub.post("/api/v1/tokens", data=body, headers=JSON), 400, field)
    assert len(error) < 300  # the refused value is not echoed back whole


# --- join ----------------------------------------------------------------------


@pytest.mark.parametrize(("token", "reason"), [
    ("hello", "malformed"),
    ("ec1.000000000000.not-a-real-secret", "token is unknown"),
])
async def test_a_join_with_a_bad_token_is_refused_with_403_and_registers_nothing(hub: TestClient, token: str,
                                                                                 reason: str):
    assert reason in await refused(await join(hub, token, "intruder"), 403)
    assert await answer(await hub.get("/api/v1/nodes"), 200) == []


async def test_a_join_for_another_pool_is_refused_with_403(hub: TestClient):
    token = await create_token(hub, "shanghai")
    assert "not 'beijing'" in await refused(await join(hub, token, "sh-1", pool="beijing"), 403)


async def test_a_join_with_a_bad_csr_is_refused_with_400_and_spends_no_use_of_the_token(hub: TestClient):
    token = await create_token(hub, uses=1)
    other_name = await join(hub, token, "sh-1", csr=make_csr(Ed25519PrivateKey.generate(), "bj-9"))
    assert "common name 'sh-1'" in await refused(other_name, 400, "csr")
    assert "PEM" in await refused(await join(hub, token, "sh-1", csr="hello"), 400, "csr")
    assert await answer(await hub.get("/api/v1/nodes"), 200) == []
    assert (await answer(await join(hub, token, "sh-1"), 201))["node"] == "sh-1"


@pytest.mark.parametrize(("fields", "field"), [
    ({"node": "Bad_Name"}, "node"),
    ({"labels": {"edgecollab.io/pool": "x"}}, "labels"),
    ({"labels": {"zone": "not valid!"}}, "labels"),
    ({"labels": ["zone=a"]}, "labels"),
    ({"csr": None}, "csr"),
    ({"token": 42}, "token"),
])
async def test_a_malformed_join_is_refused_with_400_naming_the_field(hub: TestClient, fields: dict[str, Any],
                                                                     field: str):
    body = {"token": "ec1.a.b", "node": "sh-1", "csr": "x", **fields}
    await refused(await hub.post("/api/v1/join", json=body), 400, field)


async def test_a_joined_node_is_listed_with_its_pool_and_labels(hub: TestClient):
    token = await create_token(hub, "shanghai", uses=2)
    joined = await answer(await join(hub, token, "sh-1", labels={"zone": "a"}), 201)
    assert joined["pool"] == "shanghai" and "BEGIN CERTIFICATE" in joined["certificate"]
    assert joined["mqtt_url"].startswith("mqtt://127.0.0.1:") and "PUBLIC KEY" in joined["hub_public_key"]
    await answer(await join(hub, token, "sh-2"), 201)

    nodes = await answer(await hub.get("/api/v1/nodes"), 200)
    assert [(n["name"], n["pool"], n["labels"]) for n in nodes] == [("sh-1", "shanghai", {"zone": "a"}),
                                                                    ("sh-2", "shanghai", {})]
    assert (await answer(await hub.get("/api/v1/nodes/sh-1"), 200))["presence"] == "unknown"
    assert await answer(await hub.get("/api/v1/pools"), 200) == [{"pool": "shanghai", "nodes": 2, "online": 0}]


# --- node events ---------------------------------------------------------------


@pytest.mark.parametrize("limit", ["abc", "0", "-1", "1001", "1.5", "", "9" * 5000])
async def test_an_events_limit_that_is_not_an_integer_from_1_to_1000_is_refused(hub: TestClient, limit: str):
    token = await create_token(hub)
    await answer(await join(hub, token, "sh-1"), 201)
    await refused(await hub.get("/api/v1/nodes/sh-1/events", params={"limit": limit}), 400, "limit")


async def test_a_nodes_events_arrive_over_mqtt_and_the_limit_keeps_the_latest(hub: TestClient, broker: Mosquitto):
    node = unique("sh")
    await answer(await join(hub, await create_token(hub), node), 201)
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier=unique("test")) as mqtt:
        for seq in range(1, 6):
            event = Event(node=node, seq=seq, at=f"2024-01-01T00:00:0{seq}Z", reason="Applied", message=f"#{seq}")
            await mqtt.publish(topics.events(node), event.encode(), qos=1)
    async with asyncio.timeout(5):
        while len(await answer(await hub.get(f"/api/v1/nodes/{node}/events"), 200)) < 5:
            await asyncio.sleep(0.05)
    latest = await answer(await hub.get(f"/api/v1/nodes/{node}/events", params={"limit": "2"}), 200)
    assert [e["seq"] for e in latest] == [4, 5]
    assert await refused(await hub.get("/api/v1/nodes/nobody/events"), 404)


async def publish_events(broker: Mosquitto, *events: Event) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier=unique("test")) as mqtt:
        for event in events:
            await mqtt.publish(topics.events(event.node), event.encode(), qos=1)


async def wait_for_events(hub: TestClient, count: int, **params: str) -> list[dict[str, Any]]:
    async with asyncio.timeout(5):
        while len(events := await answer(await hub.get("/api/v1/events", params=params), 200)) < count:
            await asyncio.sleep(0.05)
    return events


async def test_the_events_of_every_node_are_listed_in_the_order_they_arrived_and_a_cursor_continues(
    hub: TestClient, broker: Mosquitto
):
    one, two = unique("sh"), unique("sh")
    for node in (one, two):
        await answer(await join(hub, await create_token(hub), node), 201)
    # Node clocks disagree: the order is the hub's, the order of arrival.
    await publish_events(broker, Event(node=one, seq=1, at="2030-01-01T00:00:00Z", reason="Applied", message="a"),
                         Event(node=two, seq=1, at="2020-01-01T00:00:00Z", reason="NodeReady", message="b"),
                         Event(node=one, seq=2, at="2030-01-01T00:00:01Z", reason="Removed", message="c",
                               namespace="demo", release="web", revision=2))
    events = await wait_for_events(hub, 3)
    assert [(e["node"], e["seq"], e["message"]) for e in events] == [(one, 1, "a"), (two, 1, "b"), (one, 2, "c")]
    assert events[2] == {"node": one, "cursor": events[2]["cursor"], "seq": 2, "at": "2030-01-01T00:00:01Z",
                         "reason": "Removed", "message": "c", "namespace": "demo", "release": "web", "revision": 2}
    cursors = [e["cursor"] for e in events]
    assert cursors == sorted(cursors) and len(set(cursors)) == 3

    # ?limit= keeps the latest; ?after= gives the first after the cursor, so a follower misses none.
    assert [e["message"] for e in await answer(await hub.get("/api/v1/events", params={"limit": "2"}), 200)] == [
        "b", "c"]
    after = await answer(await hub.get("/api/v1/events", params={"after": str(cursors[0]), "limit": "1"}), 200)
    assert [e["message"] for e in after] == ["b"]
    assert await answer(await hub.get("/api/v1/events", params={"after": str(cursors[2])}), 200) == []
    # ?node= keeps one node's.
    mine = await answer(await hub.get("/api/v1/events", params={"node": one}), 200)
    assert [e["message"] for e in mine] == ["a", "c"]
    assert [e["message"] for e in await answer(await hub.get("/api/v1/events", params={
        "node": one, "after": str(cursors[0])}), 200)] == ["c"]


@pytest.mark.parametrize(("params", "status", "field"), [
    ({"limit": "0"}, 400, "limit"), ({"limit": "1001"}, 400, "limit"), ({"limit": "x"}, 400, "limit"),
    ({"after": "-1"}, 400, "after"), ({"after": "1.5"}, 400, "after"), ({"after": "9" * 30}, 400, "after"),
    ({"node": "../nodes"}, 400, "node"), ({"node": ""}, 400, "node"), ({"node": "nobody"}, 404, None),
])
async def test_an_events_query_out_of_bounds_or_for_an_unknown_node_is_refused(
    hub: TestClient, params: dict[str, str], status: int, field: str | None
):
    await refused(await hub.get("/api/v1/events", params=params), status, field)


# --- components ----------------------------------------------------------------


async def test_a_spec_error_is_refused_with_422_naming_the_field_and_nothing_is_stored(hub: TestClient,
                                                                                       example: dict[str, Any]):
    body = copy.deepcopy(example)
    body["component"]["spec"]["edge"]["nodePool"] = body["component"]["spec"]["edge"].pop("nodePools")
    error = await refused(await hub.post("/api/v1/components", json=body), 422)
    assert "spec.edge.nodePool" in error and "nodePools" in error
    not_a_chart = {**example, "chart_archive": base64.b64encode(b"not a chart").decode()}
    assert "demo/web" in await refused(await hub.post("/api/v1/components", json=not_a_chart), 422)
    assert await answer(await hub.get("/api/v1/components"), 200) == []


@pytest.mark.parametrize(("change", "field"), [
    ({"chart_archive": "not base64!"}, "chart_archive"),
    ({"chart_archive": "ünïcode"}, "chart_archive"),
    ({"chart_archive": None}, "chart_archive"),
    ({"component": "web"}, "component"),
])
async def test_a_malformed_apply_is_refused_with_400_naming_the_field(hub: TestClient, example: dict[str, Any],
                                                                      change: dict[str, Any], field: str):
    await refused(await hub.post("/api/v1/components", json={**example, **change}), 400, field)


async def test_the_example_is_applied_signed_for_each_node_and_a_reapply_is_unchanged(
    hub: TestClient, broker: Mosquitto, example: dict[str, Any]
):
    node = unique("sh")
    joined = await answer(await join(hub, await create_token(hub), node), 201)

    applied = await answer(await hub.post("/api/v1/components", json=example), 201)
    assert applied == {"component": "demo/web", "revision": 1, "changed": True, "targets": 1, "warnings": [],
                       "notes": ""}
    again = await answer(await hub.post("/api/v1/components", json=example), 200)
    assert again == {"component": "demo/web", "revision": 1, "changed": False}

    # What the node receives: the retained assignment, signed by the key it got at join.
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier=unique("test")) as mqtt:
        await mqtt.subscribe(topics.assignment(node, "demo", "web"), qos=1)
        async with asyncio.timeout(5):
            message = await anext(aiter(mqtt.messages))
    assignment = open_sealed(message.payload, load_public_key(joined["hub_public_key"]), node=node,
                             generation=joined["generation"])
    assert (assignment.revision, assignment.kind) == (1, "release")
    assert assignment.bundle is not None and "ni hao shanghai" in assignment.bundle.manifests


async def test_a_component_is_shown_then_deleted_from_every_node(hub: TestClient, example: dict[str, Any]):
    await answer(await join(hub, await create_token(hub), "sh-1"), 201)
    await answer(await hub.post("/api/v1/components", json=example), 201)

    listed = await answer(await hub.get("/api/v1/components"), 200)
    assert [(c["namespace"], c["name"], c["revision"], c["targets"]) for c in listed] == [("demo", "web", 1, 1)]
    assert listed[0]["pools"] == {"shanghai": {"targets": 1, "deployed": 0}}  # per pool, for edgectl -o wide
    shown = await answer(await hub.get("/api/v1/components/demo/web"), 200)
    assert [(n["node"], n["phase"]) for n in shown["nodes"]] == [("sh-1", "Pending")]
    assert shown["spec"]["spec"]["edge"]["nodePools"] == ["shanghai"]  # the whole document, as applied

    deleted = await answer(await hub.delete("/api/v1/components/demo/web"), 200)
    assert deleted == {"component": "demo/web", "revision": 2, "deleted": True}
    await refused(await hub.get("/api/v1/components/demo/web"), 404)
    await refused(await hub.delete("/api/v1/components/demo/web"), 404)
    assert await answer(await hub.get("/api/v1/components"), 200) == []
    # Applying it again brings it back at the next revision.
    assert (await answer(await hub.post("/api/v1/components", json=example), 201))["revision"] == 3


async def test_an_apply_that_loses_a_race_with_another_is_a_409_that_says_to_apply_again(
    hub: TestClient, example: dict[str, Any], monkeypatch: pytest.MonkeyPatch
):
    await answer(await hub.post("/api/v1/components", json=example), 201)

    async def read_before_the_other_apply_committed(namespace: str, name: str) -> None:
        return None

    monkeypatch.setattr(hub.app[COMPONENT_STORE], "get_component", read_before_the_other_apply_committed)
    changed = copy.deepcopy(example)
    changed["component"]["spec"]["values"]["message"] = "changed"
    assert "apply again" in await refused(await hub.post("/api/v1/components", json=changed), 409)
    monkeypatch.undo()
    assert (await answer(await hub.get("/api/v1/components/demo/web"), 200))["revision"] == 1


async def test_a_component_without_nodes_in_its_pool_is_applied_with_a_warning(hub: TestClient,
                                                                               example: dict[str, Any]):
    applied = await answer(await hub.post("/api/v1/components", json=example), 201)
    assert applied["targets"] == 0 and applied["warnings"] == ["pool 'shanghai' has no nodes yet"]


def component_body(chart: Path, values: dict[str, Any] | None = None) -> dict[str, Any]:
    """An apply request for component demo/web of pool shanghai with a chart directory, packaged."""
    document = {"apiVersion": "edgecollab.io/v1alpha1", "kind": "Component",
                "metadata": {"name": "web", "namespace": "demo"},
                "spec": {"chart": str(chart), "values": values or {}, "edge": {"nodePools": ["shanghai"]}}}
    return {"component": document, "chart_archive": base64.b64encode(package_chart(chart)).decode()}


def good_chart_with(tmp_path: Path, *, metadata: dict[str, Any] | None = None,
                    templates: dict[str, str] | None = None) -> Path:
    chart = tmp_path / "good"
    chart.mkdir(parents=True)
    for source in (CHARTS / "good").rglob("*"):
        if source.is_file():
            target = chart / source.relative_to(CHARTS / "good")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    chart_yaml = {**yaml.safe_load((chart / "Chart.yaml").read_text()), **(metadata or {})}
    (chart / "Chart.yaml").write_text(yaml.safe_dump(chart_yaml))
    for name, text in (templates or {}).items():
        (chart / "templates" / name).write_text(text)
    return chart


async def test_a_chart_helm_would_refuse_is_refused_with_422_in_helms_words_and_nothing_is_stored(
    hub: TestClient, tmp_path: Path
):
    missing = await refused(await hub.post("/api/v1/components", json=component_body(CHARTS / "needs-dependency")), 422)
    assert missing.startswith("component demo/web: chart needs-dependency: ")
    assert "found in Chart.yaml, but missing in charts/ directory: cache" in missing

    too_new = good_chart_with(tmp_path / "kube", metadata={"kubeVersion": ">=1.99.0-0"})
    error = await refused(await hub.post("/api/v1/components", json=component_body(too_new)), 422)
    assert "chart requires kubeVersion: >=1.99.0-0 which is incompatible with Kubernetes v1." in error

    kindless = good_chart_with(tmp_path / "kind", templates={"kindless.yaml": "apiVersion: v1\nmetadata: {name: x}\n"})
    error = await refused(await hub.post("/api/v1/components", json=component_body(kindless)), 422)
    assert error.startswith("component demo/web: good/templates/kindless.yaml rendered a document without kind")
    assert await answer(await hub.get("/api/v1/components"), 200) == []


async def test_an_apply_answers_the_charts_notes_and_warns_of_the_test_hooks_it_left_out(hub: TestClient):
    installed = await answer(await hub.post("/api/v1/components", json=component_body(CHARTS / "generated")), 201)
    assert installed["notes"].startswith("web is installed at revision 1.\n")
    assert installed["warnings"] == ["left out 1 Helm test hook document(s): edge nodes do not run 'helm test'",
                                     "pool 'shanghai' has no nodes yet"]

    changed = component_body(CHARTS / "generated", {"image": "docker.io/library/busybox:1.37"})
    assert (await answer(await hub.post("/api/v1/components", json=changed), 200))["notes"].startswith(
        "web is upgraded at revision 2.\n")


async def test_a_generated_password_is_kept_across_revisions_and_generated_anew_after_a_delete(hub: TestClient):
    components = hub.app[COMPONENT_STORE]

    async def secret(revision: int) -> dict[str, str]:
        bundle = await components.get_render("demo", "web", revision, "")
        assert bundle is not None
        (found,) = [d for d in yaml.safe_load_all(bundle.manifests) if d and d["kind"] == "Secret"]
        return found["data"]

    for values in ({}, {"image": "docker.io/library/busybox:1.37"}, {"auth": {"username": "admin"}}):
        await hub.post("/api/v1/components", json=component_body(CHARTS / "generated", values))
    first, second, third = [await secret(n) for n in (1, 2, 3)]
    assert first["password"] == second["password"] == third["password"]
    assert (first["username"], third["username"]) == ("YXBw", "YWRtaW4=")

    await answer(await hub.delete("/api/v1/components/demo/web"), 200)  # revision 4
    again = await answer(await hub.post("/api/v1/components", json=component_body(CHARTS / "generated")), 201)
    assert again["revision"] == 5 and again["notes"].startswith("web is installed at revision 5.")
    assert (await secret(5))["password"] != first["password"]


async def test_edgectl_apply_prints_the_notes_after_its_result_line(hub: TestClient, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]):
    spec = tmp_path / "web.yaml"
    spec.write_text(yaml.safe_dump(component_body(CHARTS / "generated")["component"]))

    # edgectl blocks on its HTTP call: run it off the loop that serves the hub.
    code = await asyncio.to_thread(edgectl, ["--hub", str(hub.make_url("")), "--token", operator_token(hub),
                                             "apply", "-f", str(spec)])

    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert printed.out.splitlines()[:3] == ["component/demo/web configured (revision 1, 0 node(s))", "NOTES:",
                                           "web is installed at revision 1."]
    assert "warning: left out 1 Helm test hook document(s)" in printed.err


def test_notes_are_printed_as_helm_prints_them():
    assert notes_section("\n  web is installed.\n\n") == "NOTES:\nweb is installed."
    assert notes_section("") == notes_section(" \n") == ""


# --- the error envelope ----------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/api/v1/nodes/nobody"),
    ("GET", "/api/v1/components/demo/nothing"),
    ("DELETE", "/api/v1/components/demo/nothing"),
    ("GET", "/api/v1/no-such-thing"),
])
async def test_what_does_not_exist_is_a_json_404(hub: TestClient, method: str, path: str):
    await refused(await hub.request(method, path), 404)


async def test_a_wrong_method_is_a_json_405(hub: TestClient):
    response = await hub.put("/api/v1/nodes")
    await refused(response, 405)
    assert "GET" in response.headers["Allow"]


@pytest.mark.parametrize("body", ["not json", "[1, 2]", '"text"', "{", "[" * 100_000, b"\xff\xfe"])
@pytest.mark.parametrize("path", ["/api/v1/tokens", "/api/v1/join", "/api/v1/components"])
async def test_a_body_that_is_not_a_json_object_is_a_400(hub: TestClient, path: str, body: str | bytes):
    error = await refused(await hub.post(path, data=body, headers=JSON), 400)
    assert "JSON" in error


async def test_an_unexpected_error_is_a_json_500_with_the_traceback_in_the_log(
    hub: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(hub.app[REPORT_STORE], "list_nodes", broken)
    with caplog.at_level(logging.ERROR, logger="edgehub.routes.error_answers"):
        body = await answer(await hub.get("/api/v1/pools"), 500)
    assert body == {"error": INTERNAL_ERROR}
    (record,) = [r for r in caplog.records if r.name == "edgehub.routes.error_answers"]
    assert "GET /api/v1/pools" in record.getMessage() and record.exc_info is not None
    assert "disk on fire" in caplog.text


async def test_a_body_over_the_size_limit_is_a_json_413(hub: TestClient):
    await refused(await hub.post("/api/v1/components", data=b"x" * (MAX_REQUEST_BYTES + 1), headers=JSON), 413)


@pytest.mark.parametrize(("error", "status"), [
    (BadRequest("must be a string", field="pool"), 400),
    (CsrError("signature does not verify"), 400),
    (JoinRefused("token is unknown"), 403),
    (NotFound("node 'x' not found"), 404),
    (ConcurrentChange("component demo/web changed meanwhile"), 409),
    (SpecRefused(SpecError("spec.chart: missing")), 422),
])
def test_each_refusal_of_the_hub_answers_its_status(error: HubError, status: int):
    assert status_of(error) == status
