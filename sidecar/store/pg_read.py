"""The PostgreSQL store's read side: a small pool of connections shared by the reading
threads (`PGReader`), and `PGView`, one REPEATABLE READ transaction (a consistent
snapshot) with what `views.read_view` reads.

`PGStore` (`store/pg.py`) is this plus the writer. Readers see committed data only;
they never wait for the writer (MVCC). A pull reads its rows through a server-side
cursor, a few at a time: a big page is never read whole to be cut. `summary` reads a
store without opening it for writing (`sidecar status`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool

from sidecar.lsn import lsn_to_str
from sidecar.store.base import MutationRecord, PageData, StoreView
from sidecar.store.lines import ChangeLines
from sidecar.store.pg_conn import connect, reads
from sidecar.store.pg_sql import (
    AUDIT,
    COUNTS,
    GRANTS_AT,
    GRANTS_CHANGED,
    MUTATION,
    MUTATIONS,
    PULL,
    PULL_LIVE,
    ROW_XIDS,
    SCOPE_HELD,
)

T = TypeVar("T")
_NO_END = 1 << 62  # an upper bound on versions
_FETCH = 200  # rows per round trip of a pull's cursor
_cursor_names = itertools.count()


def _record(r: Sequence[Any]) -> MutationRecord:
    return MutationRecord(r[0], r[1], r[2], int(r[3]), r[4].encode())


def _page(
    lines: ChangeLines,
    rows: Iterable[Sequence[Any]],
    after: int,
    limit: int,
    max_bytes: int | None,
) -> PageData:
    """`ChangeLines.page` over rows whose key and row come back as text."""
    encoded = (
        (v, d, c, key.encode(), rev, b"" if data is None else data.encode())
        for v, d, c, key, rev, data in rows
    )
    return PageData(*lines.page(encoded, after, limit, max_bytes))


def _read_page(
    conn: psycopg.Connection[Any],
    lines: ChangeLines,
    scopes: Sequence[str],
    after: int,
    upto: int | None,
    limit: int,
    max_bytes: int | None,
) -> PageData:
    """A page of changes (`upto` given: live rows only, up to that version), read through
    a server-side cursor in the connection's open transaction."""
    wanted = list(dict.fromkeys(scopes))
    if not wanted:
        return PageData([], after, False)
    params = {"scopes": wanted, "after": after, "limit": limit + 1, "upto": upto}
    with conn.cursor(name=f"pull_{next(_cursor_names)}") as cur:
        cur.itersize = min(_FETCH, limit + 1)
        cur.execute(PULL if upto is None else PULL_LIVE, params)
        return _page(lines, cur, after, limit, max_bytes)


class PGView:
    """One REPEATABLE READ transaction over the store: what `views.read_view` reads."""

    def __init__(self, conn: psycopg.Connection[Any], lines: ChangeLines) -> None:
        self.conn = conn
        self.lines = lines
        meta = dict(
            conn.execute("SELECT key, value FROM meta WHERE key IN ('version', 'grants_version')")
        )
        self.version = int(meta.get("version", 0))
        self.grants_version = int(meta.get("grants_version", self.version))

    def grants(self, lookup: str, scopes: Sequence[str], at: int) -> list[str]:
        rows = self.conn.execute(GRANTS_AT, (lookup, list(scopes), at, at))
        return [r[0] for r in rows]

    def grants_changed(self, keys: Sequence[str], after: int, upto: int) -> bool:
        """Whether a grant of any `<lookup>|<scope>` key began or ended in (after, upto]."""
        if not keys or upto <= after:
            return False
        pairs = [k.split("|", 1) for k in keys]
        lookups, scopes = [p[0] for p in pairs], [p[1] for p in pairs]
        found = self.conn.execute(GRANTS_CHANGED, (lookups, scopes, after, upto, after, upto))
        return found.fetchone() is not None

    def changes(
        self, scopes: Sequence[str], after: int, limit: int, max_bytes: int | None
    ) -> PageData:
        """As `StoreReader.pull`, in this snapshot."""
        if after == 0:  # a client that holds nothing needs no tombstones
            return self.live(scopes, 0, _NO_END, limit, max_bytes)
        return _read_page(self.conn, self.lines, scopes, after, None, limit, max_bytes)

    def live(
        self, scopes: Sequence[str], after: int, upto: int, limit: int, max_bytes: int | None
    ) -> PageData:
        """The live rows of `scopes` whose version is in (after, upto], in version order."""
        return _read_page(self.conn, self.lines, scopes, after, upto, limit, max_bytes)

    def held(self, scope: str, after: int) -> Iterable[tuple[int, str, str, bytes, str, Any]]:
        """(version, collection, ident, key, rev, scopes JSON or None) of the rows a
        client may hold of `scope` at `after`."""
        rows = self.conn.execute(SCOPE_HELD, {"scope": scope, "after": after})
        return [(v, c, i, k.encode(), r, s) for v, c, i, k, r, s in rows]

    def delete_line(self, version: int, collection: str, key: bytes, rev: str) -> bytes:
        return self.lines.line(version, 1, collection, key, rev, b"")


