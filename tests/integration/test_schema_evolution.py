"""A synced table changes shape while the sidecar runs."""

from __future__ import annotations

import asyncio
import time

import pytest

import sidecar.service as service_module
from tests.fixtures.service import make_config, run_sql, state_of

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


@pytest.fixture(autouse=True)
def catalog_often(monkeypatch) -> None:
    """The catalog is looked at every half second (a column added is seen without a
    change of the table's rows)."""
    monkeypatch.setattr(service_module, "SLOT_METRICS_EVERY", 0.5)


async def until(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


TITLES = """
  titles:
    table: todo_items
    columns: [id, title]
    read: "owner_id = :sub"
"""


async def never_410(sc, cursor: str, done) -> int:
    """Pull with `cursor` until `done()`: every answer 200 (no 410, no 503)."""
    pulls = 0
    deadline = time.monotonic() + 40
    while not done():
        assert time.monotonic() < deadline, "timed out waiting for the reconcile"
        resp = await sc.get("/v1/pull", params={"cursor": cursor})
        assert resp.status == 200, await resp.text()
        pulls += 1
        await asyncio.sleep(0.05)
    return pulls


async def test_an_added_nullable_column_resends_nothing(pg_dsn, pg_url, sidecar_factory):
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, ALL_COLUMNS + TITLES)
    before, cursor = await sc.pull_all(1)
    revs = {c["key"]["id"]: c["rev"] for c in before if c["collection"] == "todos"}
    version = (await sc.pull(1))["schema_version"]
    runner = sc.service.capture
    run_sql(pg_dsn, "ALTER TABLE todo_items ADD COLUMN phone text")
    await never_410(
        sc,
        cursor,
        lambda: (
            sc.service.capture is not runner and (sc.service.capture.status.phase == "streaming")
        ),
    )
    run_sql(pg_dsn, "INSERT INTO todo_items (title, owner_id, phone) VALUES ('c', 1, '555')")
    await sc.caught_up(pg_dsn)
    changes, _ = await sc.pull_all(1, cursor)
    assert sorted((c["collection"], c["row"]["title"]) for c in changes) == [
        ("titles", "c"),
        ("todos", "c"),
    ]  # no row was sent again
    page = await sc.pull(1)
    assert page["schema_version"] != version
    now = {c["key"]["id"]: c["rev"] for c in page["changes"] if c["collection"] == "todos"}
    assert {k: now[k] for k in revs} == revs  # every rev as it was: base_revs still match
    schema = await (await sc.get("/v1/schema")).json()
    assert "phone" in schema["collections"]["todos"]["columns"]
    assert sc.service.capture.status.rebuilds == 0


async def test_an_added_column_with_a_default_resends_that_collection_only(
    pg_dsn, pg_url, sidecar_factory
):
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, ALL_COLUMNS + TITLES)
    _, cursor = await sc.pull_all(1)
    runner = sc.service.capture
    run_sql(
        pg_dsn,
        "ALTER TABLE todo_items ADD COLUMN priority int NOT NULL DEFAULT 3",
        "INSERT INTO todo_items (title, owner_id, priority) VALUES ('c', 1, 1)",
    )
    await never_410(
        sc,
        cursor,
        lambda: (
            sc.service.capture is not runner and (sc.service.capture.status.phase == "streaming")
        ),
    )
    await sc.caught_up(pg_dsn)
    changes, _ = await sc.pull_all(1, cursor)
    todos = {c["row"]["title"]: c["row"]["priority"] for c in changes if c["collection"] == "todos"}
    assert todos == {"a": 3, "b": 3, "c": 1}
    assert [c["row"]["title"] for c in changes if c["collection"] == "titles"] == ["c"]


async def test_a_retyped_column_is_reconciled(pg_dsn, pg_url, sidecar_factory):
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, ALL_COLUMNS)
    _, cursor = await sc.pull_all(1)
    runner = sc.service.capture
    run_sql(
        pg_dsn,
        "ALTER TABLE todo_items ALTER COLUMN owner_id TYPE bigint",
        "UPDATE todo_items SET notes = 'n' WHERE title = 'a'",
    )
    await never_410(
        sc,
        cursor,
        lambda: (
            sc.service.capture is not runner and (sc.service.capture.status.phase == "streaming")
        ),
    )
    await sc.caught_up(pg_dsn)
    schema = await (await sc.get("/v1/schema")).json()
    assert schema["collections"]["todos"]["columns"]["owner_id"]["type"] == "bigint"
    changes, _ = await sc.pull_all(1, cursor)
    assert {c["row"]["title"]: c["row"]["notes"] for c in changes} == {"a": "n"}
    assert sc.service.capture.status.rebuilds == 0


