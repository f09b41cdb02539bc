"""Copies of the store that keep clients' cursors (issue 16, item 6): `sidecar
migrate-store` (an SQLite deployment moved to the PostgreSQL store) and `sidecar backup`
(the SQLite store copied while capture writes, then restored and served)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import psycopg
import pytest

from sidecar.cli import main
from tests.fixtures.service import SECRET, Sidecar, auth, make_config, run_sql, state_of
from tests.support.process import SidecarRun

pytestmark = pytest.mark.pg

SCHEMA = """
CREATE TABLE members (project_id int NOT NULL, user_id text NOT NULL,
                      PRIMARY KEY (project_id, user_id));
CREATE TABLE tasks (id int PRIMARY KEY, project_id int, title text NOT NULL);
INSERT INTO members VALUES (1, 'alice'), (2, 'bob');
INSERT INTO tasks SELECT g, 1 + g % 3, 't' || g FROM generate_series(1, 60) g;
"""
RULE = "project_id IN (SELECT project_id FROM public.members WHERE user_id = :sub)"
TASKS = f"""
  tasks:
    table: tasks
    read: "{RULE}"
    write: {{ops: [insert, update, delete]}}
"""
USERS = ("alice", "bob")


def expected(dsn: str, sub: str) -> dict:
    """What PostgreSQL says `sub` sees, as a client's folded state."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            f"SELECT id, project_id, title FROM tasks WHERE {RULE.replace(':sub', '%s')}",
            (sub,),
        ).fetchall()
    return {("tasks", (("id", i),)): {"id": i, "project_id": p, "title": t} for i, p, t in rows}


def pg_config_file(path: Path, url: str) -> Path:
    path.write_text(
        f"""
database: {{url: "{url}", slot: sidecar_test, publication: sidecar_test}}
store: {{url: "{url}", schema: sidecar_store}}
auth: {{jwt: {{secret: "{SECRET}"}}}}
collections:
{TASKS}
"""
    )
    return path


async def test_migrate_store_keeps_every_cursor_valid(pg_dsn, pg_url, tmp_path, capsys):
    run_sql(pg_dsn, SCHEMA)
    store = tmp_path / "store.db"
    old = await Sidecar(make_config(pg_url, store, TASKS)).start()
    folded: dict[str, dict] = {}
    for user in USERS:
        changes, old.cursors[user] = await old.pull_all(user)
        folded[user] = state_of(changes)
    # After the cursors: a push (a mutation id), a delete (a tombstone), a membership
    # change (grants: bob moves into project 1), an update.
    status, body = await old.push(
        [
            {
                "id": "m-1",
                "collection": "tasks",
                "op": "insert",
                "data": {"id": 1000, "project_id": 1, "title": "pushed"},
            }
        ],
        sub="alice",
    )
    assert status == 200 and body["results"][0]["status"] == "applied", body
    run_sql(
        pg_dsn,
        "DELETE FROM tasks WHERE id = 3",
        "INSERT INTO members VALUES (1, 'bob')",
        "UPDATE tasks SET title = 'changed' WHERE id = 4",
    )
    await old.caught_up(pg_dsn)
    before = old.service.store.state()
    await old.stop()

    config = pg_config_file(tmp_path / "pg.yaml", pg_url)
    assert main(["migrate-store", "--config", str(config), "--from", str(store)]) == 0
    assert "Clients keep their cursors" in capsys.readouterr().out
    # A second run finds the target in use and refuses (nothing changed)
    assert main(["migrate-store", "--config", str(config), "--from", str(store)]) == 1
    assert "not empty" in capsys.readouterr().err

    new = await Sidecar(make_config(pg_url, store, TASKS, engine="postgresql")).start()
    try:
        state = new.service.store.state()
        assert (state.epoch, state.lineage) == (before.epoch, before.lineage)
        assert state.version >= before.version and state.lsn >= before.lsn
        run_sql(pg_dsn, "INSERT INTO tasks VALUES (2000, 1, 'after the move')")
        await new.caught_up(pg_dsn)
        for user in USERS:
            changes, _ = await new.pull_all(user, old.cursors[user])  # 200: no 410
            assert state_of(changes, folded[user]) == expected(pg_dsn, user), user
        # The mutation id came along: a retry is a duplicate
        status, body = await new.push(
            [
                {
                    "id": "m-1",
                    "collection": "tasks",
                    "op": "insert",
                    "data": {"id": 1000, "project_id": 1, "title": "pushed"},
                }
            ],
            sub="alice",
        )
        assert body["results"][0]["status"] == "duplicate", body
    finally:
        await new.stop()


