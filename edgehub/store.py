"""The hub's store: the source of truth for desired state (SQLite by default).

Tables: join tokens, nodes (identity, labels, presence, last status),
components (spec, chart archive, revision counter), renders (one per component
revision and render key) and assignments (what each node should hold now).
Every change that must be all-or-nothing is one transaction.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.sqlite import Database
from edgeprotocol.messages import AssignmentKind, Bundle, Event, NodeStatus

from .errors import ConcurrentChange, JoinRefused
from .tokens import TokenParts, hash_secret, secret_matches

SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    token_id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    pool TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    uses_left INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY,
    pool TEXT NOT NULL,
    labels TEXT NOT NULL,
    certificate TEXT NOT NULL,
    registered_at REAL NOT NULL,
    presence TEXT NOT NULL DEFAULT 'unknown',
    presence_at TEXT NOT NULL DEFAULT '',
    last_seen TEXT NOT NULL DEFAULT '',
    status TEXT,
    status_seq INTEGER NOT NULL DEFAULT -1
);
CREATE TABLE IF NOT EXISTS components (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    chart_archive BLOB NOT NULL,
    chart_name TEXT NOT NULL,
    chart_version TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    revision INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL,
    PRIMARY KEY (namespace, name)
);
CREATE TABLE IF NOT EXISTS renders (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    revision INTEGER NOT NULL,
    render_key TEXT NOT NULL,
    manifests TEXT NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (namespace, name, revision, render_key)
);
CREATE TABLE IF NOT EXISTS assignments (
    node TEXT NOT NULL,
    namespace TEXT NOT NULL,
    release TEXT NOT NULL,
    revision INTEGER NOT NULL,
    kind TEXT NOT NULL,
    render_key TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (node, namespace, release)
);
CREATE TABLE IF NOT EXISTS events (
    node TEXT NOT NULL,
    seq INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (node, seq)
);
"""


@dataclass(frozen=True, slots=True)
class NodeRecord:
    name: str
    pool: str
    labels: dict[str, str]
    registered_at: float
    presence: str
    presence_at: str
    last_seen: str
    status: NodeStatus | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> NodeRecord:
        return cls(
            name=row["name"],
            pool=row["pool"],
            labels=json.loads(row["labels"]),
            registered_at=row["registered_at"],
            presence=row["presence"],
            presence_at=row["presence_at"],
            last_seen=row["last_seen"],
            status=NodeStatus.decode(row["status"]) if row["status"] else None,
        )


@dataclass(frozen=True, slots=True)
class ComponentRecord:
    namespace: str
    name: str
    spec: dict[str, Any]
    chart_name: str
    chart_version: str
    fingerprint: str
    revision: int
    deleted: bool
    updated_at: float

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> ComponentRecord:
        return cls(
            namespace=row["namespace"],
            name=row["name"],
            spec=json.loads(row["spec"]),
            chart_name=row["chart_name"],
            chart_version=row["chart_version"],
            fingerprint=row["fingerprint"],
            revision=row["revision"],
            deleted=bool(row["deleted"]),
            updated_at=row["updated_at"],
        )


@dataclass(frozen=True, slots=True)
class AssignmentRecord:
    node: str
    namespace: str
    release: str
    revision: int
    kind: AssignmentKind
    render_key: str = ""


