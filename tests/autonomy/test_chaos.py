"""Chaos: random link cuts, agent kills and broker restarts during a series of upgrades.

Bounded: ROUNDS rounds on three nodes, each fault lasting seconds; the seed is
printed (and can be set with EDGECOLLAB_CHAOS_SEED) so a failure can be replayed.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from pathlib import Path

import pytest
from fleet_checks import agent_status, link_test_options, node_events, wait_deployed, write_spec

from edgesim.fleet import Fleet, wait_until

ROUNDS = 6
NODES = ("c-1", "c-2", "c-3")


def test_upgrades_survive_random_faults_and_every_node_ends_on_the_last_revision(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    hub, broker = fleet.hub, fleet.broker
    assert hub is not None and broker is not None
    seed = int(os.environ.get("EDGECOLLAB_CHAOS_SEED", time.time_ns() % 100_000))
    rng = random.Random(seed)
    links = {name: fleet.link(name) for name in NODES}
    nodes = {name: fleet.add_node(name, "shanghai", link=links[name],
                                  options=link_test_options(fleet)) for name in NODES}
    spec = tmp_path / "web.yaml"
    faults: Counter[str] = Counter()

    for round_no in range(1, ROUNDS + 1):
        hub.ctl("apply", "-f", str(write_spec(spec, values={"message": f"round {round_no}"})))
        fault, victim = rng.choice(["link cut", "agent kill", "broker restart"]), rng.choice(NODES)
        if fault == "link cut":
            links[victim].cut()
            time.sleep(rng.uniform(1.0, 6.0))
            links[victim].restore()
        elif fault == "agent kill":
            nodes[victim].kill()
            time.sleep(rng.uniform(0.2, 3.0))
            nodes[victim].start()
        else:
            broker.restart()
        faults[fault] += 1
        time.sleep(rng.uniform(0.5, 3.0))

    # Generous: an agent killed mid-apply may meet its orphaned podman call and
    # back off (up to 60 s) before it applies again.
    wait_deployed(hub, "demo/web", revision=ROUNDS, nodes=len(NODES), timeout=240)
    applies = ignored = heals = 0
    for name, node in nodes.items():
        wait_until(lambda n=node: f"round {ROUNDS}" in n.served_page("demo.web"), timeout=30,
                   what=f"the last page on {name}")
        revisions = [e["revision"] for e in node_events(hub, name) if e["reason"] == "Applied"]
        assert revisions == sorted(set(revisions)), f"{name} applied out of order or twice: {revisions}"
        counters = agent_status(node)["counters"]
        applies += counters.get("applies", 0)
        ignored += counters.get("assignments_ignored", 0)
        heals += counters.get("self_heals", 0)

    with capsys.disabled():
        print(f"\nchaos: seed {seed}, {ROUNDS} rounds, {sum(faults.values())} faults ({dict(faults)}); "
              f"{applies} applies on {len(NODES)} nodes for {ROUNDS} revisions, "
              f"{ignored} repeated or stale assignments ignored (re-applies avoided), {heals} self-heals")
