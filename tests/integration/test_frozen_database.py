"""A database that stops answering without closing its connections — a frozen host, a
network partition (issue 13, item 3): a TCP proxy between the sidecar and PostgreSQL
stops forwarding, every socket staying open.

- pushes: the first one is answered `503 unavailable` with `Retry-After` within a bound
  (the push's own deadline: the server's statement_timeout cannot fire on a server that
  gets nothing), the next ones at once (the breaker); pulls keep being served; `/readyz`
  says why without the host; on thaw everything recovers by itself, each mutation
  applied once.
- capture: a replication stream silent past `wal_sender_timeout` is reported by
  `/readyz` and dropped; capture reconnects (with backoff) and, once the proxy forwards
  again, the changes made meanwhile arrive.
"""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from tests.fixtures.service import Sidecar, auth, run_sql, wait_until
from tests.support.freezeproxy import FreezeProxy

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


def through(proxy: FreezeProxy, pg_server, dbname: str) -> str:
    """The test database's URL through the proxy."""
    return f"postgresql://{pg_server.superuser}@127.0.0.1:{proxy.port}/{dbname}"


async def timed_push(sc: Sidecar, mutations: list[dict]) -> tuple[int, dict, dict, float]:
    assert sc.client is not None
    started = time.monotonic()
    resp = await sc.client.post("/v1/push", json={"mutations": mutations}, headers=auth(1))
    body = await resp.json(content_type=None)
    return resp.status, body, dict(resp.headers), time.monotonic() - started


async def readyz(sc: Sidecar) -> tuple[int, dict]:
    resp = await sc.get("/readyz", sub=None)
    return resp.status, await resp.json(content_type=None)


def keys_in_database(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM items ORDER BY id").fetchall()]


async def pulled_keys(sc: Sidecar) -> list[int]:
    changes, _ = await sc.pull_all()
    return sorted(c["key"]["id"] for c in changes if c["op"] == "upsert")


@pytest.mark.sqlite_store_only("pulls served while the database (and a store on it) is frozen")
async def test_a_frozen_database_fails_pushes_in_bounded_time_and_recovers(
    pg_server, pg_dbname, pg_dsn, sidecar_factory
):
    run_sql(pg_dsn, SCHEMA)
    with FreezeProxy(pg_server.port) as proxy:
        sc = await sidecar_factory(through(proxy, pg_server, pg_dbname), ITEMS)
        status, body = await sc.push([insert("f-1", 2)])
        assert status == 200, body
        await sc.caught_up(pg_dsn)

        proxy.freeze()
        try:
            # The first push: no answer from the database, answered 503 within its
            # deadline (limits.push_statement_timeout 10 s + a little), never hanging.
            push = asyncio.ensure_future(timed_push(sc, [insert("f-2", 3)]))
            done, _ = await asyncio.wait({push}, timeout=30)
            assert done, "a push hung on the frozen database"
            status, problem, headers, took = push.result()
            assert status == 503, problem
            assert problem["code"] == "unavailable" and int(headers["Retry-After"]) >= 1
            assert took < 20, took

            # The next ones fail fast: the breaker is open.
            for n in range(3):
                status, problem, headers, took = await timed_push(sc, [insert("f-3", 4)])
                assert status == 503, problem
                assert problem["code"] == "unavailable" and int(headers["Retry-After"]) >= 1
                assert took < 1, (n, took)

            # Pulls are served from the store meanwhile.
            assert await pulled_keys(sc) == [1, 2]
            # /readyz says why, without the host or port.
            status, ready = await readyz(sc)
            assert status == 503, ready
            assert "database unavailable for writes" in ready["detail"]
            assert "127.0.0.1" not in ready["detail"]
            assert str(proxy.port) not in ready["detail"]

            # The application keeps writing directly (not through the proxy).
            run_sql(pg_dsn, "INSERT INTO items VALUES (10, 1, 'written while frozen')")
        finally:
            proxy.thaw()

        # Everything comes back by itself: the retried mutations are applied (once).
        async def pushes_again() -> bool:
            status, body = await sc.push([insert("f-2", 3), insert("f-3", 4)])
            return status == 200 and {r["status"] for r in body["results"]} <= {
                "applied",
                "duplicate",
            }

        await wait_until(pushes_again, 60, "pushes applied again")
        status, body = await sc.push([insert("f-2", 3), insert("f-3", 4)])
        assert status == 200 and [r["status"] for r in body["results"]] == ["duplicate"] * 2

        async def ready_again() -> bool:
            return (await readyz(sc))[0] == 200

        await wait_until(ready_again, 60, "/readyz ready again")
        await sc.caught_up(pg_dsn)
        assert keys_in_database(pg_dsn) == [1, 2, 3, 4, 10]
        assert await pulled_keys(sc) == [1, 2, 3, 4, 10]


async def test_a_silent_replication_stream_is_reported_and_reconnected(
    pg_server, pg_dbname, pg_dsn, sidecar_factory
):
    # The server's wal_sender_timeout, which the sidecar reads at connect, lowered for
    # this database only.
    run_sql(pg_dsn, SCHEMA, f"ALTER DATABASE \"{pg_dbname}\" SET wal_sender_timeout = '3s'")
    with FreezeProxy(pg_server.port) as proxy:
        sc = await sidecar_factory(through(proxy, pg_server, pg_dbname), ITEMS)
        await sc.caught_up(pg_dsn)
        # A healthy idle stream is not taken for a silent one: capture asks the server
        # for keepalives often enough.
        await asyncio.sleep(8)
        status, ready = await readyz(sc)
        assert status == 200, ready

        proxy.freeze()
        try:
            seen: dict = {}

            async def reported() -> bool:
                status, body = await readyz(sc)
                seen.update(body)
                return status == 503 and "replication stream went silent" in body["detail"]

            await wait_until(reported, 30, "/readyz naming the silent replication stream")
            assert "127.0.0.1" not in seen["detail"] and str(proxy.port) not in seen["detail"]
            assert seen["progress"]["phase"] == "reconnecting"
            # Pulls are served from the store meanwhile; the application keeps writing.
            assert await pulled_keys(sc) == [1]
            run_sql(pg_dsn, "INSERT INTO items VALUES (20, 1, 'written while silent')")
        finally:
            proxy.thaw()

        async def ready_again() -> bool:
            return (await readyz(sc))[0] == 200

        await wait_until(ready_again, 60, "/readyz ready again")

        async def arrived() -> bool:
            return await pulled_keys(sc) == [1, 20]

        await wait_until(arrived, 30, "the change made while silent")
        assert sc.service is not None and sc.service.capture.status.silent is None
