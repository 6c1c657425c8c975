"""``GET /api/v1/stream``: server-sent events, every current summary and then each change (the web
dashboard's feed)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from ..keys import SUMMARIES

ROUTES = web.RouteTableDef()

# A comment line this often keeps proxies and the browser from closing a quiet stream.
STREAM_KEEPALIVE_SECONDS = 15.0
# Set when the hub begins to stop: every open stream ends at once (a stream never ends by itself, and
# aiohttp would wait for it up to its shutdown timeout, a minute, before the hub could stop).
STREAMS_CLOSING = web.AppKey("streams_closing", asyncio.Event)


def end_streams_on_shutdown(app: web.Application) -> None:
    app[STREAMS_CLOSING] = asyncio.Event()
    app.on_shutdown.append(_close_streams)


async def _close_streams(app: web.Application) -> None:
    app[STREAMS_CLOSING].set()


@ROUTES.get("/api/v1/stream")
async def stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events: every current summary, then each change as it happens (the web dashboard's feed).

    ``event: summary`` with ``data: {"topic": ..., "summary": {...} | null}`` (null: it is gone), and
    ``event: reset`` when this client fell too far behind (it reconnects and starts again). The stream
    ends when the hub stops; the client reconnects.
    """
    publisher = request.app[SUMMARIES]
    closing = request.app[STREAMS_CLOSING]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)

    async def send(event: str, data: Any) -> None:
        await response.write(f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode())

    stopping = asyncio.ensure_future(closing.wait())
    try:
        with publisher.listen() as changes:
            for topic, summary in list(publisher.current.items()):
                await send("summary", {"topic": topic, "summary": summary})
            await send("ready", {})
            while not closing.is_set():
                change = asyncio.ensure_future(changes.get())
                await asyncio.wait((change, stopping), timeout=STREAM_KEEPALIVE_SECONDS,
                                   return_when=asyncio.FIRST_COMPLETED)
                if not change.done():
                    change.cancel()
                    if not closing.is_set():
                        await response.write(b": keepalive\n\n")
                    continue
                changed = change.result()
                if changed is None:
                    await send("reset", {})
                    break
                await send("summary", {"topic": changed[0], "summary": changed[1]})
    finally:
        stopping.cancel()
    return response
