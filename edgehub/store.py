"""The hub's store: the source of truth for desired state (a SQLite file by default, or PostgreSQL).

Tables: join tokens, nodes (identity, labels, presence, last status),
components (the current spec, revision counter and history limit), revisions
(each kept revision of a component: its spec, chart reference, time, origin
and status), charts (chart archives by SHA-256, stored once however many
revisions use them), renders (one per component revision and render key) and
assignments (what each node should hold now). Every change that must be
all-or-nothing is one transaction.

History: every apply that makes a revision, every rollback and every delete
adds a row to ``revisions``, in the transaction that changes the component,
and prunes the rows beyond the component's ``spec.historyLimit`` (never the
current one) with their renders, except a render an assignment still names
(a node may not have the newer revision yet; it goes at a later sync, see
``prune_history``), and the chart archives no kept revision uses. A file
made before history existed gets one row per component on open, made from
its current row. Statuses stored: ``current`` (the component's current
revision; the API shows its live state instead), ``superseded``, ``failed``
(a target reported it failing, ``edgeprotocol.health.release_failing``, when
it was replaced), ``rolled back`` (replaced by a rollback to an earlier
revision) and ``deleted`` (the revision that deleted the component).

What nodes send is bounded here too, whoever sent it (the broker lets anyone
publish on a node's topics): a status or event whose sequence number jumps
more than ``max_seq_jump`` past the last one stored is refused, events are
kept by count in arrival order (so no sequence number can erase history), and
a stored status that no longer decodes is shown as no status, never an error.
The renders and chart of a deleted component are pruned once no node is
assigned them, and the file gives the space back (incremental vacuum).

Node certificates the hub no longer stands behind (``void_certificates``: the
one a renewal replaced, the one a reset or revoke voided) are kept until they
expire, by serial number; ``edgehub.broker_revocations`` makes the broker's
certificate revocation list of them.

A node name belongs to the key that joined it: a join with a name already
registered is refused until an operator resets the name (``reset_node``),
and a revoked name (``revoke_node``) is refused until then too. Each
accepted join of a name raises its join generation, which the dispatcher
seals into the node's assignments. Only a node in standing ``joined`` is
published to and heard from: what a reset or revoked node sends is taken as
if it came from no registered node.

The SQL is written once for both databases (``edgekit.sql`` says what that
allows); ``HubStore`` takes a SQLite path or a ``postgresql://`` URL, and
everything that differs between the two lives in ``edgekit.sqlite`` and
``edgekit.postgres`` (docs/store.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar

from cryptography import x509

from deployer_plugin.spec import DEFAULT_HISTORY_LIMIT
from edgekit.group_commit import GroupCommit
from edgekit.sql import Connection, Row, StoreLocation, open_database
from edgeprotocol.errors import ProtocolError
from edgeprotocol.messages import MAX_MESSAGE_BYTES, AssignmentKind, Bundle, Event, NodeStatus, Presence

from .errors import AlreadyExists, ConcurrentChange, JoinRefused, RenewalRefused
from .listed import ANY_ROWS, NO_ROWS, ByNode, Touches
from .tokens import TokenParts, hash_secret, secret_matches

logger = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

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
    status_seq INTEGER NOT NULL DEFAULT -1,
    seq_before_join INTEGER NOT NULL DEFAULT -1,
    generation INTEGER NOT NULL DEFAULT 0,
    standing TEXT NOT NULL DEFAULT 'joined',
    bundle_key TEXT NOT NULL DEFAULT ''
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
    history_limit INTEGER NOT NULL DEFAULT 10,
    PRIMARY KEY (namespace, name)
);
CREATE TABLE IF NOT EXISTS revisions (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    revision INTEGER NOT NULL,
    spec TEXT NOT NULL,
    chart_digest TEXT NOT NULL,
    chart_name TEXT NOT NULL,
    chart_version TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at REAL NOT NULL,
    origin TEXT NOT NULL,
    status TEXT NOT NULL,
    PRIMARY KEY (namespace, name, revision)
);
CREATE TABLE IF NOT EXISTS charts (
    digest TEXT PRIMARY KEY,
    archive BLOB NOT NULL
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
CREATE TABLE IF NOT EXISTS rollouts (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    revision INTEGER NOT NULL,
    previous INTEGER NOT NULL,
    state TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (namespace, name)
);
CREATE TABLE IF NOT EXISTS credentials (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    certificate TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    node TEXT NOT NULL,
    seq INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (node, seq)
);
CREATE TABLE IF NOT EXISTS renewal_nonces (
    node TEXT NOT NULL,
    nonce TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (node, nonce)
);
CREATE TABLE IF NOT EXISTS void_certificates (
    serial TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    not_after REAL NOT NULL,
    voided_at REAL NOT NULL
);
"""
# Columns added since the first hub: an older hub.db gets them on open.
# seq_before_join: the highest status seq of the node's previous registration,
# so an agent that re-joins and keeps counting is not taken for a forger.
# generation: how many joins of the name were accepted (0: joined before
# generations existed, as its agent's identity.json says too).
# standing: 'joined' (the key that joined holds the name), 'reset' (the name
# is free: the next join with it is accepted) or 'revoked' (refused until reset).
# bundle_key: the X25519 public key (base64) the node sent at its last join,
# which its bundles are encrypted to; '' for a node whose agent sent none.
ADDED_COLUMNS = (
    ("nodes", "seq_before_join", "INTEGER NOT NULL DEFAULT -1"),
    ("nodes", "generation", "INTEGER NOT NULL DEFAULT 0"),
    ("nodes", "standing", "TEXT NOT NULL DEFAULT 'joined'"),
    ("nodes", "bundle_key", "TEXT NOT NULL DEFAULT ''"),
    # history_limit: the component's spec.historyLimit (revisions kept, the current one included).
    ("components", "history_limit", "INTEGER NOT NULL DEFAULT 10"),
)
# Sequence numbers are 64-bit signed integers (SQLite's INTEGER, PostgreSQL's BIGINT), counted from 1.
MAX_SEQ = 2**63 - 1

