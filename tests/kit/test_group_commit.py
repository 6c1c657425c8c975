"""Group commit on a real SQLite file: writes asked for together share transactions, and each still stands alone."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from edgekit.group_commit import GroupCommit
from edgekit.sqlite import Database

SCHEMA = "CREATE TABLE IF NOT EXISTS items (name TEXT PRIMARY KEY, n INTEGER NOT NULL);"


class CountingDatabase(Database):
    """A real database that counts the write transactions it commits."""

    transactions = 0

    async def transaction(self, fn):
        self.transactions += 1
        return await super().transaction(fn)


def insert(name: str, n: int):
    def run(c: sqlite3.Connection) -> str:
        c.execute("INSERT INTO items VALUES (?, ?)", (name, n))
        return name

    return run


async def stored(db: Database) -> dict[str, int]:
    return dict(await db.read(lambda c: c.execute("SELECT name, n FROM items").fetchall()))


async def test_a_thousand_writes_asked_for_at_once_commit_in_a_few_transactions(tmp_path: Path):
    async with CountingDatabase(tmp_path / "db.sqlite", SCHEMA) as db:
        writes = GroupCommit(db.transaction)
        names = await asyncio.gather(*(writes.write(insert(f"item-{i}", i)) for i in range(1000)))
        assert names == [f"item-{i}" for i in range(1000)]
        assert await stored(db) == {f"item-{i}": i for i in range(1000)}
        assert db.transactions <= 3  # the first alone, then what queued while it committed (at most 2,000 a batch)


async def test_a_failing_write_fails_alone_and_the_rest_of_its_batch_commits(tmp_path: Path):
    async with Database(tmp_path / "db.sqlite", SCHEMA) as db:
        writes = GroupCommit(db.transaction)
        await writes.write(insert("taken", 0))

        def half_then_fail(c: sqlite3.Connection) -> None:
            c.execute("INSERT INTO items VALUES ('half', 1)")
            c.execute("INSERT INTO items VALUES ('taken', 1)")  # the primary key refuses it

        results = await asyncio.gather(writes.write(insert("before", 2)), writes.write(half_then_fail),
                                       writes.write(insert("after", 3)), return_exceptions=True)
        assert results[0] == "before" and results[2] == "after"
        assert isinstance(results[1], sqlite3.IntegrityError)
        # Nothing of the failed write is kept, not even its first statement.
        assert await stored(db) == {"taken": 0, "before": 2, "after": 3}


async def test_writes_commit_in_the_order_they_were_asked_for(tmp_path: Path):
    async with Database(tmp_path / "db.sqlite", SCHEMA) as db:
        writes = GroupCommit(db.transaction)
        await writes.write(insert("counter", 0))

        def bump_to(value: int):
            def run(c: sqlite3.Connection) -> None:
                c.execute("UPDATE items SET n = ? WHERE name = 'counter'", (value,))

            return run

        await asyncio.gather(*(writes.write(bump_to(v)) for v in range(1, 501)))
        assert (await stored(db))["counter"] == 500


async def test_a_cancelled_caller_does_not_take_the_others_results_with_it(tmp_path: Path):
    async with Database(tmp_path / "db.sqlite", SCHEMA) as db:
        writes = GroupCommit(db.transaction)
        first = asyncio.create_task(writes.write(insert("first", 1)))
        others = [asyncio.create_task(writes.write(insert(f"other-{i}", i))) for i in range(50)]
        await asyncio.sleep(0)  # the first now leads a commit
        first.cancel()
        assert [await task for task in others] == [f"other-{i}" for i in range(50)]
        with pytest.raises(asyncio.CancelledError):
            await first
        assert len(await stored(db)) in (50, 51)  # the first write may have committed before it was cancelled
