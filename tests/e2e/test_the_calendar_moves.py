"""The calendar moves: nodes come back after months off, a wrong clock is corrected, and no certificate is renewed
by hand.

The README's commands (``edgehub mosquitto-config``, ``mosquitto -c``,
``edgehub serve``, ``edgectl``, ``edgeagent join`` / ``run`` / ``status``)
with real Mosquitto, podman and the hub, each process started on a calendar
of its own with libfaketime (Debian's ``faketime``: ``LD_PRELOAD=libfaketime
FAKETIME=+150d COMMAND``; podman, a Go program, keeps the real time, which is
what a node's runtime does). Restarting the broker and the hub "at day 150"
is starting them again with the same commands under ``FAKETIME=+150d``.

- A fleet off from day 0 to day 150 (90-day certificates, expired on day 90):
  the hub applies a new revision on day 150, every node comes back by itself
  (it renews its expired certificate over HTTPS before it connects, and never
  shows the broker the expired one) and runs it. Two of the nodes have clocks
  a year behind and a year ahead of the hub's (their own calendars: -365 and
  +365 days): they join, run the release, renew and run the new one, and the
  hub shows ``ClockSynchronized=False`` with the offset for them, nothing for
  the node whose clock is right. A revoked node is refused at day 10 and at
  day 150.
- A fleet restarted every 90 days to day 400 (days 0, 90, 180, 270, 360,
  400; off between): every return finds the nodes' 90-day certificates
  ended, and the hub's own MQTT certificate and the broker's (365 days) come
  due on day 244, which the hub renews while it runs (the broker takes its new
  pair on the hub's SIGHUP). Every epoch delivers a new revision to every
  node, and on day 400 nothing the hub lists is expired or due within 30
  days, and no warning stands.
- A node off longer than the hub's offline horizon (a settings file with
  ``offline_horizon_days: 300``, the node back at day 400) is refused with
  the message naming the horizon and the cure, on the node and in the hub's
  log; the cure it names works.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from fleet_checks import EXAMPLE_CHART, REPO

from edgeagent.runtime import PodmanSettings
from edgehub.certificates import served_certificate
from edgekit.mqtt import BrokerAddress
from edgesim.fleet import ManagedProcess, wait_until
from edgesim.net import free_port
from edgesim.podman_setup import DEMO_IMAGE, MachineSetup, import_image, remove_node_storage, second_node

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
VENV_BIN = Path(sys.executable).parent
# Every wait for the fleet: a node's first start includes the runtime's preflight (a pod made and removed).
CONVERGE_SECONDS = 120


class Site:
    """A user's machines: one shell in which the README's commands run, each on the calendar a test gives.

    The hub and the broker keep their ports across restarts (nodes keep the URLs they joined with).
    """

    def __init__(self, workdir: Path, machine: MachineSetup, *, hub_config: dict[str, Any] | None = None) -> None:
        assert LIBFAKETIME.is_file(), f"{LIBFAKETIME} is missing: scripts/install-deps.sh installs faketime"
        self.workdir = workdir
        self.machine = machine
        self.hub_port, self.broker_port = free_port(), free_port()
        self.hub_state, self.broker_dir = workdir / "hub-state", workdir / "broker"
        self.hub_url = f"http://127.0.0.1:{self.hub_port}"
        self.hub_config = None
        if hub_config is not None:  # `edgehub serve --config hub.yaml`, as the README shows it
            self.hub_config = workdir / "hub.yaml"
            self.hub_config.write_text(yaml.safe_dump({
                "state_dir": str(self.hub_state), "listen_host": "127.0.0.1", "listen_port": self.hub_port,
                "mqtt_url": f"mqtts://127.0.0.1:{self.broker_port}", **hub_config}))
        self.env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                    "EDGECOLLAB_HUB": self.hub_url, "EDGECOLLAB_TOKEN_FILE": str(self.hub_state / "admin-token")}
        for name in ("EDGECOLLAB_TOKEN", "EDGECOLLAB_CA_FILE", "LD_PRELOAD", "FAKETIME"):
            self.env.pop(name, None)
        self.running: list[ManagedProcess] = []
        self.nodes: list[SiteNode] = []

    def on_day(self, day: float) -> dict[str, str]:
        """The environment of a process whose calendar is ``day`` days from today (negative: in the past)."""
        return {**self.env, "LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": f"{day:+g}d"}

    def run(self, words: list[str], *, day: float = 0, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(words, capture_output=True, text=True, env=self.on_day(day), cwd=REPO, timeout=120,
                              input=stdin)

    def ok(self, words: list[str], *, day: float = 0) -> str:
        result = self.run(words, day=day)
        assert result.returncode == 0, f"{' '.join(words)}: {result.stdout}{result.stderr}"
        return result.stdout

    def ctl_json(self, *args: str) -> Any:
        """``edgectl ARGS -o json`` from an operator's machine, whose clock is right."""
        return json.loads(self.ok(["edgectl", *args, "-o", "json"]))

    def start(self, name: str, words: list[str], *, day: float) -> ManagedProcess:
        proc = ManagedProcess(name, self.workdir / "logs" / f"{name}.day{day:+g}.log")
        proc._spawn(words, env=self.on_day(day))
        self.running.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.running):
            proc.stop()
        self.running.clear()

    # --- the README's commands ------------------------------------------------------------------------

    def mosquitto_config(self) -> None:
        self.ok(["edgehub", "mosquitto-config", "--state", str(self.hub_state), "--listen",
                 f"127.0.0.1:{self.broker_port}", "--out", str(self.broker_dir)])

    def broker_and_hub(self, day: float) -> tuple[ManagedProcess, ManagedProcess]:
        """``mosquitto -c ./broker/mosquitto.conf &`` and ``edgehub serve ...`` on day ``day``; once both answer."""
        broker = self.start("mosquitto", ["mosquitto", "-c", str(self.broker_dir / "mosquitto.conf")], day=day)

        def listening() -> bool:
            assert broker.running, broker.log_tail()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.broker_port), 1):
                return True
            return False

        wait_until(listening, timeout=30, what=f"mosquitto on day {day}")
        if self.hub_config is not None:
            words = ["edgehub", "serve", "--config", str(self.hub_config)]
        else:
            words = ["edgehub", "serve", "--listen", f"127.0.0.1:{self.hub_port}", "--mqtt",
                     f"mqtts://127.0.0.1:{self.broker_port}", "--state", str(self.hub_state)]
        hub = self.start("edgehub", words, day=day)

        def answers() -> bool:
            assert hub.running, hub.log_tail()
            return self.run(["edgectl", "get", "pools"]).returncode == 0

        wait_until(answers, timeout=30, what=f"the hub on day {day}")
        return broker, hub

    def token(self) -> str:
        return self.ok(["edgectl", "token", "create", "--pool", "shanghai", "--ttl", "1h", "--uses", "5"]).strip()

    def node(self, name: str, *, clock: float = 0, podman: bool = True) -> SiteNode:
        """A node whose clock is ``clock`` days off the right time (its calendar: the site's day plus that)."""
        node = SiteNode(self, name, clock, podman)
        self.nodes.append(node)
        return node

    def component(self, message: str) -> Path:
        """The example component (examples/web) with another message: each new message is a new revision."""
        spec = yaml.safe_load((REPO / "examples" / "web" / "component.yaml").read_text())
        spec["spec"]["chart"] = str(EXAMPLE_CHART)
        spec["spec"]["values"] = {"message": message}
        path = self.workdir / "component.yaml"
        path.write_text(yaml.safe_dump(spec))
        return path

    def close(self) -> None:
        self.stop_all()
        for node in self.nodes:
            node.remove_storage()


