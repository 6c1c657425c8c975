"""A serialized, asynchronous SQLite connection: what the hub's and agent's stores are built on.

sqlite3 calls block, so every call runs on one dedicated worker thread: the
event loop never waits on disk, and because there is only one thread, calls
never interleave. ``transaction`` runs a function inside BEGIN IMMEDIATE ...
COMMIT, rolled back on any error, so a store change is all or nothing even if
the process is killed half-way.

File modes: a store holds what only its owner should read (the hub's tokens
and bundles, the node's manifests with their Secrets). Opening one for writing
makes its directory 0700 (created so, or narrowed) and the database 0600
(created so, or narrowed); SQLite gives the ``-wal`` and ``-shm`` files the
database's own mode, and older ones are narrowed too.

This is the embedded backend of ``edgekit.sql``'s interface (``SqlDatabase``);
``edgekit.postgres`` is the other.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_random

from .sql import OnOneThread

logger = logging.getLogger(__name__)
T = TypeVar("T")

# How long a statement waits for another process's lock before failing.
BUSY_TIMEOUT_SECONDS = 5.0
# Switching to WAL needs a moment with no other connection on the file, and
# SQLite answers "database is locked" at once instead of waiting (its busy
# handler does not cover it): retry for about this long.
WAL_SWITCH_SECONDS = 5.0


def _enable_wal(conn: sqlite3.Connection, path: Path) -> None:
    for attempt in Retrying(stop=stop_after_delay(WAL_SWITCH_SECONDS), wait=wait_random(0.02, 0.1),
                            retry=retry_if_exception_type(sqlite3.OperationalError), reraise=True):
        with attempt:
            # WAL is a property of the file: once set, the query answers "wal" and changes nothing.
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode=WAL")


_SIDE_FILES = ("-wal", "-shm", "-journal")


def _make_private(path: Path) -> None:
    """Make ``path``'s directory 0700 and the database file (and its side files) 0600, creating both if needed."""
    directory = path.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(directory.stat().st_mode) & 0o077:
        logger.info("Narrowing %s to mode 0700: it holds a store", directory)
        directory.chmod(0o700)
    # Created 0600 before SQLite opens it: SQLite would create it under the umask (often 0644).
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for candidate in (path, *(path.with_name(path.name + suffix) for suffix in _SIDE_FILES)):
        try:
            if stat.S_IMODE(candidate.stat().st_mode) & 0o077:
                candidate.chmod(0o600)
        except FileNotFoundError:
            pass


class Database(OnOneThread):
    """An open SQLite file. Use as an async context manager."""

    dialect: Literal["sqlite"] = "sqlite"

    def __init__(self, path: Path, schema: str, *, readonly: bool = False,
                 added_columns: tuple[tuple[str, str, str], ...] = (), incremental_vacuum: bool = False) -> None:
        self._path = path
        # The file gives pages freed by deletions back (``reclaim_space``); see ``_use_incremental_vacuum``.
        self._incremental_vacuum = incremental_vacuum
        self._schema = schema
        # (table, column, declaration) that later versions added: a file made
        # by an older version gets them on open (CREATE TABLE IF NOT EXISTS
        # leaves an existing table as it is).
        self._added_columns = added_columns
        # Read-only: opens an existing file and never writes, not even the
        # schema, so a command can look while the owner is running.
        self._readonly = readonly
        super().__init__()
        self._conn: sqlite3.Connection | None = None

    def __str__(self) -> str:
        return str(self._path)

    async def __aenter__(self) -> Database:
        await self._start(f"sqlite-{self._path.name}", self._open)
        return self

    def _open(self) -> None:
        if self._readonly:
            if not self._path.is_file():
                raise FileNotFoundError(f"no database at {self._path}")
            conn = sqlite3.connect(f"file:{self._path}?mode=ro", uri=True, isolation_level=None,
                                   check_same_thread=False, timeout=BUSY_TIMEOUT_SECONDS)
            conn.row_factory = sqlite3.Row
            self._conn = conn
            return
        _make_private(self._path)
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False,
                               timeout=BUSY_TIMEOUT_SECONDS)
        conn.row_factory = sqlite3.Row
        # WAL keeps readers off writers' backs; synchronous=FULL because a
        # store write that vanishes on power loss is exactly the lost data
        # the agent promises not to have.
        _enable_wal(conn, self._path)
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.executescript(self._schema)
        for table, column, declaration in self._added_columns:
            present = {row["name"] for row in conn.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        if self._incremental_vacuum:
            _use_incremental_vacuum(conn)
        self._conn = conn

    async def transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in one write transaction and return its result."""

        def run() -> T:
            assert self._conn is not None
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return result

        return await self._run(run)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` for reading (no transaction of its own)."""

        def run() -> T:
            assert self._conn is not None
            return fn(self._conn)

        return await self._run(run)

    async def reclaim_space(self) -> None:
        """Return the pages freed by deletions to the file system (with ``incremental_vacuum``; else a no-op).

        Proportional to the pages freed, unlike a VACUUM, which rewrites the
        whole file while every call waits."""
        await self.read(lambda c: c.executescript("PRAGMA incremental_vacuum;"))


def _use_incremental_vacuum(conn: sqlite3.Connection) -> None:
    """Make the file give freed space back, and keep its WAL from staying large.

    A store may delete a lot at once (the hub drops a deleted component's
    renders, tens of MiB); with ``auto_vacuum=INCREMENTAL`` ``reclaim_space``
    returns those pages to the file system. SQLite can switch an existing
    file only with a VACUUM, so a file made by an older version is rewritten
    once, here. The WAL is truncated back to 64 MiB after a checkpoint,
    however large a deletion was.
    """
    conn.execute("PRAGMA journal_size_limit = 67108864")
    if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
        started = time.monotonic()
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("VACUUM")
        logger.info("Store switched to incremental vacuum (a one-time VACUUM, %.1f s)", time.monotonic() - started)
