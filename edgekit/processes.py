"""Child processes an asyncio program starts: none is left running behind it."""

from __future__ import annotations

import asyncio
import contextlib


async def reap(proc: asyncio.subprocess.Process) -> None:
    """Kill ``proc`` if it still runs (timed out or cancelled) and wait for it: nothing is left behind."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(Exception):
            await asyncio.shield(proc.wait())
