"""The SQLite store's writer methods for membership grants and for reconciling.

Reconciling (see `capture/reconcile.py`): the rows of a consistent snapshot go through
`reconcile_rows` — compared with the stored rows in one statement (`_DIFFERENT`: absent,
or another rev, scopes or hidden columns), and only those applied as upserts, which the
netting turns into a new version (or, for hidden columns alone, a quiet rewrite) — and
are marked as seen in a temporary table; `reconcile_finish` then deletes what the
snapshot did not have (a tombstone in each of its scopes) and ends the grants of
membership rows it did not have. Everything in the open batch: the store serves its
last committed state meanwhile.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import orjson

from sidecar.changes import GrantChange, Image
from sidecar.store.base import RowChange, StoreUnavailable
from sidecar.store.sqlite_errors import writes
from sidecar.store.sqlite_grants import apply_grants, close_grants

__all__ = ["SQLiteReconcile"]

_SEEN = """
CREATE TEMP TABLE IF NOT EXISTS seen (collection TEXT NOT NULL, ident TEXT NOT NULL,
    PRIMARY KEY (collection, ident)) WITHOUT ROWID
"""
_MARK = "INSERT OR IGNORE INTO temp.seen SELECT ?1, value FROM json_each(?2)"
_UNSEEN_ROWS = """
SELECT r.ident FROM rows r WHERE r.collection = ?1
    AND NOT EXISTS (SELECT 1 FROM temp.seen s WHERE s.collection = ?1 AND s.ident = r.ident)
"""
_UNSEEN_GRANTS = """
SELECT DISTINCT g.lookup, g.ident FROM grants g WHERE g.lookup = ?2 AND g.removed IS NULL
    AND NOT EXISTS (SELECT 1 FROM temp.seen s WHERE s.collection = ?1 AND s.ident = g.ident)
"""
_CHUNK = 5000
# The snapshot's rows ([ident, rev, scopes, hidden]) not stored as they are: what the
# netting would give a new version, or rewrite for its hidden columns. Texts are compared
# as the store wrote them: a spelling that differs for equal values only sends the row
# through the netting, which finds it equal.
_DIFFERENT = """
SELECT json_group_array(v.value ->> 0) FROM json_each(?2) v
LEFT JOIN rows r ON r.collection = ?1 AND r.ident = v.value ->> 0
WHERE r.rowid IS NULL OR r.rev IS NOT v.value ->> 1 OR r.scopes IS NOT v.value -> 2
    OR r.hidden IS NOT CAST(v.value ->> 3 AS BLOB)
