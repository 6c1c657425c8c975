"""``edgectl`` against the in-process hub: where it finds the operator token, what it says without one,
and that nothing a node reports can reach the operator's terminal as control characters.

edgectl blocks on its HTTP calls, so it runs off the loop that serves the hub.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from aiohttp.test_utils import TestClient
from hub_api import answer, create_token, join, operator_token

from edgectl.cli import NO_TOKEN
from edgectl.cli import main as edgectl
from edgeprotocol import topics
from edgeprotocol.messages import Condition, NodeStatus, ReleaseStatus
from edgesim.fleet import Mosquitto

# What a hostile or broken node might put in its status: colours, a screen
# clear, a window title (OSC), a hyperlink, a bell, a carriage return that
# overwrites the line, C1 controls (CSI as one byte, NEL) and DEL.
HOSTILE = ("\x1b[31mred\x1b[0m \x1b[2J\x1b]0;owned title\x07 \x1b]8;;http://evil.example\x1b\\link\x1b]8;;\x1b\\"
           " bell\x07 fake\rDeployed \x9b2J c1\x85 del\x7f end\nsecond line\tcell")
FORBIDDEN = [chr(c) for c in (*range(0x00, 0x09), *range(0x0b, 0x20), *range(0x7f, 0xa0))]


@pytest.fixture(autouse=True)
def no_token_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("EDGECOLLAB_TOKEN", "EDGECOLLAB_TOKEN_FILE", "EDGECOLLAB_HUB"):
        monkeypatch.delenv(name, raising=False)


async def run_edgectl(hub: TestClient, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(edgectl, ["--hub", str(hub.make_url("")), *args])
    printed = capsys.readouterr()
    return code, printed.out, printed.err


@pytest.mark.parametrize("source", ["--token", "EDGECOLLAB_TOKEN", "EDGECOLLAB_TOKEN_FILE"])
async def test_edgectl_takes_the_operator_token_from_the_flag_the_environment_or_a_file(
    hub: TestClient, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, source: str
):
    token, flags = operator_token(hub), []
    if source == "--token":
        flags = ["--token", token]
    elif source == "EDGECOLLAB_TOKEN":
        monkeypatch.setenv("EDGECOLLAB_TOKEN", token)
    else:
        (tmp_path / "token").write_text(token + "\n")
        monkeypatch.setenv("EDGECOLLAB_TOKEN_FILE", str(tmp_path / "token"))

    code, out, err = await run_edgectl(hub, capsys, *flags, "token", "create", "--pool", "shanghai")
    assert code == 0, err
    assert out.startswith("ec1.")
    code, out, err = await run_edgectl(hub, capsys, *flags, "get", "pools")
    assert code == 0 and out.split() == ["POOL", "NODES", "ONLINE"], err


async def test_the_flag_wins_over_the_environment_and_the_environment_over_the_file(
    hub: TestClient, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    (tmp_path / "wrong").write_text("wrong-token-from-the-file-wrong-token-from-the-file")
    monkeypatch.setenv("EDGECOLLAB_TOKEN_FILE", str(tmp_path / "wrong"))
    monkeypatch.setenv("EDGECOLLAB_TOKEN", operator_token(hub))
    assert (await run_edgectl(hub, capsys, "get", "pools"))[0] == 0

    monkeypatch.setenv("EDGECOLLAB_TOKEN", "wrong-token-from-the-environment")
    code, _, err = await run_edgectl(hub, capsys, "get", "pools")
    assert code == 1 and "refused the operator token from EDGECOLLAB_TOKEN" in err
    assert (await run_edgectl(hub, capsys, "--token", operator_token(hub), "get", "pools"))[0] == 0


async def test_edgectl_without_a_token_says_how_to_give_one(hub: TestClient, capsys: pytest.CaptureFixture[str]):
    code, out, err = await run_edgectl(hub, capsys, "get", "nodes")
    assert (code, out) == (1, "")
    assert err == f"edgectl: {NO_TOKEN}\n"
    assert "Traceback" not in err


async def test_edgectl_with_a_wrong_token_says_where_the_token_came_from(
    hub: TestClient, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    (tmp_path / "token").write_text("an-old-token-of-another-hub-an-old-token\n")
    monkeypatch.setenv("EDGECOLLAB_TOKEN_FILE", str(tmp_path / "token"))
    code, _, err = await run_edgectl(hub, capsys, "token", "create", "--pool", "shanghai")
    assert code == 1
    assert f"refused the operator token from the file {tmp_path / 'token'}" in err and "wrong" in err


async def publish_status(broker: Mosquitto, status: NodeStatus) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier=f"test-{status.node}") as mqtt:
        await mqtt.publish(topics.status(status.node), status.encode(), qos=1)


async def test_control_characters_in_what_a_node_reports_do_not_reach_edgectl_output(
    hub: TestClient, broker: Mosquitto, example: dict[str, Any], capsys: pytest.CaptureFixture[str]
):
    await answer(await join(hub, await create_token(hub), "sh-1"), 201)
    await answer(await hub.post("/api/v1/components", json=example), 201)
    await publish_status(broker, NodeStatus(
        node="sh-1", seq=1, observed_at="2024-01-01T00:00:00Z", agent_version=HOSTILE, runtime=HOSTILE,
        releases=(ReleaseStatus(namespace="demo", release="web", desired_revision=1, applied_revision=1,
                                phase="Failed", message=HOSTILE, observed_at=HOSTILE),),
        conditions=(Condition(type="RuntimeReady", status="False", reason="PodCreateFailed", message=HOSTILE,
                              since=HOSTILE),),
    ))
    async with asyncio.timeout(5):
        while (await answer(await hub.get("/api/v1/nodes/sh-1"), 200))["runtime"] != HOSTILE:
            await asyncio.sleep(0.05)

    token = ["--token", operator_token(hub)]
    printed = {}
    for command in ("get nodes", "describe node sh-1", "describe component demo/web", "get components",
                    "describe node sh-1 -o json"):
        code, out, err = await run_edgectl(hub, capsys, *token, *command.split())
        assert code == 0, err
        printed[command] = out + err
    for command, text in printed.items():
        assert not [c for c in FORBIDDEN if c in text], (command, text)
    # The text around the controls is still shown, and a table row stays one line.
    node = printed["describe node sh-1"]
    assert "red" in node and "fake" in node and "Deployed" in node and "second line" in node
    (condition_row,) = [line for line in node.splitlines() if line.startswith("RuntimeReady")]
    assert "second line" in condition_row


async def test_edgectl_node_revoke_and_reset_say_what_they_did(hub: TestClient, capsys: pytest.CaptureFixture[str]):
    await answer(await join(hub, await create_token(hub), "sh-1"), 201)
    token = ["--token", operator_token(hub)]

    code, out, err = await run_edgectl(hub, capsys, *token, "node", "revoke", "sh-1")
    assert code == 0, err
    assert out == ("node/sh-1 revoked: its messages are ignored, its 0 assignment(s) are no longer published to it, "
                   "and its name cannot join; free the name with: edgectl node reset sh-1\n")
    assert "is revoked" in (await answer(await join(hub, await create_token(hub), "sh-1"), 403))["error"]

    code, out, err = await run_edgectl(hub, capsys, *token, "node", "reset", "sh-1")
    assert code == 0, err
    assert out.startswith("node/sh-1 reset: its name is free, and the next join with it is accepted "
                          "(as join generation 2); its 0 assignment(s) are kept")
    assert (await answer(await join(hub, await create_token(hub), "sh-1"), 201))["generation"] == 2

    code, out, _ = await run_edgectl(hub, capsys, *token, "node", "reset", "sh-1", "-o", "json")
    assert code == 0 and json.loads(out)["next_generation"] == 3
    code, out, err = await run_edgectl(hub, capsys, *token, "node", "revoke", "nobody")
    assert (code, out) == (4, "") and "node 'nobody' not found" in err  # 4: not found
    code, out, err = await run_edgectl(hub, capsys, *token, "node", "reset", "../components")
    assert (code, out) == (1, "") and "not a valid name" in err
    code, _, err = await run_edgectl(hub, capsys, "node", "reset", "sh-1")
    assert code == 1 and err == f"edgectl: {NO_TOKEN}\n"
