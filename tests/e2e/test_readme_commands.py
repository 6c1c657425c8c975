"""The documented session, run as written: the installed console scripts with their default flags.

Every command line of the session block in docs/operating.md ("A session from scratch") runs here in
order, and the README's "Using it" block must be a part of it, line for line and in the same order, so
every command either shows is run. Only addresses, paths and the join token are swapped for this test's
own (the operator token file the session exports is the one this hub wrote), and the agent (``run``,
``doctor``) gets what a second node on this machine needs: its own podman storage paths, ``--podman-network
none`` and the machine's containers.conf. No timing flag is passed. A command either gains without a check
here fails the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fleet_checks import REPO

from edgesim.fleet import ManagedProcess, listening_ports, wait_until
from edgesim.net import free_port
from edgesim.podman_setup import DEMO_IMAGE, MachineSetup, import_image, remove_node_storage, second_node

VENV_BIN = Path(sys.executable).parent


SESSION_DOC = REPO / "docs" / "operating.md"


def shell_block(path: Path, heading: str) -> list[list[str]]:
    """The command lines of the first ``sh`` block under ``heading`` in ``path``, split as a shell would,
    comments dropped."""
    text = path.read_text(encoding="utf-8")
    assert f"\n{heading}\n" in text, f"{path.relative_to(REPO)} has no section {heading!r}"
    section = text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    assert "```sh\n" in section, f"{path.relative_to(REPO)}'s {heading!r} has no ```sh block"
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [words for line in block.splitlines() if (words := shlex.split(line, comments=True))]


def session_commands() -> list[list[str]]:
    """The documented session: docs/operating.md's block, of which the README's is a part."""
    return shell_block(SESSION_DOC, "## A session from scratch")


def readme_commands() -> list[list[str]]:
    return shell_block(REPO / "README.md", "## Using it")


class SessionShell:
    """A user's shell: the session's environment, addresses and paths, with this test's own swapped in."""

    def __init__(self, workdir: Path, machine: MachineSetup) -> None:
        self.workdir = workdir
        self.hub_port = 0  # the hub binds a free port and says which; later lines get it swapped in
        self.broker_port = free_port()
        self.swaps = {
            "127.0.0.1:8470": "127.0.0.1:0",
            "127.0.0.1:8883": f"127.0.0.1:{self.broker_port}",
            "./hub-state": str(workdir / "hub-state"),
            "./broker": str(workdir / "broker"),
            "./dashboard-grafana": str(workdir / "dashboard-grafana"),
            "/var/lib/edgeagent": str(workdir / "edgeagent"),
        }
        self.env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        # The user's shell starts without the hub's address or operator token: the session's exports set them.
        for name in ("EDGECOLLAB_HUB", "EDGECOLLAB_TOKEN", "EDGECOLLAB_TOKEN_FILE"):
            self.env.pop(name, None)
        self.podman, self.podman_base, self.second_node_flags = second_node("readme", workdir / "edgeagent" / "podman",
                                                                            machine)
        self.background: list[ManagedProcess] = []

    def words(self, words: list[str]) -> list[str]:
        out = []
        for word in words:
            for old, new in self.swaps.items():
                word = word.replace(old, new)
            out.append(word)
        return out

    def run(self, words: list[str], **env: str) -> subprocess.CompletedProcess[str]:
        """Run ``words`` in the session's environment (plus ``env`` for this command only)."""
        return subprocess.run(words, capture_output=True, text=True, env={**self.env, **env}, cwd=REPO, timeout=120)

    def start(self, name: str, words: list[str]) -> ManagedProcess:
        proc = ManagedProcess(name, self.workdir / f"{name}.log")
        proc._spawn(words, env=self.env)
        self.background.append(proc)
        return proc

    def ctl_json(self, *args: str) -> object:
        result = self.run(["edgectl", *args, "-o", "json"])
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def close(self) -> None:
        for proc in reversed(self.background):
            proc.stop()
        remove_node_storage(self.podman, self.podman_base)


@pytest.fixture
def session(tmp_path: Path, machine: MachineSetup) -> Iterator[SessionShell]:
    shell = SessionShell(tmp_path, machine)
    try:
        yield shell
    finally:
        shell.close()


def test_the_readme_session_is_a_part_of_the_documented_session_in_order():
    readme, documented = readme_commands(), session_commands()
    assert len(readme) >= 5
    remaining = iter(documented)
    for words in readme:
        assert any(words == later for later in remaining), (
            f"the README shows {shlex.join(words)!r}, which docs/operating.md's session does not run at this point")


