"""Exactly-once pushes without waiting for capture: a retry is recognised from the ids
recorded as pending before COMMIT (settled with `pg_xact_status`) after an aborted
transaction and after a kill -9 before and after COMMIT. (Capture far behind a bulk job:
`test_push_during_lag.py`.)"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import aiohttp
import psycopg
import pytest

from sidecar.embedded import free_port
from sidecar.push.idempotency import origin_of
from sidecar.store.base import PendingRecord
from tests.fixtures.service import SECRET, auth, run_sql
from tests.integration.test_durability import SidecarProcess

pytestmark = pytest.mark.pg

COLLECTIONS = """
  items:
    table: items
    read: "true"
    write: {ops: [insert]}
"""


def count(dsn: str, note: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM items WHERE note = %s", (note,)).fetchone()
    assert row is not None
    return int(row[0])


def insert(mid: str) -> dict:
    """An insert whose key the server makes: applied twice, it would be two rows."""
    return {"id": mid, "collection": "items", "op": "insert", "data": {"note": mid}}


async def test_a_retry_of_an_aborted_push_with_a_pending_record_is_applied(
    pg_dsn, pg_url, sidecar_factory
):
    """A push's transaction can abort after its ids were recorded as pending (the
    connection killed before COMMIT, a rollback): the retry applies it, once."""
    run_sql(pg_dsn, "CREATE TABLE items (id serial PRIMARY KEY, note text)")
    sc = await sidecar_factory(pg_url, COLLECTIONS)
    assert sc.service is not None
    pending = sc.service.pusher.pending
    assert pending is not None
    origin = origin_of(sc.service.store)

    def attempt(mid: str, end: str) -> None:
        """What a push does, up to its end: `terminate` kills its connection before COMMIT."""
        conn = psycopg.connect(pg_dsn)
        conn.execute("INSERT INTO items (note) VALUES (%s)", (mid,))
        row = conn.execute("SELECT pg_current_xact_id()::text").fetchone()
        assert row is not None
        pending.record([PendingRecord("1", mid, int(row[0]), "first", origin)])
        if end == "terminate":
            with psycopg.connect(pg_dsn, autocommit=True) as killer:
                killer.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        else:
            conn.rollback()
        conn.close()

    for mid, end in (("killed-1", "terminate"), ("undone-1", "rollback")):
        await asyncio.to_thread(attempt, mid, end)
        assert count(pg_dsn, mid) == 0
        status, body = await sc.push([insert(mid)])
        assert status == 200, body
        assert body["results"][0]["status"] == "applied", body
        assert count(pg_dsn, mid) == 1
        _, again = await sc.push([insert(mid)])
        assert again["results"][0]["status"] == "duplicate"
        assert count(pg_dsn, mid) == 1


async def test_a_committed_transaction_known_only_as_pending_is_a_duplicate(
    pg_dsn, pg_url, sidecar_factory
):
    """Committed, never captured as a mutation (no WAL message here at all): the pending
    record and PostgreSQL's word that its transaction committed answer, for that subject
    only."""
    run_sql(pg_dsn, "CREATE TABLE items (id serial PRIMARY KEY, note text)")
    sc = await sidecar_factory(pg_url, COLLECTIONS)
    assert sc.service is not None and sc.service.pusher.pending is not None
    pending, origin = sc.service.pusher.pending, origin_of(sc.service.store)
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("INSERT INTO items (note) VALUES ('ghost-1')")
        row = conn.execute("SELECT pg_current_xact_id()::text").fetchone()
        assert row is not None
        pending.record([PendingRecord("1", "ghost-1", int(row[0]), "abc", origin)])
    status, body = await sc.push([insert("ghost-1")])
    assert status == 200, body
    assert body["results"][0] == {"id": "ghost-1", "status": "duplicate", "rev": "abc"}
    _, other = await sc.push([insert("ghost-1")], sub=2)  # another subject's id
    assert other["results"][0]["status"] == "applied"
    assert count(pg_dsn, "ghost-1") == 2
    # a record made on another database (a failover, a restore) is not trusted
    pending.record([PendingRecord("1", "ghost-2", int(row[0]), "abc", "elsewhere")])
    _, foreign = await sc.push([insert("ghost-2")])
    assert foreign["results"][0]["status"] == "applied"


def _config(tmp_path: Path, pg_url: str, port: int) -> Path:
    config = tmp_path / "sidecar.yaml"
    config.write_text(
        f"""
