"""The SQLite store's grants (membership tables) and its view reads (`views.py`).

Writer side: `apply_grants` nets a batch of `GrantChange`s per (lookup, row), compares
each row's final pairs with its open grants, and closes or adds the difference at one
new version. Reader side: `SQLiteView` is one read transaction (a consistent snapshot)
with what `views.read_view` asks of a store.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import orjson

from sidecar.changes import GrantChange
from sidecar.store.base import PageData
from sidecar.store.lines import ChangeLines, merged
from sidecar.store.sqlite_sql import (
    ACTIVE_SCOPES,
    GRANTS_ADD,
    GRANTS_AT,
    GRANTS_CHANGED,
    GRANTS_CLOSE,
    GRANTS_OPEN,
    PULL,
    PULL_LIVE,
    SCOPE_HELD,
)

_CHUNK = 20_000  # rows per statement
_MERGE_DIRECT = 8  # up to this many scopes, a pull reads each without asking which changed

__all__ = ["SQLiteView", "apply_grants", "close_grants"]


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def apply_grants(
    conn: sqlite3.Connection, changes: Sequence[GrantChange], version: int
) -> set[str]:
    """Bring the grants of the changed rows to their final pairs (in the open
    transaction), changes dated `version`; returns the `<lookup>|<scope>` keys whose
    grants changed (none: nothing was written, `version` is unused)."""
    final: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {}
    for change in changes:
        final[(change.lookup, change.ident)] = change.pairs
    held: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for chunk in _chunks(list(final)):
        (found,) = conn.execute(GRANTS_OPEN, (orjson.dumps(chunk),)).fetchone()
        for lookup, ident, scope, value in orjson.loads(found):
            held.setdefault((lookup, ident), set()).add((scope, value))
    close: list[tuple[str, str, str, str]] = []
    add: list[tuple[str, str, str, str]] = []
    for (lookup, ident), pairs in final.items():
        new, old = set(pairs), held.get((lookup, ident), set())
        close.extend((lookup, ident, s, v) for s, v in old - new)
        add.extend((lookup, ident, s, v) for s, v in new - old)
    for chunk in _chunks(close):
        conn.execute(GRANTS_CLOSE, (orjson.dumps(chunk), version))
    for chunk in _chunks(add):
        conn.execute(GRANTS_ADD, (orjson.dumps(chunk), version))
    return {f"{lookup}|{scope}" for lookup, _, scope, _ in (*close, *add)}


def close_grants(conn: sqlite3.Connection, lookups: Sequence[str], version: int) -> set[str]:
    """Every open grant of `lookups` ends at `version` (a membership table truncated)."""
    marks = ", ".join("?" * len(lookups))
    rows = conn.execute(
        f"UPDATE grants SET removed = ? WHERE removed IS NULL AND lookup IN ({marks}) "
        "RETURNING lookup, scope",
        (version, *lookups),
    ).fetchall()
    return {f"{lookup}|{scope}" for lookup, scope in rows}


class SQLiteView:
    """One read transaction over the store: what `views.read_view` reads."""

    def __init__(self, conn: sqlite3.Connection, lines: ChangeLines) -> None:
        self.conn = conn
        self.lines = lines
        meta = dict(
            conn.execute("SELECT key, value FROM meta WHERE key IN ('version', 'grants_version')")
        )
        self.version = int(meta.get("version", 0))
        self.grants_version = int(meta.get("grants_version", self.version))

    def grants(self, lookup: str, scopes: Sequence[str], at: int) -> list[str]:
        rows = self.conn.execute(GRANTS_AT, (lookup, orjson.dumps(list(scopes)), at))
        return [r[0] for r in rows]

    def grants_changed(self, keys: Sequence[str], after: int, upto: int) -> bool:
        """Whether a grant of any `<lookup>|<scope>` key began or ended in (after, upto]."""
        if not keys or upto <= after:
            return False
        pairs = [k.split("|", 1) for k in keys]
        for chunk in _chunks(pairs):
            found = self.conn.execute(GRANTS_CHANGED, (orjson.dumps(chunk), after, upto))
            if found.fetchone() is not None:
                return True
        return False

    def _active(self, scopes: Sequence[str], after: int) -> list[str]:
        if len(scopes) <= _MERGE_DIRECT:
            return list(scopes)
        active: list[str] = []
        for chunk in _chunks(scopes):
            rows = self.conn.execute(ACTIVE_SCOPES, (orjson.dumps(list(chunk)), after))
            active.extend(r[0] for r in rows)
        return active

    def changes(
        self, scopes: Sequence[str], after: int, limit: int, max_bytes: int | None
    ) -> PageData:
        """As `StoreReader.pull`, in this snapshot."""
        wanted = self._active(list(dict.fromkeys(scopes)), after)
        if after == 0:  # a client that holds nothing needs no tombstones
            return self.live(wanted, 0, 1 << 62, limit, max_bytes)
        cursors = [self.conn.execute(PULL, (s, after, limit + 1)) for s in wanted]
        try:
            return PageData(*self.lines.page(merged(cursors), after, limit, max_bytes))
        finally:
            for cursor in cursors:
                cursor.close()

    def live(
        self, scopes: Sequence[str], after: int, upto: int, limit: int, max_bytes: int | None
    ) -> PageData:
        """The live rows of `scopes` whose version is in (after, upto], in version order."""
        wanted = list(dict.fromkeys(scopes))
        cursors = [self.conn.execute(PULL_LIVE, (s, after, limit + 1, upto)) for s in wanted]
        try:
            return PageData(*self.lines.page(merged(cursors), after, limit, max_bytes))
        finally:
            for cursor in cursors:
                cursor.close()

    def held(self, scope: str, after: int) -> Iterable[tuple[int, str, str, bytes, str, Any]]:
        """(version, collection, ident, key, rev, scopes JSON or None) of the rows a
        client may hold of `scope` at `after`."""
        return self.conn.execute(SCOPE_HELD, (scope, after))

    def delete_line(self, version: int, collection: str, key: bytes, rev: str) -> bytes:
        return self.lines.line(version, 1, collection, key, rev, b"")
