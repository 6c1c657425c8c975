"""The benchmarks run end to end at a small size, as docs/scaling.md shows them, and print their figures as JSON.

Not a timed test: only that every node got there, nothing was re-applied, and the figures are sane.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.fleet


def last_json(*command: str) -> dict:
    result = subprocess.run(list(command), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    # The benchmark's last line; a make run inside another (make test) adds its own "Leaving directory".
    return json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][-1])


def test_make_bench_rollout_as_documented_reports_every_figure_for_100_nodes() -> None:
    figures = last_json("make", "bench-rollout")

    assert figures["agents"] == 100 and figures["full_agents"] >= 1 and figures["light_agents"] >= 1
    assert figures["rollout_deployed"] == figures["upgrade_deployed"] == 100
    for key in ("rollout_s", "upgrade_s", "raw_round_trip_s", "ratio", "join_rate_per_s"):
        assert figures[key] > 0, key
    assert figures["ratio"] == pytest.approx(figures["rollout_s"] / figures["raw_round_trip_s"], rel=0.01)
    assert 0 < figures["rollout_p50_s"] <= figures["rollout_p99_s"] <= figures["rollout_max_s"]
    assert figures["rollout_max_s"] <= figures["rollout_s"] + 1
    assert isinstance(figures["hub_rss_per_node_kib"], float | int)
    assert figures["hub_peak_rss_kib"] >= figures["hub_rss_kib"] > 0
    assert figures["full_agent_rss_per_node_kib"] is not None and figures["light_agents_cpu_s"] > 0
    assert figures["rollout_broker"]["messages_received"] > 20
    assert figures["assignment_bytes"] == pytest.approx(figures["raw_payload_bytes"][0], rel=0.05)


def test_make_bench_reconnect_as_documented_reapplies_nothing() -> None:
    figures = last_json("make", "bench-reconnect")

    assert figures["agents"] == 100
    assert figures["reapplied"] == 0
    assert figures["reconnects"] >= 100
    assert 0 < figures["back_s"] < 120
    assert figures["peak_reconnects_per_s"] >= 1


def test_the_store_benchmark_runs_and_stores_every_report() -> None:
    figures = last_json(".venv/bin/python", "bench/store_under_load.py", "--nodes", "300")

    assert figures["nodes"] == 300 and figures["reports"] == 300  # save_reports asserts every report was stored
    for key in ("listing_first_s", "one_by_one_idle_s", "one_by_one_busy_s", "in_batches_idle_s", "in_batches_busy_s"):
        assert figures[key] > 0, key
