"""``edgectl get -w``, ``edgectl events [--follow]``, ``-o wide|yaml`` and the exit codes, against a real hub.

The hub is the in-process one (``conftest.py``) with a real Mosquitto; nodes
join through the API and report over MQTT as agents do. edgectl runs as its
own process (``python -m edgectl.cli``), as a user runs it, so a watch is
read line by line while it runs and can be sent SIGINT. One test runs
``edgehub serve`` as a process too, to stop it under a watch and start it again.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiomqtt
import yaml
from aiohttp.test_utils import TestClient
from hub_api import answer, create_token, join, operator_token, unique

from edgeprotocol import topics
from edgeprotocol.messages import Condition, Event, NodeStatus
from edgesim.fleet import Hub, Mosquitto
from edgesim.net import free_port

REPO = Path(__file__).resolve().parents[2]
LINE_TIMEOUT = 15.0


class Edgectl:
    """``edgectl ARGS`` as a process, against ``hub_url`` with the operator token in EDGECOLLAB_TOKEN."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    @classmethod
    async def start(cls, hub_url: str, token: str | None, *args: str) -> Edgectl:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGECOLLAB_")}
        if token is not None:
            env["EDGECOLLAB_TOKEN"] = token
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edgectl.cli", "--hub", hub_url, *args, cwd=REPO, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        return cls(proc)

    async def line(self, stream: str = "stdout") -> str:
        """The next line it prints on ``stream``."""
        reader = self.proc.stdout if stream == "stdout" else self.proc.stderr
        assert reader is not None
        text = (await asyncio.wait_for(reader.readline(), LINE_TIMEOUT)).decode()
        assert text, f"edgectl ended without printing another line on {stream}"
        if stream == "stdout":
            self.lines.append(text.rstrip("\n"))
        return text.rstrip("\n")

    async def line_with(self, text: str, stream: str = "stdout") -> str:
        while text not in (line := await self.line(stream)):
            pass
        return line

    async def interrupt(self) -> tuple[int, str, str]:
        """Ctrl-C, then what ``finish`` answers."""
        self.proc.send_signal(signal.SIGINT)
        return await self.finish()

    async def finish(self, timeout: float = 30) -> tuple[int, str, str]:
        """Its exit code and what it printed (stdout: every line, the ones already read too)."""
        out, err = await asyncio.wait_for(self.proc.communicate(), timeout)
        self.lines += out.decode().splitlines()
        assert self.proc.returncode is not None
        return self.proc.returncode, "\n".join(self.lines), err.decode()


async def run(hub: TestClient, *args: str, token: bool = True) -> tuple[int, str, str]:
    ctl = await Edgectl.start(str(hub.make_url("")), operator_token(hub) if token else None, *args)
    return await ctl.finish()


async def watch(hub: TestClient, *args: str) -> Edgectl:
    return await Edgectl.start(str(hub.make_url("")), operator_token(hub), *args)


async def publish(broker: Mosquitto, topic: str, payload: bytes) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier=unique("test")) as mqtt:
        await mqtt.publish(topic, payload, qos=1)


async def report_ready(broker: Mosquitto, node: str, seq: int = 1) -> None:
    status = NodeStatus(node=node, seq=seq, observed_at="2024-01-01T00:00:00Z", agent_version="9.9.9",
                        runtime="podman", releases=(),
                        conditions=(Condition(type="RuntimeReady", status="True", reason="Works", message="",
                                              since="2024-01-01T00:00:00Z"),))
    await publish(broker, topics.status(node), status.encode())


def event(node: str, seq: int, message: str, **fields: Any) -> Event:
    return Event(node=node, seq=seq, at=f"2024-01-01T00:00:{seq:02d}Z", reason="Applied", message=message, **fields)


async def wait_for(hub: TestClient, path: str, predicate: Any) -> Any:
    async with asyncio.timeout(10):
        while not predicate(found := await answer(await hub.get(path), 200)):
            await asyncio.sleep(0.05)
    return found


# --- get -w ------------------------------------------------------------------------