SaveOutcome = Literal["stored", "stale", "duplicate", "unknown node", "too far ahead", "out of range"]
Standing = Literal["joined", "reset", "revoked"]
# Messages are taken only from nodes in this standing; others are "unknown node".
_JOINED = "standing = 'joined'"
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
class NodeRecord:
    name: str
    pool: str
    labels: dict[str, str]
    registered_at: float
    presence: str
    presence_at: str
    last_seen: str
    status: NodeStatus | None
    generation: int = 0
    standing: Standing = "joined"
    # The X25519 public key (base64) its bundles are encrypted to; '' when it joined without one.
    bundle_key: str = ""
    # The node's certificate (PEM) as the hub last issued it; "" after a
    # reset or revoke, and when read without it.
    certificate: str = field(default="", repr=False)

    @classmethod
    def from_row(cls, row: Row, *, status: NodeStatus | None = None) -> NodeRecord:
        return cls(
            name=row["name"],
            pool=row["pool"],
            labels=json.loads(row["labels"]),
            registered_at=row["registered_at"],
            presence=row["presence"],
            presence_at=row["presence_at"],
            last_seen=row["last_seen"],
            status=status,
            generation=row["generation"],
            standing=row["standing"],
            bundle_key=row["bundle_key"],
            certificate=row["certificate"] if "certificate" in row.keys() else "",
        )


@dataclass(frozen=True, slots=True)
class Registration:
    """What an accepted join stored: the node's pool, certificate and join generation.

    ``rejoined``: the name was registered before (and reset), so assignments
    kept for it must be sealed again for the new generation.
    """

    pool: str
    certificate: str
    generation: int
    rejoined: bool


@dataclass(frozen=True, slots=True)
class CredentialRecord:
    """A broker credential the hub issued besides node identities (today: read-only dashboards)."""

    name: str
    role: str
    certificate: str
    created_at: float


@dataclass(frozen=True, slots=True)
class JoinedNode:
    """What publishing to a node in standing ``joined`` needs: its join generation and bundle key
    (base64 X25519; '' when its agent sent none at join)."""

    generation: int
    bundle_key: str


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """A node's event as the hub holds it: ``cursor`` is its place in the order events arrived at the
    hub, over every node (larger is later), which ``list_event_log(after=...)`` continues from."""

    cursor: int
    event: Event


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
        return json.loads(self.spec_json)

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
            spec_json=row["spec"] if "spec" in row.keys() else None,
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
        return json.loads(self.spec_json)

    @classmethod
    def from_row(cls, namespace: str, name: str, row: Row) -> RevisionRecord:
        return cls(namespace=namespace, name=name, revision=row["revision"], chart_digest=row["chart_digest"],
                   chart_name=row["chart_name"], chart_version=row["chart_version"],
                   fingerprint=row["fingerprint"], created_at=row["created_at"], origin=row["origin"],
                   status=row["status"], has_spec=bool(row["has_spec"]),
                   spec_json=row["spec"] if "spec" in row.keys() else None)


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


@dataclass(frozen=True, slots=True)
class AssignmentRecord:
    node: str
    namespace: str
    release: str
    revision: int
    kind: AssignmentKind
    render_key: str = ""


