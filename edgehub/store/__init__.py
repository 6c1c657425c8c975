"""The hub's store: the source of truth for desired state, in one database (a SQLite file by default, or
PostgreSQL), split by the part of the data each piece owns.

- ``schema``: the tables, the columns later versions added, and what a
  database an older hub made is given on open;
- ``database``: the one database they share (``HubDatabase``): its group
  commit, change listeners and the fleet listings every write marks;
- ``enrollment``: join tokens, nodes and their identities (join, reset,
  revoke, renewal), broker credentials, renewal nonces, void certificates;
- ``reports``: what nodes report (status, presence, events), and the nodes
  listed with their status;
- ``components``: components, their revisions, chart archives, renders and
  staged rollouts;
- ``assignments``: what each node should hold now.

Each service is given the part stores it uses. ``HubStores`` opens the
database and builds every part over it, for the hub's wiring and for tests.
Every change that must be all-or-nothing is one transaction, written by the
part that owns its decision (each says where it reads or writes another
part's table, and why). The SQL is written once for both databases
(``edgekit.sql`` says what that allows); everything that differs between the
two lives in ``edgekit.sqlite`` and ``edgekit.postgres`` (docs/store.md).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edgekit.sql import StoreLocation

from .assignments import AssignmentStore
from .components import ComponentStore
from .database import HubDatabase
from .enrollment import EnrollmentStore
from .reports import ReportStore


class HubStores:
    """The hub's database (``location``: a SQLite file's path, or ``sqlite:///PATH``,
    ``postgresql://USER@HOST:PORT/DB``; ``edgekit.sql.parse_location``) and its part stores. Use as an
    async context manager; hand each service the parts it uses, never this whole."""

    def __init__(self, location: Path | str | StoreLocation, *, events_kept_per_node: int = 500) -> None:
        self._database = HubDatabase(location)
        self.enrollment = EnrollmentStore(self._database)
        self.reports = ReportStore(self._database, events_kept_per_node=events_kept_per_node)
        self.components = ComponentStore(self._database)
        self.assignments = AssignmentStore(self._database)

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (on the loop, must not block) after every committed write of any part."""
        self._database.on_change(listener)

    async def __aenter__(self) -> HubStores:
        await self._database.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._database.__aexit__(*exc_info)
