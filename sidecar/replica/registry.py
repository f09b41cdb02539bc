"""Each replica's row in the shared store's `replicas` table, and its metrics.

Every few seconds (`HEARTBEAT`) a replica upserts its row: id, host, pid, role (`leader`
or `follower`), term, when it started, the heartbeat, the store position it sees and its
capture lag. `sidecar status` lists the rows (`store/pg_read.py`: `replicas`), a row
whose heartbeat is older than `STALE` seconds as gone; a replica deletes its own row when
it stops, and rows silent for a day are removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from collections.abc import Callable

import structlog

from sidecar.observability import Metrics
from sidecar.store.pg import PGStore

log = structlog.get_logger("sidecar.replica")

HEARTBEAT = 2.0  # seconds between upserts of a replica's row

UPSERT = (
    "INSERT INTO replicas (id, host, pid, role, term, started_at, heartbeat_at, lsn, "
    "lag_seconds) VALUES (%s, %s, %s, %s, %s, now(), now(), %s, %s) ON CONFLICT (id) DO "
    "UPDATE SET role = excluded.role, term = excluded.term, heartbeat_at = now(), "
    "lsn = excluded.lsn, lag_seconds = excluded.lag_seconds"
)
FORGET_OLD = "DELETE FROM replicas WHERE heartbeat_at < now() - interval '1 day'"


def replica_id() -> str:
    """This process's id: host, pid and a random tag (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"


async def heartbeat(
    store: PGStore,
    ident: str,
    metrics: Metrics,
    position: Callable[[], tuple[int, float]],
) -> None:
    """Upsert this replica's row every HEARTBEAT seconds until cancelled, then delete it;
    keeps `sidecar_leader` current. `position`: (store LSN seen, capture lag in s)."""
    metrics.replica_info.labels(replica=ident).set(1)
    host, pid = socket.gethostname(), os.getpid()

    def beat() -> None:
        term = store.term
        lsn, lag = position()
        with store.pool.connection() as conn:
            conn.execute(
                UPSERT,
                (ident, host, pid, "leader" if term else "follower", term, lsn, lag),
            )
            conn.execute(FORGET_OLD)

    def forget() -> None:
        with store.pool.connection() as conn:
            conn.execute("DELETE FROM replicas WHERE id = %s", (ident,))

    try:
        while True:
            metrics.leader.set(1 if store.term is not None else 0)
            try:
                await asyncio.to_thread(beat)
            except Exception:  # housekeeping: never stops the service
                log.debug("replica heartbeat not written", exc_info=True)
            await asyncio.sleep(HEARTBEAT)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.to_thread(forget), 5)
