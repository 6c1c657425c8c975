"""The per-source token bucket: bursts, refills, separate sources, and memory that stays bounded."""

from __future__ import annotations

import logging

import pytest

from edgehub.errors import RateLimited
from edgehub.ratelimit import SourceRateLimiter, source_of
from edgehub.settings import RateLimit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock, *, per_second: float = 2.0, burst: int = 3, max_sources: int = 100) -> SourceRateLimiter:
    return SourceRateLimiter(RateLimit(per_second=per_second, burst=burst), what="test", max_sources=max_sources,
                             clock=clock)


def test_a_source_gets_its_burst_then_waits_for_the_refill():
    clock = Clock()
    bucket = limiter(clock)
    assert [bucket.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take("a") == pytest.approx(0.5)  # 1 token at 2/s
    clock.now += 0.25
    assert bucket.take("a") == pytest.approx(0.25)
    clock.now += 0.25
    assert bucket.take("a") == 0.0
    assert bucket.take("b") == 0.0  # another source has its own bucket


def test_a_source_over_the_limit_is_logged_once_until_it_slows_down(caplog: pytest.LogCaptureFixture):
    clock = Clock()
    bucket = limiter(clock, burst=1)
    with caplog.at_level(logging.WARNING, logger="edgehub.ratelimit"):
        bucket.take("a")
        for _ in range(50):
            bucket.take("a")
    assert len(caplog.records) == 1 and "a is over the test rate limit" in caplog.records[0].getMessage()


def test_an_idle_source_is_forgotten_once_its_bucket_would_be_full_again():
    clock = Clock()
    bucket = limiter(clock)
    for source in ("a", "b"):
        bucket.take(source)
    assert len(bucket) == 2
    clock.now += 1.5  # 3 tokens at 2/s: full again
    bucket.take("c")
    assert len(bucket) == 1


def test_past_its_bound_the_least_recently_seen_source_is_forgotten():
    clock = Clock()
    bucket = limiter(clock, burst=1, max_sources=3)
    for source in ("a", "b", "c"):
        bucket.take(source)
    assert bucket.take("a") > 0  # a is seen again (and refused), so b is now the least recently seen
    bucket.take("d")  # a fourth source: b is forgotten
    assert len(bucket) == 3
    assert bucket.take("a") > 0  # a is still remembered with its spent bucket
    assert bucket.take("b") == 0.0  # b starts again with a full bucket (and c is forgotten for it)
    assert len(bucket) == 3


@pytest.mark.parametrize(("address", "source"), [
    ("192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    (None, "unknown"),
])
def test_a_source_is_an_address_or_its_ipv6_64(address: str | None, source: str):
    assert source_of(address) == source


def test_retry_after_is_whole_seconds_rounded_up():
    assert RateLimited("join", 0.01).retry_after == 1
    assert RateLimited("join", 1.2).retry_after == 2
