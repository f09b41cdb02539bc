"""A store in PostgreSQL (`ChangeStore`): the tables of the SQLite store in a schema of a
database the operator chooses (`store.url`, `store.schema`), for deployments that want
their state on a server they already run and back up — and several sidecar replicas
sharing it (`replica/`).

The layout and the statements are in `store/pg_sql.py`; the read side (`PGReader`:
pull, views, mutation lookups, audit, counts) in `store/pg_read.py`; grants and
reconciling in `store/pg_reconcile.py`; this module is the writer: row changes (netted in
memory by `store/netting.py`, as the SQLite store does, then written with one statement
per kind of write), the initial copy (COPY), commits, resets and purges.

The writer is one connection used from capture's writer thread; a batch and its LSN
commit in one PostgreSQL transaction. Opened `shared` (the service: several replicas may
share the store), the writer writes only while it leads (`lead()`; `store/pg_lead.py`):
each write transaction checks its term, raising `Fenced` when another replica leads;
each commit notifies the other replicas; a follower's cached state is `refresh()`ed.

A write that fails for a reason that may pass (the connection lost, the server restarting
or failing over, the disk full) raises `StoreUnavailable`; the open batch is then lost and
every write is refused until `rollback()`, which connects again if it must.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import psycopg
from psycopg.pq import TransactionStatus

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
from sidecar.store.pg_conn import (
    DEFAULT_SCHEMA,
    as_unavailable,
    connect,
    create,
    reader_pool,
    writes,
)
from sidecar.store.pg_lead import (
    NOTIFY,
    channel,
    lead_kwargs,
    payload,
)
from sidecar.store.pg_leadership import PGLeadership
from sidecar.store.pg_read import PGReader
from sidecar.store.pg_reconcile import PGReconcile
from sidecar.store.pg_sql import (
    COPY_ENTRIES,
    COPY_ROWS,
    DDL_LOCK,
    ENTRIES_DELETE,
    ENTRIES_INSERT,
    ENTRIES_MOVE,
    ENTRIES_RENUMBER,
    FORMAT,
    KEYED_PLANS,
    LOOKUP,
    RECORD_MUTATION,
    ROWS_DELETE,
    ROWS_INSERT,
    ROWS_REWRITE,
    ROWS_REWRITE_IN_SCOPE,
    ROWS_UPDATE,
    SCHEMA,
    SET_META,
    TABLES,
    TOMBSTONES_DELETE,
)

_LOOKUP_CHUNK = 20_000  # identities per lookup statement
_EMPTY = b"{}"
_IN_SCOPE_SKIP = 8  # batches that skip the one-statement attempt after it missed


def _columns(batch: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """A batch of tuples as parallel lists (one per column), for `unnest`."""
    return [list(c) for c in zip(*batch, strict=True)] if batch else [[] for _ in range(width)]


def _scopes_json(batch: list[tuple[Any, ...]], at: int) -> list[tuple[Any, ...]]:
    """The batch with each row's scopes (at index `at`) as JSON text."""
    return [(*b[:at], orjson.dumps(b[at]).decode(), *b[at + 1 :]) for b in batch]


