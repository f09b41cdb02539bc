"""A synced table changes shape while the sidecar runs."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.fixtures.service import run_sql

pytestmark = pytest.mark.pg

SCHEMA = """
CREATE TABLE todo_items (id serial PRIMARY KEY, title text NOT NULL, owner_id int NOT NULL,
                         notes text);
INSERT INTO todo_items (title, owner_id) VALUES ('a', 1), ('b', 1);
"""
ALL_COLUMNS = """
  todos:
    table: todo_items
    read: "owner_id = :sub"
"""
SOME_COLUMNS = """
  todos:
    table: todo_items
    columns: [id, title, owner_id, notes]
    read: "owner_id = :sub"
"""


async def until(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_an_added_column_appears_after_a_rebuild(pg_dsn, pg_url, sidecar_factory):
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, ALL_COLUMNS)
    _, cursor = await sc.pull_all(1)
    version = (await sc.pull(1))["schema_version"]
    run_sql(
        pg_dsn,
        "ALTER TABLE todo_items ADD COLUMN priority int NOT NULL DEFAULT 3",
        "INSERT INTO todo_items (title, owner_id, priority) VALUES ('c', 1, 1)",
    )
    status = lambda: sc.service.capture.status  # noqa: E731 (the runner is replaced)
    await until(lambda: status().rebuilds == 1 and status().phase == "streaming")
    resp = await sc.get("/v1/pull", params={"cursor": cursor})
    assert resp.status == 410  # the documented answer: resync with the new shape
    changes, _ = await sc.pull_all(1)
    rows = {c["row"]["title"]: c["row"] for c in changes}
    assert {t: r["priority"] for t, r in rows.items()} == {"a": 3, "b": 3, "c": 1}
    page = await sc.pull(1)
    assert page["schema_version"] != version
    schema = await (await sc.get("/v1/schema")).json()
    assert "priority" in schema["collections"]["todos"]["columns"]


async def test_a_column_outside_columns_changes_nothing(pg_dsn, pg_url, sidecar_factory):
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, SOME_COLUMNS)
    _, cursor = await sc.pull_all(1)
    run_sql(
        pg_dsn,
        "ALTER TABLE todo_items ADD COLUMN internal text",
        "INSERT INTO todo_items (title, owner_id, internal) VALUES ('c', 1, 'x')",
    )
    await sc.caught_up(pg_dsn)
    page = await sc.pull(1, cursor)
    assert [c["row"] for c in page["changes"]] == [
        {"id": 3, "title": "c", "owner_id": 1, "notes": None}
    ]
    assert sc.service.capture.status.rebuilds == 0


async def test_a_retyped_column_rebuilds_with_the_new_type(pg_dsn, pg_url, sidecar_factory):
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, ALL_COLUMNS)
    run_sql(
        pg_dsn,
        "ALTER TABLE todo_items ALTER COLUMN owner_id TYPE bigint",
        "UPDATE todo_items SET notes = 'n' WHERE title = 'a'",
    )
    status = lambda: sc.service.capture.status  # noqa: E731
    await until(lambda: status().rebuilds == 1 and status().phase == "streaming")
    schema = await (await sc.get("/v1/schema")).json()
    assert schema["collections"]["todos"]["columns"]["owner_id"]["type"] == "bigint"
    changes, _ = await sc.pull_all(1)
    assert {c["row"]["title"]: c["row"]["notes"] for c in changes} == {"a": "n", "b": None}


async def test_a_dropped_column_the_config_names_stops_capture_with_the_reason(
    pg_dsn, pg_url, sidecar_factory
):
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, SOME_COLUMNS)
    run_sql(
        pg_dsn,
        "ALTER TABLE todo_items DROP COLUMN notes",
        "INSERT INTO todo_items (title, owner_id) VALUES ('c', 1)",
    )
    capture_task = sc.service.tasks[0]
    await asyncio.wait_for(capture_task, 20)  # `sidecar run` exits 1 when this ends
    status = sc.service.capture.status
    assert status.phase == "failed"
    assert "no longer has column(s) notes" in status.error
    assert "notes" in status.error.split("config no longer fits")[1]
    resp = await sc.get("/readyz", sub=None)
    assert resp.status == 503
