"""Token buckets: `limits.rate` per subject, `limits.unauthenticated_rate` per client IP
address → 429 `rate_limited` with `Retry-After`.

Every request a limit applies to is told where it stands (`Quota`: the IETF draft's
`RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` and `RateLimit-Policy`
headers, draft-ietf-httpapi-ratelimit-headers), its 429 too.

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


@dataclass(frozen=True, slots=True)
class Quota:
    """Where a caller stands after a request: `limit` requests per `window` seconds (the
    bucket's size), `remaining` whole requests now, `reset` seconds until the bucket is
    full again (0 when it is)."""

    limit: int
    remaining: int
    reset: int
    window: float

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset),
            "RateLimit-Policy": f"{self.limit};w={self.window:g}",
        }


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
        self.rate = rate
        self.per_second = rate.count / rate.per_seconds
        self.clock = clock
        idle = max(60.0, rate.per_seconds * 2)  # a full bucket is forgotten after this
        self.buckets: TTLCache[str, _Bucket] = TTLCache(maxsize=max_callers, ttl=idle, timer=clock)

    def take(self, key: str, what: str = "this subject (limits.rate)") -> Quota:
        """Spend one token of `key` (a subject, or an IP address) and say what is left, or
        raise RateLimited with a Retry-After (and the quota's headers); `what` names the
        caller and the limit in the message."""
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
                rate_headers=self._quota(bucket.tokens).headers(),
            )
        bucket.tokens -= 1.0
        self.buckets[key] = bucket
        return self._quota(bucket.tokens)

    def _quota(self, tokens: float) -> Quota:
        return Quota(
            limit=self.rate.count,
            remaining=max(0, math.floor(tokens)),
            reset=math.ceil(max(0.0, self.capacity - tokens) / self.per_second),
            window=self.rate.per_seconds,
        )
