"""Revision history and rollback against the in-process hub (real Mosquitto, real Helm engine).

A fake node reports status over MQTT, so the statuses the history shows
(deployed, deploying, failed, superseded, rolled back) come from what nodes
say, as in a fleet. The podman end-to-end is tests/e2e/test_history_and_rollback.py.
"""

from __future__ import annotations

import asyncio
import copy
import json
import sqlite3
from typing import Any

import aiomqtt
import pytest
from aiohttp.test_utils import TestClient
from hub_api import answer, create_token, join, operator_token, refused, running_hub, unique

from edgectl.cli import main as run_edgectl
from edgehub.keys import ASSIGNMENT_STORE, COMPONENT_STORE, SETTINGS
from edgehub.settings import HubSettings
from edgeprotocol import topics
from edgeprotocol.messages import NodeStatus, Presence, ReleaseStatus, now
from edgesim.fleet import Mosquitto

HISTORY = "/api/v1/components/demo/web/history"
ROLLBACK = "/api/v1/components/demo/web/rollback"


def with_values(example: dict[str, Any], message: str, **spec: Any) -> dict[str, Any]:
    body = copy.deepcopy(example)
    body["component"]["spec"]["values"]["message"] = message
    body["component"]["spec"].update(spec)
    return body


class FakeNode:
    """A joined node that reports what the test says, over MQTT, as an agent would."""

    def __init__(self, broker: Mosquitto, name: str) -> None:
        self.broker, self.name, self.seq = broker, name, 0

    async def report(self, revision: int, phase: str = "Deployed") -> None:
        self.seq += 1
        status = NodeStatus(node=self.name, seq=self.seq, observed_at=now(), agent_version="test", runtime="podman",
                            releases=(ReleaseStatus(namespace="demo", release="web", desired_revision=revision,
                                                    applied_revision=revision if phase == "Deployed" else revision - 1,
                                                    phase=phase, ready=1, total=1, observed_at=now()),))
        async with aiomqtt.Client("127.0.0.1", self.broker.port, identifier=unique("test")) as mqtt:
            await mqtt.publish(topics.presence(self.name), Presence(node=self.name, state="online", at=now()).encode(),
                               qos=1)
            await mqtt.publish(topics.status(self.name), status.encode(), qos=1)


async def joined(hub: TestClient, broker: Mosquitto, name: str) -> FakeNode:
    await answer(await join(hub, await create_token(hub), name), 201)
    return FakeNode(broker, name)


async def history(hub: TestClient) -> list[dict[str, Any]]:
    return await answer(await hub.get(HISTORY), 200)


async def statuses(hub: TestClient) -> list[tuple[int, str]]:
    return [(r["revision"], r["status"]) for r in await history(hub)]


async def wait_statuses(hub: TestClient, expected: list[tuple[int, str]]) -> list[dict[str, Any]]:
    for _ in range(200):
        if await statuses(hub) == expected:
            return await history(hub)
        await asyncio.sleep(0.05)
    assert await statuses(hub) == expected
    return await history(hub)


