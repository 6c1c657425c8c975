"""A PostgreSQL database behind ``edgekit.sql``'s interface, for a store that outlives one machine.

psycopg's synchronous connection runs on one dedicated worker thread, as
``edgekit.sqlite`` runs sqlite3: a store's functions are synchronous (they
read, compare and write in one go), the event loop never waits on the
server, and calls never interleave within a process.

Writers are serialized: every ``transaction`` takes one transaction-scoped
advisory lock (``pg_advisory_xact_lock``) before its function runs, so write
transactions run one after the other, as SQLite's BEGIN IMMEDIATE makes them
run, even when several processes share the database. That is what keeps a
store's read-compare-write correct (the revision check of an apply, a
sequence number against the stored one) without SERIALIZABLE's retries, and
what makes ``rowid`` (an identity column) grow in commit order, so a reader
that continues after the largest ``rowid`` it saw misses no row. Under READ
COMMITTED each statement sees everything committed before it, the previous
lock holder's writes included. Reads take no lock: each runs in one
REPEATABLE READ, READ ONLY transaction (one snapshot for all its statements).
The lock is per database (advisory lock keys are), so stores in different
databases of one server do not wait on each other.

The schema is created on open, under the same lock (two hubs starting at once
would otherwise race on CREATE TABLE IF NOT EXISTS). SQLite's type names are
mapped (``edgekit.sql`` says which) and every table gets its ``rowid``.

A lost connection fails the call that found it lost; the next call connects
again (psycopg may not know whether a COMMIT it sent took effect, so the call
is never retried here).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from typing import Any, Literal, TypeVar

import psycopg
from psycopg.conninfo import make_conninfo

from .sql import Connection, OnOneThread, StoreUnavailable, redact

logger = logging.getLogger(__name__)
T = TypeVar("T")

# How long connecting may take before the call fails (libpq's connect_timeout, seconds).
CONNECT_TIMEOUT_SECONDS = 10
# How long one statement may run, waiting for the write lock included, before the server cancels it.
STATEMENT_TIMEOUT_MS = 60_000
# A server that stops answering mid-call is found by TCP keepalives (libpq's), in about 25 s.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}
# The key of the write lock: any fixed 64-bit number, derived from a name so it says what it is.
WRITE_LOCK_KEY = int.from_bytes(hashlib.sha256(b"edgekit.postgres write lock").digest()[:8], "big", signed=True)

# SQLite's type names in a schema, and PostgreSQL's for the same values.
_TYPES = {"INTEGER": "BIGINT", "REAL": "DOUBLE PRECISION", "BLOB": "BYTEA"}
_TYPE_WORD = re.compile(r"\b(" + "|".join(_TYPES) + r")\b")
# A string literal or a quoted identifier: placeholders and type names inside one are left alone.
_QUOTED = re.compile(r"""('(?:[^']|'')*'|"(?:[^"]|"")*")""")
_CREATE_TABLE = re.compile(r"^\s*CREATE TABLE IF NOT EXISTS\s+(\w+)\s*\((.*)\)\s*$", re.DOTALL | re.IGNORECASE)
# Every table's insertion order, under the name SQLite gives it.
_ROWID = "rowid BIGINT GENERATED ALWAYS AS IDENTITY"


def _outside_quotes(sql: str, change: Callable[[str], str]) -> str:
    parts = _QUOTED.split(sql)
    return "".join(part if i % 2 else change(part) for i, part in enumerate(parts))


@lru_cache(maxsize=1024)
def to_pyformat(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (and a literal ``%`` doubled), outside quotes."""
    return _outside_quotes(sql, lambda part: part.replace("%", "%%").replace("?", "%s"))


def translate_schema(schema: str) -> list[str]:
    """A schema of CREATE TABLE IF NOT EXISTS statements in SQLite's type names, as PostgreSQL statements."""
    statements = []
    for statement in (s for s in schema.split(";") if s.strip()):
        statement = _outside_quotes(statement, lambda part: _TYPE_WORD.sub(lambda m: _TYPES[m[1]], part))
        created = _CREATE_TABLE.match(statement)
        if created is not None:
            statement = f"CREATE TABLE IF NOT EXISTS {created[1]} ({created[2].rstrip()},\n    {_ROWID})"
        statements.append(statement.strip())
    return statements


class Row:
    """A result row read by column name or position, as ``sqlite3.Row`` is."""

    __slots__ = ("_names", "_values")

    def __init__(self, names: dict[str, int], values: Sequence[Any]) -> None:
        self._names = names
        self._values = values

    def __getitem__(self, key: int | str) -> Any:
        return self._values[self._names[key] if isinstance(key, str) else key]

    def keys(self) -> list[str]:
        return list(self._names)

    def __iter__(self) -> Any:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._names, self._values, strict=True))!r})"


