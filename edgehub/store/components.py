"""Components: each component's current spec, its kept revisions (history), the chart archives they use,
the renders of each revision and its staged rollout.

History: every apply that makes a revision, every rollback and every delete
adds a row to ``revisions``, in the transaction that changes the component,
and prunes the rows beyond the component's ``spec.historyLimit`` (never the
current one) with their renders, except a render an assignment still names
(a node may not have the newer revision yet; it goes at a later sync, see
``prune_history``), and the chart archives no kept revision uses. Chart
archives are stored once by SHA-256, however many revisions use them. A
database made before history existed gets one row per component on open
(``edgehub.store.schema``). Statuses stored: ``current`` (the component's
current revision; the API shows its live state instead), ``superseded``,
``failed`` (a target reported it failing, ``edgeprotocol.health.release_failing``,
when it was replaced), ``rolled back`` (replaced by a rollback to an earlier
revision) and ``deleted`` (the revision that deleted the component).

The renders and chart of a deleted component are pruned once no node is
assigned them, and the file gives the space back (incremental vacuum).

Which renders may go is this store's decision, though whether a node is
still assigned one is the assignments' data (``edgehub.store.assignments``):
the statements that prune read the ``assignments`` table inside their own
transaction, so no render goes that an assignment committed before it names.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from deployer_plugin.spec import DEFAULT_HISTORY_LIMIT
from edgekit.sql import Connection, Row
from edgeprotocol.messages import Bundle

from ..errors import ConcurrentChange
from .database import HubDatabase
from .listed import NO_ROWS
from .schema import chart_digest

logger = logging.getLogger(__name__)

# The columns of a component row that listing needs: never the chart archive
# (up to 16 MiB each), and the spec only when asked.
_COMPONENT_COLUMNS = ("namespace, name, chart_name, chart_version, fingerprint, revision, deleted, updated_at, "
                      "history_limit")
# A revision's stored status; "current" is shown as the live state of its rollout.
RevisionStatus = Literal["current", "superseded", "failed", "rolled back", "deleted"]
# What a replaced revision becomes: superseded, or failed when a target reported it failing.
Replaced = Literal["superseded", "failed"]
_REVISION_COLUMNS = ("revision, chart_digest, chart_name, chart_version, fingerprint, created_at, origin, status, "
                     "spec != '' AS has_spec")


@dataclass(frozen=True, slots=True)
class ComponentRecord:
    namespace: str
    name: str
    chart_name: str
    chart_version: str
    fingerprint: str
    revision: int
    deleted: bool
    updated_at: float
    history_limit: int = 10
    # The spec as stored (JSON), parsed only when ``spec`` is read: values
    # may be megabytes, and listing or dispatching never needs them. None
    # when the record was read without it.
    spec_json: str | None = field(default=None, repr=False, compare=False)

    @property
    def spec(self) -> dict[str, Any]:
        if self.spec_json is None:
            raise RuntimeError(f"component {self.namespace}/{self.name} was read without its spec")
        spec: dict[str, Any] = json.loads(self.spec_json)
        return spec

    @classmethod
    def from_row(cls, row: Row) -> ComponentRecord:
        return cls(
            namespace=row["namespace"],
            name=row["name"],
            chart_name=row["chart_name"],
            chart_version=row["chart_version"],
            fingerprint=row["fingerprint"],
            revision=row["revision"],
            deleted=bool(row["deleted"]),
            updated_at=row["updated_at"],
            history_limit=row["history_limit"],
            spec_json=row["spec"] if "spec" in row.keys() else None,  # noqa: SIM118 - a Row's `in` looks at its values
        )


@dataclass(frozen=True, slots=True)
class RevisionRecord:
    """One kept revision of a component. ``has_spec`` is False for a deletion and for a revision whose
    spec and chart were dropped when the component was deleted; ``spec_json`` only when read with it."""

    namespace: str
    name: str
    revision: int
    chart_digest: str
    chart_name: str
    chart_version: str
    fingerprint: str
    created_at: float
    origin: str
    status: RevisionStatus
    has_spec: bool
    spec_json: str | None = field(default=None, repr=False, compare=False)

    @property
    def spec(self) -> dict[str, Any]:
        if not self.spec_json:
            raise RuntimeError(f"revision {self.revision} of {self.namespace}/{self.name} has no spec here")
        spec: dict[str, Any] = json.loads(self.spec_json)
        return spec

    @classmethod
    def from_row(cls, namespace: str, name: str, row: Row) -> RevisionRecord:
        return cls(namespace=namespace, name=name, revision=row["revision"], chart_digest=row["chart_digest"],
                   chart_name=row["chart_name"], chart_version=row["chart_version"],
                   fingerprint=row["fingerprint"], created_at=row["created_at"], origin=row["origin"],
                   status=row["status"], has_spec=bool(row["has_spec"]),
                   spec_json=row["spec"] if "spec" in row.keys() else None)  # noqa: SIM118 - a Row's `in` looks at its values


@dataclass(frozen=True, slots=True)
class RevisionWindow:
    """Which revisions of a component are kept: ``oldest`` to ``current`` (0 when there are none)."""

    oldest: int
    current: int


@dataclass(frozen=True, slots=True)
class RolloutRow:
    """A component's staged rollout as stored: the revision it rolls out, the previous good revision
    (never pruned while the row names it), its state, and the whole state as JSON (``edgehub.rollout``)."""

    namespace: str
    name: str
    revision: int
    previous: int
    state: str
    body: str

    @classmethod
    def from_row(cls, row: Row) -> RolloutRow:
        return cls(namespace=row["namespace"], name=row["name"], revision=row["revision"],
                   previous=row["previous"], state=row["state"], body=row["body"])


class ComponentStore:
    """Components, their revisions, chart archives, renders and staged rollouts, in the hub's database."""

    def __init__(self, database: HubDatabase) -> None:
        self._database = database

    # --- components and renders ----------------------------------------------

    async def get_component(self, namespace: str, name: str) -> ComponentRecord | None:
        """One component with its spec (parsed when read), without its chart archive."""
        row = await self._database.read(
            lambda c: c.execute(
                f"SELECT {_COMPONENT_COLUMNS}, spec FROM components WHERE namespace = ? AND name = ?", (namespace, name)
            ).fetchone()
        )
        return ComponentRecord.from_row(row) if row else None

    async def list_components(self, *, include_deleted: bool = False, with_spec: bool = True) -> list[ComponentRecord]:
        """Components by namespace and name; ``with_spec=False`` leaves out their specs (read ``spec`` raises)."""
        where = "" if include_deleted else "WHERE deleted = 0"
        columns = f"{_COMPONENT_COLUMNS}, spec" if with_spec else _COMPONENT_COLUMNS
        rows = await self._database.read(
            lambda c: c.execute(f"SELECT {columns} FROM components {where} ORDER BY namespace, name").fetchall()
        )
        return [ComponentRecord.from_row(r) for r in rows]

    async def get_chart_archive(self, namespace: str, name: str) -> bytes | None:
        """The chart archive of the component's current revision; None when there is none (or it was dropped)."""

        def run(c: Connection) -> bytes | None:
            row = c.execute(
                """SELECT comp.chart_archive AS inline, ch.archive AS stored FROM components AS comp
                   LEFT JOIN revisions AS v ON v.namespace = comp.namespace AND v.name = comp.name
                        AND v.revision = comp.revision
                   LEFT JOIN charts AS ch ON ch.digest = v.chart_digest
                   WHERE comp.namespace = ? AND comp.name = ?""", (namespace, name)).fetchone()
            if row is None:
                return None
            if row["inline"]:  # stored by a hub before charts were kept apart
                return bytes(row["inline"])
            return bytes(row["stored"]) if row["stored"] is not None else None

        return await self._database.read(run)

    async def get_chart(self, digest: str) -> bytes | None:
        """A stored chart archive by its digest (``sha256:HEX`` of the archive)."""
        row = await self._database.read(
            lambda c: c.execute("SELECT archive FROM charts WHERE digest = ?", (digest,)).fetchone())
        return bytes(row["archive"]) if row else None

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
        origin: str = "apply",
        history_limit: int = DEFAULT_HISTORY_LIMIT,
        replaced: Replaced = "superseded",
        rolled_back_to: int | None = None,
        rollout: RolloutRow | None = None,
    ) -> None:
        """Store a new revision of a component with all its renders, at once.

        ``revision`` must be the stored revision plus one (the caller read it);
        a concurrent apply that got there first makes this fail instead of
        silently overwriting. The revision is added to the history (``origin``
        says what made it); the one it replaces becomes ``replaced`` or, with
        ``rolled_back_to`` (a rollback to that revision), every revision after
        that one becomes ``rolled back``. Revisions beyond ``history_limit``
        are pruned, but never the previous good revision of the component's staged rollout: ``rollout``
        (its state, stored in the same transaction) replaces the component's rollout row, and None drops it
        (a change without ``spec.edge.rollout`` goes to every target at once).
        """
        digest = chart_digest(chart_archive)
        spec_json = json.dumps(spec, sort_keys=True)

        def run(c: Connection) -> None:
            row = c.execute(
                "SELECT revision FROM components WHERE namespace = ? AND name = ?", (namespace, name)
            ).fetchone()
            current = row["revision"] if row else 0
            if revision != current + 1:
                raise ConcurrentChange(
                    f"component {namespace}/{name} changed meanwhile (now at revision {current}); apply again"
                )
            now = time.time()
            c.execute(
                """INSERT INTO components (namespace, name, spec, chart_archive, chart_name, chart_version,
                       fingerprint, revision, deleted, updated_at, history_limit)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)
                   ON CONFLICT(namespace, name) DO UPDATE SET spec = excluded.spec,
                       chart_archive = excluded.chart_archive, chart_name = excluded.chart_name,
                       chart_version = excluded.chart_version, fingerprint = excluded.fingerprint,
                       revision = excluded.revision, deleted = 0, updated_at = excluded.updated_at,
                       history_limit = excluded.history_limit""",
                (namespace, name, spec_json, b"", chart_name, chart_version, fingerprint, revision, now,
                 history_limit),
            )
            c.execute("INSERT INTO charts VALUES (?, ?) ON CONFLICT (digest) DO NOTHING", (digest, chart_archive))
            _replace_current(c, namespace, name, replaced=replaced, rolled_back_to=rolled_back_to)
            c.execute("INSERT INTO revisions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'current')",
                      (namespace, name, revision, spec_json, digest, chart_name, chart_version, fingerprint, now,
                       origin))
            c.executemany(
                "INSERT INTO renders VALUES (?, ?, ?, ?, ?, ?)",
                [(namespace, name, revision, key, b.manifests, b.digest) for key, b in renders.items()],
            )
            _put_rollout(c, namespace, name, rollout)
            _prune_revisions(c, namespace, name, keep=history_limit, current=revision)

        await self._database.write(run, NO_ROWS)

    # --- staged rollouts -----------------------------------------------------

    async def get_rollout(self, namespace: str, name: str) -> RolloutRow | None:
        row = await self._database.read(lambda c: c.execute(
            "SELECT * FROM rollouts WHERE namespace = ? AND name = ?", (namespace, name)).fetchone())
        return RolloutRow.from_row(row) if row else None

    async def list_rollouts(self) -> list[RolloutRow]:
        rows = await self._database.read(
            lambda c: c.execute("SELECT * FROM rollouts ORDER BY namespace, name").fetchall())
        return [RolloutRow.from_row(r) for r in rows]

    async def save_rollout(self, row: RolloutRow, *, expect: RolloutRow | None = None) -> bool:
        """Store a rollout's new state; with ``expect``, only if the stored row is still that one (an apply
        may have replaced it meanwhile). Returns whether it was stored."""

        def run(c: Connection) -> bool:
            if expect is not None:
                found = c.execute("SELECT revision, body FROM rollouts WHERE namespace = ? AND name = ?",
                                  (row.namespace, row.name)).fetchone()
                if found is None or (found["revision"], found["body"]) != (expect.revision, expect.body):
                    return False
            _put_rollout(c, row.namespace, row.name, row)
            return True

        return await self._database.write(run, NO_ROWS)

    async def set_history_limit(self, namespace: str, name: str, *, spec: dict[str, Any], history_limit: int,
                                revision: int) -> None:
        """Take a new ``spec.historyLimit`` without a new revision (nothing deployed changes): the current
        spec (and its history row) is replaced by ``spec``, and revisions beyond the limit are pruned."""
        spec_json = json.dumps(spec, sort_keys=True)

        def run(c: Connection) -> None:
            row = c.execute("SELECT revision, deleted FROM components WHERE namespace = ? AND name = ?",
                            (namespace, name)).fetchone()
            if row is None or row["deleted"] or row["revision"] != revision:
                raise ConcurrentChange(f"component {namespace}/{name} changed meanwhile; apply again")
            c.execute("UPDATE components SET spec = ?, history_limit = ? WHERE namespace = ? AND name = ?",
                      (spec_json, history_limit, namespace, name))
            c.execute("UPDATE revisions SET spec = ? WHERE namespace = ? AND name = ? AND revision = ?",
                      (spec_json, namespace, name, revision))
            _prune_revisions(c, namespace, name, keep=history_limit, current=revision)

        await self._database.write(run, NO_ROWS)

    async def delete_component(self, namespace: str, name: str, *, replaced: Replaced = "superseded") -> int | None:
        """Mark a component deleted at a new revision (kept in its history, origin "delete"); None when
        there is none. The revision it replaces becomes ``replaced``."""

        def run(c: Connection) -> int | None:
            row = c.execute(
                "SELECT revision, deleted, chart_name, chart_version, history_limit FROM components "
                "WHERE namespace = ? AND name = ?", (namespace, name)
            ).fetchone()
            if row is None or row["deleted"]:
                return None
            revision: int = row["revision"] + 1
            now = time.time()
            c.execute(
                "UPDATE components SET deleted = 1, revision = ?, fingerprint = '', updated_at = ? "
                "WHERE namespace = ? AND name = ?",
                (revision, now, namespace, name),
            )
            _replace_current(c, namespace, name, replaced=replaced, rolled_back_to=None)
            c.execute("INSERT INTO revisions VALUES (?, ?, ?, '', '', ?, ?, '', ?, 'delete', 'deleted')",
                      (namespace, name, revision, row["chart_name"], row["chart_version"], now))
            _put_rollout(c, namespace, name, None)
            _prune_revisions(c, namespace, name, keep=row["history_limit"], current=revision)
            return revision

        return await self._database.write(run, NO_ROWS)

    async def list_revisions(self, namespace: str, name: str) -> list[RevisionRecord]:
        """The kept revisions of a component, newest first, each with its spec (for its values digest)."""
        rows = await self._database.read(lambda c: c.execute(
            f"SELECT {_REVISION_COLUMNS}, spec FROM revisions WHERE namespace = ? AND name = ? "
            "ORDER BY revision DESC", (namespace, name)).fetchall())
        return [RevisionRecord.from_row(namespace, name, r) for r in rows]

    async def get_revision(self, namespace: str, name: str, revision: int) -> RevisionRecord | None:
        """One kept revision with its spec; None when it is not kept (never made, or pruned)."""
        row = await self._database.read(lambda c: c.execute(
            f"SELECT {_REVISION_COLUMNS}, spec FROM revisions WHERE namespace = ? AND name = ? AND revision = ?",
            (namespace, name, revision)).fetchone())
        return RevisionRecord.from_row(namespace, name, row) if row else None

    async def revision_window(self, namespace: str, name: str) -> RevisionWindow:
        """The oldest kept revision of a component and its current one (both 0 for none)."""
        row = await self._database.read(lambda c: c.execute(
            "SELECT MIN(revision) AS oldest, MAX(revision) AS current FROM revisions WHERE namespace = ? AND name = ?",
            (namespace, name)).fetchone())
        return RevisionWindow(oldest=row["oldest"] or 0, current=row["current"] or 0)

    async def prune_history(self) -> int:
        """Drop renders of revisions no longer kept (pruned by ``spec.historyLimit``, or older than the history
        of a file made before it existed) once no assignment names them, and the charts no revision uses.
        Cheap when there is nothing to drop. Returns the renders dropped."""

        def run(c: Connection) -> int:
            dropped = c.execute(
                """DELETE FROM renders WHERE NOT EXISTS (SELECT 1 FROM revisions AS v
                       WHERE v.namespace = renders.namespace AND v.name = renders.name
                       AND v.revision = renders.revision)
                   AND NOT EXISTS (SELECT 1 FROM assignments AS a WHERE a.namespace = renders.namespace
                       AND a.release = renders.name AND a.revision = renders.revision
                       AND a.render_key = renders.render_key AND a.kind = 'release')"""
            ).rowcount
            _drop_unused_charts(c)
            return dropped

        return await self._pruned(await self._database.write(run, NO_ROWS),
                                  "of revisions beyond their component's history")

    async def prune_deleted(self) -> int:
        """Drop the renders, charts and specs of deleted components no node is assigned a release of any more.

        Tombstones carry no render, so a deleted component's renders are
        garbage from the dispatch that tombstones it (and at once when no node
        had it). Its row stays, for the revision count, and so do its history
        rows, without their specs and charts (a rollback to one of them is
        refused). Returns the renders dropped; the file shrinks by what they
        held (incremental vacuum).
        """

        def run(c: Connection) -> int:
            gone = c.execute(
                """SELECT namespace, name FROM components AS comp WHERE deleted = 1
                   AND (length(chart_archive) > 0 OR spec != '{}' OR EXISTS (SELECT 1 FROM renders AS r
                        WHERE r.namespace = comp.namespace AND r.name = comp.name)
                        OR EXISTS (SELECT 1 FROM revisions AS v WHERE v.namespace = comp.namespace
                        AND v.name = comp.name AND (v.spec != '' OR v.chart_digest != '')))
                   AND NOT EXISTS (SELECT 1 FROM assignments AS a WHERE a.namespace = comp.namespace
                        AND a.release = comp.name AND a.kind = 'release')"""
            ).fetchall()
            dropped = 0
            for row in gone:
                ident = (row["namespace"], row["name"])
                dropped += c.execute("DELETE FROM renders WHERE namespace = ? AND name = ?", ident).rowcount
                c.execute("UPDATE components SET chart_archive = ?, spec = '{}' WHERE namespace = ? AND name = ?",
                          (b"", *ident))
                c.execute("UPDATE revisions SET spec = '', chart_digest = '' WHERE namespace = ? AND name = ?", ident)
            if gone:
                _drop_unused_charts(c)
            return dropped

        return await self._pruned(await self._database.write(run, NO_ROWS), "of deleted components")

    async def _pruned(self, dropped: int, what: str) -> int:
        """Give back the space ``dropped`` renders held and say so."""
        if dropped:
            await self._database.reclaim_space()
            logger.info("Pruned %d render(s) %s from the store", dropped, what)
        return dropped

    async def get_render(self, namespace: str, name: str, revision: int, render_key: str) -> Bundle | None:
        row = await self._database.read(
            lambda c: c.execute(
                "SELECT manifests, digest FROM renders WHERE namespace = ? AND name = ? AND revision = ? "
                "AND render_key = ?",
                (namespace, name, revision, render_key),
            ).fetchone()
        )
        return Bundle(manifests=row["manifests"], digest=row["digest"]) if row else None

    async def get_renders(self, namespace: str, name: str, revision: int) -> dict[str, Bundle]:
        """Every render of one revision of a component, by render key; empty when there are none."""
        rows = await self._database.read(
            lambda c: c.execute(
                "SELECT render_key, manifests, digest FROM renders WHERE namespace = ? AND name = ? AND revision = ? "
                "ORDER BY render_key",
                (namespace, name, revision),
            ).fetchall()
        )
        return {r["render_key"]: Bundle(manifests=r["manifests"], digest=r["digest"]) for r in rows}