async def test_a_watch_prints_the_table_then_a_node_that_joins_and_a_node_that_changes_and_ends_at_the_timeout(
    hub: TestClient, broker: Mosquitto
):
    await answer(await join(hub, await create_token(hub, uses=2), "sh-1"), 201)
    code, listed, _ = await run(hub, "get", "nodes")
    assert code == 0

    ctl = await watch(hub, "get", "nodes", "-w", "--interval", "0.5", "--timeout", "8")
    header, first = await ctl.line(), await ctl.line()
    assert [header, first] == listed.splitlines()  # the list first, exactly as without -w
    assert first.split()[:3] == ["sh-1", "shanghai", "unknown"]

    await answer(await join(hub, await create_token(hub), "sh-2"), 201)
    joined = await ctl.line()
    assert joined.split()[:3] == ["sh-2", "shanghai", "unknown"]
    assert joined.index("shanghai") == header.index("POOL")  # it lines up under the header

    await report_ready(broker, "sh-1")
    changed = await ctl.line()
    assert changed.split()[0] == "sh-1" and "Ready" in changed

    code, out, err = await ctl.finish()
    assert code == 0, err
    assert "Traceback" not in err
    # Nothing else changed, so nothing else was printed: each row once per change, the header once.
    assert out.splitlines() == [header, first, joined, changed]


async def test_a_watch_of_components_prints_a_deleted_one_with_the_marker(hub: TestClient, example: dict[str, Any]):
    await answer(await hub.post("/api/v1/components", json=example), 201)
    ctl = await watch(hub, "get", "components", "-w", "--interval", "0.5")
    assert (await ctl.line()).split() == ["COMPONENT", "REVISION", "CHART", "READY"]
    assert (await ctl.line()).split()[:2] == ["demo/web", "1"]
    await answer(await hub.delete("/api/v1/components/demo/web"), 200)
    assert (await ctl.line()).split() == ["demo/web", "1", "web-0.1.0", "<deleted>"]
    code, _, err = await ctl.interrupt()
    assert code == 0, err


async def test_a_json_watch_prints_one_change_a_line(hub: TestClient, broker: Mosquitto):
    await answer(await join(hub, await create_token(hub, uses=2), "sh-1"), 201)
    ctl = await watch(hub, "get", "nodes", "-w", "-o", "json", "--interval", "0.5")
    added = json.loads(await ctl.line())
    assert (added["type"], added["object"]["name"]) == ("ADDED", "sh-1")
    assert added["object"] == (await answer(await hub.get("/api/v1/nodes"), 200))[0]

    await answer(await join(hub, await create_token(hub), "sh-2"), 201)
    second = json.loads(await ctl.line())
    assert (second["type"], second["object"]["name"]) == ("ADDED", "sh-2")
    await report_ready(broker, "sh-2")
    modified = json.loads(await ctl.line())
    assert (modified["type"], modified["object"]["name"], modified["object"]["agent_version"]) == (
        "MODIFIED", "sh-2", "9.9.9")
    code, out, err = await ctl.interrupt()
    assert code == 0, err
    assert all(json.loads(line)["type"] in ("ADDED", "MODIFIED", "DELETED") for line in out.splitlines())


async def test_a_yaml_watch_prints_one_document_a_change(hub: TestClient):
    await answer(await join(hub, await create_token(hub), "sh-1"), 201)
    code, out, err = await run(hub, "get", "pools", "-w", "-o", "yaml", "--interval", "0.5", "--timeout", "1.5")
    assert code == 0, err
    assert list(yaml.safe_load_all(out)) == [{"type": "ADDED",
                                              "object": {"pool": "shanghai", "nodes": 1, "online": 0}}]


async def test_ctrl_c_ends_a_watch_with_0_and_no_traceback(hub: TestClient):
    ctl = await watch(hub, "get", "pools", "-w", "--interval", "0.5")
    assert (await ctl.line()).split() == ["POOL", "NODES", "ONLINE"]
    await asyncio.sleep(0.7)  # into its polling
    code, _, err = await ctl.interrupt()
    assert (code, err) == (0, "")


async def test_a_hub_that_goes_away_under_a_watch_is_said_once_and_its_return_too(
    tmp_path: Path, broker: Mosquitto
):
    hub = await asyncio.to_thread(Hub(tmp_path / "hub", broker.url).start)
    try:
        token = hub.admin_token_path.read_text().strip()
        watching = await Edgectl.start(hub.url, token, "get", "pools", "-w", "--interval", "0.5", "--timeout", "60")
        following = await Edgectl.start(hub.url, token, "events", "-f", "--interval", "0.5")
        for ctl in (watching, following):
            assert (await ctl.line()).split()[0] in ("POOL", "AT")
        await asyncio.to_thread(hub.stop)
        for ctl in (watching, following):
            gone = await ctl.line("stderr")
            assert gone.startswith(f"edgectl: cannot reach the hub at {hub.url}") and "retrying every 0.5 s" in gone
        await asyncio.sleep(1.5)  # polls that fail again say nothing more
        await asyncio.to_thread(hub.start)  # on the same port
        for ctl in (watching, following):
            assert await ctl.line("stderr") == f"edgectl: the hub at {hub.url} answers again"
        await asyncio.sleep(1)
        for ctl in (watching, following):
            assert ctl.proc.returncode is None  # still watching
            code, out, err = await ctl.interrupt()
            assert (code, len(out.splitlines()), err) == (0, 1, "")  # the header alone: nothing changed
    finally:
        await asyncio.to_thread(hub.stop)


