"""The embedded default store: one SQLite file in WAL mode (`ChangeStore`).

The layout and the batched statements are in `store/sqlite_sql.py`; the read side
(`SQLiteReader`: pull, mutation lookups, audit, counts) in `store/sqlite_read.py`; this
module is the writer: row changes, the initial copy, commits, resets and purges.

A row that stays in its one scope is its scope's entry (`rows.scope`), so its change
rewrites one record, and a pull is one merged range scan of two indexes.

A write batch and its LSN commit in one SQLite transaction (`synchronous=FULL`, so an
acknowledged LSN survives a crash of the process or of the machine).

A write that fails for a reason that may pass (the file locked by another process past the
busy timeout, the disk full, an I/O error) raises `StoreUnavailable`; the open batch is
then lost and every write is refused until `rollback()`, which looks at whether SQLite
still has a transaction open (it may have rolled back by itself, e.g. on SQLITE_FULL).
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson

from sidecar.changes import Image
from sidecar.store.base import (
    MutationRecord,
    PreparedLoad,
    RowChange,
    StoredRow,
    StoreState,
    StoreUnavailable,
)
from sidecar.store.netting import Netting, RowState, Stored, write_plan
from sidecar.store.sqlite_errors import as_unavailable, writes
from sidecar.store.sqlite_files import ERRORS, connect, hold, prepare
from sidecar.store.sqlite_read import SQLiteReader
from sidecar.store.sqlite_reconcile import SQLiteReconcile
from sidecar.store.sqlite_sql import (
    ENTRIES_DELETE,
    ENTRIES_INSERT,
    ENTRIES_MOVE,
    ENTRIES_RENUMBER,
    FORMAT,
    INDEXES,
    LOAD_ENTRIES,
    LOAD_ROWS,
    LOOKUP,
    MIGRATIONS,
    ROWS_DELETE,
    ROWS_INSERT,
    ROWS_REWRITE,
    ROWS_REWRITE_IN_SCOPE,
    ROWS_UPDATE,
    SCHEMA,
    TABLES,
    TOMBSTONES_DELETE,
)

_LOOKUP_CHUNK = 20_000  # identities per lookup statement
_AUTOCHECKPOINT = 1000  # WAL pages that make a commit checkpoint (SQLite's default)
_WAL_LIMIT = 64 << 20  # bytes the WAL file is cut back to after a checkpoint
# Bytes of row JSON per bulk-load statement: SQLite takes at most 1e9 bytes per parameter,
# and JSON escaping can make a value up to six times longer.
_LOAD_BYTES = 64 << 20
_EMPTY = b"{}"
_IN_SCOPE_SKIP = 8  # batches that skip the one-statement attempt after it missed
_BUSY_TIMEOUT = 5.0  # seconds a write waits for another process's lock on the file


def _load_chunk(
    rows: list[tuple[object, ...]], entries: list[tuple[str, int, str]]
) -> tuple[int, bytes, bytes | None]:
    return len(rows), orjson.dumps(rows), orjson.dumps(entries) if entries else None


class SQLiteStore(SQLiteReconcile, SQLiteReader):
    """ChangeStore on one SQLite file. Writer methods must be called from one thread;
    the reader methods (`SQLiteReader`) from any."""

    def __init__(self, path: str | os.PathLike[str], key: str | None = None) -> None:
        super().__init__(Path(path), key)
        prepare(self.path)  # 0700 directory, 0600 files (store/sqlite_files.py)
        self._in_use = hold(self.path)
        try:
            self._w = connect(
                self.path, key, isolation_level=None, check_same_thread=False, timeout=_BUSY_TIMEOUT
            )
        except BaseException:
            os.close(self._in_use)
            raise
        self._w.execute("PRAGMA journal_mode=WAL")
        self._w.execute("PRAGMA synchronous=FULL")
        self._w.execute("PRAGMA cache_size=-65536")
        self._w.execute("PRAGMA temp_store=MEMORY")
        self._w.execute(f"PRAGMA wal_autocheckpoint={_AUTOCHECKPOINT}")
        self._w.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT}")
        self._w.executescript(SCHEMA)
        found = self._meta("format")
        if found in MIGRATIONS:
            self._migrate(MIGRATIONS[found])
        elif found not in (None, FORMAT):
            self._drop_all()
            self._w.executescript(SCHEMA)
        self._broken: StoreUnavailable | None = None  # a failed batch not rolled back yet
        self._in_scope_skip = 0
        if self._meta("epoch") is None:
            self._init_meta()
        self._w.executescript(INDEXES)
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

    def _migrate(self, script: str) -> None:
        """Bring an older format up to `FORMAT` in place, in one transaction."""
        self._w.executescript(f"BEGIN IMMEDIATE;\n{script}")
        self._set_meta(format=FORMAT)
        self._w.execute("COMMIT")

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
        return StoreState.from_meta(m)

    @property
    def _in_txn(self) -> bool:
        """A transaction is open (as SQLite itself says: it may end one on its own)."""
        return self._w.in_transaction

    def _discard(self) -> bool:
        """Roll back whatever is open after a failure; False if that failed too."""
        try:
            if self._w.in_transaction:
                self._w.execute("ROLLBACK")
        except ERRORS:
            return False
        return True

    @writes(batch=True)
    def reset(
        self, *, slot: str, system_id: str, database: str, shape: str = "", lineage: str = ""
    ) -> StoreState:
        """Wipe everything and start a new epoch (old cursors become invalid).

        The applied mutation ids stay when the store goes on with the same database
        (`lineage`: its incarnation and the server's timeline, see `StoreState`): what
        they record happened there, so a retry is still a duplicate. Another database, a
        re-created one, or a new timeline (a failover or a restore, where a recorded
        transaction may not have survived) forgets them."""
        if self._in_txn:
            self.rollback()
        st = self._state
        same = bool(lineage) and (st.system_id, st.database, st.lineage) == (
            system_id,
            database,
            lineage,
        )
        # Until it is done, the store is no copy of anything (a reset cut short by a full
        # disk makes the next start rebuild again).
        self._state = dataclasses.replace(st, snapshot_done=False)
        self._drop_all(keep=("mutations",) if same else ())
        self._w.executescript(SCHEMA)  # without the secondary indexes: a bulk load follows
        self._indexed = False
        self._init_meta()
        self._w.execute("BEGIN IMMEDIATE")
        self._set_meta(
            slot=slot, system_id=system_id, database=database, shape=shape, lineage=lineage
        )
        self._w.execute("COMMIT")
        self._version = 0
        self._state = self._load_state()
        return self._state

    def _drop_all(self, keep: Iterable[str] = ()) -> None:
        for table in TABLES:
            if table not in keep:
                self._w.execute(f"DROP TABLE IF EXISTS {table}")

    def close(self) -> None:
        if self._in_txn:
            self.rollback()
        self._w.close()
        self._close_reader()
        os.close(self._in_use)

    # -- writer side ---------------------------------------------------------------------

    def _begin(self) -> None:
        if not self._in_txn:
            self._w.execute("BEGIN IMMEDIATE")

    def _ensure_indexes(self) -> None:
        """Create the secondary indexes (inside the open transaction) if a bulk load left
        them out."""
        if not self._indexed:
            for stmt in INDEXES.strip().split(";"):
                if stmt.strip():
                    self._w.execute(stmt)
            self._indexed = True

    # -- row changes -----------------------------------------------------------------------

    def _lookup(self, collection: str, idents: Iterable[str], with_row: bool) -> list[list[Any]]:
        """Stored rows by identity: [ident, rowid, version, rev, scopes, key, hidden(, row)]."""
        sql = LOOKUP.format(row=", CAST(r.row AS TEXT)" if with_row else "")
        wanted = list(idents)
        found: list[list[Any]] = []
        for i in range(0, len(wanted), _LOOKUP_CHUNK):
            chunk = orjson.dumps(wanted[i : i + _LOOKUP_CHUNK])
            (text,) = self._w.execute(sql, (chunk, collection)).fetchone()
            found.extend(orjson.loads(text))
        return found

    def get_rows(self, collection: str, idents: Iterable[str]) -> dict[str, StoredRow]:
        """The stored rows by identity (in no role: the contract suite compares stores
        by it)."""
        out: dict[str, StoredRow] = {}
        for ident, _, version, rev, scopes, key, hidden, row in self._lookup(
            collection, dict.fromkeys(idents), with_row=True
        ):
            out[ident] = StoredRow(
                ident, version, rev, key.encode(), tuple(scopes), row.encode(), hidden.encode()
            )
        return out

    def _stored(
        self, changes: Sequence[RowChange]
    ) -> tuple[dict[str, dict[str, Stored]], dict[str, set[str]]]:
        """The stored rows the changes name, per collection and identity; and the
        identities named more than once."""
        named: dict[str, list[str]] = {}
        with_row = False
        for coll, gone, new in changes:
            ids = named.get(coll)
            if ids is None:
                ids = named[coll] = []
            if gone is not None:
                ids.append(gone)
            if new is not None:
                ids.append(new.ident)
                with_row = with_row or type(new) is not Image
        stored: dict[str, dict[str, Stored]] = {}
        repeated: dict[str, set[str]] = {}
        for coll, ids in named.items():
            unique = dict.fromkeys(ids)
            if len(unique) < len(ids):
                repeated[coll] = {i for i, n in Counter(ids).items() if n > 1}
            found = self._lookup(coll, unique, with_row)
            for r in found:
                r[4] = tuple(r[4])
            stored[coll] = {r[0]: r for r in found}
        return stored, repeated

    @writes(batch=True)
    def apply(self, changes: Sequence[RowChange]) -> set[str]:
        """Apply row changes in order; returns the scopes whose content changed.

        The usual batch (stored rows changed once each, staying in their one scope) is one
        statement. Any other is netted in memory (see `netting`) over one lookup of the
        rows it names, then written with a few set-based statements.
        """
        self._begin()
        self._ensure_indexes()
        touched = self._rewrite_in_scope(changes)
        if touched is not None:
            return touched
        netting = Netting(self._version, *self._stored(changes))
        for change in changes:
            netting.replay(change)
        if netting.rewrites:
            self._w.execute(ROWS_REWRITE, (orjson.dumps(netting.rewrites),))
        if netting.renumbers:
            self._w.execute(ENTRIES_RENUMBER, (orjson.dumps(netting.renumbers),))
        self._write_out(netting.states.values())
        self._version = netting.version
        return netting.touched

    def _rewrite_in_scope(self, changes: Sequence[RowChange]) -> set[str] | None:
        """Apply the batch in one statement if it is the usual one: stored rows, each
        changed once and staying in its one scope (a bulk UPDATE). None if it is not,
        with nothing written.

        The statement needs no lookup: it finds each row by identity and rewrites it only
        if it is in that scope with another rev; if it rewrote fewer rows than the batch
        has, it is rolled back and the batch takes the general way. After such a miss the
        next few batches go the general way directly.
        """
        if self._in_scope_skip:
            self._in_scope_skip -= 1
            return None
        batch: list[tuple[str, str, str, str, str, str | None, str | None]] = []
        idents: set[tuple[str, str]] = set()
        for coll, gone, im in changes:
            if gone is not None or type(im) is not Image or len(im.scopes) != 1:
                return None
            idents.add((coll, im.ident))
            # A key equal to the identity, or hidden columns as "{}", travel as null:
            # less for SQLite to parse out of the JSON.
            key = im.key.decode()
            batch.append(
                (coll, im.ident, im.rev, im.scopes[0], im.row.decode(),
                 None if key == im.ident else key,
                 None if im.hidden == _EMPTY else im.hidden.decode())
            )  # fmt: skip
        if len(idents) < len(batch):
            return None
        self._w.execute("SAVEPOINT in_scope")
        cur = self._w.execute(ROWS_REWRITE_IN_SCOPE, (orjson.dumps(batch), self._version + 1))
        if cur.rowcount != len(batch):
            self._w.execute("ROLLBACK TO in_scope")
            self._w.execute("RELEASE in_scope")
            self._in_scope_skip = _IN_SCOPE_SKIP
            return None
        self._w.execute("RELEASE in_scope")
        self._version += len(batch)
        return {b[3] for b in batch}

    def _write_out(self, states: Iterable[RowState]) -> None:
        """Write the final state of the rows the general replay changed, and their entries
        (`netting.write_plan`)."""
        plan = write_plan(states)
        for sql, batch in (
            (ROWS_DELETE, plan.row_deletes),
            (ROWS_UPDATE, plan.row_updates),
            (ROWS_INSERT, plan.row_inserts),
            (ENTRIES_DELETE, plan.deletes),
            (ENTRIES_MOVE, plan.moves),
            (TOMBSTONES_DELETE, plan.clears),
            (ENTRIES_INSERT, plan.inserts),
        ):
            if batch:
                self._w.execute(sql, (orjson.dumps(batch),))

    def prepare_load(self, collection: str, images: Sequence[Image]) -> PreparedLoad:
        """The statements' parameters for `load_prepared`: built on the thread that routes
        the rows (it reads no store state), so the writer thread only runs SQL. Large rows
        split the batch into several statements (`_LOAD_BYTES` each)."""
        chunks: list[tuple[int, bytes, bytes | None]] = []
        rows: list[tuple[object, ...]] = []
        entries: list[tuple[str, int, str]] = []
        size = 0
        for ident, key, row, rev, scopes, hidden in images:
            if len(scopes) == 1:
                single, listed = scopes[0], None
            else:
                single, listed = None, orjson.dumps(scopes).decode()
                entries.extend((s, len(rows), ident) for s in scopes)
            k = key.decode()
            rows.append(
                (ident, rev, single, row.decode(), None if k == ident else k, listed,
                 None if hidden == _EMPTY else hidden.decode())
            )  # fmt: skip
            size += len(row) + len(hidden) + len(key)
            if size >= _LOAD_BYTES:
                chunks.append(_load_chunk(rows, entries))
                rows, entries, size = [], [], 0
        if rows:
            chunks.append(_load_chunk(rows, entries))
        return PreparedLoad(collection, tuple(chunks))

    @writes(batch=True)
    def load_prepared(self, batch: PreparedLoad) -> None:
        """Insert a prepared batch: a JSON-batch statement or two per chunk, which run
        without the GIL while the next batch is routed."""
        self._begin()
        for count, rows, entries in batch.chunks:
            base = self._version + 1
            self._w.execute(LOAD_ROWS, (rows, batch.collection, base))
            if entries is not None:
                self._w.execute(LOAD_ENTRIES, (entries, batch.collection, base))
            self._version += count

    @writes(batch=True)
    def truncate(self, collection: str) -> set[str]:
        """Every row of the collection becomes a tombstone in each of its scopes."""
        self._begin()
        self._ensure_indexes()
        touched: set[str] = set()
        while True:
            idents = [
                r[0]
                for r in self._w.execute(
                    "SELECT ident FROM rows WHERE collection = ? LIMIT ?",
                    (collection, _LOOKUP_CHUNK),
                )
            ]
            if not idents:
                return touched
            touched |= self.apply([RowChange(collection, i, None) for i in idents])

    @writes(batch=True)
    def record_mutations(self, records: Sequence[MutationRecord]) -> None:
        if not records:
            return
        self._begin()
        now = time.time()
        self._w.executemany(
            "INSERT OR IGNORE INTO mutations (subject, id, device, lsn, outcome, at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(r.subject or "", r.id, r.device, r.lsn, r.outcome, now) for r in records],
        )

    @writes(batch=True)
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
            # The first copy's transaction is the whole store: it is checkpointed into
            # the database file by the next commit (after the store is ready), not here.
            self._w.execute("PRAGMA wal_autocheckpoint=0")
        self._w.execute("COMMIT")
        if snapshot_done:
            self._w.execute(f"PRAGMA wal_autocheckpoint={_AUTOCHECKPOINT}")
        self._state = self._load_state()

    @writes(batch=True)
    def set_layout(self, shape: str, backfill: str) -> None:
        """In the open batch: the collections' shapes (JSON) and the snapshot LSN of each
        collection copied after the others (JSON); committed with the batch."""
        self._begin()
        self._set_meta(shape=shape, backfill=backfill)

    @writes(batch=False)
    def note_acked(self, lsn: int) -> bool:
        """Record, durably, that the server may forget WAL up to `lsn` (an idle position:
        nothing of ours lies between the last commit and it). False, doing nothing, while
        a batch is open: acknowledge later."""
        if self._in_txn:
            return False
        self._w.execute("BEGIN IMMEDIATE")
        self._set_meta(acked_lsn=lsn)
        self._w.execute("COMMIT")
        self._state = self._load_state()
        return True

    def rollback(self) -> None:
        """Back to the last commit. Safe after any failure: SQLite may have rolled the
        transaction back itself (SQLITE_FULL, SQLITE_IOERR), so only an open one is."""
        try:
            if self._in_txn:
                self._w.execute("ROLLBACK")
            self._version = int(self._meta("version") or 0)
            sql = "SELECT count(*) FROM sqlite_master WHERE name = 'rows_ident'"
            self._indexed = self._w.execute(sql).fetchone()[0] > 0
        except ERRORS as exc:
            trouble = as_unavailable(exc)
            if trouble is None:
                raise
            self._broken = trouble  # nothing is written before a rollback that works
            raise trouble from exc
        self._broken = None

    @writes(batch=False)
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
        self._w.execute("DELETE FROM grants WHERE removed IS NOT NULL AND removed <= ?", (cutoff,))
        self._w.execute("DELETE FROM marks WHERE version < ?", (cutoff,))
        self._w.execute("DELETE FROM mutations WHERE at < ?", (cutoff_at,))
        purged = max(cutoff, int(self._meta("purged_version") or 0))
        self._set_meta(purged_version=purged)
        self._w.execute("COMMIT")
        self._state = self._load_state()
        return cur.rowcount
