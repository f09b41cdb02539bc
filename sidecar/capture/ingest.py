"""Ingest: decoded changes → store writes (runs on the single store-writer thread).

For each row change it looks up the row's last image in the store (for TOASTed values
sent as "unchanged", for the scopes the row is leaving, and for the key of a delete),
routes the new text values (typed values, JSON, rev, scopes) and writes the result.
A primary-key change is a delete of the old identity and an upsert of the new one.
The store transaction is committed at transaction boundaries with the commit's end LSN.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import orjson
import structlog

from sidecar.capture import pgoutput as po
from sidecar.changes import Image
from sidecar.errors import SidecarError
from sidecar.route import Route
from sidecar.store.base import ChangeStore, MutationRecord, RowWrite, StoredRow

log = structlog.get_logger("sidecar.capture")

MESSAGE_PREFIX = "sidecar"
_FLUSH_EVERY = 5000  # pending row changes before they are written into the open transaction


class SchemaChanged(SidecarError):
    code, status, title = "schema_changed", 500, "A synced table changed shape"


@dataclass(slots=True)
class _RelMap:
    route: Route
    positions: tuple[int, ...]  # index in the relation tuple of each of route.needed


@dataclass(slots=True)
class _Pending:
    route: Route
    op: str  # "upsert" | "delete"
    new: list[bytes | object | None] | None  # text of route.needed (may hold UNCHANGED)
    old_ident: str | None


@dataclass(slots=True)
class BatchResult:
    committed_lsn: int | None  # the store committed up to this LSN (None: nothing new)
    touched: set[str] = field(default_factory=set)
    rows: int = 0
    commits: int = 0


class Ingest:
    """Applies pgoutput messages to the store. Not thread-safe: one writer thread."""

    def __init__(self, store: ChangeStore, routes: Iterable[Route], skip_through: int) -> None:
        self.store = store
        self.routes_by_oid = {r.table.oid: r for r in routes}
        self.relations: dict[int, _RelMap] = {}
        self.decoder = po.Decoder()
        self.skip_through = skip_through  # commits ending at or before this are applied
        self._in_txn = False
        self._skipping = False
        self._pending: list[_Pending] = []
        self._mutations: list[MutationRecord] = []
        self._touched: set[str] = set()
        self._last_commit_lsn: int | None = None
        self.rows_applied = 0

    @property
    def in_transaction(self) -> bool:
        """A transaction has begun on the stream and its commit is not processed yet."""
        return self._in_txn

    # -- relation map ----------------------------------------------------------------------

    def _on_relation(self, rel: po.Relation) -> None:
        route = self.routes_by_oid.get(rel.relid)
        if route is None:
            return  # a table of the publication that no collection maps
        names = [c.name for c in rel.columns]
        missing = [c for c in route.needed if c not in names]
        if missing:
            raise SchemaChanged(
                f"table {route.table.ref} no longer has column(s) {', '.join(missing)} "
                f"used by collection {route.name!r}; update the config and restart"
            )
        by_name = {c.name: (i, c) for i, c in enumerate(rel.columns)}
        for name, oid in zip(route.needed, route.needed_oids, strict=True):
            if by_name[name][1].type_oid != oid:
                raise SchemaChanged(
                    f"column {route.table.ref}.{name} changed type; update the config "
                    "if needed and restart"
                )
        self.relations[rel.relid] = _RelMap(route, tuple(by_name[c][0] for c in route.needed))

    # -- messages ------------------------------------------------------------------------

    def process(self, payloads: Sequence[bytes]) -> BatchResult:
        """Decode and apply a batch of XLogData payloads; commit at the last boundary."""
        start_rows = self.rows_applied
        commits = 0
        decode = self.decoder.decode
        for payload in payloads:
            msg = decode(payload)
            kind = type(msg)
            if kind is po.Insert or kind is po.Update or kind is po.Delete:
                if not self._skipping:
                    self._on_row(msg)  # type: ignore[arg-type]
            elif kind is po.Begin:
                self._in_txn = True
                self._skipping = msg.final_lsn < self.skip_through  # type: ignore[union-attr]
            elif kind is po.Commit:
                self._in_txn = False
                if not self._skipping:
                    self._last_commit_lsn = msg.end_lsn  # type: ignore[union-attr]
                    commits += 1
                self._skipping = False
            elif kind is po.Relation:  # even in a skipped transaction: it is sent once
                self._flush()
                self._on_relation(msg)  # type: ignore[arg-type]
            elif not self._skipping:
                self._on_other(msg)
            if len(self._pending) >= _FLUSH_EVERY:
                self._flush()
        self._flush()
        result = BatchResult(None, rows=self.rows_applied - start_rows, commits=commits)
        if not self._in_txn and self._last_commit_lsn is not None:
            if self._mutations:
                self.store.record_mutations(self._mutations)
                self._mutations = []
            self.store.commit(self._last_commit_lsn)
            self.skip_through = max(self.skip_through, self._last_commit_lsn)
            result.committed_lsn = self._last_commit_lsn
            result.touched = self._touched
            self._touched = set()
            self._last_commit_lsn = None
        return result

    def _on_row(self, msg: po.Insert | po.Update | po.Delete) -> None:
        rm = self.relations.get(msg.relid)
        if rm is None:
            if msg.relid in self.routes_by_oid:
                raise SchemaChanged(f"row change for relation {msg.relid} before its Relation")
            return
        pos = rm.positions
        route = rm.route
        if type(msg) is po.Delete:
            old = msg.old
            self._pending.append(
                _Pending(route, "delete", None, route.ident_of([old[p] for p in pos]))
            )
            return
        new = [msg.new[p] for p in pos]
        old_ident = None
        if type(msg) is po.Update and msg.old is not None:
            old_ident = route.ident_of([msg.old[p] for p in pos])
        self._pending.append(_Pending(route, "upsert", new, old_ident))

    def _on_other(self, msg: object) -> None:
        if type(msg) is po.Truncate:
            self._flush()
            for relid in msg.relids:
                rm = self.relations.get(relid)
                if rm is not None:
                    self._touched |= self.store.truncate(rm.route.name)
        elif type(msg) is po.LogicalMessage and msg.prefix == MESSAGE_PREFIX:
            self._on_message(msg)

    def _on_message(self, msg: po.LogicalMessage) -> None:
        try:
            body = orjson.loads(msg.content)
            self._mutations.append(
                MutationRecord(
                    id=str(body["id"]),
                    subject=body.get("sub"),
                    device=body.get("dev"),
                    lsn=msg.lsn,
                    outcome=orjson.dumps(body.get("outcome", {})),
                )
            )
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("ignored malformed sidecar message", lsn=po.lsn_to_str(msg.lsn))

    # -- writing -------------------------------------------------------------------------

    def _flush(self) -> None:
        """Write the pending row changes into the store's open transaction, in order."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        # Images first: they carry the identity to look up. A change holding UNCHANGED
        # values is routed again below, once the stored image can fill them in.
        images: list[Image | None] = []
        wanted: dict[str, set[str]] = {}
        for p in pending:
            ids = wanted.setdefault(p.route.name, set())
            if p.new is None:
                images.append(None)
            else:
                image = p.route.image(p.new)
                images.append(image)
                ids.add(image.ident)
            if p.old_ident is not None:
                ids.add(p.old_ident)
        known: dict[tuple[str, str], StoredRow | None] = {}
        for coll, ids in wanted.items():
            found = self.store.get_rows(coll, ids)
            for i in ids:
                known[(coll, i)] = found.get(i)
        writes: list[RowWrite] = []
        for p, image in zip(pending, images, strict=True):
            coll = p.route.name
            if p.old_ident is not None and (image is None or p.old_ident != image.ident):
                old = known.get((coll, p.old_ident))
                if old is not None:  # a delete, or the old identity of a key change
                    writes.append(RowWrite(coll, old, None))
                    known[(coll, p.old_ident)] = None
            if image is None or p.new is None:
                continue
            current = known.get((coll, image.ident))
            if po.UNCHANGED in p.new:
                if current is None:
                    log.warning("unchanged TOAST value for a row the store lacks", collection=coll)
                else:
                    image = p.route.image(p.new, current.row, current.hidden)
            writes.append(RowWrite(coll, current, image))
            known[(coll, image.ident)] = StoredRow(
                image.ident, 0, image.rev, image.key, image.scopes, image.row, image.hidden
            )
        self._touched |= self.store.write(writes)
        self.rows_applied += len(pending)

    # -- initial copy --------------------------------------------------------------------

    def snapshot_rows(self, route: Route, rows: Sequence[Sequence[bytes | None]]) -> None:
        """Insert rows read by the initial copy (text of route.needed, in order)."""
        image = route.image
        self.store.load(route.name, [image(r) for r in rows])
        self.rows_applied += len(rows)
