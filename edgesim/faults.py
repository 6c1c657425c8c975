"""Fault injection for tests: a TCP proxy between one agent and the broker that can cut the link.

The proxy listens on a free loopback port and forwards to the broker. ``cut()``
turns it into a black hole: bytes in flight are discarded and new connections
are accepted but never answered, as when an uplink drops without a word, so
both ends only notice through MQTT keepalive. ``restore()`` closes every
connection it held (the clients reconnect) and forwards again.

It runs its own event loop on a daemon thread so synchronous tests can drive
it; every connection and the thread end with ``close()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Coroutine
from typing import Any

logger = logging.getLogger(__name__)

# A proxy call from the test thread waits at most this long for the proxy's loop.
CALL_TIMEOUT_SECONDS = 10.0


class LinkProxy:
    def __init__(self, target_port: int, *, name: str = "link", scheme: str = "mqtt") -> None:
        self.name = name
        self.scheme = scheme  # the broker's: TLS passes through the proxy untouched
        self.target_port = target_port
        self.port = 0  # bound by start(): the kernel picks a free port, nothing can take it in between
        self.cuts = 0
        self._is_cut = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"proxy-{name}", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def is_cut(self) -> bool:
        return self._is_cut

    def start(self) -> LinkProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def cut(self) -> None:
        """Black-hole the link: nothing passes until restore()."""
        self.cuts += 1
        self._is_cut = True
        logger.info("Link %s cut", self.name)

    def restore(self) -> None:
        """Drop every connection held during the cut and forward again."""
        self._call(self._drop_all())
        self._is_cut = False
        logger.info("Link %s restored", self.name)

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CALL_TIMEOUT_SECONDS)
        self._loop.close()

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(CALL_TIMEOUT_SECONDS)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _drop_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await self._drop_all()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await task

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self._writers.add(client_writer)
        if self._is_cut:
            return  # held open and silent until restore() aborts it
        try:
            upstream_reader, upstream_writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.target_port), CALL_TIMEOUT_SECONDS
            )
        except (OSError, TimeoutError):
            client_writer.transport.abort()
            self._writers.discard(client_writer)
            return
        self._writers.add(upstream_writer)
        for reader, writer in ((client_reader, upstream_writer), (upstream_reader, client_writer)):
            task = asyncio.create_task(self._pipe(reader, writer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if self._is_cut:
                    continue  # the black hole: read and drop
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()
            self._writers.discard(writer)
