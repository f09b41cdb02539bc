"""A replication stream that went silent: noticed, reported and dropped.

A database that stops answering without closing the connection (a frozen host, a network
partition) leaves the stream's reader waiting forever, and TCP keepalives do not always
notice (a proxy or a load balancer in between answers them). PostgreSQL judges its side
of the stream by `wal_sender_timeout` (a standby silent that long is dropped); the
sidecar judges the server by the same value, read from the server at each connect
(`sender_timeout`; 60 s when it cannot be read or is 0, i.e. disabled there).

On an idle stream the server speaks only when asked: the runner asks for a keepalive at
least every third of the limit (`reply_every`), so a healthy server is never silent that
long. `Silence` measures how long the reader has been waiting on the socket — not while
it waits for room in the inbox (the writer is behind: the server is not to blame) — and
`watch` aborts the stream once that passes the limit: the reader raises
`ReplicationSilent`, the runner reports it (`/readyz`) and reconnects with its backoff.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

import psycopg

from sidecar.capture.source import ReplicationError

DEFAULT_LIMIT = 60.0  # seconds, when the server's wal_sender_timeout cannot be used
CHECK_EVERY = 1.0  # the watchdog looks at most this long apart (less for a short limit)


class ReplicationSilent(ReplicationError):
    """Nothing came from the server for longer than the limit."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        super().__init__(
            f"the replication stream went silent: nothing from the database for {limit:g}s "
            "(wal_sender_timeout)"
        )


class Abortable(Protocol):
    def abort(self, error: ReplicationError) -> None: ...


async def sender_timeout(conn: psycopg.AsyncConnection) -> float:
    """The server's `wal_sender_timeout` in seconds on this (replication) connection, or
    DEFAULT_LIMIT when it cannot be read or is disabled (0)."""
    try:
        cur = await conn.execute(
            "SELECT setting::float8 / 1000 FROM pg_settings WHERE name = 'wal_sender_timeout'"
        )
        row = await cur.fetchone()
    except psycopg.Error:
        return DEFAULT_LIMIT
    if row is None or row[0] is None or float(row[0]) <= 0:
        return DEFAULT_LIMIT
    return float(row[0])


def reply_every(limit: float, idle_interval: float) -> float:
    """How often an idle stream asks the server for a keepalive."""
    return min(idle_interval, limit / 3)


class Silence:
    """How long the reader has been waiting for the server."""

    __slots__ = ("limit", "since")

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.since: float | None = None  # monotonic time the reader began waiting

    def waiting(self) -> None:
        self.since = time.monotonic()

    def heard(self) -> None:
        self.since = None

    def silent_for(self, now: float) -> float:
        return 0.0 if self.since is None else now - self.since


async def watch(silence: Silence, source: Abortable) -> None:
    """Abort `source` once the reader has waited past the limit (then return)."""
    every = min(CHECK_EVERY, silence.limit / 4)
    while silence.silent_for(time.monotonic()) <= silence.limit:
        await asyncio.sleep(every)
    source.abort(ReplicationSilent(silence.limit))
