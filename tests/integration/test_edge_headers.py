"""What every answer says about the server, and what /readyz says during an outage."""

from __future__ import annotations

import psycopg
import pytest

from tests.fixtures.service import auth, run_sql, wait_until

pytestmark = pytest.mark.pg

SCHEMA = """
CREATE TABLE notes (id int PRIMARY KEY, owner_id int, body text);
INSERT INTO notes VALUES (1, 1, 'a');
"""
NOTES = """
  notes:
    table: notes
    read: "owner_id = :sub"
"""


async def test_every_answer_says_sidecar_without_versions_and_nosniff(
    pg_dsn, pg_url, sidecar_factory
):
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, NOTES)
    client = sc.client
    answers = [
        await client.get("/healthz"),
        await client.get("/metrics"),
        await client.get("/v1/pull", headers=auth(1)),
        await client.get("/v1/pull"),  # 401
        await client.get("/v1/nowhere"),  # 404
        await client.post("/healthz"),  # 405
        await client.get("/v1/pull", params={"limit": "x"}, headers=auth(1)),  # 400
        await client.get("/v1/stream", params={"heartbeat": "0.1"}, headers=auth(1)),  # SSE
        await client.get(
            "/electric/v1/shape", params={"table": "notes", "offset": "-1"}, headers=auth(1)
        ),
        await client.get("/watermelondb/sync", headers=auth(1)),
        await client.get("/rxdb/notes/pull", headers=auth(1)),
    ]
    for resp in answers:
        where = f"{resp.method} {resp.url.path} → {resp.status}"
        assert resp.headers.get("Server") == "sidecar", where
        assert resp.headers.get("X-Content-Type-Options") == "nosniff", where
        resp.close()


@pytest.mark.sqlite_store_only("the PostgreSQL store is on the server the test stops")
async def test_readyz_during_a_database_outage_names_no_host_or_port(
    pg_server, pg_dbname, pg_dsn, pg_url, sidecar_factory
):
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, NOTES)
    with psycopg.connect(pg_server.dsn(), autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{pg_dbname}" ALLOW_CONNECTIONS false')
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            (pg_dbname,),
        )
    try:
        body: dict = {}

        async def unready() -> bool:
            nonlocal body
            resp = await sc.client.get("/readyz")
            body = await resp.json(content_type=None)
            return resp.status == 503 and body.get("progress", {}).get("error") is not None

        await wait_until(unready, what="/readyz 503 with a reason")

        async def reconnect_refused() -> bool:  # (the error the logs get names the host)
            return "accepting connections" in str(sc.service.capture.status.error)

        await wait_until(reconnect_refused, timeout=30, what="a refused reconnection")
        assert await unready()
        text = str(body)
        assert "127.0.0.1" not in text and str(pg_server.port) not in text, body
        assert "database" in body["progress"]["error"]
    finally:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{pg_dbname}" ALLOW_CONNECTIONS true')
