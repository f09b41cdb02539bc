"""The pending mutation ids of the embedded store, in a small SQLite file of their own
beside the store (`<store>.pending`): the push path writes it (on a worker thread) while
capture holds the store's single writer, so neither waits for the other.

Each push that applies mutations records them here, fsynced, before its COMMIT. A retry
finds the record and asks PostgreSQL whether that transaction committed
(`pg_xact_status`), so idempotency never depends on capture having caught up. Records
that capture has stored are pruned: from then on the store's `mutations` table answers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from sidecar.store.base import PendingRecord
from sidecar.store.sqlite_files import connect, prepare

SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    subject TEXT NOT NULL,
    id TEXT NOT NULL,
    xid INTEGER NOT NULL,
    rev TEXT,
    origin TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (subject, id)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def pending_path(store_path: Path) -> Path:
    """Where the pending ids of the store at `store_path` live."""
    return store_path.with_name(store_path.name + ".pending")


class SQLitePending:
    """`PendingMutations` over one SQLite file (WAL mode, `synchronous=FULL`)."""

    def __init__(self, path: Path, key: str | None = None) -> None:
        self.path = path
        prepare(path)  # 0700 directory, 0600 files, as the store's
        self._lock = threading.Lock()
        self._covered: int | None = None
        self._db = connect(
            path, key, what="pending file", isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)

    def record(self, records: Sequence[PendingRecord]) -> None:
        now = time.time()
        rows = [(r.subject, r.id, r.xid, r.rev, r.origin, now) for r in records]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT OR REPLACE INTO pending (subject, id, xid, rev, origin, at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def lookup(self, subject: str, ids: Sequence[str]) -> dict[str, PendingRecord]:
        if not ids:
            return {}
        marks = ", ".join("?" * len(ids))
        with self._lock:
            rows = self._db.execute(
                f"SELECT id, xid, rev, origin FROM pending WHERE subject = ? AND id IN ({marks})",
                (subject, *ids),
            ).fetchall()
        return {r[0]: PendingRecord(subject, r[0], int(r[1]), r[2], r[3]) for r in rows}

    def forget(self, subject: str, ids: Sequence[str]) -> None:
        if not ids:
            return
        with self._lock:
            self._db.executemany(
                "DELETE FROM pending WHERE subject = ? AND id = ?", [(subject, i) for i in ids]
            )

    def covered_from(self) -> int | None:
        if self._covered is not None:  # set once, never changed: read on every push
            return self._covered
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'covered_from'").fetchone()
        self._covered = None if row is None else int(row[0])
        return self._covered

    def cover_from(self, lsn: int) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('covered_from', ?)", (str(lsn),)
            )

    def prune(self, captured: Callable[[str, str], bool], older_than: float) -> int:
        with self._lock:
            rows = self._db.execute("SELECT subject, id, at FROM pending").fetchall()
        gone = [(s, i) for s, i, at in rows if at < older_than or captured(s, i)]
        if gone:
            with self._lock:
                self._db.executemany("DELETE FROM pending WHERE subject = ? AND id = ?", gone)
        return len(gone)

    def close(self) -> None:
        with self._lock:
            self._db.close()
