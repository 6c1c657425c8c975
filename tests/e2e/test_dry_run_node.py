"""A node joined with ``--runtime dry-run`` against a real hub and Mosquitto: it rehearses a rollout.

It reports Deployed for what it was given, with runtime "dry-run", and the manifests it recorded are the ones
the hub rendered; a release its policy refuses is refused as on podman. No podman needed.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fleet_checks import REPO, write_spec

from edgeprotocol import topics
from edgeprotocol.messages import NodeStatus
from edgesim.fleet import Fleet, ManagedProcess, wait_until
from edgesim.watch import TopicRecorder

BENCH_CHART = REPO / "bench" / "chart"


class DryRunNode(ManagedProcess):
    def __init__(self, workdir: Path, name: str) -> None:
        super().__init__(f"edgeagent {name}", workdir / name / "agent.log")
        self.name = name
        self.state_dir = workdir / name / "state"

    def join(self, hub_url: str, token: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edgeagent.cli", "join", "--hub", hub_url, "--token", token,
                               "--name", self.name, "--state-dir", str(self.state_dir), "--runtime", "dry-run"],
                              capture_output=True, text=True, timeout=60)

    def start(self) -> DryRunNode:
        # No --runtime: the one chosen at join is used.
        self._spawn([sys.executable, "-m", "edgeagent.cli", "run", "--state-dir", str(self.state_dir)])
        return self


@pytest.fixture
def hub_and_node(tmp_path: Path) -> Iterator[tuple[Fleet, DryRunNode]]:
    with Fleet(workdir=tmp_path) as fleet:
        assert fleet.hub is not None
        node = DryRunNode(tmp_path / "nodes", "rehearsal-1")
        try:
            joined = node.join(fleet.hub.url, fleet.hub.token("lab"))
            assert joined.returncode == 0, joined.stderr
            assert "runtime: dry-run" in joined.stdout
            node.start()
            yield fleet, node
        finally:
            node.stop()
            if node.log_path.exists():
                print(f"\n----- {node.name} log (tail) -----\n{node.log_tail(40)}")


def release_of(fleet: Fleet, node: str, name: str) -> dict[str, Any] | None:
    assert fleet.hub is not None
    view = fleet.hub.api(f"/api/v1/nodes/{node}")
    return next((r for r in view["releases"] if r["release"] == name), None)


def test_a_dry_run_node_reports_deployed_and_records_what_the_hub_rendered(hub_and_node, tmp_path: Path):
    fleet, node = hub_and_node
    assert fleet.hub is not None
    spec = write_spec(tmp_path / "tiny.yaml", name="tiny", namespace="bench", chart=BENCH_CHART,
                      values={"message": "rehearsed"}, edge={"nodePools": ["lab"]})
    fleet.hub.ctl("apply", "-f", str(spec))

    deployed = wait_until(lambda: (r := release_of(fleet, node.name, "tiny")) and r.get("phase") == "Deployed" and r,
                          timeout=60, what="the dry-run node to report tiny Deployed")

    assert deployed["applied_revision"] == 1 and deployed["ready"] == deployed["total"] == 1
    view = fleet.hub.api(f"/api/v1/nodes/{node.name}")
    assert view["runtime"] == "dry-run"
    assert view["presence"] == "online"
    # What it recorded is what the hub rendered for it: the Helm engine gives the same text for the same input.
    from deployer_plugin import load_component_file, render_component

    component, archive = load_component_file(spec)
    assert archive is not None
    (rendered,) = render_component(component, archive, revision=1).values()
    recorded = node.state_dir / "dry-run" / "bench" / "tiny" / "revision-1.yaml"
    assert recorded.read_text() == rendered.manifests
    assert "rehearsed" in recorded.read_text()
    # And nothing ran: the node has no podman state, only its record.
    assert not (node.state_dir / "podman").exists()
    status = subprocess.run([sys.executable, "-m", "edgeagent.cli", "status", "--state-dir", str(node.state_dir),
                             "-o", "json"], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert [r["phase"] for r in yaml.safe_load(status.stdout)["releases"]] == ["Deployed"]

    fleet.hub.ctl("delete", "component", "tiny", "-n", "bench")
    wait_until(lambda: not recorded.parent.exists(), timeout=60, what="the record removed on delete")


def test_a_privileged_release_is_refused_by_the_dry_run_node_as_by_podman(hub_and_node, tmp_path: Path):
    fleet, node = hub_and_node
    assert fleet.hub is not None
    spec = write_spec(tmp_path / "tiny.yaml", name="tiny", namespace="bench", chart=BENCH_CHART,
                      values={"privileged": True}, edge={"nodePools": ["lab"]})
    fleet.hub.ctl("apply", "-f", str(spec))

    failed = wait_until(lambda: (r := release_of(fleet, node.name, "tiny")) and r.get("phase") == "Failed" and r,
                        timeout=60, what="the dry-run node to refuse tiny")

    assert "privileged" in failed["message"] and "is refused by this node's policy" in failed["message"]
    assert not (node.state_dir / "dry-run" / "bench" / "tiny").exists()


def test_a_quick_apply_reports_deployed_alone_and_the_next_revision_too(hub_and_node, tmp_path: Path):
    """The agent's status waits status_coalesce (0.25 s) for the changes that follow: a dry run applies at
    once, so the broker carries one Deployed status per revision and no Applying before it."""
    fleet, node = hub_and_node
    assert fleet.hub is not None and fleet.broker is not None
    wait_until(lambda: fleet.hub.api(f"/api/v1/nodes/{node.name}")["presence"] == "online", timeout=60,
               what="the node online")
    with TopicRecorder(fleet.broker.port, topics.status(node.name), tls=fleet.broker.identity()) as statuses:
        for revision, message in ((1, "first"), (2, "second")):
            spec = write_spec(tmp_path / "tiny.yaml", name="tiny", namespace="bench", chart=BENCH_CHART,
                              values={"message": message}, edge={"nodePools": ["lab"]})
            fleet.hub.ctl("apply", "-f", str(spec))
            wait_until(lambda revision=revision: (r := release_of(fleet, node.name, "tiny"))
                       and r.get("phase") == "Deployed" and r["applied_revision"] == revision,
                       timeout=60, what=f"revision {revision} Deployed on the hub")

        reported = [(r.phase, r.applied_revision) for payload in statuses.snapshot() if payload
                    for r in NodeStatus.decode(payload).releases]
    assert reported.count(("Deployed", 1)) >= 1 and reported.count(("Deployed", 2)) >= 1
    assert not [phase for phase, _ in reported if phase == "Applying"], reported
