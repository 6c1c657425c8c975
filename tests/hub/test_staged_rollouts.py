"""Staged, health-gated rollouts against the in-process hub (real Mosquitto, real Helm engine).

Fake nodes report status over MQTT as agents do; what each node is assigned is read from the hub's
assignment table (the truth the dispatcher publishes from). The planner's decisions are unit-tested in
test_rollout_planner.py.
"""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from aiohttp.test_utils import TestClient
from hub_api import answer, create_token, join, operator_token, refused, running_hub, unique
from test_history_and_rollback import FakeNode, statuses, stored

from edgectl.cli import main as run_edgectl
from edgehub.settings import HubSettings
from edgeprotocol import topics
from edgeprotocol.messages import ContainerStatus, NodeStatus, PodStatus, Presence, ReleaseStatus, now
from edgesim.fleet import Mosquitto

ROLLOUT = "/api/v1/components/demo/web/rollout"
STAGED = {"batches": [{"pools": ["canary"]}, {"percent": 100}],
          "healthGate": {"readyWithin": "3s", "minReadyTime": "0s"}}


@pytest.fixture
def hub_settings(tmp_path: Path, broker: Mosquitto) -> HubSettings:
    return HubSettings(state_dir=tmp_path / "state", mqtt_url=broker.url, rollout_tick_seconds=0.1)


def spec(example: dict[str, Any], message: str, rollout: dict[str, Any] | None = STAGED) -> dict[str, Any]:
    body = copy.deepcopy(example)
    body["component"]["spec"]["values"]["message"] = message
    body["component"]["spec"]["edge"] = {"nodePools": ["canary", "main"], **({"rollout": rollout} if rollout else {})}
    return body


async def node_in(hub: TestClient, broker: Mosquitto, name: str, pool: str) -> FakeNode:
    await answer(await join(hub, await create_token(hub, pool=pool), name), 201)
    return FakeNode(broker, name)


def assigned(hub: TestClient) -> dict[str, int]:
    return dict(stored(hub, "SELECT node, revision FROM assignments WHERE namespace = 'demo' AND release = 'web' "
                            "AND kind = 'release'"))