class SiteNode:
    """An edge node of the site: its state directory, its own podman storage, and a clock of its own."""

    def __init__(self, site: Site, name: str, clock: float, podman: bool) -> None:
        self.site, self.name, self.clock = site, name, clock
        self.state_dir = site.workdir / name
        self.flags: list[str] = []
        self.podman: PodmanSettings | None = None
        self.base: Path | None = None
        if podman:
            self.podman, self.base, self.flags = second_node(name, self.state_dir / "podman", site.machine)

    def join(self, token: str, *, day: float) -> None:
        words = ["edgeagent", "join", "--hub", self.site.hub_url, "--token", token, "--name", self.name,
                 "--state-dir", str(self.state_dir)]
        if self.podman is None:
            words += ["--runtime", "dry-run"]  # a node this test never asks to run pods
        out = self.site.ok(words, day=day + self.clock)
        assert f"joined as node {self.name} in pool shanghai" in out
        if self.podman is not None:  # no registry here: the node's storage gets the image the chart runs
            asyncio.run(import_image(self.podman, REPO / ".build" / "edgecollab-busybox.tar", DEMO_IMAGE))

    def run(self, *, day: float) -> ManagedProcess:
        return self.site.start(f"edgeagent-{self.name}", ["edgeagent", "run", "--state-dir", str(self.state_dir),
                                                          *self.flags], day=day + self.clock)

    def status(self, *, day: float) -> str:
        """``edgeagent status``, as a person at the node runs it."""
        return self.site.ok(["edgeagent", "status", "--state-dir", str(self.state_dir)], day=day + self.clock)

    def running_pods(self) -> list[dict[str, Any]]:
        assert self.podman is not None
        env = {**os.environ, **({"CONTAINERS_CONF": str(self.podman.containers_conf)}
                                if self.podman.containers_conf else {})}
        out = subprocess.run(["podman", *self.podman.global_args(), "pod", "ps", "--filter",
                              "label=edgecollab.io/release=demo.web", "--format", "json"],
                             capture_output=True, text=True, env=env, timeout=60, check=True).stdout
        return [p for p in json.loads(out or "[]") if p.get("Status") == "Running"]

    def remove_storage(self) -> None:
        if self.podman is not None and self.base is not None:
            remove_node_storage(self.podman, self.base)


