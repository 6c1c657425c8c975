"""A batch of reports (ReportStore.save_reports, what the hub's ingest stores per batch) keeps every promise
one report at a time keeps: the same outcome for each report, the same statuses, events and presences
stored, the same bound on events kept. On both backends."""

from __future__ import annotations

from pathlib import Path

from test_store_on_both_backends import join

from edgehub.store import HubStores
from edgehub.store.reports import ReportStore
from edgeprotocol.messages import Event, NodeStatus, Presence

JUMP = 1000


def status(node: str, seq: int) -> tuple[NodeStatus, bytes]:
    report = NodeStatus(node=node, seq=seq, observed_at="2024-01-01T00:00:00Z", releases=())
    return report, report.encode()


def event(node: str, seq: int, message: str = "") -> tuple[Event, bytes]:
    report = Event(node=node, seq=seq, at="2024-01-01T00:00:00Z", reason="Applied", message=message or f"#{seq}")
    return report, report.encode()


async def stored(reports: ReportStore) -> dict[str, object]:
    """What a user sees of the nodes' reports: each node's status seq and its events' seqs and messages."""
    seen: dict[str, object] = {}
    for node in await reports.list_nodes(with_certificate=False):
        events = [(e.seq, e.message) for e in await reports.list_events(node.name)]
        seen[node.name] = (node.status.seq if node.status else None, node.last_seen, events, node.presence)
    return seen


async def test_a_batch_of_next_reports_is_stored_whole(store_location: Path | str):
    async with HubStores(store_location) as stores:
        reports = stores.reports
        for name in ("n1", "n2", "n3"):
            await join(stores.enrollment, name)
        outcomes = await reports.save_reports([status(n, 1) for n in ("n1", "n2", "n3")],
                                              [event(n, 1) for n in ("n1", "n2", "n3")],
                                              [Presence(node=n, state="online", at="t0") for n in ("n1", "n2")],
                                              received_at="t1", max_seq_jump=JUMP)
        assert outcomes == (["stored"] * 3, ["stored"] * 3, [True, True])
        assert await stored(reports) == {"n1": (1, "t1", [(1, "#1")], "online"),
                                         "n2": (1, "t1", [(1, "#1")], "online"),
                                         "n3": (1, "t1", [(1, "#1")], "unknown")}


async def test_a_batch_with_reports_it_refuses_has_the_outcomes_of_one_at_a_time(store_location: Path | str):
    async with HubStores(store_location, events_kept_per_node=2) as stores:
        reports = stores.reports
        for name in ("n1", "n2"):
            await join(stores.enrollment, name)
        assert await reports.save_reports([status("n2", 5)], [event("n2", 1)], received_at="t0",
                                          max_seq_jump=JUMP) == (["stored"], ["stored"], [])
        statuses = [status("n1", 1), status("n2", 4), status("ghost", 1), status("n1", 2), status("n2", 5 + JUMP + 1)]
        events = [event("n1", 1), event("n2", 1), event("n2", 2), event("ghost", 1), event("n1", 2 + JUMP),
                  event("n2", 1, "a new life"), event("n1", 2), event("n1", 3)]
        # A node that went offline and came back within the batch ends online; a stranger's is refused.
        presences = [Presence(node="n1", state="offline", at="t2"), Presence(node="ghost", state="online", at="t2"),
                     Presence(node="n1", state="online", at="t3"), Presence(node="n2", state="offline", at="t3")]
        outcomes = await reports.save_reports(statuses, events, presences, received_at="t1", max_seq_jump=JUMP)
        assert outcomes == (["stored", "stale", "unknown node", "stored", "too far ahead"],
                            ["stored", "duplicate", "stored", "unknown node", "too far ahead", "stored", "stored",
                             "stored"],
                            [True, False, True, True])
        # n1 keeps its newest two events by arrival; n2's seq 1 was replaced after its seq 2 arrived.
        assert await stored(reports) == {"n1": (2, "t1", [(2, "#2"), (3, "#3")], "online"),
                                         "n2": (5, "t0", [(2, "#2"), (1, "a new life")], "offline")}


async def test_a_batch_prunes_events_to_the_bound(store_location: Path | str):
    async with HubStores(store_location, events_kept_per_node=3) as stores:
        reports = stores.reports
        for name in ("n1", "n2"):
            await join(stores.enrollment, name)
        for seq in range(1, 6):
            assert await reports.save_reports(events=[event("n1", seq), event("n2", seq)],
                                              max_seq_jump=JUMP) == ([], ["stored", "stored"], [])
        assert {n: [seq for seq, _ in events] for n, (_, _, events, _) in (await stored(reports)).items()} == {
            "n1": [3, 4, 5], "n2": [3, 4, 5]}
