"""The pending mutation ids of the PostgreSQL store (`PendingMutations`), in a table of
the store's schema (`pending`; `pending_meta` holds `covered_from`) rather than a file
beside it: each call is its own transaction on a connection of a small pool, committed
(durably, as PostgreSQL commits) before it returns. See `store/sqlite_pending.py` for
what the push path does with them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from sidecar.store.base import PendingRecord
from sidecar.store.pg_conn import DEFAULT_SCHEMA, connect, create, reader_pool
from sidecar.store.pg_sql import PENDING_SCHEMA


class PGPending:
    """`PendingMutations` in the store's PostgreSQL schema."""

    def __init__(self, url: str, schema: str = DEFAULT_SCHEMA, size: int = 4) -> None:
        with connect(url, schema) as conn:
            create(conn, schema, PENDING_SCHEMA)
        self._pool = reader_pool(url, schema, size)
        self._covered: int | None = None

    def record(self, records: Sequence[PendingRecord]) -> None:
        now = time.time()
        rows = [(r.subject, r.id, r.xid, r.rev, r.origin, now) for r in records]
        if not rows:
            return
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO pending (subject, id, xid, rev, origin, at) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (subject, id) DO UPDATE SET "
                "xid = excluded.xid, rev = excluded.rev, origin = excluded.origin, "
                "at = excluded.at",
                rows,
            )

    def lookup(self, subject: str, ids: Sequence[str]) -> dict[str, PendingRecord]:
        if not ids:
            return {}
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT id, xid, rev, origin FROM pending "
                "WHERE subject = %s AND id = ANY(%s::text[])",
                (subject, list(ids)),
            ).fetchall()
        return {r[0]: PendingRecord(subject, r[0], int(r[1]), r[2], r[3]) for r in rows}

    def forget(self, subject: str, ids: Sequence[str]) -> None:
        if not ids:
            return
        with self._pool.connection() as conn:
            conn.execute(
                "DELETE FROM pending WHERE subject = %s AND id = ANY(%s::text[])",
                (subject, list(ids)),
            )

    def covered_from(self) -> int | None:
        if self._covered is not None:  # set once, never changed: read on every push
            return self._covered
        with self._pool.connection() as conn:
            row = conn.execute(
                "SELECT value FROM pending_meta WHERE key = 'covered_from'"
            ).fetchone()
        self._covered = None if row is None else int(row[0])
        return self._covered

    def cover_from(self, lsn: int) -> None:
        with self._pool.connection() as conn:
            conn.execute(
                "INSERT INTO pending_meta (key, value) VALUES ('covered_from', %s) "
                "ON CONFLICT (key) DO NOTHING",
                (str(lsn),),
            )

    def prune(self, captured: Callable[[str, str], bool], older_than: float) -> int:
        with self._pool.connection() as conn:
            rows = conn.execute("SELECT subject, id, at FROM pending").fetchall()
        gone = [(s, i) for s, i, at in rows if at < older_than or captured(s, i)]
        if gone:
            with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                cur.executemany("DELETE FROM pending WHERE subject = %s AND id = %s", gone)
        return len(gone)

    def close(self) -> None:
        self._pool.close()
