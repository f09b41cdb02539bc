"""A cancelled initial copy stops before the store is rolled back.

The copy reads and routes on the router thread while the writer thread inserts; when the
task that awaits it is cancelled (stop() on a reload, or at shutdown), the copy must end
before the caller's rollback runs, or the batches still to come would open a new store
transaction behind the rollback (and the next copy of the collection would collide with
them). A real table copied with COPY from PostgreSQL, cancelled part way.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest

from sidecar.capture.runner import CaptureRunner
from sidecar.notify import Notifier
from sidecar.preflight import run_preflight
from sidecar.service import routes_for
from sidecar.store.sqlite import SQLiteStore
from tests.fixtures.service import make_config, run_sql
from tests.support.stores import load

pytestmark = pytest.mark.pg

ROWS = 200_000
ITEMS = """
  items:
    table: items
    read: "owner = :sub"
"""


async def test_a_cancelled_copy_ends_before_the_rollback(
    pg_dsn: str, pg_url: str, tmp_path: Path
) -> None:
    run_sql(
        pg_dsn,
        "CREATE TABLE items (id int PRIMARY KEY, owner int NOT NULL, note text NOT NULL)",
        f"INSERT INTO items SELECT g, g % 7, 'n' || g FROM generate_series(1, {ROWS}) g",
    )
    config = make_config(pg_url, tmp_path / "store.db", ITEMS)
    with psycopg.connect(pg_dsn) as conn:
        routes = list(routes_for(config, run_preflight(conn, config)).values())
    store = SQLiteStore(tmp_path / "store.db")
    runner = CaptureRunner(config, store, routes, Notifier())
    task = asyncio.create_task(runner._copy(None, routes))
    while runner.status.copy.rows < 20_000:  # some batches written, most still to come
        assert not task.done(), "the copy ended before it could be cancelled"
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert runner.status.copy.rows < ROWS
    await runner._in_writer(store.rollback)  # what the copy's callers do on any error
    await asyncio.sleep(0.3)  # a copy still running would write its next batches now
    count = await runner._in_writer(
        lambda: store._w.execute("SELECT count(*) FROM rows").fetchone()[0]
    )
    await runner.stop()
    assert count == 0 and not store._in_txn
    # the same collection copied again into the store: no leftovers to collide with
    load(
        store,
        "items",
        [routes[0].image_of_values({"id": i, "owner": 1, "note": "n"}) for i in range(200)],
    )
    store.commit(1)
    assert store.state().version == 200
    store.close()
