"""The agent process's resident memory, kept small on a long-running edge node.

Two glibc settings, for ``edgeagent run`` (one agent per process); elsewhere
(musl, another OS) ``ProcessMemory`` does nothing:

- Malloc arenas are capped at ``MALLOC_ARENAS`` (unless ``MALLOC_ARENA_MAX`` is
  set in the environment, which wins). glibc gives each thread that allocates
  an arena of its own, up to 8 per core, each keeping the memory freed in it;
  the agent's threads (its SQLite thread, asyncio's default executor) allocate
  little and hold the GIL while they do, so sharing two costs nothing.
- Every ``TRIM_INTERVAL_SECONDS`` the free pages inside the heap go back to the
  kernel (``malloc_trim(0)``, about 40 us here). Imports, TLS handshakes and
  reconcile passes leave freed memory between live blocks, which glibc
  otherwise keeps for good: about 2 MiB of an idle agent's RSS (bench/README.md,
  "Agent footprint").
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from edgekit.tasks import OwnedTask

logger = logging.getLogger(__name__)

MALLOC_ARENAS = 2
# Often enough that memory freed by a reconcile pass is returned within a few passes; a trim is ~40 us.
TRIM_INTERVAL_SECONDS = 10.0
# glibc's mallopt parameter number for the arena cap (malloc.h: M_ARENA_MAX).
_M_ARENA_MAX = -8


def _glibc() -> Any | None:
    """The C library as a ctypes handle when it is glibc, else None."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        import ctypes  # only here: nothing else in the agent needs it

        libc = ctypes.CDLL(None)
        libc.mallopt, libc.malloc_trim  # noqa: B018 - both must exist
        return libc
    except (ValueError, OSError, AttributeError, ImportError):
        return None


class ProcessMemory:
    """While entered: glibc's arenas capped and the heap trimmed on a timer. Enter before threads start."""

    def __init__(self, *, trim_interval: float = TRIM_INTERVAL_SECONDS, arenas: int = MALLOC_ARENAS) -> None:
        self.trim_interval = trim_interval
        self.arenas = arenas
        self.trims = 0
        self._task = OwnedTask("memory-trim")
        self._libc: Any | None = None

    async def __aenter__(self) -> ProcessMemory:
        if self._task.running:
            raise RuntimeError("process memory is already being managed")
        self._libc = _glibc()
        if self._libc is None:
            logger.debug("Not glibc: malloc arenas and heap trimming left to the C library")
            return self
        if "MALLOC_ARENA_MAX" not in os.environ:
            self._libc.mallopt(_M_ARENA_MAX, self.arenas)
        self._task.start(self._trim_forever())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._task.stop()

    def trim(self) -> None:
        """Return the heap's free pages to the kernel now (nothing off glibc)."""
        if self._libc is not None:
            self._libc.malloc_trim(0)
            self.trims += 1

    async def _trim_forever(self) -> None:
        while True:
            await asyncio.sleep(self.trim_interval)
            try:
                self.trim()
            except Exception:  # never expected; the agent must not stop over it
                logger.exception("Trimming the heap failed; trying again in %.0f s", self.trim_interval)
