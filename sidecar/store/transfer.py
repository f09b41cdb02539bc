"""Copies of a store that keep clients' cursors: `sidecar backup` and `sidecar migrate-store`.

- `backup_sqlite`: the SQLite store (and its pending mutation ids, `<store>.pending`) as
  one consistent file each, by `VACUUM INTO` on a read transaction: the store's writer
  goes on meanwhile (WAL mode), and the copy takes about as long as reading the file
  once, however fast capture writes. SQLite's `.backup` restarts its copy whenever the
  file changes under it, and never finishes under a steady write load.
- `migrate_sqlite_to_pg`: an SQLite store copied into an empty PostgreSQL store (its
  schema created if need be), all in one PostgreSQL transaction: meta (epoch, lineage,
  LSNs, version counter, rules history …), rows, entries (tombstones included), marks,
  mutation ids and outcomes, grants, and the pending mutation ids. Versions, epoch and
  positions are the same, so a client's cursor goes on on the new store.

Neither is a store role (`base.py`): they read and write the tables directly, as the
engines lay them out (`sqlite_sql.py`, `pg_sql.py`).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psycopg

from sidecar.errors import StoreKeyInvalid
from sidecar.store import pg_sql, sqlite_files, sqlite_sql
from sidecar.store.pg_conn import connect, create
from sidecar.store.sqlite_pending import pending_path

__all__ = ["Copied", "TransferError", "backup_sqlite", "migrate_sqlite_to_pg"]

_BUSY_TIMEOUT_MS = 30_000
_BATCH = 10_000


class TransferError(Exception):
    """A backup or migration refused (what to do is in the message)."""


@dataclass(frozen=True, slots=True)
class Copied:
    """What a backup or migration copied: rows per table, and the store's identity."""

    tables: dict[str, int]
    epoch: str
    version: int


def _open_sqlite(path: Path, key: str | None) -> sqlite3.Connection:
    """The store file at `path`, through SQLCipher with `key` when it is encrypted."""
    if not path.is_file():
        raise TransferError(f"no store at {path}")
    try:
        conn = sqlite_files.connect(path, key, isolation_level=None)
    except StoreKeyInvalid as exc:  # encrypted (another key) or not a SQLite file
        raise TransferError(f"{path} is not a sidecar store: {exc.detail}") from None
    conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
    return conn


