"""Restart the broker under N connected agents: how long until every node is back and converged, re-applying nothing.

    .venv/bin/python bench/reconnect.py --agents N [--full-agents M] [--timeout S]

Starts a real Mosquitto (TLS identities) and ``edgehub serve``, joins N nodes, runs M of them as the
project's ``Agent`` class with the dry-run runtime (``edgeagent run --runtime dry-run`` in-process, many
per worker process) and the rest as light protocol-faithful agents (bench/simworker.py: the same backoff,
presence, resync and status on every connect), each client on its own 127.0.0.0/8 source address, applies
bench/component.yaml and waits until all N are Deployed. Then it stops the broker (SIGTERM: Mosquitto saves
its retained messages and sessions) and starts it again on the same port, and measures:

- ``back_s``: from the broker's restart until the hub's API (``GET /api/v1/nodes``) shows every node online
  with its status converged: the release Deployed at the current revision, reported after the restart;
- ``peak_reconnects_per_s``: the most MQTT connections established in one second, from the agents' own
  connect times (their jittered backoff should spread them), and ``reconnect_spread_s`` (first to last);
- ``reapplied``: applies after the restart, counted in every full agent's runtime (and every light agent's
  count of new revisions): must be 0.

The last line printed is one JSON object. Every wait is bounded by ``--timeout``; everything started is
stopped and its directory removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness import (  # noqa: E402
    COMPONENT,
    FD_SLACK,
    NAME,
    NAMESPACE,
    POOL,
    Bench,
    fleet_parser,
    machine,
    parse_fleet_args,
    poll_interval,
    proc_cpu,
    raise_nofile,
)

from edgekit.http import HttpError  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = fleet_parser(__doc__.split("\n\n")[0])
    return parse_fleet_args(parser, argv)


def converged(nodes: list[dict[str, Any]], revision: int, after: str) -> int:
    """How many nodes are online and report the release Deployed at ``revision`` in a status observed after
    ``after`` (RFC 3339, compared as text: both are UTC with a Z)."""
    count = 0
    for node in nodes:
        if node["presence"] != "online" or node["status_observed_at"] < after:
            continue
        if any(r["release"] == NAME and r.get("phase") == "Deployed" and r.get("applied_revision") == revision
               for r in node["releases"]):
            count += 1
    return count


async def run(args: argparse.Namespace) -> dict[str, Any]:
    n = args.agents
    warning = raise_nofile(n + FD_SLACK)
    if warning:
        print(warning, file=sys.stderr)
    deadline = time.monotonic() + args.timeout
    bench = Bench(agents=n, raw_clients=0, timeout=args.timeout, keep=args.keep)
    result: dict[str, Any] = {"agents": n, "full_agents": args.full_agents, "light_agents": n - args.full_agents}
    try:
        await asyncio.to_thread(bench.start)
        print(f"broker {bench.broker.url}, hub {bench.hub.url if bench.hub else '?'}, work dir {bench.workdir}",
              flush=True)
        join_s = await asyncio.to_thread(bench.join_all, POOL, n)
        print(f"joins: {n} in {join_s:.1f} s", flush=True)
        full_workers, light_workers = await bench.start_agents(n, args.full_agents, deadline)
        workers = full_workers + light_workers
        await bench.wait_online(n, deadline)

        from deployer_plugin import load_component_file

        component, archive = load_component_file(COMPONENT)
        assert archive is not None
        await asyncio.to_thread(bench.hub_client(timeout=max(1.0, deadline - time.monotonic())).apply,
                                component.to_document(), chart_archive=archive)
        hub = bench.hub_client()
        while True:
            try:
                view = await asyncio.to_thread(hub.component, NAMESPACE, NAME)
            except HttpError as exc:
                if not exc.status:  # nothing answered: not "not there yet"
                    raise
                view = {"deployed": 0}
            if view["deployed"] >= n:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{view['deployed']} of {n} nodes Deployed before the timeout")
            await asyncio.sleep(poll_interval(n))
        before = [await w.call(60, cmd="report") for w in workers]
        applies_before = sum(sum(r["applies"].values()) for r in before)
        print(f"agents: {n} online and Deployed; {applies_before} applies so far", flush=True)

        # The restart: a clean stop (retained messages and sessions saved), then the same port again.
        stop_at = time.time()
        await asyncio.to_thread(bench.broker.stop)
        down_s = time.time() - stop_at
        restart_wall = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 1))
        started = time.monotonic()
        restart_at = time.time()
        cpu_before = proc_cpu(bench.hub_pid)
        await asyncio.to_thread(bench.broker.start)
        while True:
            listed = await asyncio.to_thread(hub.list, "nodes")
            done = converged(listed, 1, restart_wall)
            if done >= n:
                back_s = time.monotonic() - started
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"after the broker restart only {done} of {n} nodes came back online and "
                                   "converged before the timeout")
            await asyncio.sleep(poll_interval(n))
        await asyncio.sleep(2.0)  # anything re-applied late would show now
        after = [await w.call(60, cmd="report") for w in workers]
        applies_after = sum(sum(r["applies"].values()) for r in after)
        connects = [t for r in after for t in r["connects"] if t >= restart_at]
        per_second = Counter(int(t - restart_at) for t in connects)
        result.update(
            back_s=back_s, broker_down_s=down_s, reconnects=len(connects),
            peak_reconnects_per_s=max(per_second.values(), default=0),
            reconnect_spread_s=(max(connects) - min(connects)) if connects else math.nan,
            reapplied=applies_after - applies_before, hub_cpu_s=proc_cpu(bench.hub_pid) - cpu_before,
            agents_cpu_s=sum(r["cpu_s"] for r in after), machine=machine())
        print(f"broker restart: every node online and converged after {back_s:.1f} s; {len(connects)} reconnects, "
              f"peak {result['peak_reconnects_per_s']}/s over {result['reconnect_spread_s']:.1f} s; "
              f"re-applied {result['reapplied']}; hub CPU {result['hub_cpu_s']:.1f} s", flush=True)
    finally:
        await bench.close()
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = asyncio.run(run(args))
    print(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else round(v, 4) if isinstance(v, float)
                          else v) for k, v in result.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
