"""``edgeagent run``'s memory keeping: on glibc the heap is trimmed on a timer while the agent runs and no
longer once it stops; elsewhere nothing happens. A lifecycle like every long-lived thing's."""

from __future__ import annotations

import asyncio
import os

import pytest

from edgeagent.memory import ProcessMemory

GLIBC = bool(os.confstr("CS_GNU_LIBC_VERSION")) if "CS_GNU_LIBC_VERSION" in os.confstr_names else False


async def test_the_heap_is_trimmed_on_a_timer_while_entered_and_not_after():
    memory = ProcessMemory(trim_interval=0.05)
    async with memory:
        await asyncio.sleep(0.4)
        during = memory.trims
    await asyncio.sleep(0.2)
    assert memory.trims == during
    if GLIBC:
        assert during >= 3
    else:
        assert during == 0


async def test_a_second_enter_while_running_is_refused():
    if not GLIBC:
        pytest.skip("the timer runs only on glibc")
    memory = ProcessMemory(trim_interval=60)
    async with memory:
        with pytest.raises(RuntimeError, match="already"):
            await memory.__aenter__()


async def test_exit_without_enter_is_safe():
    await ProcessMemory().__aexit__(None, None, None)
