"""Rate limits per source address: a token bucket per source, in bounded memory.

The API limits ``POST /api/v1/join`` (token guessing) and ``POST /api/v1/tokens``
(minting credentials) with one ``SourceRateLimiter`` each; a request over the
limit is refused with 429 and ``Retry-After`` (:class:`RateLimited`).

The source is the peer address of the connection, never a header such as
``X-Forwarded-For`` that the sender writes itself. IPv6 sources count per /64,
the block one host or home is usually given, so a host cannot get a fresh
bucket by changing its address within it.

Memory stays bounded: a source idle long enough for its bucket to be full
again is forgotten (it would start with a full bucket anyway, so forgetting it
changes nothing), and past ``max_sources`` the least recently seen source is
forgotten (logged).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from .errors import RateLimited
from .settings import RateLimit

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float
    # Whether the last request was refused: a source going over is logged once, not per request.
    refusing: bool = False


def source_of(address: str | None) -> str:
    """The key a peer address counts under: the address itself, or its /64 for IPv6."""
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class SourceRateLimiter:
    """A token bucket per source: ``limit.burst`` requests at once, refilled at ``limit.per_second``.

    ``take(source)`` spends one token, answering 0.0 when the request may go
    on, else the seconds until the source has a token again.
    """

    def __init__(self, limit: RateLimit, *, what: str, max_sources: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.what = what
        self.max_sources = max_sources
        self._clock = clock
        # Least recently seen first: idle sources are forgotten from the front.
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        # A bucket refills from empty to full in this time; a source idle this long is forgotten.
        self._refill_seconds = limit.burst / limit.per_second
        self._evictions = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, source: str) -> float:
        now = self._clock()
        self._forget_idle(now)
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= self.max_sources:
                self._evict()
            bucket = self._buckets[source] = _Bucket(tokens=float(self.limit.burst), updated=now)
        else:
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(float(self.limit.burst), bucket.tokens + elapsed * self.limit.per_second)
            bucket.updated = now
            self._buckets.move_to_end(source)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            bucket.refusing = False
            return 0.0
        if not bucket.refusing:
            bucket.refusing = True
            logger.warning("Source %s is over the %s rate limit (%g/s, burst %d); refusing it with 429 until it slows "
                           "down", source, self.what, self.limit.per_second, self.limit.burst)
        return (1.0 - bucket.tokens) / self.limit.per_second

    def _forget_idle(self, now: float) -> None:
        while self._buckets:
            source, bucket = next(iter(self._buckets.items()))
            if now - bucket.updated < self._refill_seconds:
                return
            del self._buckets[source]

    def _evict(self) -> None:
        self._buckets.popitem(last=False)
        self._evictions += 1
        # Once, then every 1000th: an address sweep must not flood the log too.
        if self._evictions % 1000 == 1:
            logger.warning("The %s rate limit tracks %d sources, its bound; forgetting the least recently seen "
                           "(%d so far)", self.what, self.max_sources, self._evictions)




def rate_limits(limiters: Mapping[tuple[str, str], SourceRateLimiter]) -> Middleware:
    """Middleware applying ``limiters``, keyed by (method, route path as registered), to their routes."""

    @web.middleware
    async def rate_limited(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        limiter = limiters.get((request.method, resource.canonical)) if resource is not None else None
        if limiter is not None:
            wait = limiter.take(source_of(request.remote))
            if wait > 0:
                raise RateLimited(limiter.what, wait)
        return await handler(request)

    return rate_limited
