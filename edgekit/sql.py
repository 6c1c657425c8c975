"""The SQL database a store is built on: one interface, an embedded SQLite file or a PostgreSQL server.

A store writes its SQL once, in what both accept, and hands it functions that
take a connection (``transaction(fn)``, ``read(fn)``); the backend decides how
they run without blocking the event loop. What the store may use:

- ``conn.execute(sql, params)`` and ``conn.executemany(sql, rows)``, with
  ``?`` placeholders; the cursor's ``fetchone()``, ``fetchall()`` and
  ``rowcount``; rows read by column name or position, with ``keys()``;
- ``INSERT ... ON CONFLICT (...) DO UPDATE/DO NOTHING`` (never ``INSERT OR``),
  ``CASE`` (never the two-argument ``MAX``), bytes as parameters (never
  ``x''``), an alias on every subquery in FROM, no ``LIMIT -1``;
- a schema of ``CREATE TABLE IF NOT EXISTS`` statements in SQLite's type names
  (INTEGER, REAL, TEXT, BLOB), which the PostgreSQL backend maps to its own
  (BIGINT, DOUBLE PRECISION, TEXT, BYTEA: an INTEGER must hold 64 bits and a
  REAL a timestamp to the microsecond, as in SQLite);
- ``rowid``: the order rows were inserted in. SQLite has it on every table;
  the PostgreSQL backend gives every table a ``rowid`` identity column, so the
  same SQL reads it.

Everything that must differ lives in the backend (``edgekit.sqlite``,
``edgekit.postgres``): file modes, WAL and vacuum for SQLite; the write lock
and the connection for PostgreSQL.

Errors::

    ValueError
      DatabaseUrlError      a store location that is no SQLite path or PostgreSQL URL
    RuntimeError
      DriverMissing         a PostgreSQL URL without psycopg installed
      StoreUnavailable      the database could not be opened (a server that does not answer or refuses us)
"""

from __future__ import annotations

import asyncio
import importlib.util
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

T = TypeVar("T")
Dialect = Literal["sqlite", "postgresql"]

# What to install for a PostgreSQL store (pyproject.toml's extra).
POSTGRES_EXTRA_HINT = "install the postgres extra: pip install 'edgecollab[postgres]' (psycopg 3)"


class DatabaseUrlError(ValueError):
    """A store location that is neither a SQLite path nor a PostgreSQL URL."""


class DriverMissing(RuntimeError):
    """A PostgreSQL store asked for where psycopg is not installed."""


class StoreUnavailable(RuntimeError):
    """The database could not be opened: its server does not answer, or refuses the user or database."""


class Row(Protocol):
    def __getitem__(self, key: int | str) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...

    def keys(self) -> list[str]: ...


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """What a store's function gets: sqlite3's own connection, or the PostgreSQL backend's adapter."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...

    def executemany(self, sql: str, seq_of_parameters: Iterable[Sequence[Any]], /) -> Cursor: ...


class SqlDatabase(Protocol):
    """An open database; use as an async context manager. Functions run off the event loop, one at a time."""

    @property
    def dialect(self) -> Dialect: ...

    async def __aenter__(self) -> SqlDatabase: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    async def transaction(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn(conn)`` in one write transaction (all or nothing, serialized with every other writer)."""
        ...

    async def read(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn(conn)`` for reading only."""
        ...

    async def reclaim_space(self) -> None:
        """Give space freed by large deletions back (SQLite: an incremental vacuum; PostgreSQL: its autovacuum)."""
        ...


class OnOneThread:
    """A database whose calls all run on one worker thread of its own, so the event loop never waits on
    it and calls never interleave: what ``edgekit.sqlite`` and ``edgekit.postgres`` share. A subclass
    opens its connection (``_conn``) in the function it gives ``_start`` and names itself in ``__str__``."""

    _conn: Any

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._conn = None

    async def _start(self, thread_name: str, open_connection: Callable[[], None]) -> None:
        """Start the thread and run ``open_connection`` on it; on any failure, close again and raise."""
        if self._executor is not None:
            raise RuntimeError(f"database {self} is already open")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        try:
            await self._run(open_connection)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        executor.shutdown(wait=True)

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            raise RuntimeError(f"database {self} is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)


@dataclass(frozen=True, slots=True)
class StoreLocation:
    """Where a store lives: a SQLite file (``path``) or a PostgreSQL server (``url``, a libpq URI)."""

    dialect: Dialect
    path: Path | None = None
    url: str = ""

    def __str__(self) -> str:
        return str(self.path) if self.path is not None else redact(self.url)


def redact(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def parse_location(location: str | Path) -> StoreLocation:
    """A store location: a path (SQLite), ``sqlite:///ABSOLUTE/PATH``, or ``postgresql://USER@HOST:PORT/DB``
    (``postgres://`` too; libpq's URI, query parameters included). DatabaseUrlError otherwise."""
    if isinstance(location, Path):
        return StoreLocation("sqlite", path=location)
    text = location.strip()
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme == "sqlite":
        rest = text[len("sqlite://"):]
        # Three slashes and an absolute path: a relative one would depend on where the hub was started.
        if not rest.startswith("/") or rest.startswith("//") or "?" in rest:
            raise DatabaseUrlError(f"store URL {text!r}: a SQLite store is sqlite:///ABSOLUTE/PATH (three slashes, "
                                   "then the file's absolute path)")
        return StoreLocation("sqlite", path=Path(rest))
    if scheme in ("postgresql", "postgres"):
        try:
            parts = urllib.parse.urlsplit(text)
            _ = parts.port  # raises ValueError for a port that is no number
        except ValueError as exc:
            raise DatabaseUrlError(f"store URL {redact(text)!r} does not parse: {exc}") from exc
        if not parts.path.strip("/"):
            raise DatabaseUrlError(f"store URL {redact(text)!r} names no database: "
                                   "postgresql://USER@HOST:PORT/DATABASE")
        return StoreLocation("postgresql", url=text)
    if scheme:
        raise DatabaseUrlError(f"store URL {redact(text)!r}: unknown scheme {scheme!r}; use sqlite:///PATH or "
                               "postgresql://USER@HOST:PORT/DATABASE")
    if not text:
        raise DatabaseUrlError("store location is empty: give sqlite:///PATH or postgresql://USER@HOST:PORT/DATABASE")
    return StoreLocation("sqlite", path=Path(text))


def require_driver(location: StoreLocation) -> None:
    """Raise DriverMissing when ``location`` needs a driver that is not installed (checked before a hub starts)."""
    if location.dialect == "postgresql" and importlib.util.find_spec("psycopg") is None:
        raise DriverMissing(f"store {location} is PostgreSQL, but psycopg is not installed; {POSTGRES_EXTRA_HINT}")


def open_database(location: str | Path | StoreLocation, schema: str, *,
                  added_columns: tuple[tuple[str, str, str], ...] = (), incremental_vacuum: bool = False,
                  ) -> SqlDatabase:
    """The database at ``location`` (not yet entered). ``added_columns`` (table, column, declaration): columns
    later versions added, which an existing database gets on open. ``incremental_vacuum``: a SQLite file gives
    space freed by deletions back to the file system (PostgreSQL's autovacuum does that anyway)."""
    where = location if isinstance(location, StoreLocation) else parse_location(location)
    if where.dialect == "postgresql":
        require_driver(where)
        from .postgres import PostgresDatabase  # psycopg is imported only for a PostgreSQL store

        return PostgresDatabase(where.url, schema, added_columns=added_columns)
    from .sqlite import Database

    assert where.path is not None
    return Database(where.path, schema, added_columns=added_columns, incremental_vacuum=incremental_vacuum)