class HubStore:
    """Async access to the hub's SQLite file."""

    def __init__(self, path: Path, *, events_kept_per_node: int = 500) -> None:
        self._db = Database(path, SCHEMA)
        self._events_kept = events_kept_per_node

    async def __aenter__(self) -> HubStore:
        await self._db.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._db.__aexit__(*exc_info)

    # --- join tokens ---------------------------------------------------------

    async def create_token(self, token: TokenParts, *, pool: str, ttl_seconds: float, uses: int) -> float:
        now = time.time()
        expires_at = now + ttl_seconds
        await self._db.transaction(
            lambda c: c.execute(
                "INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?)",
                (token.token_id, hash_secret(token.secret), pool, now, expires_at, uses),
            )
        )
        return expires_at

    async def register_node(
        self,
        token: TokenParts,
        *,
        node: str,
        requested_pool: str | None,
        labels: dict[str, str],
        sign: Callable[[str], str],
    ) -> tuple[str, str]:
        """Spend one use of ``token`` and register (or re-register) ``node``.

        ``sign(node)`` produces the node certificate inside the transaction,
        so a refused join leaves neither a spent token nor a node behind.
        Returns (pool, certificate PEM).
        """

        def run(c: sqlite3.Connection) -> tuple[str, str]:
            row = c.execute("SELECT * FROM tokens WHERE token_id = ?", (token.token_id,)).fetchone()
            if row is None or not secret_matches(token.secret, row["secret_hash"]):
                raise JoinRefused("token is unknown")
            if row["expires_at"] <= time.time():
                raise JoinRefused("token has expired; create a new one with 'edgectl token create'")
            if row["uses_left"] <= 0:
                raise JoinRefused("token has no uses left")
            pool = row["pool"]
            if requested_pool and requested_pool != pool:
                raise JoinRefused(f"token is for pool {pool!r}, not {requested_pool!r}")
            certificate = sign(node)
            c.execute("UPDATE tokens SET uses_left = uses_left - 1 WHERE token_id = ?", (token.token_id,))
            c.execute(
                """INSERT INTO nodes (name, pool, labels, certificate, registered_at)
                   VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT(name) DO UPDATE SET pool = excluded.pool, labels = excluded.labels,
                       certificate = excluded.certificate, registered_at = excluded.registered_at,
                       status_seq = -1""",
                (node, pool, json.dumps(labels, sort_keys=True), certificate, time.time()),
            )
            return pool, certificate

        return await self._db.transaction(run)

    # --- nodes ---------------------------------------------------------------

    async def list_nodes(self) -> list[NodeRecord]:
        rows = await self._db.read(lambda c: c.execute("SELECT * FROM nodes ORDER BY name").fetchall())
        return [NodeRecord.from_row(r) for r in rows]

    async def get_node(self, name: str) -> NodeRecord | None:
        row = await self._db.read(lambda c: c.execute("SELECT * FROM nodes WHERE name = ?", (name,)).fetchone())
        return NodeRecord.from_row(row) if row else None

    async def set_presence(self, node: str, state: str, at: str) -> bool:
        """Record presence; returns False when the node is not registered."""

        def run(c: sqlite3.Connection) -> bool:
            seen = ", last_seen = ?" if state == "online" else ""
            args = (state, at, at, node) if seen else (state, at, node)
            cur = c.execute(f"UPDATE nodes SET presence = ?, presence_at = ?{seen} WHERE name = ?", args)
            return cur.rowcount == 1

        return await self._db.transaction(run)

    async def save_status(self, status: NodeStatus, *, received_at: str) -> bool:
        """Store a node's report unless an equal or newer one is stored already."""

        def run(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "UPDATE nodes SET status = ?, status_seq = ?, last_seen = ? WHERE name = ? AND status_seq < ?",
                (status.encode().decode(), status.seq, received_at, status.node, status.seq),
            )
            return cur.rowcount == 1

        return await self._db.transaction(run)

    async def add_event(self, event: Event) -> None:
        def run(c: sqlite3.Connection) -> None:
            c.execute("INSERT OR IGNORE INTO events VALUES (?, ?, ?)", (event.node, event.seq, event.encode().decode()))
            c.execute(
                "DELETE FROM events WHERE node = ? AND seq <= (SELECT MAX(seq) FROM events WHERE node = ?) - ?",
                (event.node, event.node, self._events_kept),
            )

        await self._db.transaction(run)

    async def list_events(self, node: str, *, limit: int = 100) -> list[Event]:
        rows = await self._db.read(
            lambda c: c.execute(
                "SELECT body FROM (SELECT * FROM events WHERE node = ? ORDER BY seq DESC LIMIT ?) ORDER BY seq",
                (node, limit),
            ).fetchall()
        )
        return [Event.decode(r["body"]) for r in rows]

    # --- components and renders ----------------------------------------------

    async def get_component(self, namespace: str, name: str) -> ComponentRecord | None:
        row = await self._db.read(
            lambda c: c.execute(
                "SELECT * FROM components WHERE namespace = ? AND name = ?", (namespace, name)
            ).fetchone()
        )
        return ComponentRecord.from_row(row) if row else None

    async def list_components(self, *, include_deleted: bool = False) -> list[ComponentRecord]:
        where = "" if include_deleted else "WHERE deleted = 0"
        rows = await self._db.read(
            lambda c: c.execute(f"SELECT * FROM components {where} ORDER BY namespace, name").fetchall()
        )
        return [ComponentRecord.from_row(r) for r in rows]

    async def get_chart_archive(self, namespace: str, name: str) -> bytes | None:
        row = await self._db.read(
            lambda c: c.execute(
                "SELECT chart_archive FROM components WHERE namespace = ? AND name = ?", (namespace, name)
            ).fetchone()
        )
        return bytes(row["chart_archive"]) if row else None

    async def save_component(
        self,
        *,
        namespace: str,
        name: str,
        spec: dict[str, Any],
        chart_archive: bytes,
        chart_name: str,
        chart_version: str,
        fingerprint: str,
        revision: int,
        renders: dict[str, Bundle],
    ) -> None:
        """Store a new revision of a component with all its renders, at once.

        ``revision`` must be the stored revision plus one (the caller read it);
        a concurrent apply that got there first makes this fail instead of
        silently overwriting.
        """

        def run(c: sqlite3.Connection) -> None:
            row = c.execute(
                "SELECT revision FROM components WHERE namespace = ? AND name = ?", (namespace, name)
            ).fetchone()
            current = row["revision"] if row else 0
            if revision != current + 1:
                raise ConcurrentChange(
                    f"component {namespace}/{name} changed meanwhile (now at revision {current}); apply again"
                )
            c.execute(
                """INSERT INTO components VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?)
                   ON CONFLICT(namespace, name) DO UPDATE SET spec = excluded.spec,
                       chart_archive = excluded.chart_archive, chart_name = excluded.chart_name,
                       chart_version = excluded.chart_version, fingerprint = excluded.fingerprint,
                       revision = excluded.revision, deleted = 0, updated_at = excluded.updated_at""",
                (namespace, name, json.dumps(spec, sort_keys=True), chart_archive, chart_name,
                 chart_version, fingerprint, revision, time.time()),
            )
            c.executemany(
                "INSERT INTO renders VALUES (?, ?, ?, ?, ?, ?)",
                [(namespace, name, revision, key, b.manifests, b.digest) for key, b in renders.items()],
            )

        await self._db.transaction(run)

    async def delete_component(self, namespace: str, name: str) -> int | None:
        """Mark a component deleted at a new revision; None when there is none."""

        def run(c: sqlite3.Connection) -> int | None:
            row = c.execute(
                "SELECT revision, deleted FROM components WHERE namespace = ? AND name = ?", (namespace, name)
            ).fetchone()
            if row is None or row["deleted"]:
                return None
            revision = row["revision"] + 1
            c.execute(
                "UPDATE components SET deleted = 1, revision = ?, fingerprint = '', updated_at = ? "
                "WHERE namespace = ? AND name = ?",
                (revision, time.time(), namespace, name),
            )
            return revision

        return await self._db.transaction(run)

    async def get_render(self, namespace: str, name: str, revision: int, render_key: str) -> Bundle | None:
        row = await self._db.read(
            lambda c: c.execute(
                "SELECT manifests, digest FROM renders WHERE namespace = ? AND name = ? AND revision = ? "
                "AND render_key = ?",
                (namespace, name, revision, render_key),
            ).fetchone()
        )
        return Bundle(manifests=row["manifests"], digest=row["digest"]) if row else None

    async def get_renders(self, namespace: str, name: str, revision: int) -> dict[str, Bundle]:
        """Every render of one revision of a component, by render key; empty when there are none."""
        rows = await self._db.read(
            lambda c: c.execute(
                "SELECT render_key, manifests, digest FROM renders WHERE namespace = ? AND name = ? AND revision = ? "
                "ORDER BY render_key",
                (namespace, name, revision),
            ).fetchall()
        )
        return {r["render_key"]: Bundle(manifests=r["manifests"], digest=r["digest"]) for r in rows}

    # --- assignments ---------------------------------------------------------

    async def list_assignments(self, *, node: str | None = None) -> list[AssignmentRecord]:
        def run(c: sqlite3.Connection) -> list[sqlite3.Row]:
            if node is None:
                return c.execute("SELECT * FROM assignments ORDER BY node, namespace, release").fetchall()
            return c.execute("SELECT * FROM assignments WHERE node = ? ORDER BY namespace, release", (node,)).fetchall()

        return [
            AssignmentRecord(
                node=r["node"], namespace=r["namespace"], release=r["release"], revision=r["revision"],
                kind=r["kind"], render_key=r["render_key"],
            )
            for r in await self._db.read(run)
        ]

    async def update_assignments(
        self, upserts: Iterable[AssignmentRecord], deletes: Iterable[tuple[str, str, str]] = ()
    ) -> None:
        upserts, deletes = list(upserts), list(deletes)

        def run(c: sqlite3.Connection) -> None:
            c.executemany(
                """INSERT INTO assignments VALUES (?, ?, ?, ?, ?, ?)
                   ON CONFLICT(node, namespace, release) DO UPDATE SET revision = excluded.revision,
                       kind = excluded.kind, render_key = excluded.render_key""",
                [(a.node, a.namespace, a.release, a.revision, a.kind, a.render_key) for a in upserts],
            )
            c.executemany("DELETE FROM assignments WHERE node = ? AND namespace = ? AND release = ?", deletes)

        await self._db.transaction(run)