class PGStore(PGReconcile, PGReader, PGLeadership):
    """ChangeStore in a PostgreSQL schema. Writer methods must be called from one thread;
    the reader methods (`PGReader`) from any."""

    _in_scope_skip = 0  # batches left that go the general way directly (`_rewrite_in_scope`)

    def __init__(
        self,
        url: str,
        schema: str = DEFAULT_SCHEMA,
        readers: int = 4,
        *,
        shared: bool = False,
        takeover: float = 10.0,
    ) -> None:
        self.url = url
        self.schema = schema
        self.shared = shared
        self._term: int | None = None  # shared: the term this writer leads in
        self._touched: set[str] | None = set()  # the open batch's scopes (None: all)
        self._takeover = takeover
        self._kwargs = lead_kwargs(takeover) if shared else {}
        self._w = connect(url, schema, **self._kwargs)
        try:
            create(self._w, schema, SCHEMA)
            found = self._meta("format")
            if found not in (None, FORMAT):
                self._wipe(keep=())
            self._broken: StoreUnavailable | None = None
            if self._meta("epoch") is None:
                self._init_meta()
            self._version = int(self._meta("version") or 0)
            self._state = self._load_state()
            super().__init__(reader_pool(url, schema, readers))
        except BaseException:
            self._w.close()
            raise

    # -- meta ----------------------------------------------------------------------------

    def _meta(self, key: str) -> str | None:
        row = self._w.execute("SELECT value FROM meta WHERE key = %s", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, **values: object) -> None:
        with self._w.cursor() as cur:
            cur.executemany(SET_META, [(k, str(v)) for k, v in values.items() if v is not None])

    def _init_meta(self) -> None:
        self._w.execute("BEGIN")
        self._w.execute(DDL_LOCK, (self.schema,))  # replicas starting at once: one epoch
        if self._meta("epoch") is not None:
            self._w.execute("COMMIT")
            return
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
        return self._w.info.transaction_status != TransactionStatus.IDLE

    def _discard(self) -> bool:
        """Roll back whatever is open after a failure; False if that failed too."""
        try:
            if not self._w.closed and self._in_txn:
                self._w.execute("ROLLBACK")
        except psycopg.Error:
            return False
        return not self._w.closed

    def _wipe(self, keep: Iterable[str]) -> None:
        """Empty every table but `keep` (in the open transaction, or its own)."""
        tables = [t for t in TABLES if t not in keep]
        self._w.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY")

    @writes(batch=True)
    def reset(
        self, *, slot: str, system_id: str, database: str, shape: str = "", lineage: str = ""
    ) -> StoreState:
        """Wipe everything and start a new epoch (old cursors become invalid), in one
        transaction. The applied mutation ids stay when the store goes on with the same
        database lineage (see `SQLiteStore.reset`)."""
        if self._in_txn:
            self.rollback()
        st = self._state
        same = bool(lineage) and (st.system_id, st.database, st.lineage) == (
            system_id,
            database,
            lineage,
        )
        self._state = dataclasses.replace(st, snapshot_done=False)
        self._begin()
        self._wipe(keep=("mutations",) if same else ())
        self._set_meta(
            format=FORMAT,
            epoch=secrets.token_hex(4),
            lsn=0,
            version=0,
            snapshot_done=0,
            purged_version=0,
            slot=slot,
            system_id=system_id,
            database=database,
            shape=shape,
            lineage=lineage,
            term=self._term,  # the leadership goes on through a new epoch
        )
        self._commit()
        self._version = 0
        self._state = self._load_state()
        return self._state

    def close(self) -> None:
        try:
            if not self._w.closed and self._in_txn:
                self._w.execute("ROLLBACK")
        except psycopg.Error:
            pass
        self._w.close()
        self._pool.close()

    # -- writer side ---------------------------------------------------------------------

    def _begin(self, *, every_scope: bool = True) -> None:
        """Open the batch's transaction if need be (shared: checks the term). A write
        whose scopes are not counted (`every_scope`) wakes every waiter of the replicas."""
        if not self._in_txn:
            self._w.execute("BEGIN")
            if self.shared:
                self._fence()
        if every_scope:
            self._touched = None

    def _commit(self) -> None:
        """Commit the open transaction; shared, notify the other replicas in it."""
        if self.shared:
            self._w.execute(NOTIFY, (channel(self.schema), payload(self._version, self._touched)))
        self._w.execute("COMMIT")
        self._touched = set()

    def _ensure_indexes(self) -> None:
        """The indexes stay through a bulk load here: nothing to do."""

    # -- row changes -----------------------------------------------------------------------

    def _lookup(self, collection: str, idents: Iterable[str], with_row: bool) -> list[list[Any]]:
        """Stored rows by identity: [ident, rid, version, rev, scopes, key, hidden(, data)]."""
        sql = LOOKUP.format(row=", r.data" if with_row else "")
        wanted = list(idents)
        found: list[list[Any]] = []
        for i in range(0, len(wanted), _LOOKUP_CHUNK):
            chunk = wanted[i : i + _LOOKUP_CHUNK]
            rows = self._w.execute(sql.encode(), ([collection] * len(chunk), chunk))
            found.extend(list(r) for r in rows)
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
            ids = named.setdefault(coll, [])
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
        rows it names, then written with a few set-based statements, sent together.
        """
        self._begin(every_scope=False)
        self._w.execute(KEYED_PLANS)
        touched = self._rewrite_in_scope(changes)
        if touched is not None:
            if self._touched is not None:
                self._touched |= touched
            return touched
        netting = Netting(self._version, *self._stored(changes))
        for change in changes:
            netting.replay(change)
        with self._w.pipeline():
            if netting.rewrites:
                self._w.execute(ROWS_REWRITE, _columns(netting.rewrites, 6))
            if netting.renumbers:
                self._w.execute(ENTRIES_RENUMBER, _columns(netting.renumbers, 3))
            self._write_out(netting.states.values())
        self._version = netting.version
        if self._touched is not None:
            self._touched |= netting.touched
        return netting.touched

    def _rewrite_in_scope(self, changes: Sequence[RowChange]) -> set[str] | None:
        """Apply the batch in one statement if it is the usual one: stored rows, each
        changed once and staying in its one scope (a bulk UPDATE). None if it is not,
        with nothing written.

        The statement needs no lookup: it finds each row by identity and rewrites the
        batch only if every row is in that scope with another rev (`ROWS_REWRITE_IN_SCOPE`,
        all or nothing, so no savepoint). After a miss the next few batches go the general
        way directly.
        """
        if self._in_scope_skip:
            self._in_scope_skip -= 1
            return None
        if not changes:
            return None
        cols: tuple[list[str | None], ...] = ([], [], [], [], [], [], [])
        colls, idents, revs, scopes, rows, keys, hidden = cols
        for coll, gone, im in changes:
            if gone is not None or type(im) is not Image or len(im.scopes) != 1:
                return None
            key = im.key.decode()
            colls.append(coll)
            idents.append(im.ident)
            revs.append(im.rev)
            scopes.append(im.scopes[0])
            rows.append(im.row.decode())
            # A key equal to the identity, or hidden columns as "{}", travel as null.
            keys.append(None if key == im.ident else key)
            hidden.append(None if im.hidden == _EMPTY else im.hidden.decode())
        if len(set(zip(colls, idents, strict=True))) < len(changes):
            return None
        count = len(changes)
        written = self._w.execute(ROWS_REWRITE_IN_SCOPE, (*cols, self._version, count)).rowcount
        if written == 0:
            self._in_scope_skip = _IN_SCOPE_SKIP
            return None
        if written != count:  # rows found, then changed by someone else meanwhile
            self._broken = StoreUnavailable(
                "locked", f"another writer changed the store's rows ({written} of {count})"
            )
            raise self._broken
        self._version += count
        return set(scopes)  # type: ignore[arg-type]  # every scope is a str

    def _write_out(self, states: Iterable[RowState]) -> None:
        """Write the final state of the rows the general replay changed, and their entries
        (`netting.write_plan`), in a pipeline the caller opened."""
        plan = write_plan(states)
        if plan.row_deletes:
            self._w.execute(ROWS_DELETE, (plan.row_deletes,))
        for sql, batch, width in (
            (ROWS_UPDATE, _scopes_json(plan.row_updates, 4), 8),
            (ROWS_INSERT, _scopes_json(plan.row_inserts, 5), 9),
            (ENTRIES_DELETE, plan.deletes, 2),
            (ENTRIES_MOVE, plan.moves, 6),
            (TOMBSTONES_DELETE, plan.clears, 3),
            (ENTRIES_INSERT, plan.inserts, 7),
        ):
            if batch:
                self._w.execute(sql, _columns(batch, width))

    def prepare_load(self, collection: str, images: Sequence[Image]) -> PreparedLoad:
        """The rows of a COPY, built on the thread that routes the rows (their versions
        are added by the writer): one chunk, the rows' JSON and the entries' of rows in
        several scopes."""
        rows: list[tuple[object, ...]] = []
        entries: list[tuple[str, int, str]] = []
        for ident, key, row, rev, scopes, hidden in images:
            single = scopes[0] if len(scopes) == 1 else None
            if single is None:
                entries.extend((s, len(rows), ident) for s in scopes)
            rows.append(
                (ident, rev, key.decode(), list(scopes), single, row.decode(), hidden.decode())
            )
        if not rows:
            return PreparedLoad(collection, ())
        chunk = (len(rows), orjson.dumps(rows), orjson.dumps(entries) if entries else None)
        return PreparedLoad(collection, (chunk,))

    @writes(batch=True)
    def load_prepared(self, batch: PreparedLoad) -> None:
        """Insert a prepared batch with COPY."""
        self._begin()
        coll = batch.collection
        with self._w.cursor() as cur:
            for count, rows, entries in batch.chunks:
                base = self._version + 1
                with cur.copy(COPY_ROWS) as copy:
                    for n, (ident, rev, key, scopes, single, row, hidden) in enumerate(
                        orjson.loads(rows)
                    ):
                        copy.write_row(
                            (coll, ident, base + n, rev, key, scopes, single, row, hidden)
                        )
                if entries is not None:
                    with cur.copy(COPY_ENTRIES) as copy:
                        for scope, n, ident in orjson.loads(entries):
                            copy.write_row((scope, base + n, coll, ident, 0))
                self._version += count

    @writes(batch=True)
    def truncate(self, collection: str) -> set[str]:
        """Every row of the collection becomes a tombstone in each of its scopes."""
        self._begin()
        touched: set[str] = set()
        while True:
            idents = [
                r[0]
                for r in self._w.execute(
                    "SELECT ident FROM rows WHERE collection = %s ORDER BY ident LIMIT %s",
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
        self._begin(every_scope=False)
        now = time.time()
        with self._w.cursor() as cur:
            cur.executemany(
                RECORD_MUTATION,
                [
                    (r.subject or "", r.id, r.device, r.lsn, r.outcome.decode(), now)
                    for r in records
                ],
            )

    @writes(batch=True)
    def commit(self, lsn: int | None = None, *, snapshot_done: bool | None = None) -> None:
        """Commit the open batch together with the LSN it reaches."""
        self._begin(every_scope=False)
        self._set_meta(
            lsn=lsn,
            version=self._version,
            snapshot_done=None if snapshot_done is None else int(snapshot_done),
        )
        self._w.execute(
            "INSERT INTO marks (version, at) VALUES (%s, %s) "
            "ON CONFLICT (version) DO UPDATE SET at = excluded.at",
            (self._version, time.time()),
        )
        self._commit()
        self._state = self._load_state()

    @writes(batch=True)
    def set_layout(self, shape: str, backfill: str) -> None:
        """In the open batch: the collections' shapes and the backfill map (JSON)."""
        self._begin()
        self._set_meta(shape=shape, backfill=backfill)

    @writes(batch=False)
    def note_acked(self, lsn: int) -> bool:
        """Record that the server may forget WAL up to `lsn`. False, doing nothing, while
        a batch is open: acknowledge later."""
        if self._in_txn:
            return False
        self._begin(every_scope=False)
        self._set_meta(acked_lsn=lsn)
        self._commit()
        self._state = self._load_state()
        return True

    def rollback(self) -> None:
        """Back to the last commit; connects again if the connection was lost."""
        try:
            self._touched = set()
            if self._w.closed or self._w.broken:
                # a new session holds no lock: a shared writer leads no more (`lead()`)
                self._term = None
                self._w = connect(self.url, self.schema, **self._kwargs)
            elif self._in_txn:
                self._w.execute("ROLLBACK")
            self._version = int(self._meta("version") or 0)
        except psycopg.Error as exc:
            trouble = as_unavailable(exc)
            if trouble is None:
                raise
            self._broken = trouble
            raise trouble from exc
        self._broken = None

    @writes(batch=False)
    def purge_tombstones(self, older_than: float) -> int:
        """Forget tombstones older than `older_than` seconds; cursors before them expire."""
        if self._in_txn:
            return 0
        cutoff_at = time.time() - older_than
        row = self._w.execute("SELECT max(version) FROM marks WHERE at < %s", (cutoff_at,))
        found = row.fetchone()
        cutoff = found[0] if found and found[0] is not None else None
        if cutoff is None:
            return 0
        self._begin()
        cur = self._w.execute("DELETE FROM entries WHERE deleted = 1 AND version <= %s", (cutoff,))
        purged_rows = cur.rowcount
        self._w.execute("DELETE FROM grants WHERE removed IS NOT NULL AND removed <= %s", (cutoff,))
        self._w.execute("DELETE FROM marks WHERE version < %s", (cutoff,))
        self._w.execute("DELETE FROM mutations WHERE at < %s", (cutoff_at,))
        purged = max(cutoff, int(self._meta("purged_version") or 0))
        self._set_meta(purged_version=purged)
        self._commit()
        self._state = self._load_state()
        return purged_rows
