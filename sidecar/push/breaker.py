"""The push path's circuit breaker for the database.

Closed: pushes go to the pool. The first failure that says the database is gone (a
connection that cannot be made, a connection lost, a database that stopped answering)
opens it: from then on a push answers `503 unavailable` with `Retry-After` at once, instead
of each one waiting for a connection that cannot come, while a probe tries to connect in
the background with backoff. The first probe that connects and runs `SELECT 1` closes it
again (half-open → closed): pushes flow, through a pool that replaced its broken
connections (it checks each connection on checkout: `check_on_checkout`).

`/readyz` reports an open breaker ("database unavailable for writes"); the reason kept for
clients never names the database's host or port (only the log does).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import select
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool

from sidecar.errors import Unavailable
from sidecar.values import shut_down

log = structlog.get_logger("sidecar.push")

FIRST_PROBE = 0.25  # seconds after the breaker opens
MAX_PROBE_DELAY = 5.0  # backoff between probes stops growing here
PROBE_TIMEOUT = 5.0  # one probe (connect + SELECT 1) gives up after this
SEVER_GRACE = 2.0  # a severed attempt is given this long to unwind before it is left

T = TypeVar("T")


class Breaker:
    """closed → open (a failure) → probing in the background → closed (a probe connected)."""

    def __init__(
        self,
        probe: Callable[[], Awaitable[None]],
        *,
        first_delay: float = FIRST_PROBE,
        max_delay: float = MAX_PROBE_DELAY,
    ) -> None:
        self._probe = probe
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.reason: str | None = None  # None: closed
        self.opened_at: float | None = None
        self.next_probe_at = 0.0
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def open(self) -> bool:
        return self.reason is not None

    def failed(self, reason: str, error: BaseException | str | None = None) -> None:
        """The database looks gone: open (once) and probe in the background."""
        if self.reason is not None:
            return
        self.reason = reason
        self.opened_at = time.monotonic()
        self.next_probe_at = self.opened_at + self.first_delay
        log.warning("database unavailable for writes: failing pushes fast", error=str(error))
        self._changed.set()
        self._changed = asyncio.Event()
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to probe with
            self._task = asyncio.get_running_loop().create_task(self._probing())

    def check(self) -> None:
        """Raise `Unavailable` (503 + Retry-After) while open."""
        if self.reason is None:
            return
        wait = max(1, math.ceil(self.next_probe_at - time.monotonic()))
        raise Unavailable(
            f"database unavailable for writes ({self.reason}); nothing was applied — retry "
            "the same mutations later",
            retry_after=min(wait, math.ceil(self.max_delay)),
        )

    async def wait_open(self) -> None:
        """Return once the breaker is open (at once if it is)."""
        while self.reason is None:
            await self._changed.wait()

    async def _probing(self) -> None:
        delay = self.first_delay
        while True:
            await asyncio.sleep(max(0.0, self.next_probe_at - time.monotonic()))
            try:
                await asyncio.wait_for(self._probe(), PROBE_TIMEOUT)
            except (psycopg.Error, OSError, TimeoutError) as exc:
                delay = min(delay * 2, self.max_delay)
                self.next_probe_at = time.monotonic() + delay
                log.info("database still unavailable", error=str(exc).strip()[:200], retry_in=delay)
                continue
            down = time.monotonic() - (self.opened_at or time.monotonic())
            log.warning("database available again: pushes resume", down_seconds=round(down, 1))
            self.reason, self.opened_at, self._task = None, None, None
            return

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def within(
    work: Callable[[list[psycopg.AsyncConnection[Any]]], Coroutine[Any, Any, T]],
    seconds: float,
) -> T:
    """`work(held)` within `seconds`, or `TimeoutError` — whatever the database does.

    `work` appends the connection it uses to `held`. A server-side `statement_timeout`
    cannot end a statement on a server that receives nothing (a frozen host, a network
    partition), and cancelling the task would make psycopg ask that server to cancel the
    query and wait for it; so at the deadline the held connection is cut (`values.shut_down`)
    and the attempt, which then fails at once, is given `SEVER_GRACE` to unwind (return
    its connection, which the pool drops); one still not done is cancelled and left."""
    held: list[psycopg.AsyncConnection[Any]] = []
    task = asyncio.ensure_future(work(held))
    task.add_done_callback(_retrieve)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if task in done:
        return task.result()
    for conn in held:
        shut_down(conn)
    await asyncio.wait({task}, timeout=SEVER_GRACE)
    if not task.done():
        task.cancel()
    raise TimeoutError(f"no answer from the database within {seconds:g}s")


def _retrieve(task: asyncio.Future[Any]) -> None:
    """A task left to finish on its own: its outcome is not an unretrieved exception."""
    if not task.cancelled():
        task.exception()


def connect_probe(url: str, **kwargs: Any) -> Callable[[], Awaitable[None]]:
    """A probe that opens a connection of its own, runs `SELECT 1` and closes it."""

    async def probe() -> None:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True, **kwargs)
        try:
            await conn.execute("SELECT 1")
        finally:
            await conn.close()

    return probe


def reporting_connection(breaker: Breaker) -> type[psycopg.AsyncConnection[Any]]:
    """The pool's connection class: a connection that cannot be made opens `breaker`
    (the pool's own reconnection attempts are seen too, not only a push's)."""

    class _Connection(psycopg.AsyncConnection[Any]):
        @classmethod
        async def connect(cls, *args: Any, **kwargs: Any) -> Any:
            try:
                return await super().connect(*args, **kwargs)
            except psycopg.OperationalError as exc:
                breaker.failed("cannot connect to the database", exc)
                raise

    return _Connection


async def check_on_checkout(conn: psycopg.AsyncConnection[Any]) -> None:
    """The pool's check of a connection before a push gets it. An idle connection has
    nothing to read: if the server sent something meanwhile (it terminated the session,
    shut down or closed the socket) it is checked with a round trip, which raises for a
    dead one (the pool replaces it); one with nothing to read costs no round trip. (A
    host that stopped answering is caught by the push's own deadline, as before.)"""
    if conn.broken or conn.closed:
        raise psycopg.OperationalError("the connection is closed")
    readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    if readable:
        await AsyncConnectionPool.check_connection(conn)
