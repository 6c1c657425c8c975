"""Reports: what nodes say of themselves (status, presence, events), and the fleet as it last reported.

What nodes send is bounded here, whoever sent it (the broker lets anyone
publish on a node's topics): a report from a node not in standing ``joined``
is taken as from no registered node, a status or event whose sequence number
jumps more than ``max_seq_jump`` past the last one stored is refused, events
are kept by count in arrival order (so no sequence number can erase history),
and a stored status that no longer decodes is shown as no status, never an
error.

Statuses and presences are columns of the ``nodes`` rows enrollment keeps
(``edgehub.store.enrollment``); this store writes only those columns, and is
the one that lists nodes with their status: it decodes each status once and
keeps the fleet's listing, which the reports it stores revise in place.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, TypeVar

from edgekit.sql import Connection, Row
from edgeprotocol.errors import ProtocolError
from edgeprotocol.messages import Event, NodeStatus, Presence, PresenceState

from .database import HubDatabase, rows_named
from .enrollment import JOINED, NODE_COLUMNS, NodeRecord
from .listed import NO_ROWS, ByNode
from .schema import MAX_SEQ

logger = logging.getLogger(__name__)
R = TypeVar("R")

SaveOutcome = Literal["stored", "stale", "duplicate", "unknown node", "too far ahead", "out of range"]
# What a listing needs to know whether a node's status changed, without reading it.
_STATUS_SIZE = "status_seq, length(status) AS status_length"
# A node's listed entry: the values of its row as last read, and the record made of them.
_Listed = tuple[tuple[Any, ...], NodeRecord]


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """A node's event as the hub holds it: ``cursor`` is its place in the order events arrived at the
    hub, over every node (larger is later), which ``list_event_log(after=...)`` continues from."""

    cursor: int
    event: Event


class SavedReports(NamedTuple):
    """What ``ReportStore.save_reports`` made of each report, in the order given."""

    statuses: list[SaveOutcome]
    events: list[SaveOutcome]
    presences: list[bool]  # False: the node is not registered (or was reset, or revoked)


class ReportStore:
    """Nodes' statuses, presences and events in the hub's database, and the nodes listed with their status.
    ``events_kept_per_node``: the newest events kept of each node."""

    def __init__(self, database: HubDatabase, *, events_kept_per_node: int = 500) -> None:
        self._database = database
        self._events_kept = events_kept_per_node
        # Nodes whose stored status failed to decode, so each is logged once.
        self._undecodable: set[str] = set()
        # Each node's status as last decoded (or stored by this process), by its stored seq and
        # length: listing a fleet decodes only the reports that changed since the last listing.
        self._decoded: dict[str, tuple[tuple[int, int], NodeStatus]] = {}
        # What the fleet's listings read last (nodes with status and without certificate), kept on the
        # database's thread: a listing reads only the nodes written since.
        self._listed: ByNode[_Listed] = database.node_listing()

    # --- the fleet with its reports ---------------------------------------------

    async def list_nodes(self, *, with_certificate: bool = True) -> list[NodeRecord]:
        """Every node by name with its last status; ``with_certificate=False`` leaves every ``certificate`` "",
        and is cheaper.

        A fleet is listed on every read of a component or the fleet: with
        status and without certificates (what those reads ask for), only the
        rows written since the last such listing are read (``edgehub.store.listed``)
        and only the reports that changed are decoded; an unchanged node is
        the very same record as in the last listing.
        """
        if not with_certificate:
            return [record for _, record in await self._database.read(self._listing_of_nodes)]

        def run(c: Connection) -> list[NodeRecord]:
            rows = c.execute(f"SELECT {NODE_COLUMNS}, certificate, {_STATUS_SIZE} FROM nodes ORDER BY name").fetchall()
            return [record for _, record in self._node_records(c, rows, {}).values()]

        return await self._database.read(run)

    async def get_node(self, name: str) -> NodeRecord | None:
        """One node with its certificate and last status."""

        def run(c: Connection) -> NodeRecord | None:
            row = c.execute("SELECT * FROM nodes WHERE name = ?", (name,)).fetchone()
            if row is None:
                return None
            status = self._status_of(name, row["status_seq"], len(row["status"] or ""), row["status"])
            return NodeRecord.from_row(row, status=status)

        return await self._database.read(run)

    def _listing_of_nodes(self, c: Connection) -> list[_Listed]:
        columns = f"{NODE_COLUMNS}, {_STATUS_SIZE}"

        def read_all(held: dict[str, _Listed]) -> dict[str, _Listed]:
            return self._node_records(c, c.execute(f"SELECT {columns} FROM nodes").fetchall(), held)

        def read_some(names: list[str]) -> dict[str, _Listed]:
            return self._node_records(c, rows_named(c, f"SELECT {columns} FROM nodes", names), {})

        return self._listed.refresh(read_all, read_some)

    def _node_records(self, c: Connection, rows: list[Row], held: dict[str, _Listed]) -> dict[str, _Listed]:
        """The records of ``rows`` (with ``_STATUS_SIZE``), each with the row's values; a row whose values and
        status are those ``held`` has, keeps its record. Statuses are read and decoded (on the database's
        thread: a status may be a few hundred KiB of JSON) only when they changed since last decoded."""
        changed = [r["name"] for r in rows
                   if r["status_length"] and not self._decoded_holds(r["name"], r["status_seq"], r["status_length"])]
        texts: dict[str, str] = {r["name"]: r["status"]
                                 for r in rows_named(c, "SELECT name, status FROM nodes", changed)}
        records = {}
        for r in rows:
            name, values = r["name"], tuple[Any, ...](r)
            kept = held.get(name)
            if kept is None or kept[0] != values or name in texts:
                kept = (values, NodeRecord.from_row(r, status=self._status_of(
                    name, r["status_seq"], r["status_length"], texts.get(name))))
            records[name] = kept
        return records

    def _decoded_holds(self, node: str, seq: int, length: int) -> bool:
        held = self._decoded.get(node)
        return held is not None and held[0] == (seq, length)

    def _status_of(self, node: str, seq: int, length: int | None, text: str | None) -> NodeStatus | None:
        """The node's stored status (``text``, or as decoded before when ``text`` is None); None without one,
        or (logged once) when it does not decode."""
        if not length:
            return None
        held = self._decoded.get(node)
        if held is not None and held[0] == (seq, length):
            return held[1]
        if text is None:
            return None  # changed between the two reads of a listing: the next listing shows it
        try:
            status = NodeStatus.decode(text)
        except ProtocolError as exc:
            # Stored by an older hub that took any size: show the node without it.
            if node not in self._undecodable:
                self._undecodable.add(node)
                logger.warning("Stored status of node %s does not decode (%s); showing the node without "
                               "status until it reports again", node, exc)
            return None
        self._decoded[node] = ((seq, length), status)
        return status

    # --- storing reports ---------------------------------------------------------

    async def set_presence(self, node: str, state: PresenceState, at: str) -> bool:
        """Record presence; returns False when the node is not registered (or reset, or revoked)."""
        saved = await self.save_reports(presences=[Presence(node=node, state=state, at=at)])
        return saved.presences[0]

    async def save_status(self, status: NodeStatus, *, encoded: bytes, received_at: str,
                          max_seq_jump: int) -> SaveOutcome:
        """Store a node's report (``encoded``, as checked by the caller) unless it is not the next one.

        Refused: a report not newer than the stored one ("stale"), or more
        than ``max_seq_jump`` ahead of it ("too far ahead"). After a (re-)join
        the node's count starts over: the first report may be anywhere up to
        ``max_seq_jump`` past 0 or past the last report of its previous
        registration, so a fresh agent (counting from 1) and one that kept
        its state (counting on) are both taken.
        """
        saved = await self.save_reports([(status, encoded)], received_at=received_at, max_seq_jump=max_seq_jump)
        return saved.statuses[0]

    async def add_event(self, event: Event, *, encoded: bytes, max_seq_jump: int) -> SaveOutcome:
        """Keep a node's event (``encoded``, as checked by the caller), and its newest events only.

        Events are kept by arrival, the newest ``events_kept_per_node``, so a
        forged sequence number cannot push real history out. An event whose
        seq is more than ``max_seq_jump`` past the node's highest is refused;
        a repeat (same seq, same content) is dropped; a different event with a
        seq already held (an agent that re-joined afresh counts from 1 again)
        replaces the old one.
        """
        saved = await self.save_reports(events=[(event, encoded)], max_seq_jump=max_seq_jump)
        return saved.events[0]

    async def save_reports(self, statuses: Sequence[tuple[NodeStatus, bytes]] = (),
                           events: Sequence[tuple[Event, bytes]] = (), presences: Sequence[Presence] = (), *,
                           received_at: str = "", max_seq_jump: int = 0) -> SavedReports:
        """``save_status``, ``add_event`` and ``set_presence`` for many reports in one write: the outcome of
        each, in order (``received_at`` and ``max_seq_jump`` are those of ``save_status``, ``add_event``).

        A fleet reports all at once (a rollout, a reconnect): stored one by
        one, a thousand reports are thousands of statements, and the store's
        thread needs the GIL back after each one, which a busy event loop
        holds for up to a switch interval. So the usual case takes one
        statement per kind for a batch: every node's next status at once, every
        new event at once, every node's presence at once. When that statement
        does not take every report of its kind (one is stale, from an unknown
        node, too far ahead, an event repeats a seq, a node sent two), it is
        undone and they are stored one by one, which tells each outcome.
        """
        texts = [(status, encoded.decode()) for status, encoded in statuses]
        bodies = [(event, encoded.decode()) for event, encoded in events]

        def run(c: Connection) -> SavedReports:
            # Presences first: a node that connects says so before it reports, and its report's time is the
            # hub's own (last_seen ends as the report's).
            if _all_at_once(c, "presences", presences, [p.node for p in presences],
                            lambda rows: _store_presences(c, rows)):
                presence_outcomes = [True] * len(presences)
            else:
                presence_outcomes = [_store_presence(c, p) for p in presences]
            for p, known in zip(presences, presence_outcomes, strict=True):
                if known:
                    seen = {"last_seen": p.at} if p.state == "online" else {}
                    self._listed.revise(p.node, _with_report(presence=p.state, presence_at=p.at, **seen))

            # The statements for a batch leave the range check to this.
            in_range = all(0 <= s.seq <= MAX_SEQ for s, _ in texts) and all(0 <= e.seq <= MAX_SEQ for e, _ in bodies)
            if in_range and _all_at_once(c, "statuses", texts, [s.node for s, _ in texts],
                                         lambda rows: _store_next_statuses(c, rows, received_at, max_seq_jump)):
                status_outcomes: list[SaveOutcome] = ["stored"] * len(texts)
            else:
                status_outcomes = [_store_status(c, status, text, received_at, max_seq_jump) for status, text in texts]
            for (status, text), outcome in zip(texts, status_outcomes, strict=True):
                if outcome == "stored":
                    self._undecodable.discard(status.node)
                    # What was just stored needs no decoding when the fleet is next listed, nor reading.
                    self._decoded[status.node] = ((status.seq, len(text)), status)
                    self._listed.revise(status.node, _with_report(status=status, last_seen=received_at))

            if in_range and _all_at_once(c, "events", bodies, [e.node for e, _ in bodies],
                                         lambda rows: _store_new_events(c, rows, max_seq_jump)):
                event_outcomes: list[SaveOutcome] = ["stored"] * len(bodies)
            else:
                event_outcomes = [_store_event(c, event, body, max_seq_jump) for event, body in bodies]
            if "stored" in event_outcomes:
                _keep_newest_events(c, {event.node for event, _ in bodies}, self._events_kept)
            return SavedReports(status_outcomes, event_outcomes, presence_outcomes)

        # The listing's entries of the nodes whose reports were stored are revised in run().
        return await self._database.write(run, NO_ROWS)

    # --- events --------------------------------------------------------------------

    async def list_events(self, node: str, *, limit: int = 100) -> list[Event]:
        """The node's latest ``limit`` events, in the order they arrived."""

        def run(c: Connection) -> list[Event]:
            rows = c.execute(
                "SELECT body FROM (SELECT rowid, body FROM events WHERE node = ? ORDER BY rowid DESC LIMIT ?) "
                "AS newest ORDER BY rowid",
                (node, limit),
            ).fetchall()
            events = []
            for r in rows:
                try:
                    events.append(Event.decode(r["body"]))
                except ProtocolError as exc:  # stored by an older hub that took any size
                    logger.debug("Skipping a stored event of %s that does not decode: %s", node, exc)
            return events

        return await self._database.read(run)

    async def list_event_log(self, *, node: str | None = None, after: int | None = None,
                             limit: int = 100) -> list[LoggedEvent]:
        """Events of every node (or of ``node``) in the order they arrived at the hub, at most ``limit``.

        Without ``after``: the latest ``limit``. With ``after`` (a cursor an earlier answer held):
        the first ``limit`` that arrived after it, so a follower that asks again with its newest
        cursor misses none, however many arrive between two asks.
        """

        def run(c: Connection) -> list[LoggedEvent]:
            where, params = ("WHERE node = ?", [node]) if node is not None else ("", [])
            if after is None:
                rows = c.execute(
                    f"SELECT rowid, node, body FROM (SELECT rowid, node, body FROM events {where} "
                    "ORDER BY rowid DESC LIMIT ?) AS newest ORDER BY rowid",
                    (*params, limit),
                ).fetchall()
            else:
                where = f"{where} AND rowid > ?" if where else "WHERE rowid > ?"
                rows = c.execute(f"SELECT rowid, node, body FROM events {where} ORDER BY rowid LIMIT ?",
                                 (*params, after, limit)).fetchall()
            logged = []
            for r in rows:
                try:
                    logged.append(LoggedEvent(cursor=r["rowid"], event=Event.decode(r["body"])))
                except ProtocolError as exc:  # stored by an older hub that took any size
                    logger.debug("Skipping a stored event of %s that does not decode: %s", r["node"], exc)
            return logged

        return await self._database.read(run)