def stored(hub: TestClient, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{hub.app[SETTINGS].db_path}?mode=ro", uri=True) as db:
        return db.execute(query, params).fetchall()


async def test_history_lists_each_revision_newest_first_with_its_chart_origin_and_values_digest(
    hub: TestClient, broker: Mosquitto, example: dict[str, Any]
):
    node = await joined(hub, broker, "sh-1")
    await answer(await hub.post("/api/v1/components", json={**with_values(example, "A"), "client": "edgectl"}), 201)
    await node.report(1)
    first = await wait_statuses(hub, [(1, "deployed")])
    assert first[0]["current"] and first[0]["rollout"]["desired"] == 1 and first[0]["origin"] == "apply by edgectl"

    await answer(await hub.post("/api/v1/components", json=with_values(example, "B")), 200)
    shown = await wait_statuses(hub, [(2, "deploying 0/1"), (1, "superseded")])
    assert [r["origin"] for r in shown] == ["apply", "apply by edgectl"]
    assert [r["current"] for r in shown] == [True, False]
    assert shown[0]["chart"]["name"] == "web" and shown[0]["chart"]["digest"].startswith("sha256:")
    assert shown[0]["chart"] == {**shown[1]["chart"]}  # the same chart, stored once
    assert stored(hub, "SELECT COUNT(*) FROM charts") == [(1,)]
    # Values are digests, never the values: equal values give equal digests.
    assert set(shown[0]["values"]) == {"hmac-sha256"} and shown[0]["values"] != shown[1]["values"]
    text = str(shown)
    assert "'A'" not in text and "'B'" not in text and "ni hao" not in text
    assert shown[0]["created_at"] >= shown[1]["created_at"] > 0

    await node.report(2)
    await wait_statuses(hub, [(2, "deployed"), (1, "superseded")])


async def test_a_revision_whose_targets_failed_stays_failed_when_superseded(
    hub: TestClient, broker: Mosquitto, example: dict[str, Any]
):
    node = await joined(hub, broker, "sh-1")
    await answer(await hub.post("/api/v1/components", json=with_values(example, "A")), 201)
    await node.report(1, phase="Failed")
    await wait_statuses(hub, [(1, "failed")])
    await answer(await hub.post("/api/v1/components", json=with_values(example, "B")), 200)
    await node.report(2, phase="Applying")
    await wait_statuses(hub, [(2, "deploying 0/1"), (1, "failed")])
    await node.report(2)
    await wait_statuses(hub, [(2, "deployed"), (1, "failed")])


async def test_a_rollback_makes_a_new_revision_from_the_old_one_and_marks_those_in_between_rolled_back(
    hub: TestClient, broker: Mosquitto, example: dict[str, Any]
):
    node = await joined(hub, broker, "sh-1")
    for revision, message in enumerate(["A", "B", "C"], start=1):
        await answer(await hub.post("/api/v1/components", json=with_values(example, message)),
                     201 if revision == 1 else 200)
        await node.report(revision)

    # Default: the revision before the current one.
    rolled = await answer(await hub.post(ROLLBACK, json={}), 200)
    assert rolled == {"component": "demo/web", "revision": 4, "changed": True, "targets": 1, "warnings": [],
                      "notes": "", "rolled_back_to": 2}
    shown = await wait_statuses(hub, [(4, "deploying 0/1"), (3, "rolled back"), (2, "superseded"),
                                      (1, "superseded")])
    assert shown[0]["origin"] == "rollback to 2"
    assert shown[0]["values"] == shown[2]["values"] and shown[0]["fingerprint"] == shown[2]["fingerprint"]

    # To an explicit revision: everything after it is rolled back.
    rolled = await answer(await hub.post(ROLLBACK, json={"to_revision": 1}), 200)
    assert (rolled["revision"], rolled["rolled_back_to"]) == (5, 1)
    await node.report(5)
    shown = await wait_statuses(hub, [(5, "deployed"), (4, "rolled back"), (3, "rolled back"), (2, "rolled back"),
                                      (1, "superseded")])
    assert shown[0]["values"] == shown[4]["values"]
    # The node is assigned revision 5, rendered as an upgrade with revision 1's values.
    render = await hub.app[COMPONENT_STORE].get_renders("demo", "web", 5)
    assert render and all("A" in b.manifests for b in render.values())
    view = await answer(await hub.get("/api/v1/components/demo/web"), 200)
    assert view["revision"] == 5 and view["nodes"][0]["assigned_revision"] == 5


async def test_rollback_refusals_name_what_is_wrong(hub: TestClient, example: dict[str, Any]):
    await refused(await hub.post(ROLLBACK, json={}), 404)  # no such component
    await refused(await hub.get(HISTORY), 404)
    await answer(await hub.post("/api/v1/components", json=with_values(example, "A", historyLimit=2)), 201)
    assert "nothing to roll back to" in await refused(await hub.post(ROLLBACK, json={}), 409)  # only revision 1
    for message in ("B", "C"):
        await answer(await hub.post("/api/v1/components", json=with_values(example, message, historyLimit=2)), 200)
    error = await refused(await hub.post(ROLLBACK, json={"to_revision": 7}), 404)
    assert "revision 7 of component demo/web not found" in error and "2 to 3" in error
    error = await refused(await hub.post(ROLLBACK, json={"to_revision": 1}), 404)
    assert "revision 1 of component demo/web was pruned" in error and "spec.historyLimit keeps 2" in error
    await refused(await hub.post(ROLLBACK, json={"to_revision": 0}), 400, "to_revision")
    await refused(await hub.post(ROLLBACK, json={"to_revision": "2"}), 400, "to_revision")
    assert "current revision" in await refused(await hub.post(ROLLBACK, json={"to_revision": 3}), 409)

    await answer(await hub.delete("/api/v1/components/demo/web"), 200)
    assert "deleted at revision 4" in await refused(await hub.post(ROLLBACK, json={"to_revision": 2}), 404)
    # The history of a deleted component is still listed: its last revision is the deletion.
    assert await statuses(hub) == [(4, "deleted"), (3, "superseded")]


async def test_history_limit_prunes_revisions_and_their_renders_but_keeps_the_current_one(
    hub: TestClient, example: dict[str, Any]
):
    for i in range(5):
        await answer(await hub.post("/api/v1/components", json=with_values(example, f"m{i}", historyLimit=3)),
                     201 if i == 0 else 200)
    assert [r for r, _ in await statuses(hub)] == [5, 4, 3]
    revisions = stored(hub, "SELECT DISTINCT revision FROM renders WHERE name = 'web' ORDER BY revision")
    assert revisions == [(3,), (4,), (5,)]
    # Lowering the limit alone makes no revision, and prunes at once.
    same = await answer(await hub.post("/api/v1/components", json=with_values(example, "m4", historyLimit=1)), 200)
    assert same == {"component": "demo/web", "revision": 5, "changed": False}
    assert [r for r, _ in await statuses(hub)] == [5]
    assert stored(hub, "SELECT DISTINCT revision FROM renders WHERE name = 'web'") == [(5,)]
    assert stored(hub, "SELECT COUNT(*) FROM revisions") == [(1,)]
    shown = await answer(await hub.get("/api/v1/components/demo/web"), 200)
    assert shown["spec"]["spec"]["historyLimit"] == 1


async def test_a_render_a_node_is_still_assigned_is_kept_until_the_node_is_assigned_another(
    hub: TestClient, example: dict[str, Any]
):
    await answer(await join(hub, await create_token(hub), "sh-1"), 201)
    await answer(await hub.post("/api/v1/components", json=with_values(example, "A", historyLimit=1)), 201)
    components = hub.app[COMPONENT_STORE]
    assert stored(hub, "SELECT render_key FROM renders ORDER BY render_key") == [("",), ("shanghai",)]
    # Revision 2 stored, not dispatched yet: the node is still assigned revision 1's shanghai render,
    # so pruning revision 1 (historyLimit 1) keeps that render and drops the base one.
    await components.save_component(namespace="demo", name="web", spec=with_values(example, "B")["component"],
                                    chart_archive=b"chart", chart_name="web", chart_version="0.1.0", fingerprint="x",
                                    revision=2, renders={}, history_limit=1)
    assert stored(hub, "SELECT revision FROM revisions") == [(2,)]
    assert stored(hub, "SELECT revision, render_key FROM renders") == [(1, "shanghai")]
    assert await components.prune_history() == 0  # still assigned
    await hub.app[ASSIGNMENT_STORE].update_assignments([], [("sh-1", "demo", "web")])
    assert await components.prune_history() == 1
    assert stored(hub, "SELECT COUNT(*) FROM renders") == [(0,)]


async def test_a_delete_then_an_apply_continues_the_history(hub: TestClient, example: dict[str, Any]):
    await answer(await hub.post("/api/v1/components", json=with_values(example, "A")), 201)
    await answer(await hub.delete("/api/v1/components/demo/web"), 200)
    await answer(await hub.post("/api/v1/components", json=with_values(example, "B")), 201)
    shown = await history(hub)
    assert [(r["revision"], r["status"], r["origin"]) for r in shown] == [
        (3, "no targets", "apply"), (2, "deleted", "delete"), (1, "superseded", "apply")]
    # The deleted component's spec and chart were dropped (no node held it): listed, not restorable.
    assert shown[2]["values"] is None and shown[1]["values"] is None
    assert "dropped when the component was deleted" in await refused(
        await hub.post(ROLLBACK, json={"to_revision": 1}), 409)
    assert "is the deletion" in await refused(await hub.post(ROLLBACK, json={}), 409)


async def test_a_store_from_before_history_gets_a_revision_for_each_component_on_open(
    hub_settings: HubSettings, example: dict[str, Any]
):
    async with running_hub(hub_settings) as hub:
        await answer(await hub.post("/api/v1/components", json=with_values(example, "A")), 201)
        await answer(await hub.post("/api/v1/components", json=with_values(example, "B")), 200)
        archive = await hub.app[COMPONENT_STORE].get_chart_archive("demo", "web")
        assert archive
    # What an older hub left: no revisions table, the chart archive in the components row.
    db = sqlite3.connect(hub_settings.db_path)
    with db:
        db.execute("UPDATE components SET chart_archive = ?", (archive,))
        db.execute("DROP TABLE revisions")
        db.execute("DROP TABLE charts")
    db.close()
    async with running_hub(hub_settings) as hub:
        shown = await history(hub)
        assert [(r["revision"], r["origin"], r["status"]) for r in shown] == [
            (2, "stored before history", "no targets")]
        assert await hub.app[COMPONENT_STORE].get_chart_archive("demo", "web") == archive
        assert stored(hub, "SELECT length(chart_archive) FROM components") == [(0,)]
        # Revision 1's render, which no history row holds, goes at the next dispatch.
        await answer(await hub.post("/api/v1/components", json=with_values(example, "C")), 200)
        assert stored(hub, "SELECT DISTINCT revision FROM renders ORDER BY revision") == [(2,), (3,)]
        await answer(await hub.post(ROLLBACK, json={"to_revision": 2}), 200)
        assert (await history(hub))[0]["origin"] == "rollback to 2"


async def test_edgectl_history_and_rollback(hub: TestClient, broker: Mosquitto, example: dict[str, Any],
                                            capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    for variable in ("EDGECOLLAB_TOKEN", "EDGECOLLAB_TOKEN_FILE", "EDGECOLLAB_HUB"):
        monkeypatch.delenv(variable, raising=False)

    async def edgectl(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = await asyncio.to_thread(run_edgectl, ["--hub", str(hub.make_url("")), "--token",
                                                     operator_token(hub), *args])
        printed = capsys.readouterr()
        return code, printed.out, printed.err

    node = await joined(hub, broker, "sh-1")
    await answer(await hub.post("/api/v1/components", json={**with_values(example, "A"), "client": "edgectl"}), 201)
    await node.report(1)
    await answer(await hub.post("/api/v1/components", json=with_values(example, "B")), 200)
    await node.report(2)
    await wait_statuses(hub, [(2, "deployed"), (1, "superseded")])

    code, out, err = await edgectl("rollback", "demo/web")
    assert (code, out, err) == (0, "component/demo/web rolled back to revision 1 (now revision 3, 1 node(s))\n", "")
    code, out, err = await edgectl("history", "web", "-n", "demo")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["REVISION", "UPDATED", "STATUS", "CHART", "ORIGIN"]
    assert [line.split()[0] for line in lines[1:]] == ["3", "2", "1"]
    assert "deploying 0/1" in lines[1] and "rollback to 1" in lines[1] and "web-0.1.0" in lines[1]
    assert "rolled back" in lines[2] and "superseded" in lines[3] and "apply by edgectl" in lines[3]
    code, out, _ = await edgectl("history", "demo/web", "-o", "wide")
    assert out.splitlines()[0].split() == ["REVISION", "UPDATED", "STATUS", "CHART", "CHART", "DIGEST", "VALUES",
                                           "ORIGIN"]
    code, out, _ = await edgectl("history", "demo/web", "-o", "json")
    assert [r["revision"] for r in json.loads(out)] == [3, 2, 1]

    code, _, err = await edgectl("history", "demo/nothing")
    assert code == 4 and "component demo/nothing not found" in err
    code, _, err = await edgectl("rollback", "demo/web", "--to-revision", "9")
    assert code == 4 and "revision 9 of component demo/web not found" in err
    code, _, err = await edgectl("rollback", "demo/web", "--to-revision", "3")
    assert code == 1 and "current revision" in err
