"""A cancelled initial copy stops before the store is rolled back.

The copy reads and routes on the router thread while the writer thread inserts; when the
task that awaits it is cancelled (stop() on a reload, or at shutdown), the copy must end
before the caller's rollback runs, or the batches still to come would open a new store
transaction behind the rollback (and the next copy of the collection would collide with
them). No PostgreSQL here: `copy_tables` is replaced by one that feeds the copy's Ingest
as the real one does, a batch every 20 ms.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from psycopg.postgres import types as pg

import sidecar.capture.runner as runner_module
from sidecar.capture.ingest import Ingest
from sidecar.capture.snapshot import CopyProgress
from sidecar.catalog import ColumnInfo, TableInfo
from sidecar.config.loader import load_config_text
from sidecar.config.model import TableRef
from sidecar.notify import Notifier
from sidecar.route import Route
from sidecar.store.sqlite import SQLiteStore

CONFIG = load_config_text(
    """
database: {url: "postgresql://h/d"}
auth: {jwt: {secret: "0123456789abcdef0123456789abcdef"}}
collections:
  items: {table: items, read: "owner = :sub"}
""",
    file="t.yaml",
    env={},
)
COLUMNS = (
    ColumnInfo("id", pg["int4"].oid, "integer", False),
    ColumnInfo("owner", pg["int4"].oid, "integer", False),
    ColumnInfo("note", pg["text"].oid, "text", False),
)
ROUTE = Route(
    CONFIG.collections["items"],
    TableInfo(TableRef("public", "items"), 1, COLUMNS, ("id",), "d", ("id",), ()),
)


def slow_copy(
    dsn: str,
    snapshot: str | None,
    routes: Any,
    ingest: Ingest,
    progress: CopyProgress,
    on_batch: Callable[[], None] | None = None,
) -> int:
    for b in range(50):
        ingest.snapshot_rows(ROUTE, [(b * 100 + i, i % 7, "n") for i in range(100)])
        time.sleep(0.02)
        if on_batch:
            on_batch()
    ingest.drain()
    return 5000


async def test_a_cancelled_copy_ends_before_the_rollback(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(runner_module, "copy_tables", slow_copy)
    store = SQLiteStore(tmp_path / "store.db")
    runner = runner_module.CaptureRunner(CONFIG, store, [ROUTE], Notifier())
    task = asyncio.create_task(runner._copy(None, [ROUTE]))
    await asyncio.sleep(0.15)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await runner._in_writer(store.rollback)  # what the copy's callers do on any error
    await asyncio.sleep(0.2)  # a copy still running would write its next batches now
    count = await runner._in_writer(
        lambda: store._w.execute("SELECT count(*) FROM rows").fetchone()[0]
    )
    await runner.stop()
    assert count == 0 and not store._in_txn
    # the same collection copied again into the store: no leftovers to collide with
    store.load("items", [ROUTE.image_of_typed((i, i % 7, "n")) for i in range(200)])
    store.commit(1)
    assert store.state().version == 200
    store.close()