def test_every_command_the_docs_show_works_as_written_with_its_defaults(session: SessionShell):
    commands = session_commands()
    seen: list[str] = []

    def node_pods() -> list[dict[str, object]]:
        env = {**os.environ, **({"CONTAINERS_CONF": str(session.podman.containers_conf)}
                                if session.podman.containers_conf else {})}
        out = subprocess.run(["podman", *session.podman.global_args(), "pod", "ps", "--format", "json"],
                             capture_output=True, text=True, env=env, timeout=60, check=True).stdout
        return json.loads(out or "[]")

    def mosquitto_config(words: list[str]) -> None:
        result = session.run(words)
        assert result.returncode == 0, result.stderr
        out = session.workdir / "broker"
        assert {p.name for p in out.iterdir()} >= {"mosquitto.conf", "ca.crt", "broker.crt", "broker.key",
                                                    "dynamic-security.json", "nodes.acl"}
        assert (out / "broker.key").stat().st_mode & 0o777 == 0o600
        assert f"mosquitto -c {out / 'mosquitto.conf'}" in result.stdout

    def mosquitto(words: list[str]) -> None:
        assert words[-1] == "&", "the session starts the broker in the background"
        broker = session.start("mosquitto", words[:-1])

        def listening() -> bool:
            assert broker.running, broker.log_tail()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", session.broker_port), 1):
                return True
            return False

        wait_until(listening, timeout=30, what="mosquitto started as the session says")

    def hub_serve(words: list[str]) -> None:
        hub = session.start("edgehub", words)

        def listening() -> int | None:
            assert hub.running, hub.log_tail()
            return next(iter(listening_ports(hub.log_path)), None)

        session.hub_port = wait_until(listening, timeout=30, what="the hub to say where it listens")
        session.swaps["127.0.0.1:8470"] = f"127.0.0.1:{session.hub_port}"
        token_file = str(session.workdir / "hub-state" / "admin-token")
        wait_until(lambda: session.run(["edgectl", "--hub", f"http://127.0.0.1:{session.hub_port}", "get", "pools"],
                                       EDGECOLLAB_TOKEN_FILE=token_file).returncode == 0,
                   timeout=30, what="the hub started as the session says")

    def export(words: list[str]) -> None:
        name, _, value = words[1].partition("=")
        assert name in {"EDGECOLLAB_HUB", "EDGECOLLAB_TOKEN_FILE"}, f"the session exports {name}, which edgectl ignores"
        if name == "EDGECOLLAB_TOKEN_FILE":
            # Before the export edgectl says what it misses; the file is the hub's, owner-only.
            hub = f"http://127.0.0.1:{session.hub_port}"
            refused = session.run(["edgectl", "--hub", hub, "get", "pools"])
            assert refused.returncode == 1 and "the hub wants an operator token" in refused.stderr, refused.stderr
            assert Path(value).is_absolute() and (Path(value).stat().st_mode & 0o777) == 0o600
        session.env[name] = value

    def token_create(words: list[str]) -> None:
        result = session.run(words)
        assert result.returncode == 0, result.stderr
        token = result.stdout.strip()
        assert token.startswith("ec1.")
        session.swaps["ec1.…"] = token

    def join(words: list[str]) -> None:
        result = session.run(words)
        assert result.returncode == 0, result.stderr
        assert "joined as node store-17 in pool shanghai" in result.stdout
        # No registry here: the node's storage gets the demo image the example chart runs.
        asyncio.run(import_image(session.podman, REPO / ".build" / "edgecollab-busybox.tar", DEMO_IMAGE))

    def doctor(words: list[str]) -> None:
        result = session.run([*words, *session.second_node_flags])
        assert result.returncode == 0, result.stdout + result.stderr
        lines = [line for line in result.stdout.splitlines() if line and not line.startswith(tuple("0123456789"))]
        assert {line.split()[1] for line in lines} >= {"identity", "node-key", "mqtt", "podman", "storage",
                                                       "oci-runtime", "pod"}
        assert all(line.startswith("ok ") for line in lines), result.stdout

    def agent_run(words: list[str]) -> None:
        agent = session.start("edgeagent", [*words, *session.second_node_flags])

        def online() -> bool:
            assert agent.running, agent.log_tail()
            nodes = session.ctl_json("get", "nodes")
            return any(n["name"] == "store-17" and n["presence"] == "online" and n["conditions"] for n in nodes)

        # Default keepalive and reconcile interval: the node must still come online and report its health.
        wait_until(online, timeout=60, what="store-17 online with its conditions, started as the session says")

    def apply(words: list[str]) -> None:
        result = session.run(words)
        assert result.returncode == 0, result.stderr
        assert "component/demo/web configured (revision 1, 1 node(s))" in result.stdout

        def deployed() -> bool:
            view = session.ctl_json("describe", "component", "demo/web")
            return view["deployed"] == view["targets"] == 1

        wait_until(deployed, timeout=120, what="demo/web deployed on store-17")
        assert [p["Status"] for p in node_pods()] == ["Running"]

    def get(words: list[str]) -> None:
        result = session.run(words)
        assert result.returncode == 0, result.stderr
        kind = words[2]
        if kind == "nodes":
            header, row = result.stdout.splitlines()[:2]
            assert header.split()[:4] == ["NAME", "POOL", "PRESENCE", "CONDITIONS"]
            assert row.split()[:4] == ["store-17", "shanghai", "online", "Ready"]
            assert "tier=store" in row and "demo/web@1:Deployed" in row
        elif kind == "pools":
            assert result.stdout.splitlines()[1].split() == ["shanghai", "1", "1"]
        else:
            assert "-o" in words
            (comp,) = json.loads(result.stdout)
            assert (comp["namespace"], comp["name"], comp["revision"], comp["deployed"]) == ("demo", "web", 1, 1)

    def describe(words: list[str]) -> None:
        result = session.run(words)
        assert result.returncode == 0, result.stderr
        if words[2] == "component":
            assert "Ready:     1/1 node(s)" in result.stdout
        else:
            rows = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()
                    if line.startswith(("RuntimeReady", "StorageReady"))}
            assert rows == {"RuntimeReady": "True", "StorageReady": "True"}, result.stdout
            assert "Deployed" in result.stdout

    def events(words: list[str]) -> None:
        def applied() -> str | None:
            result = session.run(words)
            assert result.returncode == 0, result.stderr
            return result.stdout if "Applied" in result.stdout else None

        # The agent reports the apply as an event over MQTT; it may reach the hub after the status did.
        out = wait_until(applied, timeout=30, what="store-17's Applied event in edgectl events")
        header, *rows = out.splitlines()
        assert header.split() == ["AT", "NODE", "REASON", "RELEASE", "MESSAGE"]
        assert any(row.split()[1:4] == ["store-17", "Applied", "demo/web@1"] for row in rows), out

    def status(words: list[str]) -> None:
        result = session.run(words)
        assert result.returncode == 0, result.stderr
        assert "store-17" in result.stdout and "Deployed" in result.stdout

    def credentials(words: list[str]) -> None:
        result = session.run(words)
        assert result.returncode == 0, result.stderr
        assert "MQTT user dashboard.grafana" in result.stdout and "ec/v1/summary/#" in result.stdout
        files = session.workdir / "dashboard-grafana"
        assert {p.name for p in files.iterdir()} == {"client.key", "client.crt", "ca.crt"}
        assert files.joinpath("client.key").stat().st_mode & 0o777 == 0o600

    def delete(words: list[str]) -> None:
        result = session.run(words)
        assert result.returncode == 0, result.stderr
        assert "component/demo/web deleted" in result.stdout
        wait_until(lambda: node_pods() == [], timeout=60, what="the release's pods gone from store-17")

    checks: dict[tuple[str, str], Callable[[list[str]], None]] = {
        ("edgehub", "mosquitto-config"): mosquitto_config,
        ("mosquitto", "-c"): mosquitto,
        ("edgehub", "serve"): hub_serve,
        ("export", ""): export,
        ("edgectl", "token"): token_create,
        ("edgeagent", "join"): join,
        ("edgeagent", "doctor"): doctor,
        ("edgeagent", "run"): agent_run,
        ("edgeagent", "status"): status,
        ("edgectl", "apply"): apply,
        ("edgectl", "get"): get,
        ("edgectl", "describe"): describe,
        ("edgectl", "events"): events,
        ("edgectl", "delete"): delete,
        ("edgectl", "credentials"): credentials,
    }
    for words in commands:
        key = (words[0], "" if words[0] == "export" else words[1])
        assert key in checks, f"docs/operating.md shows {shlex.join(words)!r}, which this test does not check yet"
        checks[key](session.words(words))
        seen.append(words[0])
    assert len(seen) == len(commands) >= 17
    assert set(seen) == {"edgehub", "mosquitto", "export", "edgectl", "edgeagent"}