# --- events ----------------------------------------------------------------------


async def test_events_lists_every_nodes_events_in_arrival_order_and_follow_prints_new_ones_once(
    hub: TestClient, broker: Mosquitto
):
    for node in ("sh-1", "sh-2"):
        await answer(await join(hub, await create_token(hub), node), 201)
    await publish(broker, topics.events("sh-1"), event("sh-1", 1, "first", namespace="demo", release="web",
                                                       revision=1).encode())
    await wait_for(hub, "/api/v1/events", lambda found: len(found) == 1)
    await publish(broker, topics.events("sh-2"), event("sh-2", 1, "second").encode())
    await wait_for(hub, "/api/v1/events", lambda found: len(found) == 2)

    code, out, err = await run(hub, "events")
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["AT", "NODE", "REASON", "RELEASE", "MESSAGE"]
    assert [row.split() for row in rows] == [["2024-01-01T00:00:01Z", "sh-1", "Applied", "demo/web@1", "first"],
                                             ["2024-01-01T00:00:01Z", "sh-2", "Applied", "-", "second"]]
    code, out, err = await run(hub, "events", "--node", "sh-2", "-o", "wide")
    assert code == 0, err
    assert out.splitlines()[0].split() == ["AT", "NODE", "SEQ", "REASON", "RELEASE", "CURSOR", "MESSAGE"]
    assert [row.split()[1] for row in out.splitlines()[1:]] == ["sh-2"]
    code, out, _ = await run(hub, "events", "--limit", "1", "-o", "json")
    assert [e["message"] for e in json.loads(out)] == ["second"]

    ctl = await watch(hub, "events", "--follow", "--interval", "0.5", "--timeout", "30")
    assert [(await ctl.line()).split()[-1] for _ in range(3)] == ["MESSAGE", "first", "second"]
    await publish(broker, topics.events("sh-1"), event("sh-1", 2, "third").encode())
    assert (await ctl.line()).split()[1:] == ["sh-1", "Applied", "-", "third"]
    await asyncio.sleep(1.2)  # more polls: the events already printed are not printed again
    code, out, err = await ctl.interrupt()
    assert code == 0, err
    assert [line.split()[-1] for line in out.splitlines()] == ["MESSAGE", "first", "second", "third"]


async def test_events_follow_of_one_node_as_json_prints_one_event_a_line(hub: TestClient, broker: Mosquitto):
    for node in ("sh-1", "sh-2"):
        await answer(await join(hub, await create_token(hub), node), 201)
    ctl = await watch(hub, "events", "--node", "sh-1", "-f", "-o", "json", "--interval", "0.5")
    await asyncio.sleep(1)  # it has listed (nothing) and polls
    await publish(broker, topics.events("sh-2"), event("sh-2", 1, "not mine").encode())
    await publish(broker, topics.events("sh-1"), event("sh-1", 1, "mine").encode())
    line = json.loads(await ctl.line())
    assert {k: line[k] for k in ("node", "seq", "message")} == {"node": "sh-1", "seq": 1, "message": "mine"}
    await asyncio.sleep(1.2)
    code, out, err = await ctl.interrupt()
    assert code == 0, err
    assert len(out.splitlines()) == 1


# --- -o wide, -o yaml --------------------------------------------------------------


