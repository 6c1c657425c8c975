"""The one database every part store writes to: its group commit, its change listeners and its fleet listings.

The part stores (enrollment, reports, components, assignments) are views of
one database, never databases of their own: a write of any of them joins the
same group commit (``edgekit.group_commit``: writes asked for meanwhile share
one transaction, each in its own savepoint), so the order of writes and their
all-or-nothing hold across parts as they did in one store. A write says which
node rows and which nodes' assignments it may change (``Touches``); the
listings that follow those rows (``edgehub.store.listed``), whichever part
keeps them, are marked inside the write's own transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from edgekit.group_commit import GroupCommit
from edgekit.sql import Connection, Row, StoreLocation, open_database

from .listed import ANY_ROWS, ByNode, Touches
from .schema import ADDED_COLUMNS, ON_OPEN, SCHEMA

T = TypeVar("T")

# Names bound in one IN (...) list: under SQLite's oldest limit on bound parameters (999).
NAMES_PER_QUERY = 500


class HubDatabase:
    """The hub's database (``location``: a SQLite file's path, or a URL, ``sqlite:///PATH`` or
    ``postgresql://USER@HOST:PORT/DB``; ``edgekit.sql.parse_location``), as its part stores share it."""

    def __init__(self, location: Path | str | StoreLocation) -> None:
        self._db = open_database(location, SCHEMA, added_columns=ADDED_COLUMNS, incremental_vacuum=True)
        # One hub owns a SQLite file; several may share a PostgreSQL database, whose writes this process
        # does not all see, so there a listing reads every row.
        self._only_writer = self._db.dialect == "sqlite"
        self._node_listings: list[ByNode[Any]] = []
        self._assignment_listings: list[ByNode[Any]] = []
        self._change_listeners: list[Callable[[], None]] = []
        self._writes: GroupCommit[Connection] = GroupCommit(self._db.transaction)

    async def __aenter__(self) -> HubDatabase:
        await self._db.__aenter__()
        try:
            for migration in ON_OPEN:
                await self._db.transaction(migration)
        except BaseException:
            await self._db.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._db.__aexit__(*exc_info)

    def node_listing(self) -> ByNode[Any]:
        """A listing of the ``nodes`` rows, by node, that every write marks as it ``Touches.nodes``."""
        listing: ByNode[Any] = ByNode(only_writer=self._only_writer)
        self._node_listings.append(listing)
        return listing

    def assignment_listing(self) -> ByNode[Any]:
        """A listing of the assignments, by node, that every write marks as it ``Touches.assignments_of``."""
        listing: ByNode[Any] = ByNode(only_writer=self._only_writer)
        self._assignment_listings.append(listing)
        return listing

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (on the loop, must not block) after every committed write: summaries and
        live views follow the store, which is the truth, rather than each place that changes it."""
        self._change_listeners.append(listener)

    async def write(self, fn: Callable[[Connection], T], touches: Touches = ANY_ROWS) -> T:
        """Run ``fn`` in a transaction (shared with the writes asked for meanwhile, each in a savepoint).
        ``touches``: the node rows and assignments it may change, which the fleet's listings read again."""

        def run(c: Connection) -> T:
            result = fn(c)
            # On the database's thread, inside the transaction: no listing can run between the write and this.
            for listing in self._node_listings:
                listing.touch(touches.nodes)
            for listing in self._assignment_listings:
                listing.touch(touches.assignments_of)
            return result

        result = await self._writes.write(run)
        for listener in self._change_listeners:
            listener()
        return result

    async def read(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` for reading only, on the database's thread (where the listings live too)."""
        return await self._db.read(fn)

    async def reclaim_space(self) -> None:
        """Give space freed by large deletions back (``edgekit.sql.SqlDatabase.reclaim_space``)."""
        await self._db.reclaim_space()


def rows_named(c: Connection, select: str, names: list[str], *, column: str = "name", rest: str = "") -> list[Row]:
    """``select`` (no WHERE) of the rows whose ``column`` is one of ``names``, a bounded IN list per query;
    ``rest``: what follows the WHERE clause (GROUP BY ...)."""
    rows: list[Row] = []
    for start in range(0, len(names), NAMES_PER_QUERY):
        chunk = names[start:start + NAMES_PER_QUERY]
        rows += c.execute(f"{select} WHERE {column} IN ({', '.join('?' * len(chunk))}) {rest}", chunk).fetchall()
    return rows
