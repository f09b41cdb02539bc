"""`sidecar backup`'s copy of an SQLite store, without a database: the copy opens as the
same store (epoch, version), an existing file or the store itself is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.store.sqlite import SQLiteStore
from sidecar.store.sqlite_pending import SQLitePending, pending_path
from sidecar.store.transfer import TransferError, backup_sqlite


def _store(path: Path) -> str:
    store = SQLiteStore(path)
    epoch = store.state().epoch
    store.close()
    SQLitePending(pending_path(path)).close()
    return epoch


def test_the_backup_opens_as_the_same_store_with_its_pending_ids(tmp_path: Path) -> None:
    epoch = _store(tmp_path / "store.db")
    done = backup_sqlite(tmp_path / "store.db", tmp_path / "b" / "copy.db")
    assert done.epoch == epoch and done.tables["rows"] == 0
    assert pending_path(tmp_path / "b" / "copy.db").is_file()
    copy, original = SQLiteStore(tmp_path / "b" / "copy.db"), SQLiteStore(tmp_path / "store.db")
    try:
        assert copy.state() == original.state()
    finally:
        copy.close()
        original.close()


def test_refuses_an_existing_backup_unless_forced(tmp_path: Path) -> None:
    _store(tmp_path / "store.db")
    (tmp_path / "copy.db").write_text("older")
    with pytest.raises(TransferError, match="exists"):
        backup_sqlite(tmp_path / "store.db", tmp_path / "copy.db")
    assert (tmp_path / "copy.db").read_text() == "older"
    backup_sqlite(tmp_path / "store.db", tmp_path / "copy.db", force=True)
    assert (tmp_path / "copy.db").read_bytes().startswith(b"SQLite format 3")


def test_refuses_the_store_itself_a_missing_store_and_another_file(tmp_path: Path) -> None:
    _store(tmp_path / "store.db")
    with pytest.raises(TransferError, match="the store itself"):
        backup_sqlite(tmp_path / "store.db", tmp_path / "store.db", force=True)
    with pytest.raises(TransferError, match="no store"):
        backup_sqlite(tmp_path / "none.db", tmp_path / "copy.db")
    (tmp_path / "other.db").write_text("not a database")
    with pytest.raises(TransferError, match="not a sidecar store"):
        backup_sqlite(tmp_path / "other.db", tmp_path / "copy2.db")
