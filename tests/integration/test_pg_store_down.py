"""A PostgreSQL store that goes away (its database refusing connections, those open cut)
while the application's database stays up: a pull answers `503 unavailable` with `Retry-After` in
bounded time — never a 500, never a host in the answer — and pulls are served again
once the store is back."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from sidecar.config.loader import load_config_text
from tests.fixtures.service import SECRET, Sidecar, run_sql

pytestmark = pytest.mark.pg

ITEMS = """
  items:
    table: items
    read: "owner = :sub"
"""


def _config(app_url: str, store_url: str):
    text = f"""
database: {{url: "{app_url}", slot: sidecar_test, publication: sidecar_test}}
store: {{url: "{store_url}", schema: sidecar_store}}
auth: {{jwt: {{secret: "{SECRET}"}}}}
collections:
{ITEMS}
"""
    return load_config_text(text, file="test.yaml", env={})


def _store_db(pg_server, allow: bool | None = None, create: bool = False) -> None:
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        if create:
            conn.execute("CREATE DATABASE store_down")
        if allow is not None:
            conn.execute(f"ALTER DATABASE store_down ALLOW_CONNECTIONS {str(allow).lower()}")
            if not allow:  # the store's connections go, and no new one is let in
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = 'store_down'"
                )


async def test_a_pull_while_the_store_is_down_is_503_then_served_again(pg_server, pg_dsn, pg_url):
    run_sql(pg_dsn, "CREATE TABLE items (id int PRIMARY KEY, owner int, v int)")
    run_sql(pg_dsn, "INSERT INTO items SELECT g, 1, g FROM generate_series(1, 20) g")
    _store_db(pg_server, create=True)
    sc = await Sidecar(_config(pg_url, pg_server.url("store_down"))).start()
    try:
        body = await sc.pull(1)
        assert len(body["changes"]) == 20
        cursor = body["cursor"]
        _store_db(pg_server, allow=False)
        for _ in range(3):  # each refusal: bounded, retryable, no host, never a 500
            started = time.monotonic()
            resp = await sc.get("/v1/pull", sub=1, params={"cursor": cursor})
            problem = await resp.json(content_type=None)
            assert resp.status == 503, problem
            assert problem["code"] == "unavailable" and int(resp.headers["Retry-After"]) >= 1
            assert "127.0.0.1" not in str(problem) and "port" not in problem["detail"]
            assert time.monotonic() - started < 30
        _store_db(pg_server, allow=True)
        run_sql(pg_dsn, "UPDATE items SET v = 0 WHERE id = 1")
        deadline = time.monotonic() + 30
        while True:  # served again once the store is back (capture catches up too)
            resp = await sc.get("/v1/pull", sub=1, params={"cursor": cursor})
            if resp.status == 200:
                changes = (await resp.json())["changes"]
                if changes:
                    assert [c["key"]["id"] for c in changes] == [1]
                    break
            assert time.monotonic() < deadline, resp.status
            await asyncio.sleep(0.5)
    finally:
        _store_db(pg_server, allow=True)
        await sc.stop()
        with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS store_down WITH (FORCE)")
