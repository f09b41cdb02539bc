"""The PostgreSQL store's writer methods for membership grants and for reconciling, as
`store/sqlite_reconcile.py` describes them for SQLite: grants are netted per (lookup,
row) and closed or added at one new version; a snapshot's rows go through the netting
as upserts and are marked in a temporary table (`seen`, the writer connection's own),
from which `reconcile_finish` tells what the snapshot lacked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import psycopg

from sidecar.changes import GrantChange, Image
from sidecar.store.base import RowChange, StoreUnavailable
from sidecar.store.pg_conn import writes
from sidecar.store.pg_sql import (
    GRANTS_ADD,
    GRANTS_CLOSE,
    GRANTS_END,
    GRANTS_OPEN,
    MARK,
    SEEN,
    UNSEEN_GRANTS,
    UNSEEN_ROWS,
)

__all__ = ["PGReconcile"]

_CHUNK = 5000


def _four(rows: Sequence[tuple[str, str, str, str]]) -> list[list[str]]:
    return [[r[i] for r in rows] for i in range(4)]


class PGReconcile:
    """Mixed into `PGStore` (which provides these attributes and `apply`)."""

    _w: psycopg.Connection[Any]
    _version: int
    _broken: StoreUnavailable | None

    if TYPE_CHECKING:

        def _begin(self) -> None: ...
        def _discard(self) -> bool: ...
        def apply(self, changes: Sequence[RowChange]) -> set[str]: ...
        def _meta(self, key: str) -> str | None: ...
        def _set_meta(self, **values: object) -> None: ...

    # -- membership grants -----------------------------------------------------------------

    def _grants(self, changes: Sequence[GrantChange], version: int) -> set[str]:
        """Bring the grants of the changed rows to their final pairs, changes dated
        `version`; the `<lookup>|<scope>` keys whose grants changed."""
        final: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {}
        for change in changes:
            final[(change.lookup, change.ident)] = change.pairs
        held: dict[tuple[str, str], set[tuple[str, str]]] = {}
        keys = list(final)
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            found = self._w.execute(GRANTS_OPEN, ([k[0] for k in chunk], [k[1] for k in chunk]))
            for lookup, ident, scope, value in found:
                held.setdefault((lookup, ident), set()).add((scope, value))
        close: list[tuple[str, str, str, str]] = []
        add: list[tuple[str, str, str, str]] = []
        for (lookup, ident), pairs in final.items():
            new, old = set(pairs), held.get((lookup, ident), set())
            close.extend((lookup, ident, s, v) for s, v in old - new)
            add.extend((lookup, ident, s, v) for s, v in new - old)
        if close:
            self._w.execute(GRANTS_CLOSE, (version, *_four(close)))
        if add:
            self._w.execute(GRANTS_ADD, (version, *_four(add)))
        return {f"{lookup}|{scope}" for lookup, _, scope, _ in (*close, *add)}

    @writes(batch=True)
    def apply_grants(self, changes: Sequence[GrantChange]) -> set[str]:
        """Membership rows' grants after their changes; returns the `<lookup>|<scope>`
        keys whose grants changed."""
        self._begin()
        touched = self._grants(changes, self._version + 1)
        if touched:
            self._version += 1
            self._set_meta(grants_version=self._version)
        return touched

    @writes(batch=True)
    def truncate_grants(self, lookups: Sequence[str]) -> set[str]:
        """Every grant of `lookups` ends (their membership table was truncated)."""
        self._begin()
        if not lookups:
            return set()
        rows = self._w.execute(GRANTS_END, (self._version + 1, list(lookups))).fetchall()
        touched = {f"{lookup}|{scope}" for lookup, scope in rows}
        if touched:
            self._version += 1
            self._set_meta(grants_version=self._version)
        return touched

    # -- reconciling -------------------------------------------------------------------------

    def _mark(self, collection: str, idents: Sequence[str]) -> None:
        self._w.execute(SEEN)
        self._w.execute(MARK, (collection, list(idents)))

    @writes(batch=True)
    def reconcile_rows(self, collection: str, images: Sequence[Image]) -> set[str]:
        """Rows of a snapshot: each one that differs from the store becomes a change."""
        self._begin()
        self._mark(collection, [im.ident for im in images])
        return self.apply([RowChange(collection, None, im) for im in images])

    @writes(batch=True)
    def reconcile_grants(self, source: str, changes: Sequence[GrantChange]) -> set[str]:
        """A membership table's rows in a snapshot (their grants; `source` names the table)."""
        self._begin()
        self._mark(source, [c.ident for c in changes])
        return self.apply_grants(changes)

    @writes(batch=True)
    def reconcile_finish(
        self, collections: Sequence[str], sources: Mapping[str, Sequence[str]]
    ) -> set[str]:
        """What the snapshot did not have: the collections' rows are deleted, the grants
        of the membership tables' rows end (`sources`: table name → its lookups)."""
        self._begin()
        self._w.execute(SEEN)
        touched: set[str] = set()
        for collection in collections:
            gone = [r[0] for r in self._w.execute(UNSEEN_ROWS, {"c": collection})]
            for start in range(0, len(gone), _CHUNK):
                chunk = gone[start : start + _CHUNK]
                touched |= self.apply([RowChange(collection, i, None) for i in chunk])
        for source, lookups in sources.items():
            for lookup in lookups:
                ended = [
                    GrantChange(lk, ident, ())
                    for lk, ident in self._w.execute(UNSEEN_GRANTS, {"c": source, "l": lookup})
                ]
                if ended:
                    touched |= self.apply_grants(ended)
        self._w.execute("DELETE FROM seen")
        return touched

    @writes(batch=True)
    def adopt(
        self, *, slot: str, system_id: str, database: str, shape: str, lineage: str, lsn: int
    ) -> None:
        """In the open batch: the store now follows this slot of this database, from
        `lsn` (a resync). Mutation ids recorded under another lineage are forgotten."""
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
        """In the open batch: the read rules' history (JSON, see `StoreState.rules`)."""
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
        if collections:
            self._w.execute(
                "DELETE FROM rows WHERE collection = ANY(%s::text[])", (list(collections),)
            )
            self._w.execute(
                "DELETE FROM entries WHERE collection = ANY(%s::text[])", (list(collections),)
            )
