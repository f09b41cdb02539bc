"""Token buckets: `limits.rate` per subject, `limits.unauthenticated_rate` per client IP
address → 429 `rate_limited` with `Retry-After`.

Each key (a subject, an IP address) gets a bucket of `count` tokens refilled at
`count / per_seconds` tokens a second; a request takes one. The subject's bucket is shared
by all its devices: a `device_id` claim (chosen by whoever signs the token, rotated at will)
never buys a caller a fresh bucket. Buckets live in a bounded cachetools TTL cache, so
memory stays bounded however many callers there are.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from cachetools import TTLCache

from sidecar.config.model import Rate
from sidecar.errors import RateLimited


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    def __init__(
        self,
        rate: Rate,
        *,
        max_callers: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = float(rate.count)
        self.per_second = rate.count / rate.per_seconds
        self.clock = clock
        idle = max(60.0, rate.per_seconds * 2)  # a full bucket is forgotten after this
        self.buckets: TTLCache[str, _Bucket] = TTLCache(maxsize=max_callers, ttl=idle, timer=clock)

    def take(self, key: str, what: str = "this subject (limits.rate)") -> None:
        """Spend one token of `key` (a subject, or an IP address), or raise RateLimited
        with a Retry-After; `what` names the caller and the limit in the message."""
        now = self.clock()
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = _Bucket(self.capacity, now)
        else:
            bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.at) * self.per_second)
            bucket.at = now
        if bucket.tokens < 1.0:
            self.buckets[key] = bucket
            wait = (1.0 - bucket.tokens) / self.per_second
            raise RateLimited(
                f"too many requests from {what}; retry in {wait:.1f} s",
                retry_after=math.ceil(wait),
            )
        bucket.tokens -= 1.0
        self.buckets[key] = bucket
