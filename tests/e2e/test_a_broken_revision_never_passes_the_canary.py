"""A revision that breaks the way releases break in production never gets past the canary batch (the whole
fleet: Mosquitto, ``edgehub serve``, ``edgectl``, three agents on podman, the README's defaults).

Pool ``canary`` has c1, pool ``prod`` has p1 and p2. Revision after revision, each broken one is rolled out
with the issue's rollout (canary first, then everyone), and for each: ``edgectl rollout status`` exits 1
naming c1 and the reason, the hub rolls c1 back to the last good revision by itself, and p1 and p2 keep their
containers (same IDs). A healthy revision then goes through every batch.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from fleet_checks import agent_release, container_starts, node_events, wait_deployed, write_spec

from edgesim.fleet import Fleet, Node, wait_until
from edgesim.podman_setup import DEMO_IMAGE

pytestmark = pytest.mark.timeout(900)

ROLLOUT = {"batches": [{"pools": ["canary"]}, {"percent": 100}],
           "healthGate": {"readyWithin": "20s", "minReadyTime": "12s"}, "maxFailures": 0, "onFailure": "Rollback"}
EDGE = {"nodePools": ["canary", "prod"], "rollout": ROLLOUT}
HEALTHY = {"command": "echo serving; sleep 3600"}
# Each way a release breaks, the values that make it so, and the reason the canary must fail with.
BROKEN = [
    ("crash loop", {"command": "echo crashing; exit 3"}, "CrashLoopBackOff"),
    ("runs 8 s then exits", {"command": "echo up; sleep 8; exit 1"}, "CrashLoopBackOff"),
    ("killed for memory", {"command": "echo filling; x=a; while true; do x=$x$x; done", "memory": "16Mi"},
     "OOMKilled"),
    # The kubelet's words for it: ErrImagePull at the first attempt, ImagePullBackOff between the next ones.
    ("image not on the node", {"image": "localhost/edgecollab-missing:1"}, "ImagePull"),
    ("readiness probe never passes", {"readiness": ["false"]}, "not Deployed and ready within 20s"),
]

TEMPLATE = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: probe}
spec:
  template:
    spec:
      securityContext: {runAsUser: 65534}
      containers:
      - name: app
        image: {{ .Values.image }}
        command: ["sh", "-c", {{ .Values.command | quote }}]
        {{- with .Values.memory }}
        resources: {limits: {memory: {{ . }}}}
        {{- end }}
        {{- with .Values.readiness }}
        readinessProbe: {exec: {command: {{ toJson . }}}, periodSeconds: 1}
        {{- end }}
"""


def probe_chart(directory: Path) -> Path:
    (directory / "templates").mkdir(parents=True)
    (directory / "Chart.yaml").write_text(yaml.safe_dump({"apiVersion": "v2", "name": "probe", "version": "0.1.0"}))
    (directory / "values.yaml").write_text(yaml.safe_dump({"image": DEMO_IMAGE, **HEALTHY}))
    (directory / "templates" / "deployment.yaml").write_text(TEMPLATE)
    return directory


def release_of(node: Node) -> dict[str, Any]:
    return agent_release(node, "probe")


def test_every_way_a_release_breaks_fails_the_canary_and_never_touches_the_later_batch(fleet: Fleet,
                                                                                      tmp_path: Path):
    hub = fleet.hub
    assert hub is not None
    canary = fleet.add_node("c1", "canary")
    prod = [fleet.add_node(name, "prod") for name in ("p1", "p2")]
    chart = probe_chart(tmp_path / "probe")
    spec = tmp_path / "probe.yaml"
    hub.ctl("apply", "-f", str(write_spec(spec, name="probe", namespace="acceptance", chart=chart, values=HEALTHY,
                                         edge=EDGE)))
    good = 1
    wait_deployed(hub, "acceptance/probe", revision=good, nodes=3)
    before = {node.name: container_starts(node) for node in prod}

    for what, values, reason in BROKEN:
        started = time.monotonic()
        hub.ctl("apply", "-f", str(write_spec(spec, name="probe", namespace="acceptance", chart=chart,
                                             values={**HEALTHY, **values}, edge=EDGE)))
        bad = good + 1
        status = hub.ctl("rollout", "status", "acceptance/probe", "--timeout", "150s", check=False)
        failed_after = time.monotonic() - started
        said = status.stdout + status.stderr
        assert status.returncode == 1, f"{what}: {said}"
        assert "c1" in said and reason in said, f"{what}: {said}"
        # The hub rolled back by itself: the canary runs the last good values again.
        rollback = bad + 1
        wait_until(lambda rollback=rollback: (r := release_of(canary))["applied_revision"] == rollback
                   and r["phase"] == "Deployed",
                   timeout=120, what=f"{what}: c1 back on the good revision ({rollback})")
        # The later batch never got the bad revision: its containers are the very same.
        for node in prod:
            held = release_of(node)
            assert (held["applied_revision"], held["phase"]) == (1, "Deployed"), (what, node.name, held)
            assert container_starts(node) == before[node.name], (what, node.name)
        if reason in ("CrashLoopBackOff", "OOMKilled"):
            # One event when the release turned unhealthy, not one per restart.
            unhealthy = [e for e in node_events(hub, "c1")
                         if e["reason"] == "Unhealthy" and f"revision {bad}:" in e["message"]]
            assert len(unhealthy) == 1 and reason in unhealthy[0]["message"], (what, unhealthy)
        described = hub.ctl("describe", "component", "acceptance/probe").stdout
        print(f"\n--- {what}: canary failed after {failed_after:.1f} s\n{said}\n{described}")
        good = rollback

    hub.ctl("apply", "-f", str(write_spec(spec, name="probe", namespace="acceptance", chart=chart,
                                         values={"command": "echo serving v2; sleep 3600"}, edge=EDGE)))
    done = hub.ctl("rollout", "status", "acceptance/probe", "--timeout", "150s", check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    wait_deployed(hub, "acceptance/probe", revision=good + 1, nodes=3)
