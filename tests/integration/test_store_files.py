"""The SQLite store's files after a run with writes: `0600` in a `0700` directory (made by
the sidecar), or tightened to `0600` in a directory of the operator's (left as it is, with a
warning). The same run with `store.encryption_key`: tests/integration/test_store_encryption.py."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.support.store_writes import (
    run_with_writes,
)

pytestmark = pytest.mark.pg


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_store_files_are_0600_in_a_0700_directory_the_sidecar_made(pg_dsn, pg_url, tmp_path):
    store = tmp_path / "made-by-the-sidecar" / "store.db"
    sc = await run_with_writes(pg_dsn, pg_url, store, None)
    try:
        files = sorted(p for p in store.parent.iterdir())
        names = {p.name for p in files}
        expected = {"store.db", "store.db-wal", "store.db-shm", "store.db.pending", "store.db.lock"}
        assert expected <= names, names
        assert _mode(store.parent) == 0o700
        for path in files:
            assert path.is_file() and _mode(path) == 0o600, (path.name, oct(_mode(path)))
    finally:
        await sc.stop()
    for path in store.parent.iterdir():  # after a clean close as well
        assert _mode(path) == 0o600, (path.name, oct(_mode(path)))


async def test_files_of_an_older_run_are_tightened_and_a_shared_directory_kept(
    pg_dsn, pg_url, tmp_path
):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    store = shared / "store.db"
    for name in ("store.db", "store.db.pending"):  # as an earlier version left them
        (shared / name).touch()
        os.chmod(shared / name, 0o644)
    with capture_logs() as logs:
        sc = await run_with_writes(pg_dsn, pg_url, store, None)
        await sc.stop()
    warned = [e for e in logs if e["event"] == "store_directory_open_to_others"]
    assert warned and warned[0]["directory"] == str(shared) and warned[0]["mode"] == "0o755"
    assert _mode(shared) == 0o755  # not the sidecar's: a warning, not a chmod
    for path in shared.iterdir():
        assert _mode(path) == 0o600, (path.name, oct(_mode(path)))
