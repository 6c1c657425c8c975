"""The store: sequence numbers after a re-join, events kept by arrival, and an older store's oversized statuses.

A real SQLite file and a real PostgreSQL database; messages as the ingest hands them over (encoded once).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from raw_store import execute

from edgehub.store import HubStores
from edgehub.tokens import new_token
from edgeprotocol.messages import Event, NodeStatus

JUMP = 1_000_000


def status(seq: int, node: str = "n1") -> NodeStatus:
    return NodeStatus(node=node, seq=seq, observed_at="2024-01-01T00:00:00Z", releases=())


async def save(stores: HubStores, seq: int) -> str:
    report = status(seq)
    return await stores.reports.save_status(report, encoded=report.encode(), received_at="now", max_seq_jump=JUMP)


async def add(stores: HubStores, seq: int, message: str = "") -> str:
    event = Event(node="n1", seq=seq, at="2024-01-01T00:00:00Z", reason="Applied", message=message or f"#{seq}")
    return await stores.reports.add_event(event, encoded=event.encode(), max_seq_jump=JUMP)


async def register(stores: HubStores, uses: int = 1) -> None:
    """Join n1; a name already joined is reset first (as ``edgectl node reset`` does), else the join is refused."""
    await stores.enrollment.reset_node("n1")
    token = new_token()
    await stores.enrollment.create_token(token, pool="p", ttl_seconds=60, uses=uses)
    await stores.enrollment.register_node(token, node="n1", requested_pool=None, labels={}, sign=lambda _: "cert")


async def test_a_status_seq_grows_by_at_most_the_bound_and_a_re_joined_node_may_start_over_or_count_on(
    store_location: Path | str
):
    async with HubStores(store_location) as stores:
        assert await save(stores, 1) == "unknown node"
        await register(stores)
        assert await save(stores, JUMP + 1) == "too far ahead"  # the first report counts from 0
        assert [await save(stores, s) for s in (1, 1, 0, JUMP + 1, 2 * JUMP + 2, -1, 2**64)] == [
            "stored", "stale", "stale", "stored", "too far ahead", "out of range", "out of range"]

        # Re-joined with its state kept: it counts on from JUMP + 1.
        await register(stores)
        assert await save(stores, JUMP + 5) == "stored"
        # Re-joined afresh (a new agent state): it counts from 1 again.
        await register(stores)
        assert await save(stores, 1) == "stored"
        node = await stores.reports.get_node("n1")
        assert node is not None and node.status is not None and node.status.seq == 1


async def test_events_are_kept_by_arrival_so_a_huge_seq_erases_nothing(store_location: Path | str):
    async with HubStores(store_location, events_kept_per_node=3) as stores:
        reports = stores.reports
        assert await add(stores, 1) == "unknown node"
        await register(stores)
        assert [await add(stores, s) for s in (1, 2, 2**63 - 1, JUMP, 3)] == [
            "stored", "stored", "too far ahead", "stored", "stored"]
        assert [e.seq for e in await reports.list_events("n1")] == [2, JUMP, 3]  # the newest three by arrival
        assert await add(stores, 3) == "duplicate"
        # An agent that re-joined afresh counts from 1 again: its new events replace old ones of that seq.
        assert await add(stores, 2, "a new life") == "stored"
        assert [(e.seq, e.message) for e in await reports.list_events("n1")] == [
            (JUMP, f"#{JUMP}"), (3, "#3"), (2, "a new life")]


async def test_the_event_log_of_every_node_is_in_arrival_order_bounded_and_a_cursor_only_grows(
    store_location: Path | str
):
    async with HubStores(store_location, events_kept_per_node=3) as stores:
        reports = stores.reports
        await register(stores)
        token = new_token()
        await stores.enrollment.create_token(token, pool="p", ttl_seconds=60, uses=1)
        await stores.enrollment.register_node(token, node="n2", requested_pool=None, labels={}, sign=lambda _: "cert")
        for seq in range(1, 6):
            await add(stores, seq)
            other = Event(node="n2", seq=seq, at="2024-01-01T00:00:00Z", reason="Applied", message=f"n2 #{seq}")
            await reports.add_event(other, encoded=other.encode(), max_seq_jump=JUMP)
        log = await reports.list_event_log(limit=100)
        # Each node keeps its newest three; the log interleaves them as they arrived.
        assert [(e.event.node, e.event.seq) for e in log] == [
            ("n1", 3), ("n2", 3), ("n1", 4), ("n2", 4), ("n1", 5), ("n2", 5)]
        cursors = [e.cursor for e in log]
        assert cursors == sorted(cursors)
        assert [e.event.seq for e in await reports.list_event_log(node="n2", limit=2)] == [4, 5]
        assert [e.event.message for e in await reports.list_event_log(after=cursors[3], limit=100)] == ["#5", "n2 #5"]
        assert [e.cursor for e in await reports.list_event_log(after=cursors[0], limit=2)] == cursors[1:3]
        # An event that replaces another of its seq (a re-joined agent) comes after every cursor handed out.
        assert await add(stores, 4, "a new life") == "stored"
        (replaced,) = await reports.list_event_log(after=cursors[-1], limit=100)
        assert (replaced.event.seq, replaced.event.message) == (4, "a new life") and replaced.cursor > cursors[-1]
        assert await reports.list_event_log(node="nobody") == []


async def test_an_older_stores_oversized_status_is_forgotten_on_open_so_the_nodes_reports_are_taken_again(
    store_location: Path | str
):
    async with HubStores(store_location) as stores:
        await register(stores)
    # What an older hub stored from a forged 3.8 MB status: 11.4 MB, at the largest seq.
    execute(store_location, "UPDATE nodes SET status = ?, status_seq = ? WHERE name = 'n1'",
            ("x" * 11_400_000, 2**63 - 1))
    async with HubStores(store_location) as stores:
        node = await stores.reports.get_node("n1")
        assert node is not None and node.status is None
        assert await save(stores, 1) == "stored"


async def test_a_store_made_by_an_older_hub_is_switched_to_incremental_vacuum_once(tmp_path: Path):
    path = tmp_path / "hub.db"
    sqlite3.connect(path).execute("CREATE TABLE made_by_an_older_hub (x)").connection.close()
    async with HubStores(path):
        pass
    assert sqlite3.connect(path).execute("PRAGMA auto_vacuum").fetchone() == (2,)
