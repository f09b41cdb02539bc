"""Store trouble is weather, not death: with the store locked by another process or its
disk full, capture pauses (pulls are still served, `/readyz` and the metrics say why) and
resumes by itself, nothing lost or doubled. The reconnect backoff starts over after a
connection that worked."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import structlog

from sidecar.embedded import EmbeddedPostgres
from tests.fixtures.service import Sidecar, make_config, run_sql, state_of, wait_until

pytestmark = pytest.mark.pg

ITEMS = """
  items:
    table: items
    read: "true"
"""
SCHEMA = "CREATE TABLE items (id int PRIMARY KEY, owner int, val int, note text)"


def db_state(dsn: str) -> dict:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT id, owner, val, note FROM items").fetchall()
    return {
        ("items", (("id", r[0]),)): {"id": r[0], "owner": r[1], "val": r[2], "note": r[3]}
        for r in rows
    }


def write_rows(dsn: str, first: int, n: int, note: str = "n") -> None:
    """The application writes: inserts in several transactions, an update, a delete."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for start in range(first, first + n, 50):
            conn.execute(
                "INSERT INTO items SELECT g, 1, g, %s FROM generate_series(%s::int, %s::int) g",
                (note, start, min(start + 49, first + n - 1)),
            )
        conn.execute("UPDATE items SET val = -val WHERE id % 7 = 0")
        conn.execute("DELETE FROM items WHERE id % 11 = 0")


async def metric(sc: Sidecar, name: str) -> float:
    resp = await sc.get("/metrics", sub=None)
    text = await resp.text()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no metric {name}:\n{text}")


async def readyz(sc: Sidecar) -> tuple[int, dict]:
    resp = await sc.get("/readyz", sub=None)
    return resp.status, await resp.json(content_type=None)


async def check_converged(sc: Sidecar, dsn: str) -> None:
    """Once capture has caught up: the store equals the table, each row once, and a
    client that pulls everything from scratch sees the table."""
    assert sc.service is not None

    async def caught_up() -> bool:
        with psycopg.connect(dsn) as conn:
            (count,) = conn.execute("SELECT count(*) FROM items").fetchone()
        return sc.service.store.counts()["rows"] == count and (await readyz(sc))[0] == 200

    await wait_until(caught_up, 60, "capture to resume and catch up")
    await sc.caught_up(dsn)
    changes, _ = await sc.pull_all(1)
    keys = Counter(tuple(sorted(c["key"].items())) for c in changes)
    assert max(keys.values()) == 1  # every row arrives exactly once
    assert state_of(changes) == db_state(dsn)
    assert not sc.service.tasks[0].done(), "capture stopped"


async def test_store_locked_by_another_process_pauses_capture_and_loses_nothing(
    pg_dsn, pg_url, tmp_path
):
    run_sql(pg_dsn, SCHEMA, "INSERT INTO items SELECT g, 1, g, 'n' FROM generate_series(1, 20) g")
    store = tmp_path / "store.db"
    sc = await Sidecar(make_config(pg_url, store, ITEMS)).start()
    try:
        before = state_of((await sc.pull_all(1))[0])
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sqlite3, sys, time\n"
                "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
                "c.execute('BEGIN EXCLUSIVE')\n"
                "print('locked', flush=True)\n"
                "sys.stdin.readline()\n"  # held until the test has looked (≥ 15 s)
                "c.execute('COMMIT')\n",
                str(store),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        locked_at = time.monotonic()
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            await asyncio.to_thread(write_rows, pg_dsn, 21, 300)

            async def paused() -> bool:
                status, body = await readyz(sc)
                return status == 503 and "store locked" in body.get("detail", "")

            await wait_until(paused, 14, "/readyz to report the locked store")
            assert await metric(sc, 'sidecar_capture_store_errors_total{kind="locked"}') >= 1
            assert await metric(sc, 'sidecar_capture_paused{reason="locked"}') == 1
            # Pulls of what the store holds are still answered while it is locked.
            assert state_of((await sc.pull_all(1))[0]) == before
            assert not sc.service.tasks[0].done(), "capture stopped"
            await asyncio.sleep(max(0.0, 15 - (time.monotonic() - locked_at)))
        finally:
            with contextlib.suppress(OSError):
                holder.communicate("release\n", timeout=60)
        await check_converged(sc, pg_dsn)
        assert await metric(sc, 'sidecar_capture_paused{reason="locked"}') == 0
    finally:
        await sc.stop()


@contextlib.contextmanager
def small_tmpfs(where: Path) -> Iterator[Path]:
    where.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({proc.stderr.strip()}); see the max_page_count test"
        )
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(path: Path) -> None:
    """Take every free byte of the file system."""
    with path.open("wb", buffering=0) as fh:
        for size in (65536, 4096, 512):
            with contextlib.suppress(OSError):
                while True:
                    fh.write(b"\0" * size)