async def test_wide_adds_columns(hub: TestClient, broker: Mosquitto, example: dict[str, Any]):
    await answer(await join(hub, await create_token(hub), "sh-1", labels={"tier": "store"}), 201)
    await report_ready(broker, "sh-1")
    await wait_for(hub, "/api/v1/nodes/sh-1", lambda node: node["agent_version"] == "9.9.9")
    await answer(await hub.post("/api/v1/components", json=example), 201)

    code, out, err = await run(hub, "get", "nodes", "-o", "wide")
    assert code == 0, err
    header, row = out.splitlines()
    assert header.split() == ["NAME", "POOL", "PRESENCE", "STANDING", "GENERATION", "CONDITIONS", "LAST", "SEEN",
                              "AGENT", "VERSION", "RUNTIME", "BUNDLES", "LABELS", "RELEASES"]
    assert row.split()[:6] == ["sh-1", "shanghai", "unknown", "joined", "1", "Ready"]
    assert "9.9.9" in row and "podman" in row and "tier=store" in row
    code, out, err = await run(hub, "get", "components", "-o", "wide")
    assert code == 0, err
    assert out.splitlines()[1].split() == ["demo/web", "1", "web-0.1.0", "0/1", "Pending=1", "shanghai=0/1"]
    code, out, err = await run(hub, "describe", "component", "demo/web", "-o", "wide")
    assert code == 0, err
    assert "OBSERVED AT" in out and "LAST SEEN" in out


async def test_yaml_is_the_same_data_as_json_for_every_command_that_prints_data(
    hub: TestClient, broker: Mosquitto, example: dict[str, Any]
):
    await answer(await join(hub, await create_token(hub), "sh-1", labels={"tier": "store"}), 201)
    await answer(await hub.post("/api/v1/components", json=example), 201)
    # What a node sends can hold anything: control characters, quotes, YAML syntax, non-ASCII.
    await publish(broker, topics.events("sh-1"), event("sh-1", 1, "\x1b[31mred\x1b[0m: {a: [b]} 'q' \"dq\" 世界\n- x",
                                                       namespace="demo", release="web", revision=1).encode())
    await wait_for(hub, "/api/v1/events", lambda found: len(found) == 1)
    for command in ("get nodes", "get pools", "get components", "describe node sh-1", "describe component demo/web",
                    "events", "events --node sh-1", "credentials list"):
        code, as_json, err = await run(hub, *command.split(), "-o", "json")
        assert code == 0, (command, err)
        code, as_yaml, err = await run(hub, *command.split(), "-o", "yaml")
        assert code == 0, (command, err)
        assert yaml.safe_load(as_yaml) == json.loads(as_json), command
        assert "\x1b" not in as_yaml and not as_yaml.lstrip().startswith(("{", "[{")), command  # block style
    code, out, err = await run(hub, "node", "revoke", "sh-1", "-o", "yaml")
    assert code == 0, err
    assert yaml.safe_load(out)["node"] == "sh-1"


# --- exit codes --------------------------------------------------------------------


async def test_exit_codes_scripts_can_rely_on(hub: TestClient):
    # 0: success.
    assert (await run(hub, "get", "pools"))[0] == 0
    # 1: the hub refused (400: a bad pool name; 401: no operator token).
    code, out, err = await run(hub, "token", "create", "--pool", "Not_A_Name!")
    assert (code, out) == (1, "") and "not a valid name" in err
    code, _, err = await run(hub, "get", "nodes", token=False)
    assert code == 1 and "the hub wants an operator token" in err
    # 2: usage, before anything is asked of the hub.
    for usage in (["get", "widgets"], ["get", "nodes", "--interval", "1"], ["events", "--timeout", "5s"],
                  ["get", "nodes", "-w", "--interval", "0.1"], ["events", "--limit", "0"], ["get", "nodes", "-o", "x"]):
        code, out, err = await run(hub, *usage)
        assert (code, out) == (2, ""), usage
        assert err.startswith("usage: edgectl") and "Traceback" not in err, usage
    # 3: the hub cannot be reached, with or without a watch.
    for args in (["get", "pools"], ["get", "nodes", "-w", "--timeout", "2"], ["events", "-f"]):
        ctl = await Edgectl.start(f"http://127.0.0.1:{free_port()}", "token", *args)
        code, out, err = await ctl.finish()
        assert (code, out) == (3, ""), args
        assert err.startswith("edgectl: cannot reach the hub at http://127.0.0.1:") and "Traceback" not in err
    # 4: not found.
    for args in (["describe", "node", "nobody"], ["describe", "component", "demo/nothing"],
                 ["events", "--node", "nobody"], ["credentials", "revoke", "nobody"]):
        code, out, err = await run(hub, *args)
        assert (code, out) == (4, ""), args
        assert "not found" in err, args


async def test_a_hub_url_that_is_not_one_is_a_usage_error(hub: TestClient):
    for url in ("127.0.0.1:8470", "ftp://hub", "http://", "http://hub:port"):
        code, out, err = await (await Edgectl.start(url, "token", "get", "pools")).finish()
        assert (code, out) == (2, ""), url
        assert "argument --hub" in err and "Traceback" not in err, url
