"""The SQLite store's grants version: the last version at which a grant began or ended,
kept with the state and in each view, so a caller's scopes read at or after it stay
valid (pull remembers them) until a grant changes again."""

from __future__ import annotations

from pathlib import Path

from sidecar.changes import GrantChange
from sidecar.store.sqlite import SQLiteStore


def _grants_version_of_a_view(store: SQLiteStore) -> int:
    return store.view(lambda view: view.grants_version)


def test_the_grants_version_moves_with_grants_only(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "store.db")
    try:
        store.apply_grants([GrantChange("L", '{"id":1}', (('0:["alice"]', "3"),))])
        store.commit(10)
        granted = store.state().version
        assert store.state().grants_version == granted > 0
        assert _grants_version_of_a_view(store) == granted
        # the same pairs again change nothing: no new version
        store.apply_grants([GrantChange("L", '{"id":1}', (('0:["alice"]', "3"),))])
        store.commit(11)
        assert store.state().grants_version == store.state().version == granted
        store.truncate_grants(["L"])
        store.commit(12)
        assert store.state().grants_version == store.state().version > granted
        assert _grants_version_of_a_view(store) == store.state().version
    finally:
        store.close()
    reopened = SQLiteStore(tmp_path / "store.db")
    try:
        assert reopened.state().grants_version == reopened.state().version
    finally:
        reopened.close()
