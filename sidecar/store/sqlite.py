"""The embedded default store: one SQLite file in WAL mode.

Tables:
- `rows`: the latest image of every synced row (compacted), keyed by (collection, ident);
- `entries`: per scope, the row's latest change line (an upsert, or a tombstone for a
  scope the row left), keyed by (scope, version) so a pull is one index range scan, and
  unique by (scope, collection, ident) so a newer change replaces the older one;
- `marks`: version → wall time, to find the tombstones older than the retention period;
- `mutations`: applied mutation ids and their first outcome;
- `meta`: epoch, last applied LSN, version counter, snapshot state, slot identity.

A write batch and its LSN commit in one SQLite transaction (`synchronous=FULL`, so an
acknowledged LSN survives a crash of the process or of the machine).
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import orjson

from sidecar.changes import Image
from sidecar.store.base import MutationRecord, PageData, RowWrite, StoredRow, StoreState

# Bumped when the file layout changes; a store of another format is rebuilt.
FORMAT = "2"

# Tables are plain rowid tables so that the initial copy appends; their indexes are built
# after it (a bulk load runs without them).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rows (
    collection TEXT NOT NULL,
    ident TEXT NOT NULL,
    version INTEGER NOT NULL,
    rev TEXT NOT NULL,
    key BLOB NOT NULL,
    scopes TEXT NOT NULL,
    row BLOB NOT NULL,
    hidden BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    scope TEXT NOT NULL,
    version INTEGER NOT NULL,
    collection TEXT NOT NULL,
    ident TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    line BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS marks (version INTEGER PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS mutations (
    id TEXT PRIMARY KEY,
    subject TEXT,
    device TEXT,
    lsn INTEGER NOT NULL,
    outcome BLOB NOT NULL,
    at REAL NOT NULL
);
"""

_INDEXES = """
CREATE UNIQUE INDEX IF NOT EXISTS rows_ident ON rows (collection, ident);
CREATE INDEX IF NOT EXISTS entries_scope ON entries (scope, version);
CREATE UNIQUE INDEX IF NOT EXISTS entries_row ON entries (scope, collection, ident);
CREATE INDEX IF NOT EXISTS entries_tombstones ON entries (version) WHERE deleted = 1;
"""

_TABLES = ("rows", "entries", "marks", "mutations", "meta")

