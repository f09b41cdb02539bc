"""The database's circuit breaker (issue 13, item 3): connections dropped or the database
stopped → pushes answer `503 unavailable` with `Retry-After`, fast once the first failure
is seen; pulls of the complete store keep being served; `/readyz` says why without the
host; everything recovers by itself, with no restart of the sidecar."""

from __future__ import annotations

import asyncio
import subprocess
import time

import pytest

from sidecar.embedded import EmbeddedPostgres
from tests.fixtures.service import Sidecar, make_config, run_sql, wait_until

pytestmark = pytest.mark.pg

SCHEMA = """
CREATE TABLE items (id int PRIMARY KEY, owner_id int NOT NULL, note text);
INSERT INTO items VALUES (1, 1, 'one');
"""

ITEMS = """
  items:
    table: items
    read: "owner_id = :sub"
    write:
      ops: [insert]
      set: {owner_id: ":sub"}
"""


def insert(mid: str, key: int) -> dict:
    return {"id": mid, "collection": "items", "op": "insert", "key": {"id": key}, "data": {}}


def _pg_ctl(server: EmbeddedPostgres, *args: str) -> None:
    subprocess.run(
        server._cmd(
            str(server.bindir / "pg_ctl"), "-D", str(server.datadir), "-w", *args,
            "-l", str(server.sockdir / "server.log"),
        ),
        capture_output=True,
        check=True,
    )  # fmt: skip


async def timed_push(sc: Sidecar, mutations: list[dict]) -> tuple[int, dict, dict, float]:
    assert sc.client is not None
    from tests.fixtures.service import auth

    started = time.monotonic()
    resp = await sc.client.post("/v1/push", json={"mutations": mutations}, headers=auth(1))
    body = await resp.json(content_type=None)
    return resp.status, body, dict(resp.headers), time.monotonic() - started


async def test_terminated_push_connections_are_replaced(pg_dsn, pg_url, sidecar_factory):
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, ITEMS)
    status, body = await sc.push([insert("t-1", 2)])
    assert status == 200, body
    run_sql(
        pg_dsn,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'sidecar-push'",
    )
    status, body = await sc.push([insert("t-2", 3)])
    assert status == 200, body  # main: 500 internal
    assert body["results"][0]["status"] == "applied"


async def test_a_stopped_database_fails_pushes_fast_and_recovers(tmp_path):
    with EmbeddedPostgres() as server:
        dsn, url = server.dsn(), server.url()
        run_sql(dsn, SCHEMA)
        sc = await Sidecar(make_config(url, tmp_path / "store.db", ITEMS)).start()
        try:
            status, body = await sc.push([insert("s-1", 2)])
            assert status == 200, body
            await sc.caught_up(dsn)
            await asyncio.to_thread(_pg_ctl, server, "-m", "fast", "stop")

            # The first push sees the failure (bounded), the next ones are answered at once.
            status, problem, headers, took = await timed_push(sc, [insert("s-2", 3)])
            assert status == 503, problem
            assert problem["code"] == "unavailable" and int(headers["Retry-After"]) >= 1
            assert took < 15, took
            for n in range(3):
                status, problem, headers, took = await timed_push(sc, [insert("s-3", 4)])
                assert status == 503, problem
                assert problem["code"] == "unavailable"
                assert int(headers["Retry-After"]) >= 1
                assert took < 2, (n, took)  # fail fast: the breaker is open

            # Pulls of the complete store keep being served.
            page = await sc.pull()
            assert {c["key"]["id"] for c in page["changes"]} == {1, 2}
            # /readyz says why, without the host or port.
            resp = await sc.get("/readyz", sub=None)
            ready = await resp.json(content_type=None)
            assert resp.status == 503, ready
            assert "database unavailable for writes" in ready["detail"]
            assert "127.0.0.1" not in ready["detail"] and str(server.port) not in ready["detail"]

            await asyncio.to_thread(_pg_ctl, server, "start")

            async def pushes_again() -> bool:
                status, body = await sc.push([insert("s-3", 4)])
                return status == 200 and body["results"][0]["status"] == "applied"

            await wait_until(pushes_again, 30, "pushes applied again")

            async def ready_again() -> bool:
                return (await sc.get("/readyz", sub=None)).status == 200

            await wait_until(ready_again, 30, "/readyz ready again")
        finally:
            await sc.stop()


async def test_a_quiet_connection_is_handed_to_a_push_without_a_round_trip(pg_dsn):
    """The checkout check (`check_on_checkout`) asks the server only when it sent something
    on the idle connection (a termination, a shutdown): a push's batch is spared a round
    trip; a terminated connection is still refused (the pool replaces it)."""
    import psycopg

    from sidecar.push.breaker import check_on_checkout

    conn = await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True)
    other = await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True)
    try:
        await conn.execute("SELECT 'the last statement'")

        async def last_query() -> str:
            cur = await other.execute(
                "SELECT query FROM pg_stat_activity WHERE pid = %s", (conn.info.backend_pid,)
            )
            row = await cur.fetchone()
            return row[0] if row else "(gone)"

        await check_on_checkout(conn)
        assert await last_query() == "SELECT 'the last statement'"  # nothing was sent
        await other.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        await wait_until(lambda: last_query_gone(other, conn.info.backend_pid), 10)
        with pytest.raises(psycopg.OperationalError):
            await check_on_checkout(conn)
    finally:
        await conn.close()
        await other.close()


async def last_query_gone(other, pid: int) -> bool:
    cur = await other.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
    row = await cur.fetchone()
    return row is not None and row[0] == 0
