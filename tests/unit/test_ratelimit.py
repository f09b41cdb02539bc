"""Token buckets: bursts up to the rate, refill over time, callers independent."""

from __future__ import annotations

import pytest

from sidecar.config.model import Rate
from sidecar.errors import RateLimited
from sidecar.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refill_and_retry_after() -> None:
    clock = Clock()
    rl = RateLimiter(Rate(5, 1.0), clock=clock)
    for _ in range(5):
        rl.take("u1")
    with pytest.raises(RateLimited) as caught:
        rl.take("u1")
    assert caught.value.headers()["Retry-After"] == "1"
    assert caught.value.headers()["RateLimit-Remaining"] == "0"
    assert caught.value.status == 429 and caught.value.code == "rate_limited"
    rl.take("u2")  # another subject has its own bucket
    clock.now += 0.2  # one token back
    rl.take("u1")
    with pytest.raises(RateLimited):
        rl.take("u1")


def test_slow_rates_give_longer_retry_after() -> None:
    clock = Clock()
    rl = RateLimiter(Rate(2, 60.0), clock=clock)
    rl.take("u")
    rl.take("u")
    with pytest.raises(RateLimited) as caught:
        rl.take("u")
    assert caught.value.headers()["Retry-After"] == "30"


def test_memory_is_bounded() -> None:
    rl = RateLimiter(Rate(1, 1.0), max_callers=100, clock=Clock())
    for i in range(1000):
        rl.take(f"user-{i}")
    assert len(rl.buckets) <= 100


def test_the_quota_counts_down_and_refills() -> None:
    """Issue 17, item 5: what the RateLimit-* headers say after each request."""
    clock = Clock()
    rl = RateLimiter(Rate(3, 60.0), clock=clock)  # a token every 20 s
    quotas = [rl.take("u") for _ in range(3)]
    assert [(q.limit, q.remaining) for q in quotas] == [(3, 2), (3, 1), (3, 0)]
    assert [q.reset for q in quotas] == [20, 40, 60]  # seconds until the bucket is full
    assert quotas[0].headers() == {
        "RateLimit-Limit": "3",
        "RateLimit-Remaining": "2",
        "RateLimit-Reset": "20",
        "RateLimit-Policy": "3;w=60",
    }
    with pytest.raises(RateLimited) as caught:
        rl.take("u")
    assert caught.value.headers()["Retry-After"] == "20"
    assert caught.value.headers()["RateLimit-Reset"] == "60"
    clock.now += 30  # one and a half tokens back
    quota = rl.take("u")
    assert (quota.remaining, quota.reset) == (0, 50)
