"""Reading and writing a hub store's tables behind the store's back, in SQLite or PostgreSQL: what an older
hub left, or what an operator would find."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any


def execute(location: Path | str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement (``?`` placeholders) on the store at ``location``, committed; its rows, if any."""
    if isinstance(location, Path):
        with contextlib.closing(sqlite3.connect(location)) as db, db:
            return [tuple(r) for r in db.execute(sql, params).fetchall()]
    import psycopg

    with psycopg.connect(location, autocommit=True) as db:
        cursor = db.execute(sql.replace("?", "%s"), params)
        return [tuple(r) for r in cursor.fetchall()] if cursor.description else []


def dump(location: Path | str) -> str:
    """Every value of every table, as text."""
    if isinstance(location, Path):
        with contextlib.closing(sqlite3.connect(location)) as db:
            return "\n".join(db.iterdump())
    tables = [t for (t,) in execute(location, "SELECT table_name FROM information_schema.tables "
                                              "WHERE table_schema = 'public'")]
    assert "tokens" in tables, tables
    return "\n".join(repr(row) for table in tables for row in execute(location, f"SELECT * FROM {table}"))
