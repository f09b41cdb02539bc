"""The SQLite store's read side: one read-only connection per reading thread.

`SQLiteStore` (`store/sqlite.py`) is this plus the writer. In WAL mode a reader never
blocks the writer and sees committed transactions only. `summary` reads a store file
without opening it for writing (`sidecar status`).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sidecar.store.base import MutationRecord, PageData
from sidecar.store.lines import ChangeLines
from sidecar.store.sqlite_sql import PULL


class SQLiteReader:
    """The `StoreReader` methods but `state` (the writer keeps it) over the file at
    `path`; safe to call from any thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
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
            conn = sqlite3.connect(
                f"file:{self.path}?mode=ro",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("PRAGMA cache_size=-8192")
            self._local.conn = conn
        return conn

    def pull(self, scopes: Sequence[str], after: int, limit: int) -> PageData:
        """Changes after `after` in any of `scopes`, in version order, at most `limit`."""
        conn = self._reader()
        if len(scopes) == 1:
            rows = conn.execute(PULL, (scopes[0], after, limit + 1)).fetchall()
            has_more = len(rows) > limit
            rows = rows[:limit]
            last = rows[-1][0] if rows else after
            return PageData([self._lines.line(*r) for r in rows], last, has_more)
        by_version: dict[int, tuple[Any, ...]] = {}
        conn.execute("BEGIN")  # one snapshot across the scopes
        try:
            for scope in dict.fromkeys(scopes):
                for r in conn.execute(PULL, (scope, after, limit + 1)):
                    seen = by_version.get(r[0])
                    if seen is None or (seen[1] == 1 and r[1] == 0):
                        by_version[r[0]] = r
        finally:
            conn.execute("COMMIT")
        versions = sorted(by_version)
        has_more = len(versions) > limit
        versions = versions[:limit]
        last = versions[-1] if versions else after
        return PageData([self._lines.line(*by_version[v]) for v in versions], last, has_more)

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


def summary(path: Path) -> dict[str, Any] | None:
    """The store file's state, read-only (None when there is no store yet)."""
    if not path.exists():
        return None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        rows = conn.execute("SELECT count(*) FROM rows").fetchone()[0]
        tombstones = conn.execute("SELECT count(*) FROM entries WHERE deleted = 1").fetchone()[0]
        mutations = conn.execute("SELECT count(*) FROM mutations").fetchone()[0]
    except sqlite3.DatabaseError as exc:
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
