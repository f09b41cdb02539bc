"""Ingest: decoded changes → store writes.

Two threads share the work so that Python and SQLite run on both cores at once: the
calling thread decodes the stream and routes each row change into its image (typed
values, JSON, rev, scopes); every `_FLUSH_EVERY` changes (or `flush_bytes` of them, from
`limits.memory`: see `budget.py`) it hands the batch to the store's writer thread
(`StoreWriter.apply`, which looks up the rows' stored state and writes the net effect)
and goes on routing the next one. At most `_IN_FLIGHT` batches wait for the writer,
which bounds memory for transactions of any size: their rows go into the store's open
transaction batch by batch. The store commits at transaction boundaries with the
commit's end LSN, after every batch before it was written.

A primary-key change is a delete of the old identity and an upsert of the new one. A
TOASTed value sent as "unchanged" is filled in by the store from the row's stored image.

Several collections may map one table (different rules or columns): every row change and
every truncate of the table goes to each of them, in config order, each against its own
stored rows (the store keys rows by collection).

A membership table (named by read rules' sub-selects, `membership.py`) gives grant
changes instead, written after the batch's row changes (`StoreWriter.apply_grants`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from sidecar.capture import pgoutput_messages as po
from sidecar.capture.pgoutput import Decoder
from sidecar.capture.source import ReplicationError
from sidecar.changes import GrantChange, Image
from sidecar.collection import Collection
from sidecar.errors import SidecarError
from sidecar.lsn import lsn_to_str
from sidecar.membership import MembershipSource, membership_sources
from sidecar.store.base import MutationRecord, PreparedLoad, RowChange, StoreWriter
from sidecar.walmessage import PREFIX, MalformedMessage, MutationMessage

log = structlog.get_logger("sidecar.capture")

T = TypeVar("T")

_FLUSH_EVERY = 5000  # row changes per batch handed to the store, at most
# Bytes of pgoutput messages per batch, at most, unless told (`MemoryBudget.batch`): the
# store writes a batch with JSON statements, and SQLite takes at most 1e9 bytes per
# parameter (and memory is bounded).
_FLUSH_BYTES = 16 << 20
# Counted for a change whose unchanged TOASTed values the store fills in (their size is
# not known here): a batch of 16 MiB holds at most 256 of them.
_PENDING_BYTES = 64 << 10
_IN_FLIGHT = 2  # batches handed to the writer and not yet written, at most


class SchemaChanged(SidecarError):
    code, status, title = "schema_changed", 500, "A synced table changed shape"


class TableChanged(ReplicationError):
    """A synced table dropped, or dropped and created again, as the catalog shows it (the
    stream says nothing of a table that left the publication): ends the stream as a
    change of shape does."""

    code, status, title = "schema_changed", 500, "A synced table changed"


@dataclass(slots=True)
class _RelMap:
    route: Collection
    positions: tuple[int, ...]  # index in the relation tuple of each of route.needed
    whole: bool  # route.needed is every column of the relation, in its order

    def needed(self, row: Sequence[Any]) -> Sequence[Any]:
        """The values of route.needed in a tuple of the relation."""
        return row if self.whole else [row[p] for p in self.positions]


@dataclass(slots=True)
class _SourceMap:
    source: MembershipSource
    positions: tuple[int, ...]  # index in the relation tuple of each of source.needed

    def needed(self, row: Sequence[Any]) -> list[Any]:
        return [row[p] for p in self.positions]


@dataclass(slots=True)
class BatchResult:
    committed_lsn: int | None  # the store committed up to this LSN (None: nothing new)
    touched: set[str] = field(default_factory=set)
    rows: int = 0
    commits: int = 0
    # (xid, end LSN, decoded at: ns since the epoch) of each transaction the store
    # committed, when asked for (`Ingest.commit_log`: tracing)
    committed: list[tuple[int, int, int]] = field(default_factory=list)


class Ingest:
    """Applies pgoutput messages to the store. One calling thread at a time.

    `writer` runs the store's methods (its single writer thread); without one they run
    on the calling thread.
    """

    def __init__(
        self,
        store: StoreWriter,
        routes: Iterable[Collection],
        skip_through: int,
        writer: Executor | None = None,
        backfilled: Mapping[str, int] | None = None,
        flush_bytes: int = _FLUSH_BYTES,
    ) -> None:
        self.store = store
        self.flush_bytes = flush_bytes
        # Collections copied later than the rest (added to the config): their changes in
        # transactions committed before the copy's snapshot are already in the store.
        self.backfilled = dict(backfilled or {})
        self._txn_lsn = 0
        self._txn_xid = 0
        # Every collection of a table, in config order: each gets every change of it.
        self.routes = list(routes)
        self.routes_by_oid: dict[int, tuple[Collection, ...]] = {}
        self.routes_by_name = {(r.table.ref.schema, r.table.ref.name): r.name for r in self.routes}
        for r in self.routes:
            self.routes_by_oid[r.table.oid] = (*self.routes_by_oid.get(r.table.oid, ()), r)
        self.relations: dict[int, tuple[_RelMap, ...]] = {}
        self.sources = membership_sources(self.routes)
        self.sources_by_oid = {s.table.oid: s for s in self.sources}
        self.source_maps: dict[int, _SourceMap] = {}
        self._grants: list[GrantChange] = []
        # Collections (and membership tables) the initial copy reconciles with what the
        # store holds, rather than loads into an empty store (capture/reconcile.py).
        self.reconciling: frozenset[str] = frozenset()
        self.decoder = Decoder()
        self.skip_through = skip_through  # commits ending at or before this are applied
        self._writer = writer
        self._in_flight: deque[Future[set[str]]] = deque()
        self._in_txn = False
        self._skipping = False
        self._changes: list[RowChange] = []
        self._batch_bytes = 0  # of the messages behind _changes (see flush_bytes)
        self._mutations: list[MutationRecord] = []
        self._touched: set[str] = set()
        self._last_commit_lsn: int | None = None
        self.rows_applied = 0
        # when a list: each commit applied is noted in it until the store commits it
        self.commit_log: list[tuple[int, int, int]] | None = None

    @property
    def in_transaction(self) -> bool:
        """A transaction has begun on the stream and its commit is not processed yet."""
        return self._in_txn

    # -- relation map ----------------------------------------------------------------------

    def _on_relation(self, rel: po.Relation) -> None:
        source = self.sources_by_oid.get(rel.relid)
        if source is not None:
            names = [c.name for c in rel.columns]
            missing = [c for c in source.needed if c not in names]
            if missing:
                raise SchemaChanged(
                    f"membership table {source.table.ref} no longer has column(s) "
                    f"{', '.join(missing)} that a read rule's sub-select uses"
                )
            self.source_maps[rel.relid] = _SourceMap(
                source, tuple(names.index(c) for c in source.needed)
            )
        routes = self.routes_by_oid.get(rel.relid)
        if not routes:
            named = self.routes_by_name.get((rel.namespace, rel.name))
            if named is not None and self._txn_lsn >= self.backfilled.get(named, 0):
                raise SchemaChanged(
                    f"table {rel.namespace}.{rel.name} was dropped and created again "
                    f"(collection {named!r} maps it)"
                )
            return  # a table of the publication that no collection maps
        self.relations[rel.relid] = tuple(self._rel_map(route, rel) for route in routes)

    @staticmethod
    def _rel_map(route: Collection, rel: po.Relation) -> _RelMap:
        names = [c.name for c in rel.columns]
        missing = [c for c in route.needed if c not in names]
        if missing:
            raise SchemaChanged(
                f"table {route.table.ref} no longer has column(s) {', '.join(missing)} "
                f"used by collection {route.name!r}"
            )
        by_name = {c.name: (i, c) for i, c in enumerate(rel.columns)}
        for name, oid in zip(route.needed, route.needed_oids, strict=True):
            if by_name[name][1].type_oid != oid:
                raise SchemaChanged(f"column {route.table.ref}.{name} changed type")
        if not route.config.columns:  # the collection exposes every column of its table
            added = [c for c in names if c not in route.needed]
            if added:
                raise SchemaChanged(
                    f"table {route.table.ref} gained column(s) {', '.join(added)}, which "
                    f"collection {route.name!r} exposes"
                )
        positions = tuple(by_name[c][0] for c in route.needed)
        whole = positions == tuple(range(len(rel.columns)))
        return _RelMap(route, positions, whole)

    # -- messages ------------------------------------------------------------------------

    def process(self, payloads: Sequence[bytes]) -> BatchResult:
        """Decode and apply a batch of pgoutput messages; commit at the last boundary."""
        start_rows = self.rows_applied
        commits = 0
        decode = self.decoder.decode
        on_row = self._on_row
        changes = self._changes
        update, insert, delete = po.Update, po.Insert, po.Delete
        flush_bytes = self.flush_bytes
        for payload in payloads:
            msg = decode(payload)
            kind = type(msg)
            if kind is update or kind is insert or kind is delete:
                if not self._skipping:
                    on_row(msg)  # type: ignore[arg-type]  # `kind is` narrowed it (an alias)
                    self._batch_bytes += len(payload)
                    if len(changes) >= _FLUSH_EVERY or self._batch_bytes >= flush_bytes:
                        self._flush()
                        changes = self._changes
            elif type(msg) is po.Begin:
                self._in_txn = True
                self._txn_lsn = msg.final_lsn
                self._txn_xid = msg.xid
                self._skipping = msg.final_lsn < self.skip_through
            elif type(msg) is po.Commit:
                self._in_txn = False
                if not self._skipping:
                    self._last_commit_lsn = msg.end_lsn
                    commits += 1
                    if self.commit_log is not None:
                        self.commit_log.append((self._txn_xid, msg.end_lsn, time.time_ns()))
                self._skipping = False
            elif type(msg) is po.Relation:  # even in a skipped transaction: it is sent once
                self._on_relation(msg)
            elif not self._skipping:
                self._on_other(msg)
                changes = self._changes
        self._flush()
        self.drain()
        result = BatchResult(None, rows=self.rows_applied - start_rows, commits=commits)
        if not self._in_txn and self._last_commit_lsn is not None:
            mutations, self._mutations = self._mutations, []
            self._on_writer(self._commit, mutations, self._last_commit_lsn)
            self.skip_through = max(self.skip_through, self._last_commit_lsn)
            result.committed_lsn = self._last_commit_lsn
            result.touched = self._touched
            self._touched = set()
            if self.commit_log:
                result.committed, self.commit_log = self.commit_log, []
            self._last_commit_lsn = None
        return result

    def _commit(self, mutations: Sequence[MutationRecord], lsn: int) -> None:
        if mutations:
            self.store.record_mutations(mutations)
        self.store.commit(lsn)

    def _on_row(self, msg: po.Insert | po.Update | po.Delete) -> None:
        maps = self.relations.get(msg.relid)
        if self.source_maps and msg.relid in self.source_maps:
            self._grant_row(self.source_maps[msg.relid], msg)
        elif msg.relid in self.sources_by_oid:
            raise SchemaChanged(f"row change for relation {msg.relid} before its Relation")
        if maps is None:
            if msg.relid in self.routes_by_oid:
                raise SchemaChanged(f"row change for relation {msg.relid} before its Relation")
            return
        for rm in maps:  # every collection of the table
            self._route_row(rm, msg)

    def _grant_row(self, sm: _SourceMap, msg: po.Insert | po.Update | po.Delete) -> None:
        source = sm.source
        if type(msg) is po.Delete:
            self._grants.extend(source.deleted(source.ident_of(sm.needed(msg.old))))
            return
        gone = None
        if type(msg) is po.Update and msg.old is not None:
            gone = source.ident_of(sm.needed(msg.old))
        self._grants.extend(source.changed(sm.needed(msg.new), gone))

    def _route_row(self, rm: _RelMap, msg: po.Insert | po.Update | po.Delete) -> None:
        route = rm.route
        if self.backfilled and self._txn_lsn < self.backfilled.get(route.name, 0):
            return  # in the backfill's snapshot already
        if type(msg) is po.Delete:
            self._changes.append(RowChange(route.name, route.ident_of(rm.needed(msg.old)), None))
            return
        image = route.change_image(rm.needed(msg.new))
        if type(image) is not Image:  # the store fills in values of unknown size
            self._batch_bytes += _PENDING_BYTES
        gone = None
        if type(msg) is po.Update and msg.old is not None:
            old_ident = route.ident_of(rm.needed(msg.old))
            if old_ident != image.ident:  # the identity changed: the old one is gone
                gone = old_ident
        self._changes.append(RowChange(route.name, gone, image))

    def _on_other(self, msg: object) -> None:
        if type(msg) is po.Truncate:
            self._flush()
            for relid in msg.relids:
                source = self.sources_by_oid.get(relid)
                if source is not None:
                    lookups = [lookup.id for lookup in source.lookups]
                    self._touched |= self._on_writer(self.store.truncate_grants, lookups)
                for rm in self.relations.get(relid, ()):
                    if self._txn_lsn >= self.backfilled.get(rm.route.name, 0):
                        self._touched |= self._on_writer(self.store.truncate, rm.route.name)
        elif type(msg) is po.LogicalMessage and msg.prefix == PREFIX:
            self._on_message(msg)

    def _on_message(self, msg: po.LogicalMessage) -> None:
        try:
            # The transaction id travels with the outcome: clients match their writes by it.
            mid, subject, device, outcome = MutationMessage.record_of(msg.content, self._txn_xid)
        except MalformedMessage:
            log.warning("ignored malformed sidecar message", lsn=lsn_to_str(msg.lsn))
            return
        self._mutations.append(MutationRecord(mid, subject, device, msg.lsn, outcome))

    # -- writing -------------------------------------------------------------------------

    def _flush(self) -> None:
        """Hand the pending row changes (then grant changes) to the writer, in order."""
        if self._changes:
            changes, self._changes = self._changes, []
            self._batch_bytes = 0
            self._submit(self.store.apply, changes)
            self.rows_applied += len(changes)
        if self._grants:
            grants, self._grants = self._grants, []
            self._submit(self.store.apply_grants, grants)

    def _submit(self, fn: Callable[..., set[str]], *args: Any) -> None:
        """Run `fn` on the writer after what was handed to it before; keep going meanwhile
        unless `_IN_FLIGHT` batches are already waiting."""
        if self._writer is None:
            self._touched |= fn(*args)
            return
        self._in_flight.append(self._writer.submit(fn, *args))
        while len(self._in_flight) > _IN_FLIGHT:
            self._touched |= self._in_flight.popleft().result()

    def drain(self) -> None:
        """Wait until the writer wrote every batch handed to it (raising its error)."""
        while self._in_flight:
            self._touched |= self._in_flight.popleft().result()

    def _on_writer(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on the writer once everything before it is written; return its result."""
        self.drain()
        if self._writer is None:
            return fn(*args)
        return self._writer.submit(fn, *args).result()

    # -- initial copy --------------------------------------------------------------------

    def snapshot_rows(
        self, route: Collection | MembershipSource, rows: Sequence[Sequence[Any]]
    ) -> None:
        """Insert rows read by the initial copy (typed values of route.needed, in order)."""
        if isinstance(route, MembershipSource):
            grants = route.copied(rows)
            if route.name in self.reconciling:
                self._submit(self.store.reconcile_grants, route.name, grants)
            else:
                self._submit(self.store.apply_grants, grants)
            self.rows_applied += len(rows)
            return
        images = route.copied_images(rows)
        if route.name in self.reconciling:
            self._submit(self.store.reconcile_rows, route.name, images)
            self.rows_applied += len(rows)
            return
        self._submit(self._load, self.store.prepare_load(route.name, images))
        self.rows_applied += len(rows)

    def take_touched(self) -> set[str]:
        """The scopes (and grant keys) written since the last call, once all is written."""
        self.drain()
        touched, self._touched = self._touched, set()
        return touched

    def _load(self, batch: PreparedLoad) -> set[str]:
        self.store.load_prepared(batch)
        return set()
