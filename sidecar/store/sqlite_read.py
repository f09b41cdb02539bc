"""The SQLite store's read side: one read-only connection per reading thread.

`SQLiteStore` (`store/sqlite.py`) is this plus the writer. In WAL mode a reader never
blocks the writer and sees committed transactions only. `summary` reads a store file
without opening it for writing (`sidecar status`).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from sidecar.errors import StoreKeyInvalid
from sidecar.store.base import MutationRecord, PageData, StoreView
from sidecar.store.lines import ChangeLines, merged
from sidecar.store.sqlite_files import DATABASE_ERRORS, connect
from sidecar.store.sqlite_grants import SQLiteView
from sidecar.store.sqlite_sql import PULL, PULL_LIVE

T = TypeVar("T")
_NO_END = 1 << 62  # an upper bound on versions for PULL_LIVE


class SQLiteReader:
    """The `StoreReader` methods but `state` (the writer keeps it) over the file at
    `path`; safe to call from any thread."""

    def __init__(self, path: Path, key: str | None = None) -> None:
        self.path = path
        self._key = key
        self._local = threading.local()
        self._lines = ChangeLines()

    def _close_reader(self) -> None:
        """Close the calling thread's connection (if it opened one)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(
                self.path, self._key, readonly=True, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA cache_size=-8192")
            self._local.conn = conn
        return conn

    def pull(
        self,
        scopes: Sequence[str],
        after: int,
        limit: int,
        max_bytes: int | None = None,
        live_only: bool = False,
    ) -> PageData:
        """Changes after `after` in any of `scopes`, in version order, at most `limit`, and
        at most `max_bytes` of change lines (each counted with one separator byte) unless
        the first line alone is larger; `live_only`: no tombstones (an initial sync). Rows
        are stepped through one at a time (the pull statements merge index scans, no sort):
        a big page is never read whole to be cut."""
        conn = self._reader()
        sql, more = (PULL_LIVE, (_NO_END,)) if live_only else (PULL, ())
        if len(scopes) == 1:
            cursor = conn.execute(sql, (scopes[0], after, limit + 1, *more))
            try:
                return self._page(cursor, after, limit, max_bytes)
            finally:
                cursor.close()
        conn.execute("BEGIN")  # one snapshot across the scopes
        cursors: list[sqlite3.Cursor] = []
        try:
            cursors += [
                conn.execute(sql, (s, after, limit + 1, *more)) for s in dict.fromkeys(scopes)
            ]
            # Each scope's rows come in version order: merged, a version shared by several
            # scopes (a row in several of them) comes once, its upsert before a tombstone.
            return self._page(merged(cursors), after, limit, max_bytes)
        finally:
            for cursor in cursors:
                cursor.close()
            conn.execute("COMMIT")

    def _page(
        self, rows: Iterable[tuple[Any, ...]], after: int, limit: int, max_bytes: int | None
    ) -> PageData:
        return PageData(*self._lines.page(rows, after, limit, max_bytes))

    def view(self, read: Callable[[StoreView], T]) -> T:
        """`read` run over one consistent snapshot of the store (a read transaction)."""
        conn = self._reader()
        conn.execute("BEGIN")
        try:
            return read(SQLiteView(conn, self._lines))
        finally:
            conn.execute("COMMIT")

    def mutation(self, subject: str, mutation_id: str) -> MutationRecord | None:
        row = (
            self._reader()
            .execute(
                "SELECT id, subject, device, lsn, outcome FROM mutations "
                "WHERE subject = ? AND id = ?",
                (subject, mutation_id),
            )
            .fetchone()
        )
        if row is None:
            return None
        return MutationRecord(row[0], row[1], row[2], int(row[3]), bytes(row[4]))

    def mutations(self, subject: str, ids: Sequence[str]) -> dict[str, MutationRecord]:
        """`mutation` of many ids in one read: the recorded ones, by id."""
        out: dict[str, MutationRecord] = {}
        conn = self._reader()
        for start in range(0, len(ids), 500):
            chunk = list(ids[start : start + 500])
            marks = ", ".join("?" * len(chunk))
            rows = conn.execute(
                "SELECT id, subject, device, lsn, outcome FROM mutations "
                f"WHERE subject = ? AND id IN ({marks})",
                (subject, *chunk),
            )
            for row in rows:
                out[row[0]] = MutationRecord(row[0], row[1], row[2], int(row[3]), bytes(row[4]))
        return out

    def row_xids(self, collection: str, keys: Sequence[str], subject: str) -> dict[str, int]:
        """For row keys (JSON objects as change lines carry them), the transaction id of
        the last mutation `subject` applied to each (keys without one are absent)."""
        out: dict[str, int] = {}
        conn = self._reader()
        for start in range(0, len(keys), 500):
            chunk = list(keys[start : start + 500])
            marks = ", ".join("?" * len(chunk))
            rows = conn.execute(
                "SELECT json_extract(outcome, '$.key'), json_extract(outcome, '$.xid') "
                "FROM mutations WHERE subject = ? AND json_extract(outcome, '$.collection') = ? "
                f"AND json_extract(outcome, '$.key') IN ({marks}) ORDER BY lsn",
                (subject, collection, *chunk),
            ).fetchall()
            for key, xid in rows:
                if xid is not None:
                    out[key] = int(xid)
        return out

    def audit(self, collection: str, key: bytes, limit: int) -> list[MutationRecord]:
        """The recorded mutations of one row (key: JSON object), newest first."""
        rows = (
            self._reader()
            .execute(
                "SELECT id, subject, device, lsn, outcome FROM mutations "
                "WHERE json_extract(outcome, '$.collection') = ? "
                "AND json(json_extract(outcome, '$.key')) = json(?) "
                "ORDER BY lsn DESC LIMIT ?",
                (collection, key.decode(), limit),
            )
            .fetchall()
        )
        return [MutationRecord(r[0], r[1], r[2], int(r[3]), bytes(r[4])) for r in rows]

    def counts(self) -> dict[str, int]:
        conn = self._reader()
        rows = conn.execute("SELECT count(*) FROM rows").fetchone()[0]
        tombs = conn.execute("SELECT count(*) FROM entries WHERE deleted = 1").fetchone()[0]
        size = sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())
        return {"rows": int(rows), "tombstones": int(tombs), "bytes": size}


def summary(path: Path, key: str | None = None) -> dict[str, Any] | None:
    """The store file's state, read-only (None when there is no store yet)."""
    if not path.exists():
        return None
    try:
        conn = connect(path, key, readonly=True)
    except StoreKeyInvalid as exc:
        return {"error": exc.detail}
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        rows = conn.execute("SELECT count(*) FROM rows").fetchone()[0]
        tombstones = conn.execute("SELECT count(*) FROM entries WHERE deleted = 1").fetchone()[0]
        mutations = conn.execute("SELECT count(*) FROM mutations").fetchone()[0]
    except DATABASE_ERRORS as exc:
        return {"error": f"not a sidecar store: {exc}"}
    finally:
        conn.close()
    size = sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
    return {
        "path": str(path),
        "bytes": size,
        "rows": rows,
        "tombstones": tombstones,
        "mutations": mutations,
        "epoch": meta.get("epoch"),
        "version": int(meta.get("version", 0)),
        "lsn": int(meta.get("lsn", 0)),
        "initial_copy_done": meta.get("snapshot_done") == "1",
    }