async def wait_for(check: Any, what: str, seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if await check() if asyncio.iscoroutinefunction(check) else check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def rollout_state(hub: TestClient) -> dict[str, Any]:
    return await answer(await hub.get(ROLLOUT), 200)


async def fleet_at_revision_1(hub: TestClient, broker: Mosquitto, example: dict[str, Any],
                              main: int = 2) -> list[FakeNode]:
    nodes = [await node_in(hub, broker, "c1", "canary")] + [await node_in(hub, broker, f"m{i}", "main")
                                                           for i in range(1, main + 1)]
    # The first revision has nothing to roll back to: it goes to every target at once.
    await answer(await hub.post("/api/v1/components", json=spec(example, "A")), 201)
    assert assigned(hub) == {n.name: 1 for n in nodes}
    for n in nodes:
        await n.report(1)
    await refused(await hub.get(ROLLOUT), 404)
    return nodes


async def test_a_rollout_goes_batch_by_batch_and_completes(hub: TestClient, broker: Mosquitto,
                                                           example: dict[str, Any]):
    c1, m1, m2 = await fleet_at_revision_1(hub, broker, example)
    await answer(await hub.post("/api/v1/components", json=spec(example, "B")), 200)
    await wait_for(lambda: assigned(hub) == {"c1": 2, "m1": 1, "m2": 1}, "the canary batch")
    shown = await rollout_state(hub)
    assert shown["state"] == "progressing" and shown["batch"] == 1 and shown["batches"][0]["nodes"] == ["c1"]
    assert shown["previous_revision"] == 1 and shown["revision"] == 2

    await c1.report(2)
    await wait_for(lambda: assigned(hub) == {"c1": 2, "m1": 2, "m2": 2}, "the second batch")
    await m1.report(2)
    await m2.report(2)

    async def complete() -> bool:
        return (await rollout_state(hub))["state"] == "complete"
    await wait_for(complete, "the rollout to complete")
    assert await statuses(hub) == [(2, "deployed"), (1, "superseded")]


async def test_a_failed_canary_rolls_back_and_later_batches_never_get_the_bad_revision(
        hub: TestClient, broker: Mosquitto, example: dict[str, Any]):
    c1, m1, m2 = await fleet_at_revision_1(hub, broker, example)
    await answer(await hub.post("/api/v1/components", json=spec(example, "bad")), 200)
    await c1.report(2, phase="Failed")

    async def rolled_back() -> bool:
        return (await rollout_state(hub))["state"] == "rolled back"
    await wait_for(rolled_back, "the automatic rollback")
    shown = await rollout_state(hub)
    assert shown["failed_node"] == "c1" and "reported Failed" in shown["reason"]
    assert shown["rollback_revision"] == 3
    # The canary gets the rollback revision; the others never left revision 1.
    assert assigned(hub) == {"c1": 3, "m1": 1, "m2": 1}
    history = stored(hub, "SELECT revision, status, origin FROM revisions ORDER BY revision")
    assert history[1][:2] == (2, "rolled back")
    assert history[2][0] == 3 and history[2][2] == "rollback to 1 (rollout of 2 failed)"
    await asyncio.sleep(0.5)  # nothing more happens
    assert assigned(hub) == {"c1": 3, "m1": 1, "m2": 1}


async def test_a_canary_that_misses_ready_within_fails_too(hub: TestClient, broker: Mosquitto,
                                                           example: dict[str, Any]):
    await fleet_at_revision_1(hub, broker, example, main=1)
    await answer(await hub.post("/api/v1/components", json=spec(example, "slow")), 200)

    async def rolled_back() -> bool:
        return (await rollout_state(hub))["state"] == "rolled back"
    await wait_for(rolled_back, "the deadline", seconds=8)
    assert "within 3s" in (await rollout_state(hub))["reason"]
    assert assigned(hub) == {"c1": 3, "m1": 1}


async def test_pause_stops_new_batches_and_resume_goes_on(hub: TestClient, broker: Mosquitto,
                                                          example: dict[str, Any]):
    c1, m1, m2 = await fleet_at_revision_1(hub, broker, example)
    await answer(await hub.post("/api/v1/components", json=spec(example, "B")), 200)
    await wait_for(lambda: assigned(hub)["c1"] == 2, "the canary batch")
    paused = await answer(await hub.post(f"{ROLLOUT}/pause", json={}), 200)
    assert paused["state"] == "paused"
    await refused(await hub.post(f"{ROLLOUT}/pause", json={}), 409)
    await c1.report(2)
    await asyncio.sleep(0.6)
    assert assigned(hub) == {"c1": 2, "m1": 1, "m2": 1}
    assert (await answer(await hub.post(f"{ROLLOUT}/resume", json={}), 200))["state"] == "progressing"
    await wait_for(lambda: assigned(hub) == {"c1": 2, "m1": 2, "m2": 2}, "the second batch after resume")


async def offline(broker: Mosquitto, name: str) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier=unique("test")) as mqtt:
        await mqtt.publish(topics.presence(name), Presence(node=name, state="offline", at=now()).encode(), qos=1)


async def test_an_offline_node_is_deferred_then_gets_the_settled_revision(hub: TestClient, broker: Mosquitto,
                                                                          example: dict[str, Any]):
    c1, m1, m2 = await fleet_at_revision_1(hub, broker, example)
    await offline(broker, "m2")
    await wait_for(lambda: stored(hub, "SELECT presence FROM nodes WHERE name = 'm2'") == [("offline",)], "offline")
    await answer(await hub.post("/api/v1/components", json=spec(example, "B")), 200)
    await c1.report(2)
    await wait_for(lambda: assigned(hub)["m1"] == 2, "the second batch")
    shown = await rollout_state(hub)
    assert shown["batches"][1]["nodes"] == ["m1"] and shown["deferred"] == ["m2"]
    assert assigned(hub)["m2"] == 1
    await m1.report(2)
    await wait_for(lambda: assigned(hub)["m2"] == 2, "the settled revision for the deferred node")
    shown = await rollout_state(hub)
    assert shown["state"] == "complete" and shown["deferred"] == ["m2"]


