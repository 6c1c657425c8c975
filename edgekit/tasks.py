"""A background task with an owner: whoever starts it stops it, cancelling and awaiting it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

T = TypeVar("T")

# How long a stop waits for a cancelled task before cancelling it again.
RECANCEL_SECONDS = 1.0


class OwnedTask:
    """At most one running task under one name. ``start`` refuses a second one; ``restart`` replaces it
    (cancelled, not awaited: the new one may start at once); ``stop`` cancels and awaits it. Both return the
    task so that the owner may wait on it (``asyncio.wait`` with a timeout); cancelling stays ``stop``'s."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._task: asyncio.Task[Any] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        if self._task is not None:
            coro.close()
            raise RuntimeError(f"{self.name} is already running")
        self._task = asyncio.create_task(coro, name=self.name)
        return self._task

    def restart(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        if self._task is not None:
            self._task.cancel()
        self._task = asyncio.create_task(coro, name=self.name)
        return self._task

    async def stop(self) -> None:
        """Cancel the task and wait until it is done. A task may swallow one cancellation (a library that
        turns it into its own error while cleaning up, which a retry loop then retries): it is cancelled
        again until it ends, so a stop never hangs on it."""
        task, self._task = self._task, None
        if task is None:
            return
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=RECANCEL_SECONDS)
        with contextlib.suppress(asyncio.CancelledError):
            task.result()


async def each_within(items: Iterable[T], fn: Callable[[T], Awaitable[bool]], *, at_once: int) -> int:
    """Await ``fn(item)`` for every item, at most ``at_once`` of them under way together (a window of
    network round trips rather than one at a time); how many returned True. An error cancels the rest
    and is raised."""
    pending = iter(items)
    done = 0

    async def worker() -> None:
        nonlocal done
        for item in pending:  # one shared iterator: each item is taken by exactly one worker
            if await fn(item):
                done += 1

    async with asyncio.TaskGroup() as group:
        for _ in range(max(1, at_once)):
            group.create_task(worker())
    return done
