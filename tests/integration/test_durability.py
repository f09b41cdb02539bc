"""Restarts, rebuilds, kill -9 under load, and WAL never pinned by an idle publication."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import psycopg
import pytest

from sidecar.embedded import free_port
from tests.fixtures.service import SECRET, auth, run_sql, state_of

pytestmark = pytest.mark.pg

ITEMS = """
  items:
    table: items
    read: "true"
"""


def db_state(dsn: str) -> dict:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT id, owner, val, note FROM items").fetchall()
    return {
        ("items", (("id", r[0]),)): {"id": r[0], "owner": r[1], "val": r[2], "note": r[3]}
        for r in rows
    }


async def test_restart_keeps_cursors_valid(pg_dsn, pg_url, sidecar_factory):
    run_sql(
        pg_dsn,
        "CREATE TABLE items (id int PRIMARY KEY, owner int, val int, note text)",
        "INSERT INTO items SELECT g, 1, g, 'n' FROM generate_series(1, 10) g",
    )
    sc = await sidecar_factory(pg_url, ITEMS)
    state = state_of(await sc.sync(1))
    epoch = sc.service.store.state().epoch
    await sc.stop()
    run_sql(
        pg_dsn,
        "UPDATE items SET val = -1 WHERE id = 3",
        "DELETE FROM items WHERE id = 4",
        "INSERT INTO items VALUES (11, 1, 11, 'new')",
    )
    await sc.start()
    assert sc.service.store.state().epoch == epoch
    await sc.caught_up(pg_dsn)
    state = state_of(await sc.sync(1), state)
    assert state == db_state(pg_dsn)


async def test_a_missing_slot_is_reconciled_and_cursors_stay_valid(pg_dsn, pg_url, sidecar_factory):
    run_sql(
        pg_dsn,
        "CREATE TABLE items (id int PRIMARY KEY, owner int, val int, note text)",
        "INSERT INTO items SELECT g, 1, g, 'n' FROM generate_series(1, 5) g",
    )
    sc = await sidecar_factory(pg_url, ITEMS)
    _, cursor = await sc.pull_all(1)
    await sc.stop()
    run_sql(
        pg_dsn,
        "SELECT pg_drop_replication_slot('sidecar_test')",
        "INSERT INTO items VALUES (6, 1, 6, 'while the slot was gone')",
    )
    await sc.start()
    status = sc.service.capture.status
    assert (status.rebuilds, status.resyncs) == (0, 1)
    state = state_of((await sc.pull_all(1))[0])
    changes, _ = await sc.pull_all(1, cursor)  # the old cursor: no 410
    assert [c["key"] for c in changes] == [{"id": 6}]  # only what changed
    assert state_of(changes, state) == db_state(pg_dsn)


async def test_a_changed_collection_is_reconciled(pg_dsn, pg_url, tmp_path):
    """Columns, keys and read rules decide what the store holds: a store made under other
    ones is reconciled with them (same epoch, cursors valid), never serving stale rows."""
    from tests.fixtures.service import Sidecar, make_config

    run_sql(
        pg_dsn,
        "CREATE TABLE items (id int PRIMARY KEY, owner int, val int, note text)",
        "INSERT INTO items SELECT g, g % 2, g, 'n' FROM generate_series(1, 6) g",
    )
    store = tmp_path / "store.db"
    sc = Sidecar(make_config(pg_url, store, ITEMS))
    await sc.start()
    changes, cursor = await sc.pull_all(1)
    held = state_of(changes)
    await sc.stop()
    same = Sidecar(make_config(pg_url, store, ITEMS))  # unchanged config: kept
    await same.start()
    assert same.service.capture.status.rebuilds == 0
    await same.stop()
    narrower = """
  items:
    table: items
    columns: [id, owner, val]
    read: "owner = :sub"