async def test_the_rollout_survives_a_hub_restart(hub_settings: HubSettings, broker: Mosquitto,
                                                  example: dict[str, Any]):
    async with running_hub(hub_settings) as hub:
        c1, m1, m2 = await fleet_at_revision_1(hub, broker, example)
        await answer(await hub.post("/api/v1/components", json=spec(example, "B")), 200)
        await wait_for(lambda: assigned(hub) == {"c1": 2, "m1": 1, "m2": 1}, "the canary batch")
        assert (await rollout_state(hub))["batch"] == 1
    async with running_hub(hub_settings) as hub:
        shown = await rollout_state(hub)
        assert shown["state"] == "progressing" and shown["batches"][0]["nodes"] == ["c1"]
        assert assigned(hub) == {"c1": 2, "m1": 1, "m2": 1}
        await c1.report(2)
        await wait_for(lambda: assigned(hub) == {"c1": 2, "m1": 2, "m2": 2}, "the second batch after the restart")


async def test_edgectl_rollout_status_follows_and_exits_by_outcome(hub: TestClient, broker: Mosquitto,
                                                                   example: dict[str, Any],
                                                                   capsys: pytest.CaptureFixture[str]):
    def edgectl(*args: str) -> Any:
        return asyncio.to_thread(run_edgectl, ["--hub", str(hub.make_url("")), "--token", operator_token(hub),
                                               *args])

    assert await edgectl("rollout", "status", "demo/web") == 4  # no such component
    c1, m1, m2 = await fleet_at_revision_1(hub, broker, example)
    assert await edgectl("rollout", "status", "demo/web") == 4  # no staged rollout
    await answer(await hub.post("/api/v1/components", json=spec(example, "B")), 200)
    await wait_for(lambda: assigned(hub)["c1"] == 2, "the canary batch")
    capsys.readouterr()
    assert await edgectl("rollout", "pause", "demo/web") == 0
    assert "paused at batch 1/2" in capsys.readouterr().out
    assert await edgectl("rollout", "status", "demo/web", "--timeout", "1", "--interval", "0.5") == 1
    assert "rollout of demo/web revision 2 paused" in capsys.readouterr().out
    assert await edgectl("rollout", "resume", "demo/web") == 0
    following = edgectl("rollout", "status", "demo/web", "--interval", "0.5", "--timeout", "20")
    await c1.report(2)
    await wait_for(lambda: assigned(hub)["m1"] == 2, "the second batch")
    await m1.report(2)
    await m2.report(2)
    assert await following == 0
    out = capsys.readouterr().out
    assert "batch 1/2 (pools canary): passed, 1/1 ready [c1]" in out
    assert "rollout of demo/web revision 2 complete" in out

    await answer(await hub.post("/api/v1/components", json=spec(example, "bad")), 200)
    await wait_for(lambda: assigned(hub)["c1"] == 3, "the canary batch")
    following = edgectl("rollout", "status", "demo/web", "--interval", "0.5", "--timeout", "20")
    await c1.report(3, phase="Failed")
    assert await following == 1
    printed = capsys.readouterr()
    assert "rolled back to revision 2 (as revision 4)" in printed.out and "c1 reported Failed" in printed.out
    assert assigned(hub) == {"c1": 4, "m1": 2, "m2": 2}


CRASHING = 'pod web-0 container web: CrashLoopBackOff: exited 3 (Error), restarted 4 times; last log: "crashing"'