def _row_factory(cursor: Any) -> Callable[[Sequence[Any]], Row]:
    names = {column.name: i for i, column in enumerate(cursor.description or ())}
    return lambda values: Row(names, values)


class _Adapter:
    """The connection a store's function gets: sqlite3's ``execute``/``executemany`` with ``?`` placeholders."""

    def __init__(self, conn: psycopg.Connection[Row]) -> None:
        self._conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> psycopg.Cursor[Row]:
        return self._conn.execute(to_pyformat(sql), tuple(parameters))

    def executemany(self, sql: str, seq_of_parameters: Iterable[Sequence[Any]], /) -> psycopg.Cursor[Row]:
        cursor = self._conn.cursor()
        rows = [tuple(p) for p in seq_of_parameters]
        if rows:  # psycopg refuses an empty batch less clearly than sqlite3 skips it
            cursor.executemany(to_pyformat(sql), rows)
        return cursor


class PostgresDatabase(OnOneThread):
    """A PostgreSQL database (a libpq URL). Use as an async context manager."""

    dialect: Literal["postgresql"] = "postgresql"

    def __init__(self, url: str, schema: str, *, added_columns: tuple[tuple[str, str, str], ...] = ()) -> None:
        self._url = url
        self._statements = translate_schema(schema)
        # Columns added by later versions, for a database made by an older one. ADD COLUMN puts them
        # after rowid: a table that has them is written with named columns (the hub's nodes and components are).
        self._added_columns = added_columns
        super().__init__()
        self._conn: psycopg.Connection[Row] | None = None

    def __str__(self) -> str:
        return redact(self._url)

    async def __aenter__(self) -> PostgresDatabase:
        try:
            await self._start("postgres", self._create_schema)
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"cannot open the PostgreSQL store {self}: {exc}".strip()) from exc
        return self

    def _connection(self) -> psycopg.Connection[Row]:
        """The open connection, connecting (again) when there is none or the last one was lost."""
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        if conn is not None:
            logger.warning("Connection to PostgreSQL store %s was lost; connecting again", self)
            conn.close()
            self._conn = None
        # Autocommit: every transaction is an explicit ``conn.transaction()`` block, nothing is left open.
        # The URL's own options (a statement_timeout of the operator's, say) win over ours.
        options = {} if "options=" in self._url else {"options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"}
        conninfo = make_conninfo(self._url, connect_timeout=CONNECT_TIMEOUT_SECONDS, application_name="edgecollab",
                                 **KEEPALIVES, **options)
        self._conn = psycopg.connect(conninfo, autocommit=True, row_factory=_row_factory)
        return self._conn

    def _create_schema(self) -> None:
        conn = self._connection()
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))
            for statement in self._statements:
                conn.execute(statement)
            for table, column, declaration in self._added_columns:
                declaration = _TYPE_WORD.sub(lambda m: _TYPES[m[1]], declaration)
                conn.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {declaration}")

    async def transaction(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn(conn)`` in one write transaction, after every other writer's, and return its result."""

        def run() -> T:
            conn = self._connection()
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))
                return fn(_Adapter(conn))

        return await self._run(run)

    async def read(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn(conn)`` in one read-only transaction: all its statements see one snapshot."""

        def run() -> T:
            conn = self._connection()
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                return fn(_Adapter(conn))

        return await self._run(run)

    async def reclaim_space(self) -> None:
        """Nothing to do: PostgreSQL's autovacuum makes the space of deleted rows reusable on its own."""