# Reports stored by one statement at most: four bound parameters each, under SQLite's oldest limit (999).
_REPORTS_PER_STATEMENT = 200


def _at_least_zero(sql: str) -> str:
    return f"CASE WHEN {sql} > 0 THEN {sql} ELSE 0 END"


# The highest seq a node's next report may have, past max_seq_jump (see ReportStore.save_status).
_STATUS_SEQ_BASE = _at_least_zero(
    "CASE WHEN nodes.status_seq > nodes.seq_before_join THEN nodes.status_seq ELSE nodes.seq_before_join END")


def _with_report(**changes: Any) -> Callable[[tuple[Any, NodeRecord]], tuple[Any, NodeRecord]]:
    """A listing entry changed as a stored report changed its row (the row's values are no longer known: a
    full read makes the record again)."""
    return lambda held: (None, dataclasses.replace(held[1], **changes))


def _all_at_once(c: Connection, what: str, reports: Sequence[R], nodes: Iterable[str],
                 store: Callable[[Sequence[R]], int]) -> bool:
    """Whether ``store`` took every report (counted by the rows it changed), a bounded slice a statement; when
    it did not, nothing is changed. Only for two reports or more, one of each of ``nodes``."""
    if len(reports) < 2 or len(set(nodes)) != len(reports):
        return False
    c.execute(f"SAVEPOINT {what}_at_once")
    taken = sum(store(reports[i:i + _REPORTS_PER_STATEMENT]) for i in range(0, len(reports), _REPORTS_PER_STATEMENT))
    if taken != len(reports):
        c.execute(f"ROLLBACK TO SAVEPOINT {what}_at_once")
    c.execute(f"RELEASE SAVEPOINT {what}_at_once")
    return taken == len(reports)


