"""Roll a component out to N simulated nodes, then upgrade it, and compare with the broker's raw round trip.

    .venv/bin/python bench/rollout.py --agents N [--full-agents M] [--timeout S] [--window W]

Starts a real Mosquitto (TLS identities, as ``edgehub mosquitto-config`` writes it), the hub as a real
``edgehub serve`` process with its SQLite store, then:

1. joins N nodes over the hub's HTTP join API (the agent's own ``join``: a key, a CSR and a bundle key each)
   and prints the join rate;
2. the raw MQTT round trip on the same broker and TLS listener, with no edgecollab code on the message path:
   N plain sessions (client certificates of the hub CA), one publisher sends each a payload of the size of a
   real assignment of this component, with a window of ``--window`` QoS 1 publishes in flight, and each
   answers with a payload of the size of a real status report; the time until all N replies arrived;
3. starts the N nodes: M of them (``--full-agents``, default min(N, max(1, N // 10), 200)) run the project's
   ``Agent`` class with the dry-run runtime (``edgeagent run --runtime dry-run`` in-process), the other N - M
   run light, protocol-faithful agents (see bench/simworker.py), many per worker process;
4. applies bench/component.yaml (pool ``bench``) over the hub's API and waits until the hub reports all N
   Deployed; then an upgrade (new values, new manifests) the same way.

Prints every figure, then, as the last line, one JSON object. Latencies per node are from the apply request
to the node's Deployed status; ``rollout_s``/``upgrade_s`` are until the hub's API shows all N Deployed.
Every wait is bounded by ``--timeout``; everything started is stopped and its directory removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness import (  # noqa: E402
    COMPONENT,
    FD_SLACK,
    LIGHT_PER_WORKER,
    NAME,
    NAMESPACE,
    POOL,
    Bench,
    SysWatch,
    deltas,
    fleet_parser,
    machine,
    node_name,
    parse_fleet_args,
    percentile,
    proc_cpu,
    proc_status,
    raise_nofile,
    raw_name,
    source_address,
    split,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = fleet_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=int, default=100,
                        help="QoS 1 publishes in flight in the raw round trip (default 100)")
    return parse_fleet_args(parser, argv)


def payload_sizes() -> tuple[int, int]:
    """Bytes of a real sealed assignment of the bench component (bundle encrypted to a node) and of a real
    status report with one Deployed release: what the raw round trip sends."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from deployer_plugin import load_component_file, render_component
    from edgeprotocol import bundle_crypto
    from edgeprotocol.messages import Assignment, NodeStatus, ReleaseStatus, now
    from edgeprotocol.signing import seal

    component, archive = load_component_file(COMPONENT)
    assert archive is not None
    (bundle,) = render_component(component, archive, revision=1).values()
    node = node_name(0)
    assignment = Assignment(node=node, namespace=NAMESPACE, release=NAME, revision=1, kind="release",
                            issued_at=now(), chart={"name": "bench-tiny", "version": "0.1.0"}, bundle=bundle,
                            generation=1)
    sealed = seal(assignment, Ed25519PrivateKey.generate(),
                  bundle_to=bundle_crypto.load_public_key(bundle_crypto.public_key_text(bundle_crypto.new_node_key())))
    status = NodeStatus(node=node, seq=3, observed_at=now(), agent_version="0.1.0", runtime="dry-run",
                        releases=(ReleaseStatus(namespace=NAMESPACE, release=NAME, desired_revision=1,
                                                applied_revision=1, phase="Deployed", ready=1, total=1,
                                                observed_at=now()),))
    return len(sealed), len(status.encode())


def component_with(message: str) -> tuple[dict[str, Any], bytes]:
    """The benchmark's component with ``message`` in its values, and its packaged chart."""
    from deployer_plugin import load_component_file

    component, archive = load_component_file(COMPONENT)
    assert archive is not None
    document = component.to_document()
    document["spec"]["values"] = {**document["spec"].get("values", {}), "message": message}
    return document, archive


