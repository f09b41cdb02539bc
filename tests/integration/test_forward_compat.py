"""Forward compatibility: a newer client's extra fields are ignored, its unknown columns
are not (issue 13, item 5)."""

from __future__ import annotations

import psycopg
import pytest

from tests.fixtures.service import auth, run_sql

pytestmark = pytest.mark.pg

SCHEMA = """
CREATE TABLE notes (id int PRIMARY KEY, owner_id int NOT NULL, body text);
INSERT INTO notes VALUES (1, 1, 'one');
"""

COLLECTIONS = """
  notes:
    table: notes
    read: "owner_id = :sub"
    write:
      ops: [insert, update]
      set: {owner_id: ":sub"}
"""


@pytest.fixture
async def sc(pg_dsn, pg_url, sidecar_factory):
    run_sql(pg_dsn, SCHEMA)
    return await sidecar_factory(pg_url, COLLECTIONS)


async def post(sc, body: dict) -> tuple[int, dict]:
    resp = await sc.client.post("/v1/push", json=body, headers=auth(1))
    return resp.status, await resp.json(content_type=None)


async def test_unknown_fields_of_the_body_and_of_a_mutation_are_ignored(sc, pg_dsn):
    page = await sc.pull()
    rev = next(c["rev"] for c in page["changes"] if c["key"] == {"id": 1})
    status, body = await post(
        sc,
        {
            "mutations": [
                {
                    "id": "fc-1",
                    "collection": "notes",
                    "op": "insert",
                    "key": {"id": 2},
                    "data": {"body": "two"},
                    "priority": "high",  # a field of a newer protocol
                    "meta": {"device_clock": 17},
                },
                {
                    "id": "fc-2",
                    "collection": "notes",
                    "op": "update",
                    "key": {"id": 1},
                    "base_rev": rev,
                    "data": {"body": "uno"},
                    "client_schema": 9,
                },
            ],
            "atomic": False,
            "sync_hint": {"since": "yesterday"},  # and one of the body
        },
    )
    assert status == 200, body
    assert [r["status"] for r in body["results"]] == ["applied", "applied"]
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT id, body FROM notes ORDER BY id").fetchall()
    assert rows == [(1, "uno"), (2, "two")]


async def test_an_unknown_column_in_data_is_still_refused(sc, pg_dsn):
    status, body = await post(
        sc,
        {
            "mutations": [
                {
                    "id": "fc-3",
                    "collection": "notes",
                    "op": "insert",
                    "key": {"id": 3},
                    "data": {"body": "three", "colour": "red"},
                    "future": True,
                }
            ]
        },
    )
    assert status == 200, body
    (result,) = body["results"]
    assert result["status"] == "rejected"
    assert result["error"]["code"] == "validation_failed"
    assert "colour" in result["error"]["detail"]
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM notes WHERE id = 3").fetchone() == (0,)