# Reports are taken only from nodes in standing ``joined``: enrollment's column, read by the statement that
# stores the report (in the one transaction), so a report is never stored for a node reset or revoked before it.

def _store_presences(c: Connection, rows: Sequence[Presence]) -> int:
    values = ", ".join(["(?, ?, ?)"] * len(rows))
    return c.execute(
        f"""UPDATE nodes SET presence = v.column2, presence_at = v.column3,
                last_seen = CASE WHEN v.column2 = 'online' THEN v.column3 ELSE nodes.last_seen END
            FROM (VALUES {values}) AS v WHERE nodes.name = v.column1 AND nodes.{JOINED}""",
        [x for p in rows for x in (p.node, p.state, p.at)],
    ).rowcount


def _store_presence(c: Connection, presence: Presence) -> bool:
    seen = ", last_seen = ?" if presence.state == "online" else ""
    at, node = presence.at, presence.node
    args = (presence.state, at, at, node) if seen else (presence.state, at, node)
    return c.execute(f"UPDATE nodes SET presence = ?, presence_at = ?{seen} WHERE name = ? AND {JOINED}",
                     args).rowcount == 1


def _store_next_statuses(c: Connection, rows: Sequence[tuple[NodeStatus, str]], received_at: str,
                         max_seq_jump: int) -> int:
    values = ", ".join(["(?, ?, ?)"] * len(rows))
    return c.execute(
        f"""UPDATE nodes SET status = v.column2, status_seq = v.column3, last_seen = ?
            FROM (VALUES {values}) AS v
            WHERE nodes.name = v.column1 AND nodes.{JOINED} AND v.column3 > nodes.status_seq
            AND v.column3 <= {_STATUS_SEQ_BASE} + ?""",
        [received_at, *(x for status, text in rows for x in (status.node, text, status.seq)), max_seq_jump],
    ).rowcount


