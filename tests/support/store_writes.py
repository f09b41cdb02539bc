"""A service whose SQLite store holds distinctive values — a row captured from the
application and one a client pushed — for the tests of the store's files at rest
(permissions, encryption): `run_with_writes`, with the store key or without."""

from __future__ import annotations

from pathlib import Path

from sidecar.config.loader import load_config_text
from sidecar.config.model import Config
from tests.fixtures.service import SECRET, Sidecar, make_config, run_sql

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


def store_config(url: str, store: Path, key: str | None) -> Config:
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


async def run_with_writes(pg_dsn: str, url: str, store: Path, key: str | None) -> Sidecar:
    """A service on `store` that captured a row and applied a push (the pending file
    written); returned running, so the WAL and shared memory files exist."""
    run_sql(pg_dsn, SCHEMA)
    sc = await Sidecar(store_config(url, store, key)).start()
    run_sql(pg_dsn, f"INSERT INTO notes VALUES (1, 1, '{CAPTURED}')")
    mutation = {"id": "m1", "collection": "notes", "op": "insert"}
    status, body = await sc.push([{**mutation, "data": {"id": 2, "owner_id": 1, "body": PUSHED}}])
    assert status == 200 and body["results"][0]["status"] == "applied", body
    await sc.caught_up(pg_dsn)
    bodies = {r["row"]["body"] for r in (await sc.pull_all(1))[0]}
    assert {CAPTURED, PUSHED} <= bodies
    return sc