"""
    sc = Sidecar(make_config(pg_url, store, narrower))
    await sc.start()
    try:
        assert sc.service.capture.status.rebuilds == 0
        changes, _ = await sc.pull_all(1, cursor)  # no 410
        rows = list(state_of(changes, held).values())
        assert sorted(r["id"] for r in rows) == [1, 3, 5]  # the new read rule
        assert all(set(r) == {"id", "owner", "val"} for r in rows)  # the new columns
    finally:
        await sc.stop()


async def test_a_store_restored_from_an_older_backup_is_reconciled(pg_dsn, pg_url, tmp_path):
    """The slot has confirmed past what an old copy of the store holds: the changes in
    between are gone from the slot, so the store is reconciled with a new slot's
    snapshot, not resumed; a cursor from before the backup stays valid."""
    import shutil

    from tests.fixtures.service import Sidecar, make_config

    run_sql(
        pg_dsn,
        "CREATE TABLE items (id int PRIMARY KEY, owner int, val int, note text)",
        "INSERT INTO items SELECT g, 1, g, 'n' FROM generate_series(1, 5) g",
    )
    store = tmp_path / "store.db"
    backup = tmp_path / "backup"
    sc = Sidecar(make_config(pg_url, store, ITEMS))
    await sc.start()
    changes, cursor = await sc.pull_all(1)
    held = state_of(changes)
    await sc.stop()
    backup.mkdir()
    for f in tmp_path.glob("store.db*"):
        shutil.copy(f, backup / f.name)
    await sc.start()
    run_sql(
        pg_dsn, "UPDATE items SET val = -1 WHERE id = 2", "INSERT INTO items VALUES (6, 1, 6, 'x')"
    )
    await sc.caught_up(pg_dsn)
    await sc.stop()  # the slot has now confirmed past the backup's position
    for f in tmp_path.glob("store.db*"):
        f.unlink()
    for f in backup.iterdir():
        shutil.copy(f, tmp_path / f.name)
    await sc.start()
    try:
        status = sc.service.capture.status
        assert (status.rebuilds, status.resyncs) == (0, 1)
        changes, _ = await sc.pull_all(1, cursor)  # no 410
        assert sorted(c["key"]["id"] for c in changes) == [2, 6]  # only what changed
        assert state_of(changes, held) == db_state(pg_dsn)  # nothing missed
    finally:
        await sc.stop()


async def test_an_idle_acknowledged_position_is_not_mistaken_for_a_restore(
    pg_dsn, pg_url, tmp_path
):
    from tests.fixtures.service import Sidecar, make_config

    run_sql(
        pg_dsn,
        "CREATE TABLE items (id int PRIMARY KEY, owner int, val int, note text)",
        "CREATE TABLE other (id int)",
        "INSERT INTO items VALUES (1, 1, 1, 'n')",
    )
    sc = Sidecar(make_config(pg_url, tmp_path / "store.db", ITEMS))
    await sc.start()
    for _ in range(3):  # unrelated WAL: the idle position advances past the last commit
        run_sql(pg_dsn, "INSERT INTO other SELECT generate_series(1, 1000)")
        await sc.caught_up(pg_dsn)
        await asyncio.sleep(1.1)
    await sc.caught_up(pg_dsn)
    state = sc.service.store.state()
    await sc.stop()
    assert state.acked_lsn > state.lsn  # the store remembers what it acknowledged
    await sc.start()
    try:
        assert sc.service.capture.status.rebuilds == 0
    finally:
        await sc.stop()


async def test_idle_publication_does_not_pin_wal(pg_dsn, pg_url, sidecar_factory):
    run_sql(
        pg_dsn,
        "CREATE TABLE items (id int PRIMARY KEY, owner int, val int, note text)",
        "CREATE TABLE busy (id serial PRIMARY KEY, payload text)",
    )
    sc = await sidecar_factory(pg_url, ITEMS)
    sc.service.capture.idle_reply_interval = 0.5

    def confirmed() -> int:
        with psycopg.connect(pg_dsn) as conn:
            return conn.execute(
                "SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots "
                "WHERE slot_name = 'sidecar_test'"
            ).fetchone()[0]

    start = confirmed()
    run_sql(
        pg_dsn, "INSERT INTO busy (payload) SELECT repeat('x', 1000) FROM generate_series(1, 5000)"
    )
    with psycopg.connect(pg_dsn) as conn:
        target = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()[0]
    assert target - start > 4_000_000
    deadline = time.monotonic() + 20
    while confirmed() < target:
        assert time.monotonic() < deadline, "slot's confirmed_flush_lsn did not advance"
        await asyncio.sleep(0.2)


# -- kill -9 under a write load ----------------------------------------------------------


def _write_load(dsn: str, stop: threading.Event, counter: list[int]) -> None:
    rnd = random.Random(7)
    with psycopg.connect(dsn, autocommit=False) as conn:
        next_id = 1000
        while not stop.is_set():
            with conn.transaction():
                for _ in range(rnd.randint(1, 40)):
                    op = rnd.random()
                    if op < 0.5:
                        next_id += 1
                        conn.execute(
                            "INSERT INTO items VALUES (%s, %s, %s, %s)",
                            (next_id, rnd.randint(1, 3), rnd.randint(0, 10**6), "i"),
                        )
                    elif op < 0.85:
                        conn.execute(
                            "UPDATE items SET val = val + 1, note = %s WHERE id = %s",
                            (f"u{rnd.randint(0, 99)}", rnd.randint(1, next_id)),
                        )
                    else:
                        conn.execute("DELETE FROM items WHERE id = %s", (rnd.randint(1, next_id),))
            counter[0] += 1


class SidecarProcess:
    def __init__(self, config: Path, port: int, log: Path, **env: str) -> None:
        self.config, self.port, self.log = config, port, log
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar.cli", "run", "--config", str(self.config)],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            env=env,
        )

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    async def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
                try:
                    async with http.get(f"http://127.0.0.1:{self.port}/readyz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError("sidecar did not become ready:\n" + self.log.read_text()[-3000:])


async def _pull_all(
    port: int, cursor: str | None, after_lsn: str | None = None
) -> tuple[list, str]:
    changes: list = []
    async with aiohttp.ClientSession(headers=auth(1)) as http:
        while True:
            params = {"limit": "500"}
            if cursor:
                params["cursor"] = cursor
            if after_lsn:
                params["after_lsn"] = after_lsn
                after_lsn = None
            async with http.get(f"http://127.0.0.1:{port}/v1/pull", params=params) as r:
                body = await r.json(content_type=None)
                assert r.status == 200, body
            changes += body["changes"]
            cursor = body["cursor"]
            if not body["has_more"]:
                return changes, cursor


@pytest.mark.slow
async def test_kill9_during_write_load_loses_and_doubles_nothing(pg_dsn, pg_url, tmp_path):
    run_sql(
        pg_dsn,
        "CREATE TABLE items (id int PRIMARY KEY, owner int, val int, note text)",
        "INSERT INTO items SELECT g, g % 3, g, 'seed' FROM generate_series(1, 1000) g",
    )
    port = free_port()
    config = tmp_path / "sidecar.yaml"
    config.write_text(
        f"""
