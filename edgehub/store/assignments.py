"""Assignments: what each node should hold now, one row per node and release (a revision's render to apply,
or a tombstone to remove it). The dispatcher (``edgehub.dispatch``) decides them and publishes them; the
fleet's listing of them reads only the nodes whose assignments were written since the last one."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from edgekit.sql import Connection, Row
from edgeprotocol.messages import AssignmentKind

from .database import HubDatabase, rows_named
from .listed import ByNode, Touches


@dataclass(frozen=True, slots=True)
class AssignmentRecord:
    node: str
    namespace: str
    release: str
    revision: int
    kind: AssignmentKind
    render_key: str = ""


class AssignmentStore:
    """The assignment table of the hub's database."""

    def __init__(self, database: HubDatabase) -> None:
        self._database = database
        # What the last listing read of every node's assignments, kept on the database's thread.
        self._listed: ByNode[tuple[AssignmentRecord, ...]] = database.assignment_listing()

    async def list_assignments(self, *, node: str | None = None,
                               nodes: Iterable[str] | None = None) -> list[AssignmentRecord]:
        """Every assignment, by node, namespace and release; or those of ``node`` (one query); or those of
        the ``nodes`` named. The whole table is listed reading only the nodes written since the last listing
        (``edgehub.store.listed``)."""
        if node is not None:
            rows = await self._database.read(lambda c: c.execute(
                "SELECT * FROM assignments WHERE node = ? ORDER BY namespace, release", (node,)).fetchall())
            return [_assignment(r) for r in rows]
        listing = await self._database.read(self._listing_of_assignments)
        if nodes is None:
            return [a for held in listing for a in held]
        names = set(nodes)
        return [a for held in listing if held[0].node in names for a in held]

    def _listing_of_assignments(self, c: Connection) -> list[tuple[AssignmentRecord, ...]]:
        def by_node(rows: Iterable[Row]) -> dict[str, tuple[AssignmentRecord, ...]]:
            found: dict[str, list[AssignmentRecord]] = {}
            for r in rows:
                found.setdefault(r["node"], []).append(_assignment(r))
            return {name: tuple(sorted(held, key=lambda a: (a.namespace, a.release))) for name, held in found.items()}

        return self._listed.refresh(
            lambda _held: by_node(c.execute("SELECT * FROM assignments").fetchall()),
            lambda names: by_node(rows_named(c, "SELECT * FROM assignments", names, column="node")))

    async def update_assignments(
        self, upserts: Iterable[AssignmentRecord], deletes: Iterable[tuple[str, str, str]] = ()
    ) -> None:
        upserts, deletes = list(upserts), list(deletes)

        def run(c: Connection) -> None:
            c.executemany(
                """INSERT INTO assignments VALUES (?, ?, ?, ?, ?, ?)
                   ON CONFLICT(node, namespace, release) DO UPDATE SET revision = excluded.revision,
                       kind = excluded.kind, render_key = excluded.render_key""",
                [(a.node, a.namespace, a.release, a.revision, a.kind, a.render_key) for a in upserts],
            )
            c.executemany("DELETE FROM assignments WHERE node = ? AND namespace = ? AND release = ?", deletes)

        await self._database.write(
            run, Touches.of(assignments_of={a.node for a in upserts} | {d[0] for d in deletes}))


def _assignment(row: Row) -> AssignmentRecord:
    return AssignmentRecord(node=row["node"], namespace=row["namespace"], release=row["release"],
                            revision=row["revision"], kind=row["kind"], render_key=row["render_key"])