async def test_store_disk_full_pauses_capture_and_resumes_when_space_is_freed(
    pg_dsn, pg_url, tmp_path
):
    with small_tmpfs(tmp_path / "small") as small:
        run_sql(
            pg_dsn, SCHEMA, "INSERT INTO items SELECT g, 1, g, 'n' FROM generate_series(1, 20) g"
        )
        sc = await Sidecar(make_config(pg_url, small / "store.db", ITEMS)).start()
        try:
            before = state_of((await sc.pull_all(1))[0])
            filler = small / "filler"
            await asyncio.to_thread(fill, filler)
            await asyncio.to_thread(write_rows, pg_dsn, 21, 3000, "x" * 300)

            async def paused() -> bool:
                status, body = await readyz(sc)
                return status == 503 and "store disk full" in body.get("detail", "")

            await wait_until(paused, 30, "/readyz to report the full disk")
            assert await metric(sc, 'sidecar_capture_store_errors_total{kind="disk_full"}') >= 1
            assert await metric(sc, 'sidecar_capture_paused{reason="disk_full"}') == 1
            assert state_of((await sc.pull_all(1))[0]) == before  # pulls are still served
            os.remove(filler)
            await check_converged(sc, pg_dsn)
            assert await metric(sc, 'sidecar_capture_paused{reason="disk_full"}') == 0
        finally:
            await sc.stop()


async def test_store_full_by_max_page_count_pauses_capture_and_resumes(pg_dsn, pg_url, tmp_path):
    """SQLITE_FULL without a small file system: the writer connection's `max_page_count`
    (what a full disk does to SQLite, and what this sandbox can do without mount)."""
    run_sql(pg_dsn, SCHEMA, "INSERT INTO items SELECT g, 1, g, 'n' FROM generate_series(1, 20) g")
    sc = await Sidecar(make_config(pg_url, tmp_path / "store.db", ITEMS)).start()
    try:
        assert sc.service is not None
        capture, store = sc.service.capture, sc.service.store
        before = state_of((await sc.pull_all(1))[0])

        def limit(pages: int | None) -> None:  # on the writer thread, between batches
            (count,) = store._w.execute("PRAGMA page_count").fetchone()  # type: ignore[attr-defined]
            store._w.execute(f"PRAGMA max_page_count = {pages or count}")  # type: ignore[attr-defined]

        await capture._in_writer(limit, None)
        await asyncio.to_thread(write_rows, pg_dsn, 21, 3000, "x" * 300)

        async def paused() -> bool:
            status, body = await readyz(sc)
            return status == 503 and "store disk full" in body.get("detail", "")

        await wait_until(paused, 30, "/readyz to report the full store")
        assert await metric(sc, 'sidecar_capture_store_errors_total{kind="disk_full"}') >= 1
        assert state_of((await sc.pull_all(1))[0]) == before
        await capture._in_writer(limit, 1073741823)  # room again
        await check_converged(sc, pg_dsn)
    finally:
        await sc.stop()


def _restart(server: EmbeddedPostgres) -> None:
    subprocess.run(
        server._cmd(
            str(server.bindir / "pg_ctl"), "-D", str(server.datadir), "-m", "fast", "-w", "restart",
            "-l", str(server.sockdir / "server.log"),
        ),
        capture_output=True,
        check=True,
    )  # fmt: skip


async def test_reconnect_backoff_starts_over_after_each_database_restart(tmp_path):
    with EmbeddedPostgres() as server:
        dsn, url = server.dsn(), server.url()
        run_sql(dsn, SCHEMA)
        sc = await Sidecar(make_config(url, tmp_path / "store.db", ITEMS)).start()
        try:
            with structlog.testing.capture_logs() as logs:
                for i in range(4):
                    seen = len(logs)
                    await asyncio.to_thread(_restart, server)
                    run_sql(dsn, f"INSERT INTO items VALUES ({i}, 1, {i}, 'after restart')")

                    async def arrived(i: int = i) -> bool:
                        resp = await sc.get("/v1/pull", params={"limit": "1000"})
                        if resp.status != 200:  # 503 while reconnecting
                            return False
                        page = await resp.json()
                        return any(c["key"] == {"id": i} for c in page["changes"])

                    # Promptly: within a generous bound, whatever happened before.
                    await wait_until(arrived, 25, f"the row written after restart {i + 1}")
                    retries = [
                        e["retry_in"]
                        for e in logs[seen:]
                        if e["event"] == "replication interrupted; reconnecting"
                    ]
                    assert retries and retries[0] == 1.0, (i, retries)
        finally:
            await sc.stop()
