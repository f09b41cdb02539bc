"""One capturer per slot: a session advisory lock on the application's database, keyed by
the slot's name, held by the capture runner while it captures.

A second sidecar started on the same slot with a store of its own would otherwise drop
the slot and make its own the first moment the slot is not streamed (the first one
reconnecting), and the first one's store could then only be reconciled. With the lock,
the second one never touches the slot: it says why (`slot_in_use`: the log, `/readyz`)
and tries again every few seconds, until the holder stops (its session ends, and the
lock with it: a crash or SIGKILL included).

The lock lives in the session of one plain connection (`pg_try_advisory_lock`): no
table or other object is added to the application's schema. A slot streamed by a
process that holds no lock (an older sidecar, `pg_recvlogical`) is refused as well
(`pg_replication_slots.active`, checked by the runner).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from typing import Any

import psycopg
import structlog

from sidecar.errors import SlotInUse
from sidecar.values import NETWORK_KWARGS

log = structlog.get_logger("sidecar.capture")

__all__ = ["SlotClaim", "lock_key"]

KEEP_EVERY = 5.0  # seconds between checks of the lock's session while streaming

# Who holds the lock: the backend's pid and application name, for the message.
_HOLDER = (
    "SELECT l.pid, a.application_name FROM pg_locks l "
    "LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.database = "
    "(SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND l.classid = %s AND l.objid = %s AND l.objsubid = 1 LIMIT 1"
)


def lock_key(slot: str) -> int:
    """The advisory lock's key (a signed 64-bit integer) for the slot `slot`."""
    digest = hashlib.blake2b(f"sidecar slot {slot}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _halves(key: int) -> tuple[int, int]:
    """The key as `pg_locks` shows it: (classid, objid), its high and low 32 bits."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF


class SlotClaim:
    """The lock on one slot, in the session of a connection of its own."""

    def __init__(self, url: str, slot: str) -> None:
        self.url = url
        self.slot = slot
        self.key = lock_key(slot)
        self._conn: psycopg.AsyncConnection[Any] | None = None

    @property
    def held(self) -> bool:
        return self._conn is not None and not self._conn.closed

    async def acquire(self) -> None:
        """Hold the lock (a no-op while its session is alive); raises `SlotInUse` when
        another session holds it."""
        if self._conn is not None:
            try:
                await self._conn.execute("SELECT 1")
                return
            except psycopg.Error:  # the session, and the lock, are gone: take it again
                log.warning("the slot's lock was lost with its connection", slot=self.slot)
                await self.release()
        conn = await psycopg.AsyncConnection.connect(
            self.url, autocommit=True, application_name="sidecar-slot-lock", **NETWORK_KWARGS
        )
        try:
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,))
            row = await cur.fetchone()
            if row is not None and row[0]:
                self._conn = conn
                return
            cur = await conn.execute(_HOLDER, _halves(self.key))
            holder = await cur.fetchone()
        except BaseException:
            await conn.close()
            raise
        await conn.close()
        who = ""
        if holder is not None:
            who = f" (PostgreSQL backend {holder[0]}, {holder[1] or 'no application name'})"
        raise SlotInUse(
            f"replication slot {self.slot!r} is in use by another sidecar{who}: "
            "this one waits until it is free and never drops it",
            retry_after=5,
        )

    async def keep(self, every: float = KEEP_EVERY) -> None:
        """While streaming: check the lock's session every `every` seconds and take the
        lock again at once if the session was lost (ended by an operator, cut by a proxy).
        Streaming goes on meanwhile: the slot, active, cannot be dropped by anyone."""
        while True:
            await asyncio.sleep(every)
            try:
                async with asyncio.timeout(every):
                    await self.acquire()
            except SlotInUse as exc:
                log.warning("the slot's lock is held by another session", reason=exc.detail)
            except (psycopg.Error, OSError, TimeoutError):
                pass  # the next check tries again

    async def release(self) -> None:
        """Let the lock go (closing its session)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()