def _store_status(c: Connection, status: NodeStatus, text: str, received_at: str, max_seq_jump: int) -> SaveOutcome:
    seq = status.seq
    row = c.execute(f"SELECT status_seq, seq_before_join FROM nodes WHERE name = ? AND {JOINED}",
                    (status.node,)).fetchone()
    if row is None:
        return "unknown node"
    if seq < 0 or seq > MAX_SEQ:
        return "out of range"
    if seq <= row["status_seq"]:
        return "stale"
    if seq > max(row["status_seq"], row["seq_before_join"], 0) + max_seq_jump:
        return "too far ahead"
    c.execute("UPDATE nodes SET status = ?, status_seq = ?, last_seen = ? WHERE name = ?",
              (text, seq, received_at, status.node))
    return "stored"


def _store_new_events(c: Connection, rows: Sequence[tuple[Event, str]], max_seq_jump: int) -> int:
    values = ", ".join(["(?, ?, ?)"] * len(rows))
    highest = "(SELECT MAX(held.seq) FROM events AS held WHERE held.node = v.column1)"
    return c.execute(
        f"""INSERT INTO events (node, seq, body) SELECT v.column1, v.column2, v.column3 FROM (VALUES {values}) AS v
            WHERE EXISTS (SELECT 1 FROM nodes WHERE nodes.name = v.column1 AND nodes.{JOINED})
            AND NOT EXISTS (SELECT 1 FROM events AS held WHERE held.node = v.column1 AND held.seq = v.column2)
            AND v.column2 <= {_at_least_zero(f"COALESCE({highest}, 0)")} + ?""",
        [*(x for event, body in rows for x in (event.node, event.seq, body)), max_seq_jump],
    ).rowcount