class HubStore:
    """Async access to the hub's database: ``location`` is a SQLite file's path, or a URL
    (``sqlite:///PATH``, ``postgresql://USER@HOST:PORT/DB``; ``edgekit.sql.parse_location``)."""

    def __init__(self, location: Path | str | StoreLocation, *, events_kept_per_node: int = 500) -> None:
        self._db = open_database(location, SCHEMA, added_columns=ADDED_COLUMNS, incremental_vacuum=True)
        self._events_kept = events_kept_per_node
        # Nodes whose stored status failed to decode, so each is logged once.
        self._undecodable: set[str] = set()
        # Each node's status as last decoded (or stored by this process), by its stored seq and
        # length: listing a fleet decodes only the reports that changed since the last listing.
        self._decoded: dict[str, tuple[tuple[int, int], NodeStatus]] = {}
        # What the fleet's listings read last (nodes with status and without certificate, every
        # assignment), kept on the database's thread: a listing reads only the nodes written since.
        # One hub owns a SQLite file; several may share a PostgreSQL database.
        only_writer = self._db.dialect == "sqlite"
        self._listed_nodes: ByNode[tuple[tuple[Any, ...], NodeRecord]] = ByNode(only_writer=only_writer)
        self._listed_assignments: ByNode[tuple[AssignmentRecord, ...]] = ByNode(only_writer=only_writer)
        self._change_listeners: list[Callable[[], None]] = []
        self._writes: GroupCommit[Connection] = GroupCommit(self._db.transaction)

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (on the loop, must not block) after every committed write: summaries and
        live views follow the store, which is the truth, rather than each place that changes it."""
        self._change_listeners.append(listener)

    async def _write(self, fn: Callable[[Connection], T], touches: Touches = ANY_ROWS) -> T:
        """Run ``fn`` in a transaction (shared with the writes asked for meanwhile, each in a savepoint).
        ``touches``: the node rows and assignments it may change, which the fleet's listings read again."""

        def run(c: Connection) -> T:
            result = fn(c)
            # On the database's thread, inside the transaction: no listing can run between the write and this.
            self._listed_nodes.touch(touches.nodes)
            self._listed_assignments.touch(touches.assignments_of)
            return result

        result = await self._writes.write(run)
        for listener in self._change_listeners:
            listener()
        return result

    async def __aenter__(self) -> HubStore:
        await self._db.__aenter__()
        try:
            await self._db.transaction(_forget_oversized_statuses)
            await self._db.transaction(_start_history)
        except BaseException:
            await self._db.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._db.__aexit__(*exc_info)

    # --- join tokens ---------------------------------------------------------

    async def create_token(self, token: TokenParts, *, pool: str, ttl_seconds: float, uses: int) -> float:
        now = time.time()
        expires_at = now + ttl_seconds
        await self._write(
            lambda c: c.execute(
                "INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?)",
                (token.token_id, hash_secret(token.secret), pool, now, expires_at, uses),
            ),
            NO_ROWS,
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
        bundle_key: str = "",
    ) -> Registration:
        """Spend one use of ``token`` and register ``node``, or re-register a name an operator reset.

        A name registered to a key (standing ``joined``) or revoked is
        refused, after the token is checked (so a stranger cannot probe for
        names) and before anything changes. ``sign(node)`` produces the node
        certificate inside the transaction, so a refused join leaves neither
        a spent token nor a node behind. Each accepted join of a name raises
        its generation by one (1 for a new name) and replaces its ``bundle_key``.
        """

        def run(c: Connection) -> Registration:
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
            held = c.execute("SELECT generation, standing, certificate FROM nodes WHERE name = ?", (node,)).fetchone()
            if held is not None and held["standing"] != "reset":
                why = "is revoked" if held["standing"] == "revoked" else "is already registered to another key"
                raise JoinRefused(f"node {node!r} {why}; an operator can free the name with: edgectl node reset {node}")
            generation = held["generation"] + 1 if held is not None else 1
            certificate = sign(node)
            if held is not None:
                _void_certificate(c, node, held["certificate"])
            c.execute("UPDATE tokens SET uses_left = uses_left - 1 WHERE token_id = ?", (token.token_id,))
            c.execute(
                """INSERT INTO nodes (name, pool, labels, certificate, registered_at, generation, bundle_key)
                   VALUES (?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(name) DO UPDATE SET pool = excluded.pool, labels = excluded.labels,
                       certificate = excluded.certificate, registered_at = excluded.registered_at,
                       generation = excluded.generation, bundle_key = excluded.bundle_key, standing = 'joined',
                       seq_before_join = CASE WHEN nodes.status_seq > nodes.seq_before_join
                           THEN nodes.status_seq ELSE nodes.seq_before_join END, status_seq = -1""",
                (node, pool, json.dumps(labels, sort_keys=True), certificate, time.time(), generation, bundle_key),
            )
            return Registration(pool=pool, certificate=certificate, generation=generation, rejoined=held is not None)

        return await self._write(run, Touches.of(nodes=[node]))

    async def reset_node(self, name: str) -> NodeRecord | None:
        """Free a node's name: forget the key that joined it, so the next join with the name is accepted.

        The node's assignments are kept (the node that joins next gets its
        releases back, sealed for its new generation), and so are its
        generation, status and events. A revoked node is reset too. None
        when there is no such node.
        """

        def run(c: Connection) -> NodeRecord | None:
            held = c.execute("SELECT certificate FROM nodes WHERE name = ?", (name,)).fetchone()
            if held is None:
                return None
            c.execute("UPDATE nodes SET standing = 'reset', certificate = '' WHERE name = ?", (name,))
            _void_certificate(c, name, held["certificate"])
            return NodeRecord.from_row(c.execute("SELECT * FROM nodes WHERE name = ?", (name,)).fetchone())

        return await self._write(run, Touches.of(nodes=[name]))

    async def revoke_node(self, name: str) -> NodeRecord | None:
        """Refuse a node from now on: its messages are ignored, nothing is published to it and its
        name cannot join again until ``reset_node``. Its assignments are kept. None when there is no such node."""

        def run(c: Connection) -> NodeRecord | None:
            held = c.execute("SELECT certificate FROM nodes WHERE name = ?", (name,)).fetchone()
            if held is None:
                return None
            c.execute("UPDATE nodes SET standing = 'revoked', certificate = '' WHERE name = ?", (name,))
            _void_certificate(c, name, held["certificate"])
            return NodeRecord.from_row(c.execute("SELECT * FROM nodes WHERE name = ?", (name,)).fetchone())

        return await self._write(run, Touches.of(nodes=[name]))

    async def joined_nodes(self, names: Iterable[str] | None = None) -> dict[str, JoinedNode]:
        """Every node in standing ``joined`` (the nodes assignments are published to), by name; with
        ``names``, only those of them (one read of a few rows rather than of the whole fleet)."""
        wanted = sorted(set(names)) if names is not None else None
        query = f"SELECT name, generation, bundle_key FROM nodes WHERE {_JOINED}"

        def run(c: Connection) -> list[Row]:
            if wanted is None or len(wanted) > _NAMES_PER_QUERY:
                return c.execute(query).fetchall()
            return c.execute(f"{query} AND name IN ({', '.join('?' * len(wanted))})", wanted).fetchall()

        rows = await self._db.read(run)
        return {r["name"]: JoinedNode(generation=r["generation"], bundle_key=r["bundle_key"]) for r in rows}

    # --- broker credentials (dashboards) --------------------------------------

    async def add_credential(self, name: str, role: str, certificate: Callable[[], str]) -> CredentialRecord:
        """Record a new credential, issuing its certificate with ``certificate()`` only if the name is free."""

        def run(c: Connection) -> CredentialRecord:
            if c.execute("SELECT 1 FROM credentials WHERE name = ?", (name,)).fetchone() is not None:
                raise AlreadyExists(f"credential {name!r} exists; revoke it first or choose another --name")
            record = CredentialRecord(name=name, role=role, certificate=certificate(), created_at=time.time())
            c.execute("INSERT INTO credentials (name, role, certificate, created_at) VALUES (?, ?, ?, ?)",
                      (record.name, record.role, record.certificate, record.created_at))
            return record

        return await self._write(run, NO_ROWS)

    async def list_credentials(self) -> list[CredentialRecord]:
        rows = await self._db.read(lambda c: c.execute("SELECT * FROM credentials ORDER BY name").fetchall())
        return [CredentialRecord(name=r["name"], role=r["role"], certificate=r["certificate"],
                                 created_at=r["created_at"]) for r in rows]

    async def delete_credential(self, name: str) -> bool:
        def run(c: Connection) -> bool:
            return c.execute("DELETE FROM credentials WHERE name = ?", (name,)).rowcount > 0

        return await self._write(run, NO_ROWS)

    async def renew_certificate(self, node: str, *, nonce: str, at: float, forget_before: float,
                                renew: Callable[[str], str]) -> str:
        """Replace the certificate of ``node`` with ``renew(current certificate)``, taking ``nonce`` once.

        Refused (RenewalRefused) for a node that is not registered, is
        revoked or was reset (its name is free: it joins again), and for a
        nonce already taken; ``renew`` raises to refuse otherwise (a wrong
        proof, an expired certificate, a bad request). Nonces are remembered
        with their request's time ``at`` until ``forget_before`` passes it (a
        request that old is refused for its time anyway). The node's
        generation, standing and assignments do not change.
        """

        def run(c: Connection) -> str:
            row = c.execute("SELECT standing, certificate FROM nodes WHERE name = ?", (node,)).fetchone()
            if row is None:
                raise RenewalRefused(f"node {node!r} is not registered; it must join with a token")
            if row["standing"] == "revoked":
                raise RenewalRefused(f"node {node!r} is revoked; an operator can free the name with: "
                                     f"edgectl node reset {node}, and the node join again")
            if row["standing"] != "joined" or not row["certificate"]:
                raise RenewalRefused(f"node {node!r} was reset: its name is free and its certificate void; "
                                     "the node must join again with a token")
            c.execute("DELETE FROM renewal_nonces WHERE at < ?", (forget_before,))
            if c.execute("SELECT 1 FROM renewal_nonces WHERE node = ? AND nonce = ?", (node, nonce)).fetchone():
                raise RenewalRefused("this renewal request was taken before (a replay?); send a new one")
            certificate = renew(row["certificate"])
            c.execute("INSERT INTO renewal_nonces VALUES (?, ?, ?)", (node, nonce, at))
            c.execute("UPDATE nodes SET certificate = ? WHERE name = ?", (certificate, node))
            # In force from here: the broker refuses the replaced one once its list is written. A retry
            # after a lost answer proves with the new key and replaces the certificate never received.
            _void_certificate(c, node, row["certificate"])
            return certificate

        return await self._write(run, Touches.of(nodes=[node]))

    async def void_certificates(self) -> list[tuple[int, float]]:
        """The serial numbers of the node certificates the hub replaced or voided that have not expired yet,
        each with the time it was voided."""
        now = time.time()
        rows = await self._db.read(lambda c: c.execute(
            "SELECT serial, voided_at FROM void_certificates WHERE not_after > ? ORDER BY serial", (now,)).fetchall())
        return [(int(r["serial"], 16), r["voided_at"]) for r in rows]

    # --- nodes ---------------------------------------------------------------

    async def list_nodes(self, *, with_status: bool = True, with_certificate: bool = True) -> list[NodeRecord]:
        """Every node by name; ``with_status=False`` leaves every ``status`` None, ``with_certificate=False``
        every ``certificate`` "", and each is cheaper.

        A fleet is listed on every read of a component or the fleet: with
        status and without certificates (what those reads ask for), only the
        rows written since the last such listing are read (``edgehub.listed``)
        and only the reports that changed are decoded; an unchanged node is
        the very same record as in the last listing.
        """
        if with_status and not with_certificate:
            return [record for _, record in await self._db.read(self._listing_of_nodes)]
        columns = _NODE_COLUMNS + (", certificate" if with_certificate else "")

        def run(c: Connection) -> list[NodeRecord]:
            if not with_status:
                return [NodeRecord.from_row(r) for r in c.execute(f"SELECT {columns} FROM nodes ORDER BY name")]
            rows = c.execute(f"SELECT {columns}, {_STATUS_SIZE} FROM nodes ORDER BY name").fetchall()
            return [record for _, record in self._node_records(c, rows, {}).values()]

        return await self._db.read(run)

    def _listing_of_nodes(self, c: Connection) -> list[tuple[tuple[Any, ...], NodeRecord]]:
        columns = f"{_NODE_COLUMNS}, {_STATUS_SIZE}"

        def read_all(held: dict[str, tuple[tuple[Any, ...], NodeRecord]]
                     ) -> dict[str, tuple[tuple[Any, ...], NodeRecord]]:
            return self._node_records(c, c.execute(f"SELECT {columns} FROM nodes").fetchall(), held)

        def read_some(names: list[str]) -> dict[str, tuple[tuple[Any, ...], NodeRecord]]:
            return self._node_records(c, _rows_named(c, f"SELECT {columns} FROM nodes", names), {})

        return self._listed_nodes.refresh(read_all, read_some)

    def _node_records(self, c: Connection, rows: list[Row], held: dict[str, tuple[tuple[Any, ...], NodeRecord]]
                      ) -> dict[str, tuple[tuple[Any, ...], NodeRecord]]:
        """The records of ``rows`` (with ``_STATUS_SIZE``), each with the row's values; a row whose values and
        status are those ``held`` has, keeps its record. Statuses are read and decoded (on the database's
        thread: a status may be a few hundred KiB of JSON) only when they changed since last decoded."""
        changed = [r["name"] for r in rows
                   if r["status_length"] and not self._decoded_holds(r["name"], r["status_seq"], r["status_length"])]
        texts: dict[str, str] = dict(_rows_named(c, "SELECT name, status FROM nodes", changed))
        records = {}
        for r in rows:
            name, values = r["name"], tuple(r)
            kept = held.get(name)
            if kept is None or kept[0] != values or name in texts:
                kept = (values, NodeRecord.from_row(r, status=self._status_of(
                    name, r["status_seq"], r["status_length"], texts.get(name))))
            records[name] = kept
        return records

    async def get_node(self, name: str, *, with_status: bool = True) -> NodeRecord | None:
        def run(c: Connection) -> NodeRecord | None:
            row = c.execute("SELECT * FROM nodes WHERE name = ?", (name,)).fetchone()
            if row is None:
                return None
            status = self._status_of(name, row["status_seq"], len(row["status"] or ""), row["status"]) \
                if with_status else None
            return NodeRecord.from_row(row, status=status)

        return await self._db.read(run)

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

    async def set_presence(self, node: str, state: str, at: str) -> bool:
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
                    self._listed_nodes.revise(p.node, _with_report(presence=p.state, presence_at=p.at, **seen))

            # The statements for a batch leave the range check to this.
            in_range = all(0 <= report.seq <= MAX_SEQ for report, _ in (*texts, *bodies))
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
                    self._listed_nodes.revise(status.node, _with_report(status=status, last_seen=received_at))

            if in_range and _all_at_once(c, "events", bodies, [e.node for e, _ in bodies],
                                         lambda rows: _store_new_events(c, rows, max_seq_jump)):
                event_outcomes: list[SaveOutcome] = ["stored"] * len(bodies)
            else:
                event_outcomes = [_store_event(c, event, body, max_seq_jump) for event, body in bodies]
            if "stored" in event_outcomes:
                _keep_newest_events(c, {event.node for event, _ in bodies}, self._events_kept)
            return SavedReports(status_outcomes, event_outcomes, presence_outcomes)

        # The listing's entries of the nodes whose reports were stored are revised in run().
        return await self._write(run, NO_ROWS)

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

        return await self._db.read(run)

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

        return await self._db.read(run)

    # --- components and renders ----------------------------------------------

    async def get_component(self, namespace: str, name: str) -> ComponentRecord | None:
        """One component with its spec (parsed when read), without its chart archive."""
        row = await self._db.read(
            lambda c: c.execute(
                f"SELECT {_COMPONENT_COLUMNS}, spec FROM components WHERE namespace = ? AND name = ?", (namespace, name)
            ).fetchone()
        )
        return ComponentRecord.from_row(row) if row else None

    async def list_components(self, *, include_deleted: bool = False, with_spec: bool = True) -> list[ComponentRecord]:
        """Components by namespace and name; ``with_spec=False`` leaves out their specs (read ``spec`` raises)."""
        where = "" if include_deleted else "WHERE deleted = 0"
        columns = f"{_COMPONENT_COLUMNS}, spec" if with_spec else _COMPONENT_COLUMNS
        rows = await self._db.read(
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

        return await self._db.read(run)

    async def get_chart(self, digest: str) -> bytes | None:
        """A stored chart archive by its digest (``sha256:HEX`` of the archive)."""
        row = await self._db.read(
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

        await self._write(run, NO_ROWS)

    # --- staged rollouts -----------------------------------------------------

    async def get_rollout(self, namespace: str, name: str) -> RolloutRow | None:
        row = await self._db.read(lambda c: c.execute(
            "SELECT * FROM rollouts WHERE namespace = ? AND name = ?", (namespace, name)).fetchone())
        return RolloutRow.from_row(row) if row else None

    async def list_rollouts(self) -> list[RolloutRow]:
        rows = await self._db.read(lambda c: c.execute("SELECT * FROM rollouts ORDER BY namespace, name").fetchall())
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

        return await self._write(run, NO_ROWS)

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

        await self._write(run, NO_ROWS)

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
            revision = row["revision"] + 1
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

        return await self._write(run, NO_ROWS)

    async def list_revisions(self, namespace: str, name: str) -> list[RevisionRecord]:
        """The kept revisions of a component, newest first, each with its spec (for its values digest)."""
        rows = await self._db.read(lambda c: c.execute(
            f"SELECT {_REVISION_COLUMNS}, spec FROM revisions WHERE namespace = ? AND name = ? "
            "ORDER BY revision DESC", (namespace, name)).fetchall())
        return [RevisionRecord.from_row(namespace, name, r) for r in rows]

    async def get_revision(self, namespace: str, name: str, revision: int) -> RevisionRecord | None:
        """One kept revision with its spec; None when it is not kept (never made, or pruned)."""
        row = await self._db.read(lambda c: c.execute(
            f"SELECT {_REVISION_COLUMNS}, spec FROM revisions WHERE namespace = ? AND name = ? AND revision = ?",
            (namespace, name, revision)).fetchone())
        return RevisionRecord.from_row(namespace, name, row) if row else None

    async def revision_window(self, namespace: str, name: str) -> RevisionWindow:
        """The oldest kept revision of a component and its current one (both 0 for none)."""
        row = await self._db.read(lambda c: c.execute(
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

        return await self._pruned(await self._write(run, NO_ROWS), "of revisions beyond their component's history")

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

        return await self._pruned(await self._write(run, NO_ROWS), "of deleted components")

    async def _pruned(self, dropped: int, what: str) -> int:
        """Give back the space ``dropped`` renders held and say so."""
        if dropped:
            await self._db.reclaim_space()
            logger.info("Pruned %d render(s) %s from the store", dropped, what)
        return dropped

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

    async def list_assignments(self, *, node: str | None = None,
                               nodes: Iterable[str] | None = None) -> list[AssignmentRecord]:
        """Every assignment, by node, namespace and release; or those of ``node`` (one query); or those of
        the ``nodes`` named. The whole table is listed reading only the nodes written since the last listing
        (``edgehub.listed``)."""
        if node is not None:
            rows = await self._db.read(lambda c: c.execute(
                "SELECT * FROM assignments WHERE node = ? ORDER BY namespace, release", (node,)).fetchall())
            return [_assignment(r) for r in rows]
        listing = await self._db.read(self._listing_of_assignments)
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

        return self._listed_assignments.refresh(
            lambda _held: by_node(c.execute("SELECT * FROM assignments")),
            lambda names: by_node(_rows_named(c, "SELECT * FROM assignments", names, column="node")))

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

        await self._write(run, Touches.of(assignments_of={a.node for a in upserts} | {d[0] for d in deletes}))


# Reports stored by one statement at most: four bound parameters each, under SQLite's oldest limit (999).
_REPORTS_PER_STATEMENT = 200


def _at_least_zero(sql: str) -> str:
    return f"CASE WHEN {sql} > 0 THEN {sql} ELSE 0 END"


# The highest seq a node's next report may have, past max_seq_jump (see HubStore.save_status).
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


def _store_presences(c: Connection, rows: Sequence[Presence]) -> int:
    values = ", ".join(["(?, ?, ?)"] * len(rows))
    return c.execute(
        f"""UPDATE nodes SET presence = v.column2, presence_at = v.column3,
                last_seen = CASE WHEN v.column2 = 'online' THEN v.column3 ELSE nodes.last_seen END
            FROM (VALUES {values}) AS v WHERE nodes.name = v.column1 AND nodes.{_JOINED}""",
        [x for p in rows for x in (p.node, p.state, p.at)],
    ).rowcount


def _store_presence(c: Connection, presence: Presence) -> bool:
    seen = ", last_seen = ?" if presence.state == "online" else ""
    at, node = presence.at, presence.node
    args = (presence.state, at, at, node) if seen else (presence.state, at, node)
    return c.execute(f"UPDATE nodes SET presence = ?, presence_at = ?{seen} WHERE name = ? AND {_JOINED}",
                     args).rowcount == 1


def _store_next_statuses(c: Connection, rows: Sequence[tuple[NodeStatus, str]], received_at: str,
                         max_seq_jump: int) -> int:
    values = ", ".join(["(?, ?, ?)"] * len(rows))
    return c.execute(
        f"""UPDATE nodes SET status = v.column2, status_seq = v.column3, last_seen = ?
            FROM (VALUES {values}) AS v
            WHERE nodes.name = v.column1 AND nodes.{_JOINED} AND v.column3 > nodes.status_seq
            AND v.column3 <= {_STATUS_SEQ_BASE} + ?""",
        [received_at, *(x for status, text in rows for x in (status.node, text, status.seq)), max_seq_jump],
    ).rowcount


def _store_status(c: Connection, status: NodeStatus, text: str, received_at: str, max_seq_jump: int) -> SaveOutcome:
    seq = status.seq
    row = c.execute(f"SELECT status_seq, seq_before_join FROM nodes WHERE name = ? AND {_JOINED}",
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
            WHERE EXISTS (SELECT 1 FROM nodes WHERE nodes.name = v.column1 AND nodes.{_JOINED})
            AND NOT EXISTS (SELECT 1 FROM events AS held WHERE held.node = v.column1 AND held.seq = v.column2)
            AND v.column2 <= {_at_least_zero(f"COALESCE({highest}, 0)")} + ?""",
        [*(x for event, body in rows for x in (event.node, event.seq, body)), max_seq_jump],
    ).rowcount


def _store_event(c: Connection, event: Event, body: str, max_seq_jump: int) -> SaveOutcome:
    if c.execute(f"SELECT 1 FROM nodes WHERE name = ? AND {_JOINED}", (event.node,)).fetchone() is None:
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
    over = [r[0] for r in _rows_named(c, "SELECT node FROM events", sorted(nodes), column="node",
                                      rest=f"GROUP BY node HAVING COUNT(*) > {int(kept)}")]
    for node in over:
        c.execute("DELETE FROM events WHERE node = ? AND rowid <= "
                  "(SELECT rowid FROM events WHERE node = ? ORDER BY rowid DESC LIMIT 1 OFFSET ?)",
                  (node, node, kept))


class SavedReports(NamedTuple):
    """What ``HubStore.save_reports`` made of each report, in the order given."""

    statuses: list[SaveOutcome]
    events: list[SaveOutcome]
    presences: list[bool]  # False: the node is not registered (or was reset, or revoked)


def _void_certificate(c: Connection, node: str, pem: str) -> None:
    """Keep the serial of ``node``'s certificate ``pem`` (none: "") until it expires, forgetting those that have."""
    now = time.time()
    c.execute("DELETE FROM void_certificates WHERE not_after <= ?", (now,))
    if not pem:
        return
    try:
        certificate = x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        logger.error("The stored certificate of node %s does not load; it cannot be revoked on the broker", node)
        return
    not_after = certificate.not_valid_after_utc.timestamp()
    if not_after > now:
        c.execute("INSERT INTO void_certificates (serial, node, not_after, voided_at) VALUES (?, ?, ?, ?) "
                  "ON CONFLICT (serial) DO NOTHING", (format(certificate.serial_number, "x"), node, not_after, now))


# A node's row without its status and certificate (each read only when needed).
_NODE_COLUMNS = ("name, pool, labels, registered_at, presence, presence_at, last_seen, generation, standing, "
                 "bundle_key")
# Names bound in one IN (...) list: under SQLite's oldest limit on bound parameters (999).
_NAMES_PER_QUERY = 500
# What a listing needs to know whether a node's status changed, without reading it.
_STATUS_SIZE = "status_seq, length(status) AS status_length"


def _rows_named(c: Connection, select: str, names: list[str], *, column: str = "name", rest: str = "") -> list[Row]:
    """``select`` (no WHERE) of the rows whose ``column`` is one of ``names``, a bounded IN list per query;
    ``rest``: what follows the WHERE clause (GROUP BY ...)."""
    rows: list[Row] = []
    for start in range(0, len(names), _NAMES_PER_QUERY):
        chunk = names[start:start + _NAMES_PER_QUERY]
        rows += c.execute(f"{select} WHERE {column} IN ({', '.join('?' * len(chunk))}) {rest}", chunk).fetchall()
    return rows


def _assignment(row: Row) -> AssignmentRecord:
    return AssignmentRecord(node=row["node"], namespace=row["namespace"], release=row["release"],
                            revision=row["revision"], kind=row["kind"], render_key=row["render_key"])


def chart_digest(archive: bytes) -> str:
    """A chart archive's identity in the store: ``sha256:`` and the hex SHA-256 of its bytes."""
    return "sha256:" + hashlib.sha256(archive).hexdigest()


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


def _start_history(c: Connection) -> None:
    """Once per open: a component with no history (stored by a hub before history existed) gets its current
    revision as its first history row, its chart archive kept apart by digest."""
    rows = c.execute(
        """SELECT * FROM components AS comp WHERE NOT EXISTS (SELECT 1 FROM revisions AS v
               WHERE v.namespace = comp.namespace AND v.name = comp.name)""").fetchall()
    for row in rows:
        ident = (row["namespace"], row["name"])
        if row["deleted"]:
            c.execute("INSERT INTO revisions VALUES (?, ?, ?, '', '', ?, ?, '', ?, 'delete', 'deleted')",
                      (*ident, row["revision"], row["chart_name"], row["chart_version"], row["updated_at"]))
            continue
        archive = bytes(row["chart_archive"])
        digest = chart_digest(archive)
        c.execute("INSERT INTO charts VALUES (?, ?) ON CONFLICT (digest) DO NOTHING", (digest, archive))
        c.execute("INSERT INTO revisions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'stored before history', 'current')",
                  (*ident, row["revision"], row["spec"], digest, row["chart_name"], row["chart_version"],
                   row["fingerprint"], row["updated_at"]))
        c.execute("UPDATE components SET chart_archive = ? WHERE namespace = ? AND name = ?", (b"", *ident))
    if rows:
        logger.info("History started for %d component(s) stored before it existed", len(rows))


def _forget_oversized_statuses(c: Connection) -> None:
    """Once per open: drop stored statuses that can never decode. (A SQLite file is also switched to
    incremental vacuum on open, so ``prune_deleted`` gives its space back: ``edgekit.sqlite``.)"""
    # An older hub stored statuses of any size re-encoded, some past what a
    # message may be; their sequence numbers (2**63 - 1, say) would shut out
    # the node's real reports. Forget them: the node's next report is taken.
    cur = c.execute("UPDATE nodes SET status = NULL, status_seq = -1 WHERE length(status) > ?", (MAX_MESSAGE_BYTES,))
    if cur.rowcount:
        logger.warning("Dropped %d stored status(es) too large to decode; those nodes' next reports are taken",
                       cur.rowcount)
