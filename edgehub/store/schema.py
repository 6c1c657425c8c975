"""The hub's tables, the columns later versions added, and what a database made by an older hub is given on open.

Every part store (``edgehub.store``) writes its SQL against these tables; this
module alone says what they are. The SQL is written once for both databases
(``edgekit.sql`` says what that allows), and everything that differs between
SQLite and PostgreSQL lives in ``edgekit.sqlite`` and ``edgekit.postgres``
(docs/store.md).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable

from edgekit.sql import Connection
from edgeprotocol.messages import MAX_MESSAGE_BYTES

logger = logging.getLogger(__name__)

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


def chart_digest(archive: bytes) -> str:
    """A chart archive's identity in the store: ``sha256:`` and the hex SHA-256 of its bytes."""
    return "sha256:" + hashlib.sha256(archive).hexdigest()


def _forget_oversized_statuses(c: Connection) -> None:
    """Drop stored statuses that can never decode. (A SQLite file is also switched to incremental vacuum on
    open, so ``ComponentStore.prune_deleted`` gives its space back: ``edgekit.sqlite``.)"""
    # An older hub stored statuses of any size re-encoded, some past what a
    # message may be; their sequence numbers (2**63 - 1, say) would shut out
    # the node's real reports. Forget them: the node's next report is taken.
    cur = c.execute("UPDATE nodes SET status = NULL, status_seq = -1 WHERE length(status) > ?", (MAX_MESSAGE_BYTES,))
    if cur.rowcount:
        logger.warning("Dropped %d stored status(es) too large to decode; those nodes' next reports are taken",
                       cur.rowcount)


def _start_history(c: Connection) -> None:
    """A component with no history (stored by a hub before history existed) gets its current revision as its
    first history row, its chart archive kept apart by digest."""
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


# Run on every open, each in a transaction of its own, in this order: what a database an older hub made
# is given (each finds nothing to do in a database this hub made).
ON_OPEN: tuple[Callable[[Connection], None], ...] = (_forget_oversized_statuses, _start_history)