@pytest.fixture
def site(tmp_path: Path, machine: MachineSetup) -> Iterator[Site]:
    site = Site(tmp_path, machine)
    try:
        yield site
    finally:
        site.close()


def node_row(site: Site, name: str) -> dict[str, Any]:
    return next(n for n in site.ctl_json("get", "nodes") if n["name"] == name)


def clock_condition(site: Site, name: str) -> dict[str, str] | None:
    return next((c for c in node_row(site, name)["conditions"] if c["type"] == "ClockSynchronized"), None)


def deployed(site: Site, revision: int, nodes: int) -> bool:
    view = site.ctl_json("describe", "component", "demo/web")
    return view["revision"] == revision and view["deployed"] == nodes


def check_clocks(site: Site, right: SiteNode, behind: SiteNode, ahead: SiteNode) -> None:
    """The hub shows ClockSynchronized=False with the offset for the wrong clocks, and nothing for the right one."""
    assert clock_condition(site, right.name) is None
    assert "Ready" in next(line for line in site.ok(["edgectl", "get", "nodes"]).splitlines()
                           if line.startswith(right.name + " "))
    for node, word, reason in ((behind, "behind", "ClockBehindHub"), (ahead, "ahead of", "ClockAheadOfHub")):
        condition = wait_until(lambda node=node: clock_condition(site, node.name), timeout=30,
                               what=f"{node.name}'s ClockSynchronized condition at the hub")
        assert (condition["status"], condition["reason"]) == ("False", reason), condition
        assert condition["message"].startswith(f"the node's clock is 365.0 days {word} the hub's (offset "), condition
        assert condition["message"].endswith("; the agent corrects for it"), condition
        described = site.ok(["edgectl", "describe", "node", node.name])
        row = next(line for line in described.splitlines() if line.startswith("ClockSynchronized"))
        assert row.split()[1:3] == ["False", reason], described
        assert f"365.0 days {word} the hub's" in described
        # Its own runtime is fine: the node stays ready, and the conditions column says what is off.
        line = next(line for line in site.ok(["edgectl", "get", "nodes"]).splitlines()
                    if line.startswith(node.name + " "))
        assert f"ClockSynchronized=False({reason})" in line, line


def serial(site: Site, name: str) -> str:
    return site.ctl_json("describe", "node", name)["certificate"]["serial"]


def lines_of(proc: ManagedProcess) -> list[str]:
    return proc.log_path.read_text(errors="replace").splitlines()