def _meta(conn: sqlite3.Connection, path: Path) -> dict[str, str]:
    try:
        return {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM meta")}
    except sqlite3.DatabaseError as exc:
        raise TransferError(f"{path} is not a sidecar store: {exc}") from None


# -- backup ---------------------------------------------------------------------------


def _vacuum_into(source: Path, target: Path, key: str | None) -> None:
    """`source` copied to `target` (0600, like the store's own files; encrypted with the
    same key when the store is)."""
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    sqlite_files.prepare(partial)  # an empty 0600 file: VACUUM INTO fills it
    conn = _open_sqlite(source, key)
    try:
        conn.execute("VACUUM INTO ?", (str(partial),))
    finally:
        conn.close()
    partial.replace(target)


def backup_sqlite(store: Path, to: Path, *, key: str | None = None, force: bool = False) -> Copied:
    """Back up the SQLite store at `store` (and its pending ids) to `to` (and
    `<to>.pending`) while the sidecar runs; an encrypted store (`key`) gives a copy
    encrypted with the same key. Refuses an existing `to` unless `force`."""
    if to.resolve() == store.resolve():
        raise TransferError("the backup cannot be the store itself")
    targets = [to, pending_path(to)]
    if not force and any(t.exists() for t in targets):
        raise TransferError(f"{to} exists: choose another file, or pass --force")
    with contextlib.closing(_open_sqlite(store, key)) as conn:
        _meta(conn, store)
    to.parent.mkdir(parents=True, exist_ok=True)
    for t in targets:
        t.unlink(missing_ok=True)
    _vacuum_into(store, to, key)
    if pending_path(store).is_file():
        _vacuum_into(pending_path(store), pending_path(to), key)
    with contextlib.closing(sqlite_files.connect(to, key, readonly=True)) as copy:
        meta = _meta(copy, to)
        counts = {
            t: int(copy.execute(f"SELECT count(*) FROM {t}").fetchone()[0])
            for t in ("rows", "entries", "mutations", "grants")
        }
    return Copied(counts, meta.get("epoch", ""), int(meta.get("version", 0)))


# -- migration ------------------------------------------------------------------------


def _text(value: Any) -> Any:
    """A JSON value SQLite keeps as a BLOB, as the PostgreSQL store's text."""
    return bytes(value).decode() if isinstance(value, bytes | bytearray | memoryview) else value


def _scopes(value: Any) -> list[str]:
    return list(orjson.loads(_text(value)))


# Per table: the SQLite query (in insertion order), the PostgreSQL columns and their
# types for COPY, and how a SQLite row becomes a PostgreSQL one.
_TABLES: dict[str, tuple[str, list[str], list[str], Any]] = {
    "rows": (
        "SELECT collection, ident, version, rev, key, scopes, scope, row, hidden "
        "FROM rows ORDER BY rowid",
        ["collection", "ident", "version", "rev", "key", "scopes", "scope", "data", "hidden"],
        ["text", "text", "int8", "text", "text", "text[]", "text", "text", "text"],
        lambda r: (
            r[0],
            r[1],
            r[2],
            r[3],
            _text(r[4]),
            _scopes(r[5]),
            r[6],
            _text(r[7]),
            _text(r[8]),
        ),
    ),
    "entries": (
        "SELECT scope, version, collection, ident, deleted, key, rev FROM entries ORDER BY rowid",
        ["scope", "version", "collection", "ident", "deleted", "key", "rev"],
        ["text", "int8", "text", "text", "int2", "text", "text"],
        lambda r: (r[0], r[1], r[2], r[3], r[4], _text(r[5]), r[6]),
    ),
    "marks": (
        "SELECT version, at FROM marks ORDER BY version",
        ["version", "at"],
        ["int8", "float8"],
        tuple,
    ),
    "mutations": (
        "SELECT subject, id, device, lsn, outcome, at FROM mutations ORDER BY rowid",
        ["subject", "id", "device", "lsn", "outcome", "at"],
        ["text", "text", "text", "int8", "text", "float8"],
        lambda r: (r[0], r[1], r[2], r[3], _text(r[4]), r[5]),
    ),
    "grants": (
        "SELECT lookup, ident, scope, value, added, removed FROM grants ORDER BY rowid",
        ["lookup", "ident", "scope", "value", "added", "removed"],
        ["text", "text", "text", "text", "int8", "int8"],
        tuple,
    ),
}
_PENDING = (
    "SELECT subject, id, xid, rev, origin, at FROM pending",
    ["subject", "id", "xid", "rev", "origin", "at"],
    ["text", "text", "int8", "text", "text", "float8"],
)


def _batches(conn: sqlite3.Connection, query: str) -> Iterator[list[tuple[Any, ...]]]:
    cur = conn.execute(query)
    while rows := cur.fetchmany(_BATCH):
        yield rows


def _copy(
    pg: psycopg.Connection[Any],
    table: str,
    columns: list[str],
    types: list[str],
    rows: Iterator[list[tuple[Any, ...]]],
    convert: Any,
) -> int:
    n = 0
    with pg.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as cp:
        cp.set_types(types)
        for batch in rows:
            for row in batch:
                cp.write_row(convert(row))
            n += len(batch)
    return n


def _target_used(pg: psycopg.Connection[Any]) -> str | None:
    """What the PostgreSQL store already holds (None: nothing)."""
    for table in ("rows", "entries", "mutations", "grants", "pending"):
        if pg.execute(f"SELECT EXISTS (SELECT FROM {table})").fetchone() == (True,):
            return f"its table {table} is not empty"
    done = pg.execute("SELECT value FROM meta WHERE key = 'snapshot_done'").fetchone()
    if done == ("1",):
        return "it holds a completed copy"
    return None


def migrate_sqlite_to_pg(
    source: Path, url: str, schema: str, *, key: str | None = None, force: bool = False
) -> Copied:
    """Copy the SQLite store at `source` into the PostgreSQL store (`url`, `schema`),
    in one transaction. Refuses a target that holds anything unless `force` (then it
    is emptied first, in the same transaction)."""
    src = _open_sqlite(source, key)
    try:
        src.execute("BEGIN")  # one snapshot of every table
        meta = _meta(src, source)
        if meta.get("format") != sqlite_sql.FORMAT:
            raise TransferError(
                f"{source} is a store of format {meta.get('format')!r}, not "
                f"{sqlite_sql.FORMAT}: start this sidecar version on it once, then migrate"
            )
        if meta.get("snapshot_done") != "1":
            raise TransferError(f"{source} holds no completed initial copy: nothing to keep")
        pending_file = pending_path(source)
        pend = _open_sqlite(pending_file, key) if pending_file.is_file() else None
        with contextlib.ExitStack() as stack:
            if pend is not None:
                stack.callback(pend.close)
            pg = stack.enter_context(connect(url, schema))
            create(pg, schema, pg_sql.SCHEMA + pg_sql.PENDING_SCHEMA)
            with pg.transaction():
                pg.execute("LOCK TABLE meta IN EXCLUSIVE MODE")  # one migration at a time
                used = _target_used(pg)
                if used is not None and not force:
                    raise TransferError(
                        f"the PostgreSQL store is not empty ({used}): pass --force to "
                        "replace what it holds"
                    )
                pg.execute(
                    f"TRUNCATE {', '.join(pg_sql.TABLES)}, pending, pending_meta RESTART IDENTITY"
                )
                counts = {
                    name: _copy(pg, name, cols, types, _batches(src, query), convert)
                    for name, (query, cols, types, convert) in _TABLES.items()
                }
                values = {**meta, "format": pg_sql.FORMAT}
                with pg.cursor() as cur:
                    cur.executemany(pg_sql.SET_META, sorted(values.items()))
                if pend is not None:
                    query, cols, types = _PENDING
                    counts["pending"] = _copy(
                        pg, "pending", cols, types, _batches(pend, query), tuple
                    )
                    with pg.cursor() as cur:
                        cur.executemany(
                            "INSERT INTO pending_meta (key, value) VALUES (%s, %s)",
                            list(pend.execute("SELECT key, value FROM meta")),
                        )
    finally:
        src.close()
    return Copied(counts, meta["epoch"], int(meta.get("version", 0)))