"""


class SQLiteReconcile:
    """Mixed into `SQLiteStore` (which provides these attributes and `apply`)."""

    _w: sqlite3.Connection
    _version: int
    _broken: StoreUnavailable | None

    if TYPE_CHECKING:

        def _begin(self) -> None: ...
        def _ensure_indexes(self) -> None: ...
        def _discard(self) -> bool: ...
        def apply(self, changes: Sequence[RowChange]) -> set[str]: ...
        def _meta(self, key: str) -> str | None: ...
        def _set_meta(self, **values: object) -> None: ...

    # -- membership grants -----------------------------------------------------------------

    @writes(batch=True)
    def apply_grants(self, changes: Sequence[GrantChange]) -> set[str]:
        """Membership rows' grants after their changes (see `sqlite_grants`); returns the
        `<lookup>|<scope>` keys whose grants changed."""
        self._begin()
        self._ensure_indexes()
        touched = apply_grants(self._w, changes, self._version + 1)
        if touched:
            self._version += 1
            self._set_meta(grants_version=self._version)
        return touched

    @writes(batch=True)
    def truncate_grants(self, lookups: Sequence[str]) -> set[str]:
        """Every grant of `lookups` ends (their membership table was truncated)."""
        self._begin()
        touched = close_grants(self._w, lookups, self._version + 1) if lookups else set()
        if touched:
            self._version += 1
            self._set_meta(grants_version=self._version)
        return touched

    # -- reconciling -------------------------------------------------------------------------

    def _mark(self, collection: str, idents: Sequence[str]) -> None:
        self._w.execute(_SEEN)
        self._w.execute(_MARK, (collection, orjson.dumps(list(idents))))

    @writes(batch=True)
    def reconcile_rows(self, collection: str, images: Sequence[Image]) -> set[str]:
        """Rows of a snapshot: each one that differs from the store becomes a change."""
        self._begin()
        self._ensure_indexes()
        self._mark(collection, [im.ident for im in images])
        batch = orjson.dumps([(im.ident, im.rev, im.scopes, im.hidden.decode()) for im in images])
        (found,) = self._w.execute(_DIFFERENT, (collection, batch)).fetchone()
        different = set(orjson.loads(found))
        if not different:
            return set()
        return self.apply(
            [RowChange(collection, None, im) for im in images if im.ident in different]
        )

    @writes(batch=True)
    def reconcile_grants(self, source: str, changes: Sequence[GrantChange]) -> set[str]:
        """A membership table's rows in a snapshot (their grants; `source` names the table)."""
        self._begin()
        self._ensure_indexes()
        self._mark(source, [c.ident for c in changes])
        return self.apply_grants(changes)

    @writes(batch=True)
    def reconcile_finish(
        self, collections: Sequence[str], sources: Mapping[str, Sequence[str]]
    ) -> set[str]:
        """What the snapshot did not have: the collections' rows are deleted, the grants
        of the membership tables' rows end (`sources`: table name → its lookups)."""
        self._begin()
        self._w.execute(_SEEN)
        touched: set[str] = set()
        for collection in collections:
            gone = [r[0] for r in self._w.execute(_UNSEEN_ROWS, (collection,))]
            for start in range(0, len(gone), _CHUNK):
                chunk = gone[start : start + _CHUNK]
                touched |= self.apply([RowChange(collection, i, None) for i in chunk])
        for source, lookups in sources.items():
            for lookup in lookups:
                ended = [
                    GrantChange(lk, ident, ())
                    for lk, ident in self._w.execute(_UNSEEN_GRANTS, (source, lookup))
                ]
                if ended:
                    touched |= self.apply_grants(ended)
        self._w.execute("DELETE FROM temp.seen")
        return touched

    @writes(batch=True)
    def adopt(
        self, *, slot: str, system_id: str, database: str, shape: str, lineage: str, lsn: int
    ) -> None:
        """In the open batch: the store now follows this slot of this database, from
        `lsn` (a resync). Mutation ids recorded under another lineage are forgotten: what
        they record may not have survived (see `reset`)."""
        self._begin()
        if self._meta("lineage") != lineage:
            self._w.execute("DELETE FROM mutations")
        self._set_meta(
            slot=slot,
            system_id=system_id,
            database=database,
            shape=shape,
            lineage=lineage,
            backfill="{}",
            acked_lsn=lsn,
        )

    @writes(batch=True)
    def record_rules(self, rules: Callable[[int], str]) -> None:
        """In the open batch: the read rules' history (JSON, see `StoreState.rules`),
        made by `rules` given the version from which a changed rule holds (a new one)."""
        self._begin()
        since = self._version + 1
        text = rules(since)
        if text != self._meta("rules"):
            self._version = since  # cursors from now on name the new rules
            # a caller's scopes may change here as with a grant (see `grants_version`)
            self._set_meta(rules=text, grants_version=since)

    @writes(batch=True)
    def drop_collections(self, collections: Sequence[str]) -> None:
        """Forget collections no longer configured (no client can ask for them)."""
        self._begin()
        for collection in collections:
            self._w.execute("DELETE FROM rows WHERE collection = ?", (collection,))
            self._w.execute("DELETE FROM entries WHERE collection = ?", (collection,))
