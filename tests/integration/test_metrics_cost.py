"""/metrics is served from memory: a scrape runs no query on the application's database
and never borrows a connection of the push pool."""

from __future__ import annotations

import pytest

from tests.fixtures.service import run_sql, wait_until

pytestmark = pytest.mark.pg

SCHEMA = """
CREATE TABLE notes (id int PRIMARY KEY, owner_id int, body text);
INSERT INTO notes VALUES (1, 1, 'a'), (2, 1, 'b');
"""
NOTES = """
  notes:
    table: notes
    read: "owner_id = :sub"
"""


async def test_scrapes_borrow_no_pool_connection_and_query_nothing(pg_dsn, pg_url, sidecar_factory):
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, NOTES)
    pool = sc.service.pool
    before = pool.get_stats().get("requests_num", 0)
    for _ in range(15):  # (within limits.unauthenticated_rate's burst of 20)
        resp = await sc.get("/metrics", sub=None)
        assert resp.status == 200
        await resp.read()
    assert pool.get_stats().get("requests_num", 0) == before  # never borrowed

    async def counted() -> bool:  # the gauges still come, from the background refresh
        text = await (await sc.get("/metrics", sub=None)).text()
        return "sidecar_store_rows 2.0" in text

    await wait_until(counted, what="sidecar_store_rows 2 from the background refresh")
