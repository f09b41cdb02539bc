"""The SQLite store's writer under trouble that may pass: a lock held by another
connection, a full database (SQLITE_FULL through `max_page_count`). Each write fails with
`StoreUnavailable`; nothing is written before `rollback()`, which works whether or not
SQLite already rolled the transaction back; afterwards the same batch commits."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest

from sidecar.changes import Image, rev_of
from sidecar.store.base import RowChange, StoreUnavailable
from sidecar.store.sqlite import SQLiteStore


def _changes(start: int, n: int, pad: int = 0) -> list[RowChange]:
    out = []
    for i in range(start, start + n):
        ident = orjson.dumps({"id": i}).decode()
        row = orjson.dumps({"id": i, "note": "x" * pad})
        out.append(
            RowChange("items", None, Image(ident, ident.encode(), row, rev_of(row), ("s",), b"{}"))
        )
    return out


def _rows(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT count(*) FROM rows").fetchone()[0]


def test_a_locked_store_refuses_the_batch_and_takes_it_again_after_rollback(tmp_path: Path):
    store = SQLiteStore(tmp_path / "store.db")
    store._w.execute("PRAGMA busy_timeout = 50")  # fail fast here (5 s in the service)
    other = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    with pytest.raises(StoreUnavailable) as caught:
        store.apply(_changes(1, 10))
    assert caught.value.kind == "locked"
    other.execute("COMMIT")
    with pytest.raises(StoreUnavailable):  # refused until rolled back, even if it could
        store.commit(100)
    store.rollback()
    store.apply(_changes(1, 10))
    store.commit(100)
    assert store.state().lsn == 100 and _rows(tmp_path / "store.db") == 10
    store.close()
    other.close()


def test_a_full_store_rolls_back_cleanly_and_commits_once_there_is_room(tmp_path: Path):
    path = tmp_path / "store.db"
    store = SQLiteStore(path)
    store.apply(_changes(1, 10))
    store.commit(100)
    (pages,) = store._w.execute("PRAGMA page_count").fetchone()
    store._w.execute(f"PRAGMA max_page_count = {pages}")  # no room to grow: SQLITE_FULL
    with pytest.raises(StoreUnavailable) as caught:
        for start in range(11, 5000, 500):  # one transaction across batches, as capture
            store.apply(_changes(start, 500, pad=200))
        store.commit(200)
    assert caught.value.kind == "disk_full"
    store.rollback()  # no "cannot rollback - no transaction is active"
    store.rollback()  # and again: nothing open, nothing to do
    assert store.state().lsn == 100 and _rows(path) == 10
    store._w.execute("PRAGMA max_page_count = 1073741823")  # space freed
    for start in range(11, 5000, 500):
        store.apply(_changes(start, 500, pad=200))
    store.commit(200)
    assert store.state().lsn == 200 and _rows(path) == 10 + 10 * 500
    assert store.state().version == 10 + 10 * 500  # no version lost or doubled
    store.close()


def test_other_errors_stay_fatal(tmp_path: Path):
    store = SQLiteStore(tmp_path / "store.db")
    store._w.execute("DROP TABLE rows")  # damage, not weather
    with pytest.raises(sqlite3.OperationalError):
        store.apply(_changes(1, 1))
    store.close()