def _store_event(c: Connection, event: Event, body: str, max_seq_jump: int) -> SaveOutcome:
    if c.execute(f"SELECT 1 FROM nodes WHERE name = ? AND {JOINED}", (event.node,)).fetchone() is None:
        return "unknown node"
    if event.seq < 0 or event.seq > MAX_SEQ:
        return "out of range"
    highest = c.execute("SELECT MAX(seq) FROM events WHERE node = ?", (event.node,)).fetchone()[0]
    if event.seq > max(highest if highest is not None else 0, 0) + max_seq_jump:
        return "too far ahead"
    held = c.execute("SELECT body FROM events WHERE node = ? AND seq = ?", (event.node, event.seq)).fetchone()
    if held is not None:
        if held["body"] == body:
            return "duplicate"
        c.execute("DELETE FROM events WHERE node = ? AND seq = ?", (event.node, event.seq))
    c.execute("INSERT INTO events (node, seq, body) VALUES (?, ?, ?)", (event.node, event.seq, body))
    return "stored"


def _keep_newest_events(c: Connection, nodes: set[str], kept: int) -> None:
    """Drop all but the newest ``kept`` events (by arrival: rowid grows with every insert) of ``nodes``: one
    query finds the nodes over the bound (in a steady fleet, few at a time), one statement each prunes them."""
    over = [r[0] for r in rows_named(c, "SELECT node FROM events", sorted(nodes), column="node",
                                     rest=f"GROUP BY node HAVING COUNT(*) > {int(kept)}")]
    for node in over:
        c.execute("DELETE FROM events WHERE node = ? AND rowid <= "
                  "(SELECT rowid FROM events WHERE node = ? ORDER BY rowid DESC LIMIT 1 OFFSET ?)",
                  (node, node, kept))