database: {{url: "{pg_url}", slot: exactly, publication: exactly}}
store: {{path: "{tmp_path / "store.db"}"}}
server: {{host: 127.0.0.1, port: {port}}}
auth: {{jwt: {{secret: "{SECRET}"}}}}
log: {{level: warning, format: json}}
collections:
{COLLECTIONS}
"""
    )
    return config


async def _post(port: int, mutations: list[dict]) -> tuple[int, dict | None]:
    """(status, body), or (0, None) when the connection broke before an answer."""
    try:
        async with (
            aiohttp.ClientSession(headers=auth(1), timeout=aiohttp.ClientTimeout(total=30)) as http,
            http.post(f"http://127.0.0.1:{port}/v1/push", json={"mutations": mutations}) as r,
        ):
            return r.status, await r.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError):
        return 0, None


@pytest.mark.slow
@pytest.mark.parametrize(
    ("point", "retry"),
    [
        ("push.before_commit", "applied"),  # ids pending, the transaction aborted
        ("push.after_commit", "duplicate"),  # committed, never answered
    ],
)
async def test_kill9_at_each_step_of_a_push_then_a_retry_applies_it_once(
    pg_dsn, pg_url, tmp_path, point, retry
):
    run_sql(pg_dsn, "CREATE TABLE items (id serial PRIMARY KEY, note text)")
    port = free_port()
    config = _config(tmp_path, pg_url, port)
    dying = SidecarProcess(config, port, tmp_path / "dying.log", SIDECAR_FAILPOINTS=f"{point}=1")
    dying.start()
    await dying.wait_ready()
    batch = [insert(f"{point}-{i}") for i in range(3)]
    status, body = await _post(port, batch)
    assert dying.proc is not None
    dying.proc.wait(30)
    assert dying.proc.returncode == 137, "the failpoint was not reached"
    assert status == 0, body  # no answer: the client will retry
    side = SidecarProcess(config, port, tmp_path / "sidecar.log")
    side.start()
    try:
        await side.wait_ready()
        deadline = time.monotonic() + 60
        while True:  # the retry, as a client does it (503: again)
            status, body = await _post(port, batch)
            if status != 503 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert status == 200, body
        assert body is not None
        assert [r["status"] for r in body["results"]] == [retry] * 3
        for m in batch:
            assert count(pg_dsn, m["id"]) == 1
        status, body = await _post(port, batch)  # and again: now a duplicate in any case
        assert body is not None
        assert [r["status"] for r in body["results"]] == ["duplicate"] * 3
    finally:
        side.stop()


@pytest.mark.sqlite_store_only("loses the SQLite pending file beside the store")
async def test_a_commit_from_before_the_pending_records_is_not_applied_twice(
    pg_dsn, pg_url, sidecar_factory, tmp_path
):
    """A push committed by a sidecar that kept no pending records (the version before
    them, or a store restored without its pending file) and not captured yet: its retry
    must not be applied again while capture is behind — 503 until capture has passed the
    point the pending records start from, then `duplicate`."""
    run_sql(pg_dsn, "CREATE TABLE items (id serial PRIMARY KEY, note text)")
    sc = await sidecar_factory(pg_url, COLLECTIONS)
    await sc.stop()
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"store.db.pending{suffix}").unlink(missing_ok=True)
    run_sql(  # what the older sidecar committed, answered to nobody
        pg_dsn,
        "BEGIN; INSERT INTO items (note) VALUES ('old-1'); "
        "SELECT pg_logical_emit_message(true, 'sidecar', "
        '\'{"id":"old-1","sub":"1","dev":null,'
        '"outcome":{"status":"applied","rev":"abc"}}\'); COMMIT',
    )
    holder = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # capture cannot record it for now
        await sc.start()
        status, body = await sc.push([insert("old-1")])
        assert count(pg_dsn, "old-1") == 1, "applied twice"
        assert status == 503, body
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    deadline = time.monotonic() + 60
    while True:
        status, body = await sc.push([insert("old-1")])
        if status != 503 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert status == 200, body
    assert body["results"][0] == {"id": "old-1", "status": "duplicate", "rev": "abc"}
    assert count(pg_dsn, "old-1") == 1