class PGReader:
    """The `StoreReader` methods but `state` (the writer keeps it), over a pool of
    connections; safe to call from any thread."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._lines = ChangeLines()

    @property
    def pool(self) -> ConnectionPool:
        """The reader connections (also the replicas' registry, `replica/registry.py`)."""
        return self._pool

    @reads
    def pull(
        self,
        scopes: Sequence[str],
        after: int,
        limit: int,
        max_bytes: int | None = None,
        live_only: bool = False,
    ) -> PageData:
        """Changes after `after` in any of `scopes`, in version order, at most `limit`, and
        at most `max_bytes` of change lines (each counted with one separator byte) unless
        the first line alone is larger; `live_only`: no tombstones (an initial sync)."""
        with self._pool.connection() as conn, conn.transaction():
            upto = _NO_END if live_only else None
            return _read_page(conn, self._lines, scopes, after, upto, limit, max_bytes)

    @reads
    def view(self, read: Callable[[StoreView], T]) -> T:
        """`read` run over one consistent snapshot of the store."""
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            return read(PGView(conn, self._lines))

    @reads
    def mutation(self, subject: str, mutation_id: str) -> MutationRecord | None:
        with self._pool.connection() as conn:
            row = conn.execute(MUTATION, (subject, mutation_id)).fetchone()
        return None if row is None else _record(row)

    @reads
    def mutations(self, subject: str, ids: Sequence[str]) -> dict[str, MutationRecord]:
        """`mutation` of many ids in one read: the recorded ones, by id."""
        if not ids:
            return {}
        with self._pool.connection() as conn:
            rows = conn.execute(MUTATIONS, (subject, list(ids))).fetchall()
        return {r[0]: _record(r) for r in rows}

    @reads
    def row_xids(self, collection: str, keys: Sequence[str], subject: str) -> dict[str, int]:
        """For row keys (JSON objects as change lines carry them), the transaction id of
        the last mutation `subject` applied to each (keys without one are absent)."""
        if not keys:
            return {}
        out: dict[str, int] = {}
        with self._pool.connection() as conn:
            for key, xid in conn.execute(ROW_XIDS, (list(keys), collection, subject)):
                if xid is not None:
                    out[key] = int(xid)
        return out

    @reads
    def audit(self, collection: str, key: bytes, limit: int) -> list[MutationRecord]:
        """The recorded mutations of one row (key: JSON object), newest first."""
        if b"\\u0000" in key:  # no text in PostgreSQL holds a NUL: no row has that key
            return []
        with self._pool.connection() as conn:
            rows = conn.execute(AUDIT, (collection, key.decode(), limit)).fetchall()
        return [_record(r) for r in rows]

    @reads
    def counts(self) -> dict[str, int]:
        with self._pool.connection() as conn:
            row = conn.execute(COUNTS).fetchone()
        assert row is not None
        return {"rows": int(row[0]), "tombstones": int(row[1]), "bytes": int(row[3])}


def summary(url: str, schema: str) -> dict[str, Any] | None:
    """The store's state, read-only (None when there is no store yet)."""
    with connect(url, schema) as conn:
        found = conn.execute(
            "SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = 'meta'", (schema,)
        ).fetchone()
        if found is None:
            return None
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            row = conn.execute(COUNTS).fetchone()
            replicas = _replicas(conn)
        except psycopg.DatabaseError as exc:
            return {"error": f"not a sidecar store: {exc}"}
    assert row is not None
    if not meta:
        return None
    return {
        "path": f"{where(url)} schema {schema}",
        "bytes": int(row[3]),
        "rows": int(row[0]),
        "tombstones": int(row[1]),
        "mutations": int(row[2]),
        "epoch": meta.get("epoch"),
        "version": int(meta.get("version", 0)),
        "lsn": int(meta.get("lsn", 0)),
        "initial_copy_done": meta.get("snapshot_done") == "1",
        "term": int(meta.get("term", 0)),
        "replicas": replicas,
    }


STALE = 30  # seconds without a heartbeat after which a replica is listed as gone


def _replicas(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """The replicas sharing the store (`replica/registry.py`), the leader first."""
    found = conn.execute("SELECT to_regclass('replicas')").fetchone()
    if found is None or found[0] is None:  # a store no replica has opened yet
        return []
    rows = conn.execute(
        "SELECT id, host, pid, role, term, started_at, heartbeat_at, lsn, lag_seconds, "
        "heartbeat_at > now() - make_interval(secs => %s) FROM replicas "
        "ORDER BY role <> 'leader', started_at",
        (STALE,),
    ).fetchall()
    return [
        {
            "id": r[0],
            "host": r[1],
            "pid": r[2],
            "role": r[3] if r[9] else "gone",
            "term": r[4],
            "started_at": r[5].isoformat(),
            "heartbeat_at": r[6].isoformat(),
            "lsn": lsn_to_str(int(r[7])),
            "lag_seconds": float(r[8]),
        }
        for r in rows
    ]


def where(url: str) -> str:
    """The store's server and database, without credentials."""
    from psycopg.conninfo import conninfo_to_dict

    info = conninfo_to_dict(url)
    host = info.get("host") or "localhost"
    port = info.get("port") or "5432"
    return f"postgresql://{host}:{port}/{info.get('dbname') or ''}"