def _write_load(dsn: str, stop: threading.Event, rate: float = 200, limit: int = 4000) -> int:
    """INSERTs at about `rate` per second until `stop` (at most `limit`)."""
    n = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        started = time.monotonic()
        while not stop.is_set() and n < limit:
            n += 1
            conn.execute("INSERT INTO tasks VALUES (%s, 1, 'load')", (10_000 + n,))
            ahead = started + n / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    return n


async def _pull_all(http: aiohttp.ClientSession, base: str, sub: str, cursor: str | None):
    changes: list = []
    while True:
        params = {"cursor": cursor} if cursor else {}
        async with http.get(f"{base}/v1/pull", params=params, headers=auth(sub)) as r:
            body = await r.json(content_type=None)
            assert r.status == 200, body
        changes.extend(body["changes"])
        cursor = body["cursor"]
        if not body["has_more"]:
            return changes, cursor


async def test_backup_completes_under_writes_and_the_restored_copy_serves_old_cursors(
    pg_dsn, pg_url, tmp_path
):
    run_sql(pg_dsn, SCHEMA)
    (tmp_path / "live").mkdir()
    (tmp_path / "restored").mkdir()
    live = await SidecarRun(tmp_path / "live", pg_url, TASKS).start()
    stop = threading.Event()
    try:
        async with aiohttp.ClientSession() as http:
            changes, cursor = await _pull_all(http, live.base, "alice", None)
            folded = state_of(changes)
            load = asyncio.ensure_future(asyncio.to_thread(_write_load, pg_dsn, stop))
            await asyncio.sleep(1)  # capture is writing
            backup = tmp_path / "restored" / "store.db"
            done = await asyncio.to_thread(
                subprocess.run,
                [
                    sys.executable,
                    "-m",
                    "sidecar.cli",
                    "backup",
                    "-c",
                    str(live.config),
                    "--to",
                    str(backup),
                ],
                capture_output=True,
                text=True,
                timeout=300,  # the issue's `.backup` never finished in 600 s
            )
            assert done.returncode == 0, done.stderr
            assert "backed up" in done.stdout
            assert not load.done()  # the backup was taken while the writes went on
            stop.set()
            written = await load
            assert written > 0
    finally:
        stop.set()
        live.stop()
    run_sql(pg_dsn, "UPDATE tasks SET title = 'after the backup' WHERE id = 1")
    restored = await SidecarRun(tmp_path / "restored", pg_url, TASKS).start(timeout=120)
    try:
        want = expected(pg_dsn, "alice")
        deadline = time.monotonic() + 60  # /readyz is 200 while the copy is reconciled
        async with aiohttp.ClientSession() as http:
            while True:
                changes, cursor = await _pull_all(http, restored.base, "alice", cursor)
                state_of(changes, folded)  # every pull 200: the old cursor is valid
                if folded == want or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
        assert folded == want
    finally:
        restored.stop()


def test_backup_refuses_an_existing_file_and_a_postgresql_store(pg_url, tmp_path, capsys):
    config = pg_config_file(tmp_path / "pg.yaml", pg_url)
    assert main(["backup", "-c", str(config), "--to", str(tmp_path / "b.db")]) == 1
    assert "pg_dump -n sidecar_store" in capsys.readouterr().err
    sqlite = tmp_path / "sqlite.yaml"
    sqlite.write_text(
        config.read_text().replace(
            f'{{url: "{pg_url}", schema: sidecar_store}}', f'{{path: "{tmp_path / "s.db"}"}}'
        )
    )
    (tmp_path / "b.db").write_text("an older backup")
    assert main(["backup", "-c", str(sqlite), "--to", str(tmp_path / "b.db")]) == 1
    assert "exists" in capsys.readouterr().err
    assert (tmp_path / "b.db").read_text() == "an older backup"
