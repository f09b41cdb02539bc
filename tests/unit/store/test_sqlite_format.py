"""The SQLite store's layout changes: a format-3 store (mutation ids keyed by id alone) is
brought up to format 4 (keyed by subject and id) in place, keeping its rows, epoch and
mutation records; a store of an unknown format is rebuilt."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sidecar.store.base import MutationRecord
from sidecar.store.sqlite import SQLiteStore
from sidecar.store.sqlite_sql import FORMAT

# The format-3 mutations table, as stores made before subjects scoped mutation ids hold it.
_V3_MUTATIONS = """
DROP TABLE mutations;
CREATE TABLE mutations (
    id TEXT PRIMARY KEY,
    subject TEXT,
    device TEXT,
    lsn INTEGER NOT NULL,
    outcome BLOB NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX mutations_row
    ON mutations (json_extract(outcome, '$.collection'), json_extract(outcome, '$.key'));
INSERT INTO mutations VALUES ('m1', 'u1', 'd1', 7, CAST('{"rev":"r1"}' AS BLOB), 1e10);
INSERT INTO mutations VALUES ('m2', NULL, NULL, 8, CAST('{"rev":"r2"}' AS BLOB), 1e10);
UPDATE meta SET value = '3' WHERE key = 'format';
"""


def _format_3_store(path: Path) -> str:
    store = SQLiteStore(path)
    epoch = store.state().epoch
    store.close()
    conn = sqlite3.connect(path)
    conn.executescript(_V3_MUTATIONS)
    conn.close()
    return epoch


def test_a_format_3_store_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    epoch = _format_3_store(path)
    store = SQLiteStore(path)
    try:
        assert store.state().epoch == epoch  # not rebuilt: cursors stay valid
        assert store.mutation("u1", "m1") == MutationRecord("m1", "u1", "d1", 7, b'{"rev":"r1"}')
        assert store.mutation("u2", "m1") is None
        assert store.mutation("", "m2") is not None  # recorded without a subject
        store.record_mutations([MutationRecord("m1", "u2", "d2", 9, b'{"rev":"theirs"}')])
        store.commit(9)
        assert store.mutation("u2", "m1") is not None
        assert store.mutation("u1", "m1") == MutationRecord("m1", "u1", "d1", 7, b'{"rev":"r1"}')
    finally:
        store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone() == (FORMAT,)
    conn.close()


def test_a_store_of_an_unknown_format_is_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    first = SQLiteStore(path)
    first.record_mutations([MutationRecord("m1", "u1", "d1", 7, b"{}")])
    first.commit(7)
    epoch = first.state().epoch
    first.close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '2' WHERE key = 'format'")
    conn.commit()
    conn.close()
    store = SQLiteStore(path)
    try:
        assert store.state().epoch != epoch
        assert store.mutation("u1", "m1") is None
    finally:
        store.close()
