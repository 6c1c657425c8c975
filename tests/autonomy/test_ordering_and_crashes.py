"""Ordering and crash safety: reordered assignments, and an agent killed in the middle of an apply."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from fleet_checks import agent_status, link_test_options, wait_deployed, write_spec

from edgeagent.identity import NodeIdentity
from edgehub.broker_roles import HUB_USER
from edgeprotocol import Assignment, Bundle, NodeStatus, topics
from edgeprotocol.messages import now
from edgeprotocol.signing import seal
from edgesim.fleet import Fleet, wait_until
from edgesim.watch import TopicRecorder, publish

POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: pinned
spec:
  terminationGracePeriodSeconds: 1
  securityContext: {{runAsUser: 65534}}  # the node's default policy refuses root
  containers:
    - name: main
      image: localhost/edgecollab-busybox:1
      imagePullPolicy: Never
      command: ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
      env:
        - name: REVISION
          value: "{revision}"
"""


def test_reordered_and_duplicated_assignments_end_on_the_newest_applied_once(fleet: Fleet):
    hub, broker = fleet.hub, fleet.broker
    assert hub is not None and broker is not None
    node = fleet.add_node("sh-1", "shanghai")
    wait_until(lambda: agent_status(node)["last_sync"] != "never", timeout=30, what="sh-1 connected")
    key = serialization.load_pem_private_key((hub.workdir / "state" / "hub.key").read_bytes(), password=None)

    # Sealed as the hub seals them: for the node's current join. The hub itself
    # stops first: it would (rightly) tombstone a release it never assigned.
    generation = NodeIdentity.load(node.state_dir).generation
    hub.stop()

    def signed(revision: int) -> tuple[str, bytes, bool]:
        assignment = Assignment(node="sh-1", namespace="demo", release="pinned", revision=revision, kind="release",
                                issued_at=now(), bundle=Bundle.of(POD.format(revision=revision)),
                                generation=generation)
        return topics.assignment("sh-1", "demo", "pinned"), seal(assignment, key), False  # type: ignore[arg-type]  # the node's PEM key is Ed25519

    # As the hub (stopped): on the broker with identities only it may write assignments.
    publish(broker.port, [signed(3), signed(2), signed(3)], tls=broker.identity(HUB_USER))

    def pinned_revision() -> str | None:
        names = [c for c in node.podman("ps", "--format", "{{.Names}}").stdout.split() if c.endswith("pinned-main")]
        return node.container_env(names[0]).get("REVISION") if names else None

    assert wait_until(pinned_revision, timeout=60, what="the pinned pod") == "3"
    wait_until(lambda: agent_status(node)["counters"].get("assignments_ignored", 0) >= 2, timeout=30,
               what="the agent to ignore the older and the repeated assignment")

    def pinned_status() -> dict | None:
        found = [r for r in agent_status(node)["releases"] if r["release"] == "pinned"]
        return found[0] if found and found[0]["phase"] == "Deployed" else None

    # Deployed is written by a reconcile pass after the ignored assignments: nothing else happened by then.
    release = wait_until(pinned_status, timeout=30, what="the pinned release observed Deployed")
    assert pinned_revision() == "3"
    assert (release["desired_revision"], release["applied_revision"], release["phase"]) == (3, 3, "Deployed")
    assert agent_status(node)["counters"]["applies"] == 1


def test_an_agent_killed_during_an_apply_finishes_it_offline_and_never_claimed_deployed_early(
    fleet: Fleet, tmp_path: Path
):
    hub, broker = fleet.hub, fleet.broker
    assert hub is not None and broker is not None
    link = fleet.link("sh-1")
    node = fleet.add_node("sh-1", "shanghai", link=link, options=link_test_options(fleet))
    replicas = 4  # several pods make the apply last long enough to be interrupted
    with TopicRecorder(broker.port, topics.status("sh-1"), tls=broker.identity()) as statuses:
        hub.ctl("apply", "-f", str(write_spec(tmp_path / "web.yaml", values={"replicas": replicas})))

        def journal() -> tuple[str, int, str] | None:
            # Opened afresh each time: the agent creates the file when it starts.
            with contextlib.closing(sqlite3.connect(f"file:{node.state_dir / 'agent.db'}?mode=ro", uri=True,
                                                    timeout=5)) as db:
                return db.execute("SELECT phase, applied_revision, applying_digest FROM releases").fetchone()

        wait_until(lambda: (row := journal()) and row[2], timeout=60, interval=0.02,
                   what="the agent to start applying")
        assert node.proc is not None
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait()
        node.proc = None
        phase, applied_revision, applying_digest = journal() or ("", -1, "")
        assert phase == "Applying" and applied_revision == 0 and applying_digest, "the interrupted apply is journaled"

        link.cut()
        node.start()  # restarted with the link down: it must not wait for the hub
        wait_until(lambda: (s := agent_status(node)["releases"]) and s[0]["phase"] == "Deployed", timeout=90,
                   what="the restarted agent to finish the apply offline")
        assert len([p for p in node.running_pods() if p["Name"].startswith("demo.web-pod-")]) == replicas

        link.restore()
        wait_deployed(hub, "demo/web", revision=1, nodes=1)
        reports = [NodeStatus.decode(p) for p in statuses.snapshot() if p]
    deployed = [r for s in reports for r in s.releases if r.phase == "Deployed"]
    assert deployed, "the hub heard Deployed in the end"
    assert all(r.ready == r.total == replicas and r.applied_revision == 1 for r in deployed), \
        f"a Deployed status claimed an incomplete apply: {[(r.ready, r.total) for r in deployed]}"
    assert agent_status(node)["counters"]["applies"] >= 1