def _replace_current(c: Connection, namespace: str, name: str, *, replaced: Replaced,
                     rolled_back_to: int | None) -> None:
    """The component's current revision is being replaced: it becomes ``replaced``, or, for a rollback to
    ``rolled_back_to``, it and every revision after that one become ``rolled back`` (deletions stay)."""
    if rolled_back_to is not None:
        c.execute("UPDATE revisions SET status = 'rolled back' WHERE namespace = ? AND name = ? AND revision > ? "
                  "AND status != 'deleted'", (namespace, name, rolled_back_to))
    else:
        c.execute("UPDATE revisions SET status = ? WHERE namespace = ? AND name = ? AND status = 'current'",
                  (replaced, namespace, name))


def _put_rollout(c: Connection, namespace: str, name: str, row: RolloutRow | None) -> None:
    if row is None:
        c.execute("DELETE FROM rollouts WHERE namespace = ? AND name = ?", (namespace, name))
        return
    c.execute("""INSERT INTO rollouts VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(namespace, name) DO UPDATE SET
                     revision = excluded.revision, previous = excluded.previous, state = excluded.state,
                     body = excluded.body""",
              (namespace, name, row.revision, row.previous, row.state, row.body))


def _prune_revisions(c: Connection, namespace: str, name: str, *, keep: int, current: int) -> None:
    """Keep the newest ``keep`` revisions (the current one always, and the previous good revision of the
    component's staged rollout, which it may roll back to); drop the others with their renders, but a
    render an assignment still names (dropped by ``prune_history`` once none does)."""
    held = c.execute("SELECT previous FROM rollouts WHERE namespace = ? AND name = ?", (namespace, name)).fetchone()
    protected = held["previous"] if held else -1
    # Sliced here rather than with SQLite's LIMIT -1 OFFSET (PostgreSQL has no LIMIT -1): a component keeps
    # few revisions, so this reads a handful of numbers.
    old = [r["revision"] for r in c.execute(
        "SELECT revision FROM revisions WHERE namespace = ? AND name = ? AND revision != ? AND revision != ? "
        "ORDER BY revision DESC",
        (namespace, name, current, protected)).fetchall()][max(keep - 1, 0):]
    if not old:
        return
    c.executemany("DELETE FROM revisions WHERE namespace = ? AND name = ? AND revision = ?",
                  [(namespace, name, r) for r in old])
    c.executemany(
        """DELETE FROM renders WHERE namespace = ? AND name = ? AND revision = ?
           AND NOT EXISTS (SELECT 1 FROM assignments AS a WHERE a.namespace = renders.namespace
               AND a.release = renders.name AND a.revision = renders.revision
               AND a.render_key = renders.render_key AND a.kind = 'release')""",
        [(namespace, name, r) for r in old])
    _drop_unused_charts(c)
    logger.info("Pruned revision(s) %s of %s/%s (spec.historyLimit %d)", ", ".join(map(str, sorted(old))),
                namespace, name, keep)


def _drop_unused_charts(c: Connection) -> None:
    c.execute("DELETE FROM charts WHERE NOT EXISTS (SELECT 1 FROM revisions AS v WHERE v.chart_digest = charts.digest)")
