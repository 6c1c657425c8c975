"""Group commit: writes that arrive while one transaction commits share the next one.

A transaction's cost is mostly its commit (an fsync with synchronous=FULL),
not its statements. When a thousand nodes report at once, committing each
report alone caps the hub at a few hundred reports a second; committing
whatever queued up during the last commit in one transaction takes them all
at about the price of one.

Each write still stands alone: it runs inside a SAVEPOINT of its own, so one
that raises is rolled back by itself, raises to its own caller, and leaves
the others in the batch to commit. A caller's result is delivered only once
the transaction holding its write has committed; if the commit itself fails,
every write of that batch fails with that error. Writes commit in the order
they were asked for.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

T = TypeVar("T")
C = TypeVar("C", bound="Executes")

# Writes one transaction takes at most: bounds how long one batch holds the
# database (and how much a failed commit takes down with it).
MAX_BATCH = 2000


class Executes(Protocol):
    def execute(self, sql: str, *args: Any) -> Any: ...


Transaction = Callable[[Callable[[C], list[tuple[bool, Any]]]], Awaitable[list[tuple[bool, Any]]]]


class GroupCommit(Generic[C]):
    """Runs ``fn(conn)`` writes through ``transaction``, as few transactions as the load allows."""

    def __init__(self, transaction: Transaction[C], *, max_batch: int = MAX_BATCH) -> None:
        self._transaction = transaction
        self._max_batch = max_batch
        self._pending: list[tuple[Callable[[C], Any], asyncio.Future[Any]]] = []
        # Held by the caller whose transaction is committing; the callers that queue meanwhile wait
        # on it, and the first of them commits everything queued by then.
        self._committing = asyncio.Lock()

    async def write(self, fn: Callable[[C], T]) -> T:
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((fn, done))
        while not done.done():
            async with self._committing:
                if done.done():
                    break
                batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch:]
                # Delivered by a callback, not by this caller: if it is cancelled while the
                # transaction runs, the others still get their results.
                committed = asyncio.ensure_future(self._transaction(functools.partial(_run_each, batch=batch)))
                committed.add_done_callback(functools.partial(_deliver, batch))
                await asyncio.wait([committed])
        return await done


def _run_each(conn: Executes, *,
              batch: list[tuple[Callable[[Any], Any], asyncio.Future[Any]]]) -> list[tuple[bool, Any]]:
    """Run each write in a savepoint of its own (on the database's thread); (ok, result or exception) each."""
    outcomes: list[tuple[bool, Any]] = []
    for fn, _ in batch:
        conn.execute("SAVEPOINT one_write")
        try:
            result = fn(conn)
        except Exception as exc:  # noqa: BLE001 - the write's own error, handed to the caller that queued it
            conn.execute("ROLLBACK TO one_write")
            conn.execute("RELEASE one_write")
            outcomes.append((False, exc))
            continue
        conn.execute("RELEASE one_write")
        outcomes.append((True, result))
    return outcomes


def _deliver(batch: list[tuple[Callable[[Any], Any], asyncio.Future[Any]]], outcome: asyncio.Future[Any]) -> None:
    if outcome.cancelled():
        for _, done in batch:
            if not done.done():
                done.cancel()
        return
    error = outcome.exception()
    results = outcome.result() if error is None else [(False, error)] * len(batch)
    for (_, done), (ok, value) in zip(batch, results, strict=True):
        if done.done():
            continue  # its caller was cancelled
        if ok:
            done.set_result(value)
        else:
            done.set_exception(value)
