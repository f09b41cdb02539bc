"""The SQLite store's files after a run with writes: `0600` in a `0700` directory (made by
the sidecar), or tightened to `0600` in a directory of the operator's (left as it is, with a
warning). The same run with `store.encryption_key`: tests/integration/test_store_encryption.py."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from sidecar.config.loader import load_config_text
from tests.fixtures.service import SECRET, Sidecar, make_config, run_sql

pytestmark = pytest.mark.pg

SCHEMA = "CREATE TABLE notes (id int PRIMARY KEY, owner_id int, body text)"
NOTES = """
  notes:
    table: notes
    read: "owner_id = :sub"
    write: {ops: [insert, update]}
"""
CAPTURED = "captured-ZQX-distinctive-row-value"  # written by the application, captured
PUSHED = "pushed-ZQX-distinctive-row-value"  # written by a client's push
KEY = "correct horse battery staple"


def _config(url: str, store: Path, key: str | None):
    config = make_config(url, store, NOTES)
    if key is None:
        return config
    text = f"""
database: {{url: "{url}", slot: sidecar_test, publication: sidecar_test}}
store: {{path: "{store}", encryption_key: "${{STORE_KEY}}"}}
auth: {{jwt: {{secret: "{SECRET}"}}}}
collections:
{NOTES}
"""
    return load_config_text(text, file="test.yaml", env={"STORE_KEY": key})


async def _run_with_writes(pg_dsn: str, url: str, store: Path, key: str | None) -> Sidecar:
    """A service on `store` that captured a row and applied a push (the pending file
    written); returned running, so the WAL and shared memory files exist."""
    run_sql(pg_dsn, SCHEMA)
    sc = await Sidecar(_config(url, store, key)).start()
    run_sql(pg_dsn, f"INSERT INTO notes VALUES (1, 1, '{CAPTURED}')")
    mutation = {"id": "m1", "collection": "notes", "op": "insert"}
    status, body = await sc.push([{**mutation, "data": {"id": 2, "owner_id": 1, "body": PUSHED}}])
    assert status == 200 and body["results"][0]["status"] == "applied", body
    await sc.caught_up(pg_dsn)
    bodies = {r["row"]["body"] for r in (await sc.pull_all(1))[0]}
    assert {CAPTURED, PUSHED} <= bodies
    return sc


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_store_files_are_0600_in_a_0700_directory_the_sidecar_made(pg_dsn, pg_url, tmp_path):
    store = tmp_path / "made-by-the-sidecar" / "store.db"
    sc = await _run_with_writes(pg_dsn, pg_url, store, None)
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
        sc = await _run_with_writes(pg_dsn, pg_url, store, None)
        await sc.stop()
    warned = [e for e in logs if e["event"] == "store_directory_open_to_others"]
    assert warned and warned[0]["directory"] == str(shared) and warned[0]["mode"] == "0o755"
    assert _mode(shared) == 0o755  # not the sidecar's: a warning, not a chmod
    for path in shared.iterdir():
        assert _mode(path) == 0o600, (path.name, oct(_mode(path)))
