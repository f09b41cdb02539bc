"""A batch of row changes reduced to its net effect, for stores that write in bulk.

Capture hands the store thousands of row changes at a time. Applying them one by one
costs a lookup and a few statements per change; instead the batch is replayed here, in
memory, over the stored state of the rows it names (looked up once for the batch), and
what remains to be written is each row's final image and each scope entry's final state.

The result is the one of applying the changes in order: versions are assigned in stream
order, a change that leaves a row's rev and scopes as they were gets no version (only its
hidden columns are kept), a row leaving a scope leaves a tombstone there (carrying the key
and rev it had), and a deleted row leaves a tombstone in every scope it was in.

Most changes of a big batch are the same simple case: a stored row, changed once in the
batch, staying in its scopes. Those skip the general replay (`RowState`) and go straight
to two lists: the rows to rewrite in place and their entries to renumber.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sidecar.changes import Image
from sidecar.store.base import RowChange

# A row as the store looked it up: [ident, rowid, version, rev, scopes (a tuple), key,
# hidden, row (only when a change needs it)], key/hidden/row as JSON text.
Stored = list[Any]

# The final state of a row's entry in one scope: (version, deleted, key, rev). An upsert
# entry (deleted 0) has no key/rev of its own: they are the row's.
Entry = tuple[int, int, bytes | None, str | None]


class RowState:
    """One row as the general replay sees it: as stored, then after each change in turn."""

    __slots__ = (
        "changed",
        "collection",
        "entries",
        "exists",
        "hidden",
        "ident",
        "key",
        "rev",
        "row",
        "rowid",
        "scopes",
        "stored_scopes",
        "stored_version",
        "version",
    )

    def __init__(self, collection: str, ident: str, stored: Stored | None) -> None:
        self.collection = collection
        self.ident = ident
        self.changed = False  # the stored row must be rewritten (or inserted, or deleted)
        self.entries: dict[str, Entry] = {}  # scope → final entry, for scopes the batch touched
        if stored is None:
            self.rowid: int | None = None
            self.stored_version = self.version = 0
            self.stored_scopes: tuple[str, ...] = ()
            self.scopes: tuple[str, ...] = ()
            self.exists = False
            self.rev, self.key, self.hidden = "", b"", b"{}"
            self.row: bytes | None = None
            return
        self.rowid = stored[1]
        self.stored_version = self.version = stored[2]
        self.rev = stored[3]
        self.stored_scopes = self.scopes = stored[4]
        self.key = stored[5].encode()
        self.hidden = stored[6].encode()
        self.row = stored[7].encode() if len(stored) > 7 else None  # only looked up if needed
        self.exists = True


class Netting:
    """Replays changes over the stored rows; `version` and `touched` follow as they would.

    `stored` holds, per collection, every stored row the changes name; `repeated` the
    identities named by more than one change of the batch.
    """

    def __init__(
        self,
        version: int,
        stored: dict[str, dict[str, Stored]],
        repeated: dict[str, set[str]],
    ) -> None:
        self.version = version
        self.stored = stored
        self.repeated = repeated
        self.touched: set[str] = set()
        self.states: dict[tuple[str, str], RowState] = {}  # rows of the general replay
        # The simple case: stored rows rewritten in place (rowid, version, rev, key, row,
        # hidden) and, for rows in several scopes, their entries renumbered (scope, stored
        # version, version).
        self.rewrites: list[tuple[int, int, str, str, str, str]] = []
        self.renumbers: list[tuple[str, int, int]] = []

    def replay(self, change: RowChange) -> None:
        coll, gone, new = change
        if gone is None and type(new) is Image and self._rewrite(coll, new):
            return
        # Values sent as unchanged are filled in from the row as stored: under its old
        # identity when the change renamed it.
        source: RowState | None = None
        if gone is not None:
            source = self._state(coll, gone)
            old = (source.row, source.hidden) if source.exists else (None, None)
            self._remove(source)
        if new is None:
            return
        st = self._state(coll, new.ident)
        if not isinstance(new, Image):
            if source is None:
                old = (st.row, st.hidden) if st.exists else (None, None)
            new = new.complete(*old)
        self._put(st, new)

    def _rewrite(self, coll: str, im: Image) -> bool:
        """The simple case, if it is one: a stored row changed once, staying in its scopes."""
        stored = self.stored[coll].get(im.ident)
        if stored is None or stored[3] == im.rev or stored[4] != im.scopes:
            return False
        repeated = self.repeated.get(coll)
        if repeated and im.ident in repeated:
            return False
        self.version += 1
        v = self.version
        self.rewrites.append(
            (stored[1], v, im.rev, im.key.decode(), im.row.decode(), im.hidden.decode())
        )
        if len(im.scopes) > 1:  # entries of their own (one scope: the row is its entry)
            old = stored[2]
            for s in im.scopes:
                self.renumbers.append((s, old, v))
        self.touched.update(im.scopes)
        return True

    def _state(self, coll: str, ident: str) -> RowState:
        st = self.states.get((coll, ident))
        if st is None:
            st = self.states[(coll, ident)] = RowState(coll, ident, self.stored[coll].get(ident))
        return st

    def _remove(self, st: RowState) -> None:
        if not st.exists:
            return
        self.version += 1
        tomb = (self.version, 1, st.key, st.rev)
        for s in st.scopes:
            st.entries[s] = tomb
        self.touched.update(st.scopes)
        st.exists, st.scopes, st.row, st.changed = False, (), None, True

    def _put(self, st: RowState, im: Image) -> None:
        if st.exists and st.rev == im.rev and st.scopes == im.scopes:
            if st.hidden != im.hidden:  # not visible to clients: no new version
                st.hidden, st.changed = im.hidden, True
            return
        self.version += 1
        v = self.version
        entries, touched = st.entries, self.touched
        if st.exists:
            tomb = (v, 1, st.key, st.rev)
            for s in st.scopes:
                if s not in im.scopes:  # left this scope
                    entries[s] = tomb
                    touched.add(s)
        upsert = (v, 0, None, None)
        for s in im.scopes:
            entries[s] = upsert
        touched.update(im.scopes)
        st.exists, st.version, st.changed = True, v, True
        st.rev, st.key, st.scopes, st.row, st.hidden = im.rev, im.key, im.scopes, im.row, im.hidden


def _text(blob: bytes | None) -> str | None:
    return None if blob is None else blob.decode()


@dataclass(slots=True)
class WritePlan:
    """What a store writes for the rows the general replay changed: rows deleted (by
    rowid), updated (rowid, version, rev, key, scopes, scope, row or None to keep it,
    hidden), inserted (collection, ident, version, rev, key, scopes, scope, row, hidden);
    entries deleted (scope, version), moved (scope, stored version, version, deleted,
    key, rev), tombstones cleared (collection, ident, scope) and entries inserted (scope,
    version, collection, ident, deleted, key, rev). JSON values as text; applied in this
    order."""

    row_deletes: list[int] = field(default_factory=list)
    row_updates: list[tuple[Any, ...]] = field(default_factory=list)
    row_inserts: list[tuple[Any, ...]] = field(default_factory=list)
    deletes: list[tuple[str, int]] = field(default_factory=list)
    moves: list[tuple[Any, ...]] = field(default_factory=list)
    clears: list[tuple[str, str, str]] = field(default_factory=list)
    inserts: list[tuple[Any, ...]] = field(default_factory=list)


def write_plan(states: Iterable[RowState]) -> WritePlan:
    """The final state of the rows the general replay changed, and their entries.

    A row ending in exactly one scope is its upsert entry there (`rows.scope`); any
    other final entry is a record of `entries`. Each entry the batch touched goes from
    where it was stored (in the row, at (scope, stored version), or nowhere but maybe
    an old tombstone) to where it belongs now.
    """
    plan = WritePlan()
    for st in states:
        if not st.changed:
            continue
        coll, ident = st.collection, st.ident
        single = st.scopes[0] if len(st.scopes) == 1 else None  # () once deleted
        if st.rowid is None:
            if st.exists:
                plan.row_inserts.append(
                    (coll, ident, st.version, st.rev, st.key.decode(), st.scopes, single,
                     _text(st.row), st.hidden.decode())
                )  # fmt: skip
        elif not st.exists:
            plan.row_deletes.append(st.rowid)
        else:
            plan.row_updates.append(
                (st.rowid, st.version, st.rev, st.key.decode(), st.scopes, single,
                 _text(st.row), st.hidden.decode())
            )  # fmt: skip
        stored, stored_in_row = st.stored_scopes, len(st.stored_scopes) == 1
        for scope, (version, deleted, key, rev) in st.entries.items():
            in_row = not deleted and scope == single
            entry = (scope, version, coll, ident, deleted, _text(key), rev)
            if scope not in stored:  # replacing the tombstone it may have left before
                plan.clears.append((coll, ident, scope))
                if not in_row:
                    plan.inserts.append(entry)
            elif stored_in_row:
                if not in_row:
                    plan.inserts.append(entry)
            elif in_row:
                plan.deletes.append((scope, st.stored_version))
            else:
                plan.moves.append((scope, st.stored_version, version, deleted, _text(key), rev))
    return plan
