"""A collection added to the config is copied on its own at the next start: the others
keep their rows, epoch and cursors; changes racing the copy land exactly once."""

from __future__ import annotations

import asyncio
import threading

import psycopg
import pytest

from tests.fixtures.service import Sidecar, make_config, run_sql, state_of

pytestmark = pytest.mark.pg

TODOS = """
  todos:
    table: todo_items
    read: "owner_id = :sub"
"""
BOARDS = """
  boards:
    table: boards
    read: "owner_id = :sub"
"""


def db_state(dsn: str) -> dict:
    with psycopg.connect(dsn) as conn:
        todos = conn.execute("SELECT id, title, owner_id FROM todo_items WHERE owner_id = 1")
        boards = conn.execute("SELECT id, name, owner_id FROM boards WHERE owner_id = 1")
        out = {
            ("todos", (("id", r[0]),)): {"id": r[0], "title": r[1], "owner_id": r[2]}
            for r in todos.fetchall()
        }
        out.update(
            {
                ("boards", (("id", r[0]),)): {"id": r[0], "name": r[1], "owner_id": r[2]}
                for r in boards.fetchall()
            }
        )
        return out


async def test_an_added_collection_is_copied_alone_while_writes_race(pg_dsn, pg_url, tmp_path):
    run_sql(
        pg_dsn,
        "CREATE TABLE todo_items (id int PRIMARY KEY, title text, owner_id int)",
        "INSERT INTO todo_items SELECT g, 't' || g, 1 FROM generate_series(1, 20) g",
        "CREATE TABLE boards (id int PRIMARY KEY, name text, owner_id int)",
        "INSERT INTO boards SELECT g, 'b' || g, 1 FROM generate_series(1, 2000) g",
    )
    store = tmp_path / "store.db"
    sc = Sidecar(make_config(pg_url, store, TODOS))
    await sc.start()
    before, cursor = await sc.pull_all(1)
    epoch = sc.service.store.state().epoch
    await sc.stop()
    run_sql(pg_dsn, "UPDATE todo_items SET title = 'changed' WHERE id = 3")

    stop = threading.Event()

    def writer() -> None:  # keeps changing boards while the copy runs
        n = 0
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            while not stop.is_set():
                n += 1
                conn.execute("UPDATE boards SET name = %s WHERE id = %s", (f"w{n}", n % 2000 + 1))
                conn.execute("INSERT INTO boards VALUES (%s, 'new', 1)", (10_000 + n,))
                conn.execute("DELETE FROM boards WHERE id = %s", (n % 2000 + 1 + 1,))

    thread = threading.Thread(target=writer)
    thread.start()
    sc = Sidecar(make_config(pg_url, store, TODOS + BOARDS))
    try:
        await sc.start()
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        thread.join()
    try:
        assert sc.service.capture.status.rebuilds == 0
        assert sc.service.store.state().epoch == epoch  # no resync for anyone
        await sc.caught_up(pg_dsn)
        changes, _ = await sc.pull_all(1, cursor)  # the old cursor still works
        assert {c["collection"] for c in changes} == {"todos", "boards"}
        assert state_of(changes, state_of(before)) == db_state(pg_dsn)
        with psycopg.connect(pg_dsn) as conn:  # the copy's temporary slot is gone
            slots = conn.execute("SELECT slot_name FROM pg_replication_slots").fetchall()
        assert slots == [("sidecar_test",)]
    finally:
        await sc.stop()
    # and once more from scratch, after a restart that copies nothing
    await sc.start()
    try:
        assert sc.service.capture.status.rebuilds == 0
        changes, _ = await sc.pull_all(1)
        assert state_of(changes) == db_state(pg_dsn)
    finally:
        await sc.stop()
