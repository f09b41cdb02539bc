"""Pushes while capture is far behind (issue 13, item 1): a new mutation is applied in
normal time and a retry of it is a `duplicate`, although capture has not yet seen it —
idempotency comes from the ids recorded before COMMIT and PostgreSQL's `pg_xact_status`,
not from waiting for capture."""

from __future__ import annotations

import time

import psycopg
import pytest

from sidecar.lsn import str_to_lsn
from tests.fixtures.service import run_sql

pytestmark = [pytest.mark.pg, pytest.mark.slow]

ROWS = 500_000
CONFIG = """
  items:
    table: items
    read: "true"
    write: {ops: [insert, update]}
"""


async def test_pushes_during_a_bulk_job_are_applied_and_retries_are_duplicates(
    pg_dsn, pg_url, sidecar_factory
):
    run_sql(
        pg_dsn,
        "CREATE TABLE items (id bigserial PRIMARY KEY, val int, note text)",
        f"INSERT INTO items (val, note) SELECT g, 'n' FROM generate_series(1, {ROWS}) g",
    )
    sc = await sidecar_factory(pg_url, CONFIG)
    # the application's bulk job: every synced row changes in one transaction
    run_sql(pg_dsn, "UPDATE items SET val = val + 1")
    with psycopg.connect(pg_dsn) as conn:
        bulk_end = str_to_lsn(str(conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]))
    assert sc.service is not None
    store = sc.service.store
    assert store.state().lsn < bulk_end, "capture kept up with the bulk job: nothing proven"

    insert = {"id": "during-lag-1", "collection": "items", "op": "insert", "data": {"note": "x"}}
    started = time.monotonic()
    status, body = await sc.push([insert])
    first_took = time.monotonic() - started
    assert status == 200, body
    assert body["results"][0]["status"] == "applied", body
    # a retry (a lost response) while capture is still behind: recognised at once
    status, again = await sc.push([insert])
    assert status == 200, again
    assert again["results"][0]["status"] == "duplicate", again
    assert again["results"][0]["rev"] == body["results"][0]["rev"]
    behind = store.state().lsn < str_to_lsn(body["lsn"])
    # the other mutations of a new batch are not held up either
    update = {
        "id": "during-lag-2",
        "collection": "items",
        "op": "update",
        "key": {"id": 7},
        "data": {"note": "edited"},
        "base_rev": "anything",
    }
    status, mixed = await sc.push([insert, update])
    assert mixed["results"][0]["status"] == "duplicate", mixed
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM items WHERE note = 'x'").fetchone()[0] == 1
    assert behind, "capture caught up before the retry: the test proved nothing"
    # not the old 5 s wait for capture: generous, the machine may be loaded
    assert first_took < 60
    with psycopg.connect(pg_dsn) as conn:
        now = str_to_lsn(str(conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]))
    assert await sc.service.capture.wait_for_lsn(now, 300), "capture did not catch up"
    # once captured, the store answers too (the pending record may be pruned)
    status, late = await sc.push([insert])
    assert late["results"][0]["status"] == "duplicate", late