async def raw_round_trip(bench: Bench, watch: SysWatch, n: int, window: int, sizes: tuple[int, int],
                         deadline: float) -> dict[str, Any]:
    """N plain sessions, one publisher; seconds until every reply is back (see the module docstring)."""
    workers = await bench.start_workers(max(1, math.ceil(n / LIGHT_PER_WORKER)), "raw")
    clients = [[raw_name(i), source_address(i)] for i in range(n)]
    await asyncio.gather(*(w.call(deadline - time.monotonic(), cmd="raw", hub_state=str(bench.broker.hub_state),
                                  broker=bench.broker.url, clients=part, reply_bytes=sizes[1],
                                  folder=str(bench.workdir / "raw-identities"))
                           for w, part in zip(workers, split(clients, len(workers)), strict=True)))
    client = watch.client
    assert client is not None
    replies: set[str] = set()
    all_back = asyncio.Event()

    def on_reply(topic: str, payload: bytes) -> None:
        if topic.startswith("bench/raw/") and topic.endswith("/reply"):
            replies.add(topic)
            if len(replies) >= n:
                all_back.set()

    watch.on_message = on_reply
    await client.subscribe("bench/raw/+/reply", qos=1)
    before = await watch.settled_snapshot()
    payload = b"a" * sizes[0]
    slots = asyncio.Semaphore(window)

    async def send(i: int) -> None:
        async with slots:
            await client.publish(f"bench/raw/{raw_name(i)}/cmd", payload, qos=1, timeout=deadline - time.monotonic())

    started = time.perf_counter()
    sending = asyncio.gather(*(send(i) for i in range(n)))
    try:
        await asyncio.wait_for(all_back.wait(), deadline - time.monotonic())
    except TimeoutError:
        raise TimeoutError(f"raw round trip: {len(replies)} of {n} replies before the timeout") from None
    elapsed = time.perf_counter() - started
    await sending
    after = await watch.settled_snapshot()
    watch.on_message = None
    await client.unsubscribe("bench/raw/+/reply")
    for w in workers:
        await w.stop()
        bench.workers.remove(w)
    return {"seconds": elapsed, "broker": deltas(before, after)}


# Seconds between polls of the component listing while a rollout is watched.
LISTING_POLL_SECONDS = 0.25


async def wait_deployed(bench: Bench, revision: int, n: int, deadline: float) -> float:
    """Poll the hub's API until all ``n`` nodes are Deployed at ``revision``; the time.time() it saw that."""
    hub = bench.hub_client()
    while True:
        # The listing's counts (what 'edgectl get components' shows), not the component's page: that lists
        # every node, a few MB of JSON per poll at 10,000 nodes, which the hub would spend on the bench.
        listed = await asyncio.to_thread(hub.list, "components")
        view = next((c for c in listed if (c["namespace"], c["name"]) == (NAMESPACE, NAME)),
                    {"revision": 0, "deployed": 0, "phases": {}})  # the apply has not stored it yet
        if view["revision"] == revision and view["deployed"] >= n:
            return time.time()
        if time.monotonic() > deadline:
            raise TimeoutError(f"waiting for revision {revision}: the hub has revision {view['revision']}, "
                               f"{view['deployed']} of {n} nodes Deployed ({view['phases']}) at the timeout")
        # The listing sends no per-node rows and the hub counts it from listings that read only what changed
        # (a few ms of its CPU at 10,000 nodes), so it is polled often: rollout_s is at most that late.
        await asyncio.sleep(LISTING_POLL_SECONDS)


async def phase(bench: Bench, watch: SysWatch, message: str, revision: int, n: int, deadline: float
                ) -> dict[str, Any]:
    """Apply (a new revision) and wait for all N Deployed: totals, hub CPU, broker traffic."""
    document, archive = component_with(message)
    before = await watch.settled_snapshot()
    cpu_before = cpu_by_process(bench)
    started = time.time()
    hub = bench.hub_client(timeout=max(1.0, deadline - time.monotonic()))
    apply = asyncio.create_task(asyncio.to_thread(hub.apply, document, client="bench", chart_archive=archive))
    done_at = await wait_deployed(bench, revision, n, deadline)
    answer = await apply
    applied = answer.get("revision")
    if applied != revision:
        raise RuntimeError(f"the hub made revision {applied}, expected {revision}")
    cpu = {who: seconds - cpu_before[who] for who, seconds in cpu_by_process(bench).items()}
    after = await watch.settled_snapshot()
    return {"started": started, "total_s": done_at - started, "hub_cpu_s": cpu["hub"],
            "broker_cpu_s": cpu["broker"], "agents_cpu_s": cpu["agents"], "light_agents_cpu_s": cpu["light_agents"],
            "broker": deltas(before, after)}


