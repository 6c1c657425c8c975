"""The agent's local store: the source of truth on the node while it is offline.

One row per release holds both what the hub wants (desired revision, kind and
manifests) and what the node runs (applied revision and digest, phase). Every
change is one SQLite transaction, so a crash leaves either the old row or the
new one. Status and event sequence numbers are persisted too, so they keep
growing across restarts. Events wait in a bounded outbox until the broker
has acknowledged them.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from edgekit.sqlite import Database
from edgeprotocol.errors import ProtocolError
from edgeprotocol.messages import Assignment, AssignmentKind, Phase, PodStatus, now

# Columns added after the first release of the agent: older agent.db files get them on open.
ADDED_COLUMNS = (("releases", "rejected_digest", "TEXT NOT NULL DEFAULT ''"),
                 ("releases", "warnings", "TEXT NOT NULL DEFAULT ''"),
                 ("releases", "reason", "TEXT NOT NULL DEFAULT ''"),
                 ("releases", "restarts", "INTEGER NOT NULL DEFAULT 0"),
                 ("releases", "pods", "TEXT NOT NULL DEFAULT '[]'"))

SCHEMA = """
CREATE TABLE IF NOT EXISTS releases (
    namespace TEXT NOT NULL,
    release TEXT NOT NULL,
    desired_revision INTEGER NOT NULL,
    desired_kind TEXT NOT NULL,
    manifests TEXT NOT NULL DEFAULT '',
    digest TEXT NOT NULL DEFAULT '',
    chart TEXT NOT NULL DEFAULT '{}',
    applied_revision INTEGER NOT NULL DEFAULT 0,
    applied_digest TEXT NOT NULL DEFAULT '',
    applying_digest TEXT NOT NULL DEFAULT '',
    rejected_digest TEXT NOT NULL DEFAULT '',
    warnings TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL DEFAULT '',
    restarts INTEGER NOT NULL DEFAULT 0,
    pods TEXT NOT NULL DEFAULT '[]',
    phase TEXT NOT NULL DEFAULT 'Pending',
    message TEXT NOT NULL DEFAULT '',
    ready INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    applied_at REAL NOT NULL DEFAULT 0,
    observed_at TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (namespace, release)
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class ReleaseRecord:
    namespace: str
    release: str
    desired_revision: int
    desired_kind: AssignmentKind
    manifests: str
    digest: str
    chart: dict[str, str]
    applied_revision: int
    applied_digest: str
    applying_digest: str
    # The digest of manifests the runtime refused for good (ManifestRejected):
    # not tried again until a new revision brings other manifests.
    rejected_digest: str
    # What the runtime said it could not do at the last apply ("Service/web:
    # not run on podman ..."): part of the release's message from then on.
    warnings: str
    phase: Phase
    message: str
    ready: int
    total: int
    applied_at: float
    observed_at: str
    # The release's health word (CrashLoopBackOff, ErrImagePull, ...; "" when healthy), its containers'
    # restarts together, and each pod's containers as JSON (edgeprotocol's PodStatus): release_health's.
    reason: str = ""
    restarts: int = 0
    pods: str = "[]"

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> ReleaseRecord:
        data = dict(row)
        data["chart"] = json.loads(data["chart"])
        return cls(**data)

    def pod_statuses(self) -> tuple[PodStatus, ...]:
        """``pods`` decoded; a damaged column reads as none (it is rewritten at the next observation)."""
        try:
            return tuple(PodStatus.from_dict(p, "pods") for p in json.loads(self.pods))
        except (ValueError, TypeError, ProtocolError):
            return ()

    @property
    def converged(self) -> bool:
        """The node runs exactly what the hub wants (or has removed it)."""
        if self.desired_kind == "tombstone":
            return self.phase == "Removed"
        return self.applied_digest == self.digest and self.applied_revision == self.desired_revision


@dataclass(frozen=True, slots=True)
class OutboxItem:
    id: int
    topic: str
    payload: bytes


class AgentStore:
    def __init__(self, path: Path, *, outbox_limit: int = 1000, readonly: bool = False) -> None:
        # readonly: for ``edgeagent status``, which looks while the agent runs.
        self._db = Database(path, SCHEMA, readonly=readonly, added_columns=ADDED_COLUMNS)
        self.outbox_limit = outbox_limit

    async def __aenter__(self) -> AgentStore:
        await self._db.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._db.__aexit__(*exc_info)

    async def accept(self, assignment: Assignment) -> bool:
        """Record a newer desired state; False for an older or repeated revision."""

        def run(c: sqlite3.Connection) -> bool:
            row = c.execute(
                "SELECT desired_revision FROM releases WHERE namespace = ? AND release = ?", assignment.key
            ).fetchone()
            if row is not None and row["desired_revision"] >= assignment.revision:
                return False
            bundle = assignment.bundle
            phase = "Pending" if assignment.kind == "release" else "Removing"
            c.execute(
                """INSERT INTO releases (namespace, release, desired_revision, desired_kind, manifests, digest,
                                         chart, phase, message)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, '')
                   ON CONFLICT(namespace, release) DO UPDATE SET desired_revision = excluded.desired_revision,
                       desired_kind = excluded.desired_kind, manifests = excluded.manifests,
                       digest = excluded.digest, chart = excluded.chart, phase = excluded.phase, message = ''""",
                (
                    assignment.namespace, assignment.release, assignment.revision, assignment.kind,
                    bundle.manifests if bundle else "", bundle.digest if bundle else "",
                    json.dumps(assignment.chart, sort_keys=True), phase,
                ),
            )
            return True

        return await self._db.transaction(run)

    async def releases(self) -> list[ReleaseRecord]:
        rows = await self._db.read(lambda c: c.execute("SELECT * FROM releases ORDER BY namespace, release").fetchall())
        return [ReleaseRecord.from_row(r) for r in rows]

    async def get(self, namespace: str, release: str) -> ReleaseRecord | None:
        row = await self._db.read(
            lambda c: c.execute("SELECT * FROM releases WHERE namespace = ? AND release = ?",
                                (namespace, release)).fetchone()
        )
        return ReleaseRecord.from_row(row) if row else None

    async def begin_apply(self, rec: ReleaseRecord) -> None:
        """Journal an apply before touching the runtime: a crash leaves ``applying_digest`` set."""
        await self._update(rec, "applying_digest = ?, phase = 'Applying', message = '', reason = ''", rec.digest)

    async def finish_apply(self, rec: ReleaseRecord, *, warnings: str) -> None:
        await self._update(
            rec,
            "applied_revision = ?, applied_digest = ?, applying_digest = '', applied_at = ?, message = ?, warnings = ?",
            rec.desired_revision, rec.digest, time.time(), warnings, warnings,
        )

    async def fail_apply(self, rec: ReleaseRecord, *, message: str, reason: str = "") -> None:
        """The runtime failed the apply, maybe half-way (old pods stopped, new ones not started): what ran
        before is not known to run any more, so even a revision with its manifests is applied again."""
        await self._update(rec, "applying_digest = '', applied_digest = '', phase = 'Failed', message = ?, "
                                "reason = ?", message, reason)

    async def reject_apply(self, rec: ReleaseRecord, *, message: str) -> None:
        """The runtime can never run these manifests: Failed, and not retried until the digest changes."""
        await self._update(rec, "applying_digest = '', rejected_digest = ?, phase = 'Failed', message = ?",
                           rec.digest, message)

    async def adopt_revision(self, rec: ReleaseRecord) -> None:
        """A new revision whose manifests equal what runs: take it without touching the runtime."""
        await self._update(rec, "applied_revision = ?", rec.desired_revision)

    async def finish_remove(self, rec: ReleaseRecord) -> None:
        await self._update(
            rec, "applied_revision = ?, applied_digest = '', phase = 'Removed', message = '', ready = 0, total = 0",
            rec.desired_revision,
        )

    async def observe(self, rec: ReleaseRecord, *, phase: Phase, ready: int, total: int, message: str | None = None,
                      reason: str = "", restarts: int = 0, pods: tuple[PodStatus, ...] = ()) -> None:
        sets = "phase = ?, ready = ?, total = ?, observed_at = ?, reason = ?, restarts = ?, pods = ?"
        args: list[object] = [phase, ready, total, now(), reason, restarts,
                              json.dumps([p.to_dict() for p in pods], separators=(",", ":"))]
        if message is not None:
            sets += ", message = ?"
            args.append(message)
        await self._update(rec, sets, *args)

    async def _update(self, rec: ReleaseRecord, sets: str, *args: object) -> None:
        # Guarded by desired_revision: a newer assignment that arrived while
        # the runtime worked is never overwritten by the older outcome.
        await self._db.transaction(
            lambda c: c.execute(
                f"UPDATE releases SET {sets} WHERE namespace = ? AND release = ? AND desired_revision = ?",
                (*args, rec.namespace, rec.release, rec.desired_revision),
            )
        )

    async def bump(self, name: str, by: int = 1) -> int:
        """Add ``by`` to a persisted counter and return its new value."""

        def run(c: sqlite3.Connection) -> int:
            c.execute(
                "INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?", (name, by, by)
            )
            return int(c.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()["value"])

        return await self._db.transaction(run)

    async def next_seq(self, name: str) -> int:
        """The next number of a sequence (status reports, events) that grows across restarts."""
        return await self.bump(f"seq:{name}")

    async def set_counter(self, name: str, value: int) -> None:
        await self._db.transaction(
            lambda c: c.execute(
                "INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                (name, value)
            )
        )

    async def counter(self, name: str) -> int:
        row = await self._db.read(lambda c: c.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone())
        return int(row["value"]) if row else 0

    async def counters(self) -> dict[str, int]:
        rows = await self._db.read(lambda c: c.execute("SELECT name, value FROM counters ORDER BY name").fetchall())
        return {r["name"]: int(r["value"]) for r in rows if not r["name"].startswith("seq:")}

    # --- outbox --------------------------------------------------------------

    async def enqueue(self, topic: str, payload: bytes) -> int:
        """Queue a message; beyond the bound the oldest are dropped. Returns how many were dropped.

        The drops are added to the ``events_dropped`` counter in the same
        transaction, so the count survives a crash that follows.
        """

        def run(c: sqlite3.Connection) -> int:
            c.execute("INSERT INTO outbox (topic, payload) VALUES (?, ?)", (topic, payload))
            excess = c.execute("SELECT COUNT(*) AS n FROM outbox").fetchone()["n"] - self.outbox_limit
            if excess <= 0:
                return 0
            c.execute("DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)", (excess,))
            c.execute(
                "INSERT INTO counters VALUES ('events_dropped', ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
                (excess, excess),
            )
            return int(excess)

        return await self._db.transaction(run)

    async def pending(self, limit: int = 100) -> list[OutboxItem]:
        rows = await self._db.read(
            lambda c: c.execute("SELECT * FROM outbox ORDER BY id LIMIT ?", (limit,)).fetchall()
        )
        return [OutboxItem(id=r["id"], topic=r["topic"], payload=bytes(r["payload"])) for r in rows]

    async def delivered(self, item_id: int) -> None:
        await self._db.transaction(lambda c: c.execute("DELETE FROM outbox WHERE id = ?", (item_id,)))

    async def outbox_size(self) -> int:
        return int(await self._db.read(lambda c: c.execute("SELECT COUNT(*) AS n FROM outbox").fetchone()["n"]))