def test_a_fleet_off_from_day_0_to_day_150_comes_back_by_itself_whatever_its_clocks(site: Site):
    ship, behind, ahead = site.node("ship"), site.node("behind", clock=-365), site.node("ahead", clock=365)
    revoked = site.node("revoked", podman=False)
    fleet = (ship, behind, ahead)

    # --- day 0: the broker with identities, the hub, four nodes joined, a release on three of them ---------
    site.mosquitto_config()
    site.broker_and_hub(0)
    token = site.token()
    for node in (*fleet, revoked):
        node.join(token, day=0)
    agents = {node.name: node.run(day=0) for node in fleet}
    assert "configured (revision 1" in site.ok(["edgectl", "apply", "-f", str(site.component("day 0"))])
    wait_until(lambda: deployed(site, 1, 3), timeout=CONVERGE_SECONDS, what="revision 1 on the three nodes")
    check_clocks(site, ship, behind, ahead)
    for node in fleet:
        assert len(node.running_pods()) == 1
        # A clock a year off made no renewal: the certificate is judged by the hub's time.
        assert not any("renewed" in line for line in lines_of(agents[node.name])), node.name
    for node, word in ((behind, "behind"), (ahead, "ahead of")):
        assert any(f"Clock: the node's clock is 365.0 days {word} the hub's" in line
                   for line in lines_of(agents[node.name])), node.name
    serials = {node.name: serial(site, node.name) for node in fleet}
    assert "revoked" in site.ok(["edgectl", "node", "revoke", "revoked"])
    site.stop_all()  # the whole site goes dark; the pods keep running on their nodes

    # --- day 10: the revoked node is refused, by the broker and by the hub -----------------------------------
    _, hub = site.broker_and_hub(10)
    shut_out = revoked.run(day=10)
    # TLS 1.3: the client hears of the refusal after its side of the handshake, as an alert (paho logs it).
    wait_until(lambda: any("sslv3 alert certificate revoked" in line for line in lines_of(shut_out)),
               timeout=30, what="the broker refusing the revoked node's certificate")
    renewal = site.run([sys.executable, "-m", "edgeagent.renewal", str(revoked.state_dir)], day=10,
                       stdin=(revoked.state_dir / "identity.json").read_text())
    assert renewal.returncode == 1, renewal.stdout + renewal.stderr
    assert json.loads(renewal.stdout)["error"] == (
        "the hub refused the renewal: node 'revoked' is revoked; an operator can free the name with: "
        "edgectl node reset revoked, and the node join again")
    assert "Certificate renewal of revoked refused: node 'revoked' is revoked" in hub.log_path.read_text()
    site.stop_all()

    # --- day 150: everything restarted with the same commands; a new revision; every node comes back -------
    _, hub = site.broker_and_hub(150)
    assert "configured (revision 2" in site.ok(["edgectl", "apply", "-f", str(site.component("day 150"))])
    agents = {node.name: node.run(day=150) for node in fleet}
    shut_out = revoked.run(day=150)
    wait_until(lambda: deployed(site, 2, 3), timeout=CONVERGE_SECONDS, what="revision 2 on the three nodes")
    for node in fleet:
        view = site.ctl_json("describe", "node", node.name)
        assert view["certificate"]["serial"] != serials[node.name]
        log = lines_of(agents[node.name])
        renewed = next(i for i, line in enumerate(log) if "certificate renewed" in line)
        assert ", expired)" in log[renewed], log[renewed]
        # Renewed over HTTPS before the first connection to the broker: the expired certificate never went out.
        first_connect = next(i for i, line in enumerate(log) if "Connected to mqtts://" in line)
        assert renewed < first_connect, "\n".join(log)
        assert not any("Connecting to mqtts://" in line for line in log[:first_connect]), "\n".join(log)
        assert [p["Status"] for p in node.running_pods()] == ["Running"]
        status = node.status(day=150)
        assert re.search(r"demo\s+web\s+2\s+2\s+Deployed", status), status
        assert "certificate serial" in status and " expires " in status, status
    check_clocks(site, ship, behind, ahead)
    # The revoked node is refused at day 150 too, and never reaches the broker.
    refusal = "the hub refused the renewal: node 'revoked' is revoked"
    wait_until(lambda: any(refusal in line for line in lines_of(shut_out)), timeout=30,
               what="the revoked node's renewal refused at day 150")
    assert not any("Connected to mqtts://" in line for line in lines_of(shut_out))
    assert refusal in revoked.status(day=150)
    assert "Certificate renewal of revoked refused: node 'revoked' is revoked" in hub.log_path.read_text()


YEARS_OF_RETURNS = (0, 90, 180, 270, 360, 400)


def served_broker_certificate(site: Site) -> x509.Certificate:
    """The certificate the broker serves to a new connection now."""
    return served_certificate(BrokerAddress.parse(f"mqtts://127.0.0.1:{site.broker_port}"))