async def test_a_table_dropped_and_created_again_is_reconciled(pg_dsn, pg_url, sidecar_factory):
    """Stale rows of a dropped table are never served: the table is found re-created in the
    catalog (it left the publication), and the store reconciled with it."""
    run_sql(
        pg_dsn,
        SCHEMA,
        "INSERT INTO todo_items (title, owner_id) SELECT 't' || g, 1 FROM generate_series(1, 98) g",
    )
    sc = await sidecar_factory(pg_url, ALL_COLUMNS)
    held, cursor = await sc.pull_all(1)
    assert len(held) == 100
    run_sql(
        pg_dsn,
        "DROP TABLE todo_items",
        SCHEMA.split(";")[0] + ";",
        "INSERT INTO todo_items (title, owner_id) "
        "SELECT 'new' || g, 1 FROM generate_series(1, 30) g",
    )
    runner = sc.service.capture
    await until(lambda: sc.service.capture is not runner, timeout=40)
    await until(lambda: sc.service.capture.status.phase == "streaming", timeout=40)
    await sc.caught_up(pg_dsn)
    changes, _ = await sc.pull_all(1, cursor)
    state = state_of(changes, state_of(held))
    assert sorted(r["title"] for r in state.values()) == sorted(f"new{g}" for g in range(1, 31))


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


async def test_a_dropped_column_the_config_names_stops_capture_until_the_config_is_fixed(
    pg_dsn, pg_url, sidecar_factory, tmp_path, store_engine
):
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, SOME_COLUMNS)
    held, cursor = await sc.pull_all(1)
    run_sql(
        pg_dsn,
        "ALTER TABLE todo_items DROP COLUMN notes",
        "INSERT INTO todo_items (title, owner_id) VALUES ('c', 1)",
    )
    status = lambda: sc.service.capture.status  # noqa: E731
    await until(lambda: status().phase == "failed")
    assert "no longer has column(s) notes" in status().error
    assert "notes" in status().error.split("config no longer fits")[1]
    assert (await sc.get("/readyz", sub=None)).status == 503
    assert (await sc.get("/v1/pull", params={"cursor": cursor})).status == 200  # served
    fixed = SOME_COLUMNS.replace(
        "columns: [id, title, owner_id, notes]", "columns: [id, title, owner_id]"
    )
    await sc.service.reload(make_config(pg_url, tmp_path / "store.db", fixed, engine=store_engine))
    await until(lambda: status().phase == "streaming", timeout=30)
    await sc.caught_up(pg_dsn)
    changes, _ = await sc.pull_all(1, cursor)
    rows = state_of(changes, state_of(held))
    assert sorted(r["title"] for r in rows.values()) == ["a", "b", "c"]
    # rows whose notes were NULL keep their rev (nulls do not count): not sent again
    assert all(r.get("notes") is None for r in rows.values())
    assert [set(c["row"]) for c in changes] == [{"id", "title", "owner_id"}]


async def test_a_dropped_column_the_config_does_not_name_is_reconciled(
    pg_dsn, pg_url, sidecar_factory
):
    run_sql(pg_dsn, SCHEMA, "UPDATE todo_items SET notes = 'n' WHERE title = 'a'")
    sc = await sidecar_factory(pg_url, ALL_COLUMNS)
    held, cursor = await sc.pull_all(1)
    runner = sc.service.capture
    run_sql(pg_dsn, "ALTER TABLE todo_items DROP COLUMN notes")
    await never_410(
        sc,
        cursor,
        lambda: sc.service.capture is not runner and sc.service.capture.status.phase == "streaming",
    )
    changes, _ = await sc.pull_all(1, cursor)
    assert [c["row"]["title"] for c in changes] == ["a"]  # the row whose notes were set
    rows = state_of(changes, state_of(held))
    assert all(r.get("notes") is None for r in rows.values())
    schema = await (await sc.get("/v1/schema")).json()
    assert "notes" not in schema["collections"]["todos"]["columns"]


async def test_a_first_sync_carries_no_tombstones(pg_dsn, pg_url, sidecar_factory):
    run_sql(
        pg_dsn,
        SCHEMA,
        "INSERT INTO todo_items (title, owner_id) "
        "SELECT 't' || g, 1 FROM generate_series(1, 500) g",
    )
    sc = await sidecar_factory(pg_url, ALL_COLUMNS)
    _, cursor = await sc.pull_all(1)
    run_sql(
        pg_dsn, "TRUNCATE todo_items", "INSERT INTO todo_items (title, owner_id) VALUES ('x', 1)"
    )
    await sc.caught_up(pg_dsn)
    fresh, _ = await sc.pull_all(1)
    assert [(c["op"], c["row"]["title"]) for c in fresh] == [("upsert", "x")]
    held, _ = await sc.pull_all(1, cursor)  # an old client still gets the deletes
    assert sum(c["op"] == "delete" for c in held) == 502
