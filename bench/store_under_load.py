"""What the hub's store costs when the event loop is busy, as it is during a rollout: listings and reports.

    .venv/bin/python bench/store_under_load.py [--nodes N]      (default 10,000)

Builds a hub store (a real SQLite file under /tmp, removed at the end) with N
joined nodes, each assigned one release and holding one status, then prints:

- a fleet listing (what every read of a component or the fleet does: nodes
  with status, and assignments): the first one, one with nothing written
  since, and one after a tenth of the nodes reported; and the CPU of
  counting one component's rollout over the listing (the view
  ``GET /api/v1/components`` shows);
- storing 2,000 statuses and 2,000 events, one ``save_status``/``add_event``
  call each (all at once, as the hub's ingest did) and in batches of 1,000
  (``ReportStore.save_reports``, as it does now), each with the event loop
  idle and with it busy (a task that computes for 2 ms between yields,
  standing in for a rollout's publishing).

The store's thread needs the GIL back after every SQL statement, which a
busy loop holds for up to a switch interval: the figures show what that
costs per statement. Run with the hub's switch interval (edgehub.cli), as
``edgehub serve`` runs. The last line is JSON. Bounded: N nodes, one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgehub.cli import STORE_SWITCH_INTERVAL  # noqa: E402
from edgehub.store import HubStores  # noqa: E402
from edgehub.store.assignments import AssignmentRecord  # noqa: E402
from edgehub.store.components import ComponentRecord  # noqa: E402
from edgehub.tokens import new_token  # noqa: E402
from edgehub.views import component_view, release_targets  # noqa: E402
from edgeprotocol.messages import Event, NodeStatus, ReleaseStatus  # noqa: E402

REPORTS = 2000
BUSY_SLICE_SECONDS = 0.002
COMPONENT = ComponentRecord(namespace="default", name="web", chart_name="web", chart_version="1.0.0",
                            fingerprint="f", revision=1, deleted=False, updated_at=0.0)


def name(i: int) -> str:
    return f"n{i:05}"


def status(i: int, seq: int) -> tuple[NodeStatus, bytes]:
    report = NodeStatus(node=name(i), seq=seq, observed_at="2026-01-01T00:00:00Z", releases=(
        ReleaseStatus(namespace="default", release="web", desired_revision=1, applied_revision=1, phase="Deployed",
                      ready=1, total=1),))
    return report, report.encode()


def event(i: int, seq: int) -> tuple[Event, bytes]:
    report = Event(node=name(i), seq=seq, at="2026-01-01T00:00:00Z", reason="Applied", message="revision 1 applied",
                   namespace="default", release="web", revision=1)
    return report, report.encode()


async def timed(work: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """Wall seconds and this process's CPU seconds of ``work``."""
    wall, cpu = time.perf_counter(), time.process_time()
    await work()
    return time.perf_counter() - wall, time.process_time() - cpu


async def with_busy_loop(busy: bool, work: Callable[[], Awaitable[object]]) -> float:
    """Wall seconds of ``work`` while another task keeps the event loop computing (when ``busy``)."""
    stop = asyncio.Event()

    async def spin() -> None:
        while not stop.is_set():
            until = time.perf_counter() + BUSY_SLICE_SECONDS
            while time.perf_counter() < until:
                pass
            await asyncio.sleep(0)

    spinner = asyncio.create_task(spin()) if busy else None
    try:
        return (await timed(work))[0]
    finally:
        stop.set()
        if spinner is not None:
            await spinner


async def run(nodes: int, folder: Path) -> dict[str, float]:
    figures: dict[str, float] = {}
    async with HubStores(folder / "hub.db") as stores:
        enrollment, reports, assignments = stores.enrollment, stores.reports, stores.assignments
        token = new_token()
        await enrollment.create_token(token, pool="p", ttl_seconds=3600, uses=nodes)
        await asyncio.gather(*(enrollment.register_node(token, node=name(i), requested_pool=None, labels={},
                                                        sign=lambda n: "certificate", bundle_key="")
                               for i in range(nodes)))
        await assignments.update_assignments([AssignmentRecord(node=name(i), namespace="default", release="web",
                                                               revision=1, kind="release") for i in range(nodes)])
        for start in range(0, nodes, 1000):
            await reports.save_reports([status(i, 1) for i in range(start, min(nodes, start + 1000))],
                                       received_at="t", max_seq_jump=1000)

        async def listing() -> None:
            await reports.list_nodes(with_certificate=False)
            await assignments.list_assignments()

        figures["listing_first_s"] = (await timed(listing))[1]
        figures["listing_unchanged_s"] = (await timed(listing))[1]
        await reports.save_reports([status(i, 2) for i in range(0, nodes, 10)], received_at="t", max_seq_jump=1000)
        figures["listing_after_tenth_reported_s"] = (await timed(listing))[1]
        by_name = {n.name: n for n in await reports.list_nodes(with_certificate=False)}
        targets = release_targets(await assignments.list_assignments())[("default", "web")]
        cpu = time.process_time()
        component_view(COMPONENT, by_name, targets, detail=False)
        figures["rollout_count_s"] = time.process_time() - cpu

        seq, count = 10, min(REPORTS, nodes)
        for busy in (False, True):
            seq += 1

            async def one_by_one(seq: int = seq) -> None:
                statuses, events = [status(i, seq) for i in range(count)], [event(i, seq) for i in range(count)]
                await asyncio.gather(*(reports.save_status(s, encoded=e, received_at="t", max_seq_jump=1000)
                                       for s, e in statuses),
                                     *(reports.add_event(s, encoded=e, max_seq_jump=1000) for s, e in events))

            figures[f"one_by_one_{'busy' if busy else 'idle'}_s"] = await with_busy_loop(busy, one_by_one)
            seq += 1

            async def in_batches(seq: int = seq) -> None:
                for start in range(0, count, 1000):
                    part = range(start, min(count, start + 1000))
                    saved = await reports.save_reports([status(i, seq) for i in part], [event(i, seq) for i in part],
                                                       received_at="t", max_seq_jump=1000)
                    assert set(saved.statuses) == set(saved.events) == {"stored"}, saved

            figures[f"in_batches_{'busy' if busy else 'idle'}_s"] = await with_busy_loop(busy, in_batches)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    args = parser.parse_args()
    sys.setswitchinterval(STORE_SWITCH_INTERVAL)
    folder = Path(tempfile.mkdtemp(prefix="ec-store-bench-", dir="/tmp"))
    try:
        figures = asyncio.run(run(args.nodes, folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    count = min(REPORTS, args.nodes)
    print(f"fleet listing of {args.nodes} nodes (CPU): first {figures['listing_first_s']:.4f} s, nothing written "
          f"since {figures['listing_unchanged_s']:.4f} s, after a tenth reported "
          f"{figures['listing_after_tenth_reported_s']:.4f} s; counting a rollout {figures['rollout_count_s']:.4f} s")
    for how in ("one_by_one", "in_batches"):
        print(f"{count} statuses + {count} events {how.replace('_', ' ')}: event loop idle "
              f"{figures[f'{how}_idle_s']:.2f} s, busy {figures[f'{how}_busy_s']:.2f} s")
    print(json.dumps({"nodes": args.nodes, "reports": count, **{k: round(v, 4) for k, v in figures.items()}}))


if __name__ == "__main__":
    main()
