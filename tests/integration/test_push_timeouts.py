"""Bounded waits with retryable answers (issue 13, item 2): a push on a row another
session holds locked, or whose statement runs too long, is not applied and answered
`503 unavailable` with `Retry-After`; the same mutations retried later are applied."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from tests.fixtures.service import auth, run_sql

pytestmark = pytest.mark.pg

SCHEMA = """
CREATE TABLE notes (id int PRIMARY KEY, owner_id int NOT NULL, body text);
INSERT INTO notes VALUES (1, 1, 'one'), (2, 1, 'two');
"""

COLLECTIONS = """
  notes:
    table: notes
    read: "owner_id = :sub"
    write:
      ops: [insert, update]
      set: {owner_id: ":sub"}
"""


async def revs(sc) -> dict[int, str]:
    page = await sc.pull()
    return {c["key"]["id"]: c["rev"] for c in page["changes"]}


def update(mid: str, key: int, rev: str, body: str) -> dict:
    return {
        "id": mid,
        "collection": "notes",
        "op": "update",
        "key": {"id": key},
        "base_rev": rev,
        "data": {"body": body},
    }


def body_of(dsn: str, key: int) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT body FROM notes WHERE id = %s", (key,)).fetchone()
    assert row is not None
    return row[0]


async def test_a_push_on_a_locked_row_answers_503_and_applies_when_retried(
    pg_dsn, pg_url, sidecar_factory
):
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, COLLECTIONS, "limits: {push_lock_timeout: 1s}")
    rev = (await revs(sc))[1]
    holder = psycopg.connect(pg_dsn)  # the application holds the row locked
    holder.execute("SELECT * FROM notes WHERE id = 1 FOR UPDATE")
    try:
        started = time.monotonic()
        resp = await asyncio.wait_for(
            sc.client.post(
                "/v1/push",
                json={"mutations": [update("lk-1", 1, rev, "pushed")]},
                headers=auth(1),
            ),
            timeout=12,  # main waits until the lock is released: never within this
        )
        answered_in = time.monotonic() - started
        problem = await resp.json(content_type=None)
        assert resp.status == 503, problem
        assert problem["code"] == "unavailable"
        assert "push_lock_timeout" in problem["detail"]
        assert int(resp.headers["Retry-After"]) >= 1
        assert answered_in < 10, answered_in  # lock_timeout (1 s) plus generous slack
        assert body_of(pg_dsn, 1) == "one"  # nothing applied
    finally:
        holder.rollback()
        holder.close()
    status, body = await sc.push([update("lk-1", 1, rev, "pushed")])  # the retry
    assert status == 200, body
    assert body["results"][0]["status"] == "applied"
    assert body_of(pg_dsn, 1) == "pushed"


async def test_a_push_whose_statement_runs_too_long_answers_503(pg_dsn, pg_url, sidecar_factory):
    run_sql(
        pg_dsn,
        SCHEMA,
        """CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN IF NEW.body = 'slow' THEN PERFORM pg_sleep(4); END IF; RETURN NEW; END $$""",
        "CREATE TRIGGER slow BEFORE UPDATE ON notes FOR EACH ROW EXECUTE FUNCTION slow()",
    )
    sc = await sidecar_factory(pg_url, COLLECTIONS, "limits: {push_statement_timeout: 1s}")
    rev = (await revs(sc))[2]
    status, problem = await sc.push([update("st-1", 2, rev, "slow")])
    assert status == 503, problem
    assert problem["code"] == "unavailable"
    assert "push_statement_timeout" in problem["detail"]
    assert body_of(pg_dsn, 2) == "two"
    status, body = await sc.push([update("st-2", 2, rev, "quick")])  # the database is fine
    assert status == 200, body
    assert body["results"][0]["status"] == "applied"
