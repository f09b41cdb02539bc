"""The SQLite store encrypted (`store.encryption_key`, SQLCipher): no row value readable in
any of its files (database, WAL, shared memory, pending file) after a run with writes; a
wrong key refused with `store_key_invalid`; `sidecar rekey` changes the key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.cli import main
from sidecar.errors import StoreKeyInvalid
from sidecar.service import Service
from sidecar.store.sqlite_files import store_files
from tests.fixtures.service import SECRET, Sidecar
from tests.support.store_writes import (
    CAPTURED,
    KEY,
    NOTES,
    PUSHED,
    run_with_writes,
    store_config,
)

pytestmark = pytest.mark.pg


def _readable(store: Path, value: str) -> list[str]:
    """The store's files holding `value` in clear (as UTF-8 bytes)."""
    needle = value.encode()
    return [p.name for p in store_files(store) if needle in p.read_bytes()]


@pytest.mark.parametrize("key", [None, KEY], ids=["plain", "encrypted"])
async def test_no_row_value_is_readable_in_the_files_of_an_encrypted_store(
    pg_dsn, pg_url, tmp_path, key
):
    store = tmp_path / "store.db"
    sc = await run_with_writes(pg_dsn, pg_url, store, key)
    try:
        names = {p.name for p in store_files(store)}
        assert {"store.db", "store.db-wal", "store.db-shm", "store.db.pending"} <= names
        seen = _readable(store, CAPTURED) + _readable(store, PUSHED)
        open_seen = _readable(store, CAPTURED)
    finally:
        await sc.stop()
    closed_seen = _readable(store, CAPTURED) + _readable(store, PUSHED)
    if key is None:  # the check finds values where they are in clear
        assert open_seen and closed_seen
    else:
        assert seen == [] and closed_seen == []


async def test_a_wrong_key_is_store_key_invalid_and_rekey_changes_it(
    pg_dsn, pg_url, tmp_path, monkeypatch
):
    store = tmp_path / "store.db"
    sc = await run_with_writes(pg_dsn, pg_url, store, KEY)
    await sc.stop()

    for wrong in ("not the key", None):
        with pytest.raises(StoreKeyInvalid) as refused:
            await Service.start(store_config(pg_url, store, wrong))
        assert refused.value.code == "store_key_invalid"
        assert KEY not in refused.value.detail

    cfg = tmp_path / "sidecar.yaml"
    cfg.write_text(
        f"""
database: {{url: "{pg_url}", slot: sidecar_test, publication: sidecar_test}}
store: {{path: "{store}", encryption_key: "${{STORE_KEY}}"}}
auth: {{jwt: {{secret: "{SECRET}"}}}}
collections:
{NOTES}
"""
    )
    # `sidecar run` with a wrong key: a message, exit 1, no traceback, no key shown
    env = {**os.environ, "STORE_KEY": "not the key"}
    done = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "run", "-c", str(cfg)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert "cannot be read with store.encryption_key" in done.stderr
    assert "not the key" not in done.stderr + done.stdout

    monkeypatch.setenv("STORE_KEY", KEY)
    monkeypatch.setenv("NEW_STORE_KEY", "a new passphrase")
    assert main(["rekey", "-c", str(cfg), "--new-key-env", "NEW_STORE_KEY"]) == 0
    with pytest.raises(StoreKeyInvalid):
        await Service.start(store_config(pg_url, store, KEY))  # the old key no longer opens it
    sc = await Sidecar(store_config(pg_url, store, "a new passphrase")).start()
    try:
        bodies = {r["row"]["body"] for r in (await sc.pull_all(1))[0]}
        assert {CAPTURED, PUSHED} <= bodies  # the same store, not a rebuilt one
        assert (await sc.pull(1))["cursor"].split("-")[0] == sc.service.store.state().epoch
    finally:
        await sc.stop()


async def test_rekey_refuses_while_a_sidecar_has_the_store_open(
    pg_dsn, pg_url, tmp_path, monkeypatch, capsys
):
    store = tmp_path / "store.db"
    sc = await run_with_writes(pg_dsn, pg_url, store, KEY)
    cfg = tmp_path / "sidecar.yaml"
    cfg.write_text(
        f"""
database: {{url: "{pg_url}", slot: sidecar_test, publication: sidecar_test}}
store: {{path: "{store}", encryption_key: "${{STORE_KEY}}"}}
auth: {{jwt: {{secret: "{SECRET}"}}}}
collections:
{NOTES}
"""
    )
    monkeypatch.setenv("STORE_KEY", KEY)
    monkeypatch.setenv("NEW_STORE_KEY", "a new passphrase")
    try:
        assert main(["rekey", "-c", str(cfg), "--new-key-env", "NEW_STORE_KEY"]) == 1
        assert "running sidecar" in capsys.readouterr().err
        bodies = {r["row"]["body"] for r in (await sc.pull_all(1))[0]}
        assert {CAPTURED, PUSHED} <= bodies  # untouched: still read with the old key
    finally:
        await sc.stop()
    assert main(["rekey", "-c", str(cfg), "--new-key-env", "UNSET_VARIABLE_XYZ"]) == 1
    assert "UNSET_VARIABLE_XYZ" in capsys.readouterr().err