def test_a_fleet_restarted_every_90_days_to_day_400_takes_every_revision_with_nothing_renewed_by_hand(site: Site):
    nodes = (site.node("north"), site.node("south"))
    site.mosquitto_config()
    first_broker_end = None
    serials: dict[str, set[str]] = {node.name: set() for node in nodes}
    previous_day = 0
    for epoch, day in enumerate(YEARS_OF_RETURNS, start=1):
        site.broker_and_hub(day)
        if day == 0:
            token = site.token()
            for node in nodes:
                node.join(token, day=0)
            first_broker_end = served_broker_certificate(site).not_valid_after_utc
        agents = [node.run(day=day) for node in nodes]
        assert f"configured (revision {epoch}" in site.ok(
            ["edgectl", "apply", "-f", str(site.component(f"day {day}"))])
        wait_until(lambda epoch=epoch: deployed(site, epoch, len(nodes)), timeout=CONVERGE_SECONDS,
                   what=f"revision {epoch} on every node on day {day}")
        for node, agent in zip(nodes, agents, strict=True):
            serials[node.name].add(site.ctl_json("describe", "node", node.name)["certificate"]["serial"])
            assert [p["Status"] for p in node.running_pods()] == ["Running"], node.name
            # A return 90 days on finds the 90-day certificate ended: the agent renewed it before it connected.
            # One 40 days on finds more than a third of it left, and keeps it.
            renewed = [line for line in lines_of(agent) if "certificate renewed" in line]
            assert len(renewed) == (1 if day - previous_day >= 60 else 0), (node.name, day, renewed)
            if renewed and day - previous_day >= 90:
                assert renewed[0].endswith(", expired)"), renewed
        site.stop_all()
        previous_day = day

    # Day 400 again, to read what the hub says of its certificates with the fleet online.
    site.broker_and_hub(400)
    agents = [node.run(day=400) for node in nodes]
    wait_until(lambda: all(n["presence"] == "online" for n in site.ctl_json("get", "nodes")), timeout=CONVERGE_SECONDS,
               what="every node online on day 400")
    for node in nodes:
        # One from the join, one from each return after 90 days (days 90 to 360); day 400 kept day 360's.
        assert len(serials[node.name]) == 5, f"{node.name}: {serials}"
    # The broker's first certificate (365 days) has ended; what it serves now was issued by the hub.
    served = served_broker_certificate(site)
    assert first_broker_end is not None and served.not_valid_after_utc > first_broker_end
    assert served.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=400 + 30)
    described = site.ctl_json("describe", "hub")
    assert described["warnings"] == [], described["warnings"]
    for certificate in described["certificates"]:
        assert certificate["days_left"] > 30, certificate
    assert "warning" not in site.ok(["edgectl", "get", "nodes"]).lower()
    for agent in agents:
        assert not any("CertificateRenewalFailed" in line for line in lines_of(agent))


@pytest.fixture
def horizon_site(tmp_path: Path, machine: MachineSetup) -> Iterator[Site]:
    site = Site(tmp_path, machine, hub_config={"offline_horizon_days": 300})
    try:
        yield site
    finally:
        site.close()


def test_a_node_off_longer_than_the_offline_horizon_is_refused_naming_the_horizon_and_the_cure(horizon_site: Site):
    site = horizon_site
    drawer = site.node("drawer", podman=False)  # a spare in a drawer: joined, then put away
    site.mosquitto_config()
    site.broker_and_hub(0)
    drawer.join(site.token(), day=0)
    site.stop_all()

    # Day 400: its certificate ended on day 90, 310 days ago, and this hub's horizon is 300 days.
    _, hub = site.broker_and_hub(400)
    agent = drawer.run(day=400)
    refusal = re.compile(r"the hub refused the renewal: the certificate of node 'drawer' expired at \S+ \(310 days "
                         r"ago\), beyond this hub's offline horizon of 300 days \(offline_horizon_days\); an operator "
                         r"can free the name with: edgectl node reset drawer, and the node join again with a new token")
    wait_until(lambda: any(refusal.search(line) for line in lines_of(agent)), timeout=30,
               what="the agent saying the hub refused its renewal beyond the horizon")
    assert refusal.search(drawer.status(day=400)), drawer.status(day=400)
    assert re.search(r"Certificate renewal of drawer refused: the certificate of node 'drawer' expired at \S+ "
                     r"\(310 days ago\), beyond this hub's offline horizon of 300 days", hub.log_path.read_text())
    assert node_row(site, "drawer")["presence"] != "online"
    assert not any("Connected to mqtts://" in line for line in lines_of(agent))
    agent.stop()
    # The cure the message names works: the name freed, the node joins again with a new token.
    site.ok(["edgectl", "node", "reset", "drawer"])
    drawer.join(site.token(), day=400)
    assert site.ctl_json("describe", "node", "drawer")["generation"] == 2