def cpu_by_process(bench: Bench) -> dict[str, float]:
    """CPU seconds so far of the hub, the broker and the simulated agents (every worker process; and the light
    agents' workers alone): where the two cores went during a phase."""
    workers = {w.name: proc_cpu(w.pid) for w in bench.workers}
    return {"hub": proc_cpu(bench.hub_pid), "broker": proc_cpu(bench.broker_pid), "agents": sum(workers.values()),
            "light_agents": sum(seconds for name, seconds in workers.items() if name.startswith("light"))}


def print_phase(name: str, n: int, ph: dict[str, Any]) -> None:
    print(f"{name}: all {n} Deployed on the hub after {ph['total_s']:.2f} s; CPU: hub {ph['hub_cpu_s']:.1f} s, "
          f"broker {ph['broker_cpu_s']:.1f} s, simulated agents {ph['agents_cpu_s']:.1f} s (light "
          f"{ph['light_agents_cpu_s']:.1f} s); broker {ph['broker']}",
          flush=True)


def latencies(reports: list[dict[str, Any]], revision: int, started: float, nodes: set[str]) -> dict[str, float]:
    values = [times[str(revision)] - started for r in reports for node, times in r["deployed"].items()
              if node in nodes and str(revision) in times]
    return {"count": len(values), "p50_s": percentile(values, 50), "p99_s": percentile(values, 99),
            "max_s": max(values) if values else math.nan}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    n, m = args.agents, args.full_agents
    warning = raise_nofile(n + FD_SLACK)
    if warning:
        print(warning, file=sys.stderr)
    deadline = time.monotonic() + args.timeout
    bench = Bench(agents=n, raw_clients=n, timeout=args.timeout, keep=args.keep)
    result: dict[str, Any] = {"agents": n, "full_agents": m, "light_agents": n - m}
    try:
        await asyncio.to_thread(bench.start)
        print(f"broker {bench.broker.url} (pid {bench.broker_pid}), hub {bench.hub.url if bench.hub else '?'} "
              f"(pid {bench.hub_pid}), work dir {bench.workdir}", flush=True)
        async with SysWatch(bench.broker) as watch:
            hub_rss_before = proc_status(bench.hub_pid)["VmRSS"]
            cpu_before = proc_cpu(bench.hub_pid)
            join_s = await asyncio.to_thread(bench.join_all, POOL, n)
            result.update(join_s=join_s, join_rate_per_s=n / join_s,
                          join_hub_cpu_s=proc_cpu(bench.hub_pid) - cpu_before)
            print(f"joins: {n} in {join_s:.1f} s ({n / join_s:.0f}/s), hub CPU {result['join_hub_cpu_s']:.1f} s",
                  flush=True)

            sizes = await asyncio.to_thread(payload_sizes)
            raw = await raw_round_trip(bench, watch, n, args.window, sizes, deadline)
            result.update(raw_round_trip_s=raw["seconds"], raw_window=args.window, raw_payload_bytes=list(sizes),
                          raw_broker=raw["broker"])
            print(f"raw round trip: {n} x ({sizes[0]} B out, {sizes[1]} B back), window {args.window}: "
                  f"{raw['seconds']:.3f} s; broker {raw['broker']}", flush=True)

            # The nodes: full agents first (their own workers), then the light ones.
            started = time.monotonic()
            full_workers, light_workers = await bench.start_agents(n, m, deadline)
            connected_s = time.monotonic() - started
            online_s = connected_s + await bench.wait_online(n, deadline)
            result.update(connect_s=connected_s, online_s=online_s)
            print(f"agents: {n} connected in {connected_s:.1f} s, all online on the hub after {online_s:.1f} s",
                  flush=True)

            rollout = await phase(bench, watch, "revision 1", 1, n, deadline)
            print_phase("rollout", n, rollout)
            upgrade = await phase(bench, watch, "revision 2", 2, n, deadline)
            print_phase("upgrade", n, upgrade)

            full_reports = [await w.call(60, cmd="report") for w in full_workers]
            light_reports = [await w.call(60, cmd="report") for w in light_workers]
            hub = proc_status(bench.hub_pid)
            all_nodes = {node_name(i) for i in range(n)}
            full_nodes = {node_name(i) for i in range(m)}
            reports = full_reports + light_reports
            for name, ph, revision in (("rollout", rollout, 1), ("upgrade", upgrade, 2)):
                lat = latencies(reports, revision, ph["started"], all_nodes)
                lat_full = latencies(full_reports, revision, ph["started"], full_nodes)
                lat_light = latencies(light_reports, revision, ph["started"], all_nodes - full_nodes)
                result.update({f"{name}_s": ph["total_s"], f"{name}_p50_s": lat["p50_s"],
                               f"{name}_p99_s": lat["p99_s"], f"{name}_max_s": lat["max_s"],
                               f"{name}_deployed": lat["count"], f"{name}_hub_cpu_s": ph["hub_cpu_s"],
                               f"{name}_broker_cpu_s": ph["broker_cpu_s"], f"{name}_agents_cpu_s": ph["agents_cpu_s"],
                               f"{name}_light_agents_cpu_s": ph["light_agents_cpu_s"],
                               f"{name}_broker": ph["broker"],
                               f"{name}_full_p50_s": lat_full["p50_s"], f"{name}_full_max_s": lat_full["max_s"],
                               f"{name}_light_p50_s": lat_light["p50_s"], f"{name}_light_max_s": lat_light["max_s"]})
                print(f"{name} per-node latency: p50 {lat['p50_s']:.2f} s, p99 {lat['p99_s']:.2f} s, max "
                      f"{lat['max_s']:.2f} s ({lat['count']} nodes; full agents p50 {lat_full['p50_s']:.2f} s "
                      f"max {lat_full['max_s']:.2f} s, light p50 {lat_light['p50_s']:.2f} s max "
                      f"{lat_light['max_s']:.2f} s)", flush=True)

            def per_node_kib(rs: list[dict[str, Any]], count: int) -> float:
                return sum(r["rss_kib"] - r["rss_start_kib"] for r in rs) / count if count else math.nan

            result.update(
                ratio=result["rollout_s"] / result["raw_round_trip_s"],
                upgrade_ratio=result["upgrade_s"] / result["raw_round_trip_s"],
                hub_cpu_s=proc_cpu(bench.hub_pid), hub_peak_rss_kib=hub["VmHWM"], hub_rss_kib=hub["VmRSS"],
                hub_rss_before_join_kib=hub_rss_before,
                hub_rss_per_node_kib=(hub["VmRSS"] - hub_rss_before) / n,
                full_agent_rss_per_node_kib=per_node_kib(full_reports, m),
                light_agent_rss_per_node_kib=per_node_kib(light_reports, n - m),
                full_agents_cpu_s=sum(r["cpu_s"] for r in full_reports),
                light_agents_cpu_s=sum(r["cpu_s"] for r in light_reports),
                full_agent_cpu_ms_per_node=1000 * sum(r["cpu_s"] for r in full_reports) / m if m else math.nan,
                light_agent_cpu_ms_per_node=(1000 * sum(r["cpu_s"] for r in light_reports) / (n - m)
                                             if n > m else math.nan),
                assignment_bytes=max((r["assignment_bytes"] for r in light_reports), default=0),
                status_bytes=max((r["status_bytes"] for r in reports), default=0),
                machine=machine())
            print(f"hub: CPU {result['hub_cpu_s']:.1f} s in all, peak RSS {hub['VmHWM'] / 1024:.0f} MiB, "
                  f"{result['hub_rss_per_node_kib']:.1f} KiB per node over {hub_rss_before / 1024:.0f} MiB before "
                  "the joins", flush=True)
            print(f"simulation: full agents {result['full_agent_rss_per_node_kib']:.0f} KiB and "
                  f"{result['full_agent_cpu_ms_per_node']:.0f} ms CPU per node; light agents "
                  f"{result['light_agent_rss_per_node_kib']:.0f} KiB and {result['light_agent_cpu_ms_per_node']:.0f} "
                  "ms CPU per node (both runs, start to end)", flush=True)
            (bench.workdir / "sys-series.json").write_text(json.dumps(watch.series))
    finally:
        await bench.close()
    return result


def clean(value: Any) -> Any:
    """Floats rounded, NaN as null (strict JSON), recursively."""
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 4)
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    return value


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = asyncio.run(run(args))
    print(json.dumps(clean(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