database: {{url: "{pg_url}", slot: kill_test, publication: kill_test}}
store: {{path: "{tmp_path / "store.db"}"}}
server: {{host: 127.0.0.1, port: {port}}}
auth: {{jwt: {{secret: "{SECRET}"}}}}
log: {{level: warning, format: json}}
collections:
{ITEMS}
"""
    )
    side = SidecarProcess(config, port, tmp_path / "sidecar.log")
    stop, counter = threading.Event(), [0]
    writer = threading.Thread(target=_write_load, args=(pg_dsn, stop, counter), daemon=True)
    try:
        side.start()
        await side.wait_ready()
        client_changes, cursor = await _pull_all(port, None)
        writer.start()
        for _ in range(3):  # kill at arbitrary points of the load, three times
            await asyncio.sleep(random.uniform(0.8, 2.0))
            more, cursor = await _pull_all(port, cursor)
            client_changes += more
            side.kill9()
            await asyncio.sleep(0.3)
            side.start()
            await side.wait_ready()
        await asyncio.sleep(1.0)
        stop.set()
        writer.join(30)
        assert counter[0] > 20, "the write load did not run"
        with psycopg.connect(pg_dsn) as conn:
            lsn = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
        more, cursor = await _pull_all(port, cursor, after_lsn=lsn)
        client_changes += more
        expected = db_state(pg_dsn)
        # an incremental client that kept its cursor across the kills converges exactly
        assert state_of(client_changes) == expected
        # a fresh client gets every row exactly once
        fresh, _ = await _pull_all(port, None)
        keys = [c["key"]["id"] for c in fresh]
        assert len(keys) == len(set(keys))
        assert state_of(fresh) == expected
    finally:
        stop.set()
        side.stop()


@pytest.mark.slow
async def test_kill9_during_pushes_applies_each_mutation_exactly_once(pg_dsn, pg_url, tmp_path):
    run_sql(pg_dsn, "CREATE TABLE items (id serial PRIMARY KEY, owner int, val int, note text)")
    port = free_port()
    config = tmp_path / "sidecar.yaml"
    config.write_text(
        f"""
