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
    assert caught.value.headers() == {"Retry-After": "1"}
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