_UPSERT_ROW = (
    "INSERT INTO rows (collection, ident, version, rev, key, scopes, row, hidden) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (collection, ident) DO UPDATE SET "
    "version = excluded.version, rev = excluded.rev, key = excluded.key, "
    "scopes = excluded.scopes, row = excluded.row, hidden = excluded.hidden"
)
_INSERT_ROW = (
    "INSERT INTO rows (collection, ident, version, rev, key, scopes, row, hidden) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPDATE_ROW = (
    "UPDATE rows SET version = ?, rev = ?, key = ?, scopes = ?, row = ?, hidden = ? "
    "WHERE collection = ? AND ident = ?"
)
_HIDDEN_ONLY = "UPDATE rows SET hidden = ? WHERE collection = ? AND ident = ?"
_DELETE_ROW = "DELETE FROM rows WHERE collection = ? AND ident = ?"
_PUT_ENTRY = (
    "INSERT OR REPLACE INTO entries (scope, version, collection, ident, deleted, line) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
_UPDATE_ENTRY = (
    "UPDATE entries SET version = ?, deleted = ?, line = ? "
    "WHERE scope = ? AND collection = ? AND ident = ?"
)
_INSERT_ENTRY = (
    "INSERT INTO entries (scope, version, collection, ident, deleted, line) "
    "VALUES (?, ?, ?, ?, 0, ?)"
)


def upsert_line(collection_json: bytes, key: bytes, row: bytes, rev: str, version: int) -> bytes:
    return b"".join(
        (
            b'{"collection":',
            collection_json,
            b',"op":"upsert","key":',
            key,
            b',"row":',
            row,
            b',"rev":"',
            rev.encode(),
            b'","version":"',
            str(version).encode(),
            b'"}',
        )
    )


def delete_line(collection_json: bytes, key: bytes, rev: str, version: int) -> bytes:
    return b"".join(
        (
            b'{"collection":',
            collection_json,
            b',"op":"delete","key":',
            key,
            b',"rev":"',
            rev.encode(),
            b'","version":"',
            str(version).encode(),
            b'"}',
        )
    )


class _Runs:
    """Statements to run in order, consecutive ones with the same SQL batched."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, list[tuple[object, ...]]]] = []

    def add(self, sql: str, params: tuple[object, ...]) -> None:
        if self.runs and self.runs[-1][0] is sql:
            self.runs[-1][1].append(params)
        else:
            self.runs.append((sql, [params]))

    def run(self, conn: sqlite3.Connection) -> None:
        for sql, params in self.runs:
            conn.executemany(sql, params)


class SQLiteStore:
    """ChangeStore on one SQLite file. Writer methods must be called from one thread."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._w = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._w.execute("PRAGMA journal_mode=WAL")
        self._w.execute("PRAGMA synchronous=FULL")
        self._w.execute("PRAGMA cache_size=-65536")
        self._w.execute("PRAGMA temp_store=MEMORY")
        self._w.executescript(_SCHEMA)
        if self._meta("format") not in (None, FORMAT):
            self._drop_all()
            self._w.executescript(_SCHEMA)
        self._local = threading.local()
        self._in_txn = False
        self._coll_json: dict[str, bytes] = {}
        if self._meta("epoch") is None:
            self._init_meta()
        self._w.executescript(_INDEXES)
        self._indexed = True
        self._version = int(self._meta("version") or 0)
        self._state = self._load_state()

    # -- meta ----------------------------------------------------------------------------

    def _meta(self, key: str) -> str | None:
        row = self._w.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, **values: object) -> None:
        self._w.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            [(k, str(v)) for k, v in values.items() if v is not None],
        )

    def _init_meta(self) -> None:
        self._w.execute("BEGIN IMMEDIATE")
        self._set_meta(
            format=FORMAT,
            epoch=secrets.token_hex(4),
            lsn=0,
            version=0,
            snapshot_done=0,
            purged_version=0,
        )
        self._w.execute("COMMIT")

    def state(self) -> StoreState:
        """The committed state (cached: safe to call from any thread)."""
        return self._state

    def _load_state(self) -> StoreState:
        m = dict(self._w.execute("SELECT key, value FROM meta").fetchall())
        return StoreState(
            epoch=m["epoch"],
            lsn=int(m.get("lsn", 0)),
            version=int(m.get("version", 0)),
            snapshot_done=m.get("snapshot_done") == "1",
            purged_version=int(m.get("purged_version", 0)),
            slot=m.get("slot"),
            system_id=m.get("system_id"),
            database=m.get("database"),
        )

    def reset(self, *, slot: str, system_id: str, database: str) -> StoreState:
        """Wipe everything and start a new epoch (old cursors become invalid)."""
        if self._in_txn:
            self.rollback()
        self._drop_all()
        self._w.executescript(_SCHEMA)  # without the secondary indexes: a bulk load follows
        self._indexed = False
        self._init_meta()
        self._w.execute("BEGIN IMMEDIATE")
        self._set_meta(slot=slot, system_id=system_id, database=database)
        self._w.execute("COMMIT")
        self._version = 0
        self._state = self._load_state()
        return self._state

    def _drop_all(self) -> None:
        for table in _TABLES:
            self._w.execute(f"DROP TABLE IF EXISTS {table}")

    def close(self) -> None:
        if self._in_txn:
            self.rollback()
        self._w.close()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- writer side ---------------------------------------------------------------------

    def _begin(self) -> None:
        if not self._in_txn:
            self._w.execute("BEGIN IMMEDIATE")
            self._in_txn = True

    def _ensure_indexes(self) -> None:
        """Create the secondary indexes (inside the open transaction) if a bulk load left
        them out."""
        if not self._indexed:
            for stmt in _INDEXES.strip().split(";"):
                if stmt.strip():
                    self._w.execute(stmt)
            self._indexed = True

    def _cj(self, collection: str) -> bytes:
        cj = self._coll_json.get(collection)
        if cj is None:
            cj = self._coll_json[collection] = orjson.dumps(collection)
        return cj

    def get_rows(self, collection: str, idents: Iterable[str]) -> dict[str, StoredRow]:
        wanted = list(dict.fromkeys(idents))
        out: dict[str, StoredRow] = {}
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for ident, version, rev, key, scopes, row, hidden in self._w.execute(
                "SELECT ident, version, rev, key, scopes, row, hidden FROM rows "
                f"WHERE collection = ? AND ident IN ({marks})",
                (collection, *chunk),
            ):
                out[ident] = StoredRow(
                    ident, version, rev, key, tuple(orjson.loads(scopes)), row, hidden
                )
        return out

    def write(self, writes: Sequence[RowWrite]) -> set[str]:
        """Apply row changes in order; returns the scopes whose content changed."""
        self._begin()
        self._ensure_indexes()
        touched: set[str] = set()
        rows = _Runs()
        entries = _Runs()
        version = self._version
        for w in writes:
            coll, old, new = w.collection, w.old, w.new
            cj = self._cj(coll)
            if new is None:
                if old is None:
                    continue
                version += 1
                line = delete_line(cj, old.key, old.rev, version)
                for s in old.scopes:
                    entries.add(_UPDATE_ENTRY, (version, 1, line, s, coll, old.ident))
                touched.update(old.scopes)
                rows.add(_DELETE_ROW, (coll, old.ident))
                continue
            if old is not None and old.rev == new.rev and old.scopes == new.scopes:
                if old.hidden != new.hidden:
                    rows.add(_HIDDEN_ONLY, (new.hidden, coll, new.ident))
                continue
            version += 1
            line = upsert_line(cj, new.key, new.row, new.rev, version)
            old_scopes = old.scopes if old is not None else ()
            for s in new.scopes:
                if s in old_scopes:  # the row's entry in this scope exists: move it
                    entries.add(_UPDATE_ENTRY, (version, 0, line, s, coll, new.ident))
                else:  # new here (perhaps over an old tombstone)
                    entries.add(_PUT_ENTRY, (s, version, coll, new.ident, 0, line))
            touched.update(new.scopes)
            scopes_json = orjson.dumps(new.scopes).decode()
            if old is None:
                rows.add(
                    _UPSERT_ROW,
                    (coll, new.ident, version, new.rev, new.key, scopes_json, new.row, new.hidden),
                )
                continue
            left = [s for s in old_scopes if s not in new.scopes]
            if left:
                tomb = delete_line(cj, old.key, old.rev, version)
                for s in left:
                    entries.add(_UPDATE_ENTRY, (version, 1, tomb, s, coll, old.ident))
                touched.update(left)
            rows.add(
                _UPDATE_ROW,
                (version, new.rev, new.key, scopes_json, new.row, new.hidden, coll, new.ident),
            )
        rows.run(self._w)
        entries.run(self._w)
        self._version = version
        return touched

    def load(self, collection: str, images: Sequence[Image]) -> None:
        """Bulk insert for the initial copy into an empty store (no old images)."""
        self._begin()
        cj = self._cj(collection)
        version = self._version
        rows: list[tuple[object, ...]] = []
        entries: list[tuple[object, ...]] = []
        for im in images:
            version += 1
            line = upsert_line(cj, im.key, im.row, im.rev, version)
            for s in im.scopes:
                entries.append((s, version, collection, im.ident, line))
            rows.append(
                (
                    collection,
                    im.ident,
                    version,
                    im.rev,
                    im.key,
                    orjson.dumps(im.scopes).decode(),
                    im.row,
                    im.hidden,
                )
            )
        self._w.executemany(_INSERT_ROW, rows)
        self._w.executemany(_INSERT_ENTRY, entries)
        self._version = version

    def truncate(self, collection: str) -> set[str]:
        """Every row of the collection becomes a tombstone in each of its scopes."""
        self._begin()
        self._ensure_indexes()
        cj = self._cj(collection)
        touched: set[str] = set()
        version = self._version
        batch: list[tuple[str, int, str, str, int, bytes]] = []
        for ident, rev, key, scopes in self._w.execute(
            "SELECT ident, rev, key, scopes FROM rows WHERE collection = ?", (collection,)
        ).fetchall():
            version += 1
            line = delete_line(cj, bytes(key), rev, version)
            for s in orjson.loads(scopes):
                batch.append((s, version, collection, ident, 1, line))
                touched.add(s)
        self._w.executemany(_PUT_ENTRY, batch)
        self._w.execute("DELETE FROM rows WHERE collection = ?", (collection,))
        self._version = version
        return touched

    def record_mutations(self, records: Sequence[MutationRecord]) -> None:
        if not records:
            return
        self._begin()
        now = time.time()
        self._w.executemany(
            "INSERT OR IGNORE INTO mutations (id, subject, device, lsn, outcome, at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(r.id, r.subject, r.device, r.lsn, r.outcome, now) for r in records],
        )

    def commit(self, lsn: int | None = None, *, snapshot_done: bool | None = None) -> None:
        """Commit the open batch together with the LSN it reaches."""
        self._begin()
        self._set_meta(
            lsn=lsn,
            version=self._version,
            snapshot_done=None if snapshot_done is None else int(snapshot_done),
        )
        self._w.execute(
            "INSERT OR REPLACE INTO marks (version, at) VALUES (?, ?)", (self._version, time.time())
        )
        if snapshot_done:
            self._ensure_indexes()
        self._w.execute("COMMIT")
        self._in_txn = False
        self._state = self._load_state()

    def rollback(self) -> None:
        if self._in_txn:
            self._w.execute("ROLLBACK")
            self._in_txn = False
        self._version = int(self._meta("version") or 0)

    def purge_tombstones(self, older_than: float) -> int:
        """Forget tombstones older than `older_than` seconds; cursors before them expire."""
        if self._in_txn:
            return 0
        cutoff_at = time.time() - older_than
        row = self._w.execute(
            "SELECT max(version) FROM marks WHERE at < ?", (cutoff_at,)
        ).fetchone()
        cutoff = row[0] if row and row[0] is not None else None
        if cutoff is None:
            return 0
        self._w.execute("BEGIN IMMEDIATE")
        cur = self._w.execute("DELETE FROM entries WHERE deleted = 1 AND version <= ?", (cutoff,))
        self._w.execute("DELETE FROM marks WHERE version < ?", (cutoff,))
        self._w.execute("DELETE FROM mutations WHERE at < ?", (cutoff_at,))
        purged = max(cutoff, int(self._meta("purged_version") or 0))
        self._set_meta(purged_version=purged)
        self._w.execute("COMMIT")
        self._state = self._load_state()
        return cur.rowcount

    # -- reader side ---------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                f"file:{self.path}?mode=ro",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("PRAGMA cache_size=-32768")
            self._local.conn = conn
        return conn

    def pull(self, scopes: Sequence[str], after: int, limit: int) -> PageData:
        """Changes after `after` in any of `scopes`, in version order, at most `limit`."""
        conn = self._reader()
        query = (
            "SELECT version, deleted, line FROM entries "
            "WHERE scope = ? AND version > ? ORDER BY version LIMIT ?"
        )
        if len(scopes) == 1:
            rows = conn.execute(query, (scopes[0], after, limit + 1)).fetchall()
            has_more = len(rows) > limit
            rows = rows[:limit]
            last = rows[-1][0] if rows else after
            return PageData([bytes(r[2]) for r in rows], last, has_more)
        by_version: dict[int, tuple[int, bytes]] = {}
        conn.execute("BEGIN")  # one snapshot across the scopes
        try:
            for scope in dict.fromkeys(scopes):
                for version, deleted, line in conn.execute(query, (scope, after, limit + 1)):
                    seen = by_version.get(version)
                    if seen is None or (seen[0] == 1 and deleted == 0):
                        by_version[version] = (deleted, line)
        finally:
            conn.execute("COMMIT")
        versions = sorted(by_version)
        has_more = len(versions) > limit
        versions = versions[:limit]
        last = versions[-1] if versions else after
        return PageData([bytes(by_version[v][1]) for v in versions], last, has_more)

    def mutation(self, mutation_id: str) -> MutationRecord | None:
        row = (
            self._reader()
            .execute(
                "SELECT id, subject, device, lsn, outcome FROM mutations WHERE id = ?",
                (mutation_id,),
            )
            .fetchone()
        )
        if row is None:
            return None
        return MutationRecord(row[0], row[1], row[2], int(row[3]), bytes(row[4]))

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