database: {{url: "{pg_url}", slot: push_kill, publication: push_kill}}
store: {{path: "{tmp_path / "store.db"}"}}
server: {{host: 127.0.0.1, port: {port}}}
auth: {{jwt: {{secret: "{SECRET}"}}}}
log: {{level: warning, format: json}}
collections:
  items:
    table: items
    read: "true"
    write: {{ops: [insert]}}
"""
    )
    # Dies on its own right after a COMMIT, before answering (the window that matters),
    # and just before a COMMIT with the ids recorded as pending (a retry must apply them),
    # and is also killed from outside at random moments.
    side = SidecarProcess(
        config,
        port,
        tmp_path / "sidecar.log",
        SIDECAR_FAILPOINTS="push.after_commit=0.25,push.before_commit=0.1",
    )
    side.start()
    await side.wait_ready()
    stop = asyncio.Event()
    deaths = [0]

    async def killer() -> int:
        kills = 0
        while not stop.is_set():
            await asyncio.sleep(random.uniform(0.05, 0.6))
            if stop.is_set():
                break
            assert side.proc is not None
            if side.proc.poll() is None:
                side.kill9()
                kills += 1
            else:
                deaths[0] += 1
            side.start()
            with contextlib.suppress(AssertionError):  # it may die again before ready
                await side.wait_ready()
        return kills

    async def push_until_answered(http: aiohttp.ClientSession, batch: list[dict]) -> dict:
        deadline = time.monotonic() + 120
        while True:
            assert time.monotonic() < deadline, "no answer for two minutes"
            assert not killing.done() or killing.exception() is None, killing.exception()
            try:
                async with http.post(
                    f"http://127.0.0.1:{port}/v1/push", json={"mutations": batch}
                ) as r:
                    if r.status == 200:
                        return await r.json()
                    assert r.status == 503, await r.text()
            except (TimeoutError, aiohttp.ClientError):
                pass
            await asyncio.sleep(0.05)

    killing = asyncio.create_task(killer())
    answered: dict[str, str] = {}
    try:
        timeout = aiohttp.ClientTimeout(total=15)
        async with aiohttp.ClientSession(headers=auth(1), timeout=timeout) as http:
            for b in range(60):
                batch = [
                    {
                        "id": f"k{b}-{i}",
                        "collection": "items",
                        "op": "insert",
                        "data": {"note": f"k{b}-{i}", "val": i},
                    }
                    for i in range(10)
                ]
                body = await push_until_answered(http, batch)
                for r in body["results"]:
                    answered[r["id"]] = r["status"]
    finally:
        stop.set()
        kills = await killing
        side.stop()
    with psycopg.connect(pg_dsn) as conn:
        counts = dict(conn.execute("SELECT note, count(*) FROM items GROUP BY note").fetchall())
    assert len(counts) == 600, "a mutation was lost"
    assert set(counts.values()) == {1}, "a mutation was applied twice"
    assert set(answered.values()) <= {"applied", "duplicate"}
    assert deaths[0] >= 2, "the sidecar never died between commit and response"
    assert kills + deaths[0] >= 3
    assert "duplicate" in answered.values(), "no retry of a committed batch happened"


async def test_a_failed_first_copy_leaves_no_slot_pinning_wal(
    pg_dsn, pg_url, tmp_path, monkeypatch
):
    """The database refuses the copy half-way (here: injected); the slot just made for it
    serves no store, so it is dropped instead of holding WAL until the next start."""
    from sidecar.capture import runner
    from sidecar.service import Service
    from tests.fixtures.service import make_config

    run_sql(pg_dsn, "CREATE TABLE items (id int PRIMARY KEY, owner int, val int, note text)")

    def refuse(*args: object, **kwargs: object) -> int:
        raise psycopg.errors.InsufficientPrivilege("permission denied for table items")

    monkeypatch.setattr(runner, "copy_tables", refuse)
    service = await Service.start(make_config(pg_url, tmp_path / "store.db", ITEMS))
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await asyncio.wait_for(service.tasks[0], 30)  # `sidecar run` exits 1
        with psycopg.connect(pg_dsn) as conn:
            slots = conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone()
        assert slots == (0,)
        assert not service.store.state().snapshot_done
    finally:
        await service.close()