async def report_crash_loop(broker: Mosquitto, node: str, revision: int, seq: int) -> None:
    """What an agent reports of a release whose only container exits at once, over and over."""
    web = ContainerStatus(name="web", ready=False, restarts=4, state="waiting", reason="CrashLoopBackOff",
                          exit_code=3, last_reason="Error", finished_at=now(), last_log="crashing")
    sidecar = ContainerStatus(name="sidecar", ready=True)
    release = ReleaseStatus(namespace="demo", release="web", desired_revision=revision, applied_revision=revision,
                            phase="Degraded", message=CRASHING, ready=0, total=1, observed_at=now(),
                            reason="CrashLoopBackOff", restarts=4,
                            pods=(PodStatus(name="web-0", containers=(web, sidecar)),))
    status = NodeStatus(node=node, seq=seq, observed_at=now(), agent_version="test", runtime="podman",
                        releases=(release,))
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier=unique("test")) as mqtt:
        await mqtt.publish(topics.presence(node), Presence(node=node, state="online", at=now()).encode(), qos=1)
        await mqtt.publish(topics.status(node), status.encode(), qos=1)


async def test_a_crash_looping_canary_fails_at_once_and_edgectl_names_the_node_and_the_reason(
        hub: TestClient, broker: Mosquitto, example: dict[str, Any], capsys: pytest.CaptureFixture[str]):
    def edgectl(*args: str) -> Any:
        return asyncio.to_thread(run_edgectl, ["--hub", str(hub.make_url("")), "--token", operator_token(hub),
                                               *args])

    c1, *_ = await fleet_at_revision_1(hub, broker, example)
    # A minute to get ready: a crash loop must not wait it out.
    patient = {**STAGED, "healthGate": {"readyWithin": "60s", "minReadyTime": "10s"}}
    await answer(await hub.post("/api/v1/components", json=spec(example, "crash", patient)), 200)
    await wait_for(lambda: assigned(hub)["c1"] == 2, "the canary batch")
    following = edgectl("rollout", "status", "demo/web", "--interval", "0.5", "--timeout", "20")
    heard = asyncio.get_running_loop().time()
    await report_crash_loop(broker, "c1", 2, seq=c1.seq + 1)
    assert await following == 1
    assert asyncio.get_running_loop().time() - heard < 10  # well within readyWithin
    printed = capsys.readouterr()
    assert "c1 reported CrashLoopBackOff (phase Degraded) for revision 2: " + CRASHING in printed.out
    assert "rolled back to revision 1 (as revision 3)" in printed.out
    assert "edgectl: rollout of demo/web revision 2 rolled back" in printed.err and "CrashLoopBackOff" in printed.err
    assert assigned(hub) == {"c1": 3, "m1": 1, "m2": 1}  # the later batch never got revision 2

    # What the node reported, as edgectl shows it (c1 has not taken the rollback yet).
    assert await edgectl("describe", "component", "demo/web") == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("c1 ")]
    assert "Degraded" in row and "CrashLoopBackOff" in row and CRASHING in row
    assert await edgectl("describe", "node", "c1") == 0
    lines = capsys.readouterr().out.splitlines()
    release = next(i for i, line in enumerate(lines) if line.startswith("demo "))
    assert lines[release].split()[:6] == ["demo", "web", "2", "Degraded", "CrashLoopBackOff", "4"]
    assert lines[release + 1:] == ["    " + CRASHING]  # one line per unhealthy container: not the ready sidecar
    assert await edgectl("describe", "node", "c1", "-o", "json") == 0
    (shown,) = json.loads(capsys.readouterr().out)["releases"]
    assert (shown["reason"], shown["restarts"]) == ("CrashLoopBackOff", 4)
    assert shown["pods"][0]["name"] == "web-0"
    assert shown["pods"][0]["containers"][0] == {
        "name": "web", "ready": False, "restarts": 4, "state": "waiting", "reason": "CrashLoopBackOff",
        "exit_code": 3, "last_reason": "Error", "finished_at": shown["pods"][0]["containers"][0]["finished_at"],
        "last_log": "crashing"}
    assert await edgectl("get", "nodes") == 0
    assert "demo/web@2:Degraded(CrashLoopBackOff)" in capsys.readouterr().out
