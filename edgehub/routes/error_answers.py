"""Every error answered as ``{"error": ...}`` JSON (plus ``"field"`` when one field is at fault), with the
status ``STATUS`` gives the exception's type; never aiohttp's HTML or text pages.

Handlers and services raise (:mod:`edgehub.errors`); ``json_errors`` alone turns exceptions into responses.
Anything unexpected answers 500 with a generic message; the traceback goes to the log.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..errors import (
    AlreadyExists,
    BadRequest,
    ConcurrentChange,
    ForeignOrigin,
    HubError,
    JoinRefused,
    MisdirectedHost,
    NotFound,
    RateLimited,
    RenewalRefused,
    RotationRefused,
    SpecRefused,
    Unauthorized,
    UnsupportedMediaType,
)

logger = logging.getLogger(__name__)

# The one place that maps a refusal to its HTTP status. A type not listed
# answers the status of its nearest listed base: CsrError is a BadRequest
# (400).
STATUS: dict[type[HubError], int] = {
    HubError: 400,
    BadRequest: 400,
    Unauthorized: 401,
    JoinRefused: 403,
    RenewalRefused: 403,
    ForeignOrigin: 403,
    NotFound: 404,
    ConcurrentChange: 409,
    RotationRefused: 409,
    AlreadyExists: 409,
    UnsupportedMediaType: 415,
    MisdirectedHost: 421,
    SpecRefused: 422,
    RateLimited: 429,
}
INTERNAL_ERROR = "internal error in the hub; its log has the details"


def status_of(exc: HubError) -> int:
    return next(STATUS[kind] for kind in type(exc).__mro__ if kind in STATUS)


def _headers_of(exc: HubError) -> dict[str, str] | None:
    if isinstance(exc, RateLimited):
        return {"Retry-After": str(exc.retry_after)}
    if isinstance(exc, Unauthorized):
        return {"WWW-Authenticate": 'Bearer realm="edgehub"'}
    return None


@web.middleware
async def json_errors(request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Answer every error as ``{"error": ...}`` JSON, never aiohttp's HTML or text pages."""
    try:
        return await handler(request)
    except HubError as exc:
        status = status_of(exc)
        # A source over its rate limit is logged once by the limiter, not per request.
        logger.log(logging.DEBUG if isinstance(exc, RateLimited) else logging.INFO,
                   "Refused %s %s with %d: %s", request.method, request.path, status, exc)
        body: dict[str, Any] = {"error": str(exc)}
        if isinstance(exc, BadRequest) and exc.field:
            body["field"] = exc.field
        return web.json_response(body, status=status, headers=_headers_of(exc))
    except web.HTTPException as exc:
        # aiohttp's own: no such route (404), wrong method (405), body too large (413).
        if exc.status < 400:
            raise
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return web.json_response({"error": exc.reason}, status=exc.status, headers=allow)
    except Exception:
        logger.exception("Unexpected error answering %s %s; answering 500", request.method, request.path)
        return web.json_response({"error": INTERNAL_ERROR}, status=500)
