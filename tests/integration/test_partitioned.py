"""A partitioned table synced as one collection (published via its root)."""

from __future__ import annotations

import psycopg
import pytest

from tests.fixtures.service import run_sql, state_of

pytestmark = pytest.mark.pg

SCHEMA = """
CREATE TABLE events (
    id int NOT NULL,
    region text NOT NULL,
    owner_id int NOT NULL,
    body text,
    PRIMARY KEY (id, region)
) PARTITION BY LIST (region);
CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu');
CREATE TABLE events_us PARTITION OF events FOR VALUES IN ('us');
INSERT INTO events VALUES (1, 'eu', 1, 'a'), (2, 'us', 1, 'b'), (3, 'us', 2, 'c');
"""

EVENTS = """
  events:
    table: events
    read: "owner_id = :sub"
    write:
      ops: [update]
"""


def db_state(dsn: str) -> dict:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT id, region, owner_id, body FROM events WHERE owner_id = 1"
        ).fetchall()
    return {
        ("events", (("id", r[0]), ("region", r[1]))): {
            "id": r[0],
            "region": r[1],
            "owner_id": r[2],
            "body": r[3],
        }
        for r in rows
    }


async def test_a_partitioned_table_syncs_across_partitions(pg_dsn, pg_url, sidecar_factory):
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, EVENTS)
    state = state_of(await sc.sync(1))
    assert state == db_state(pg_dsn)
    run_sql(
        pg_dsn,
        "INSERT INTO events VALUES (4, 'eu', 1, 'd')",
        "UPDATE events SET body = 'b2' WHERE id = 2",
        "UPDATE events SET region = 'eu' WHERE id = 2",  # moves to another partition
        "DELETE FROM events WHERE id = 1",
    )
    await sc.caught_up(pg_dsn)
    state = state_of(await sc.sync(1), state)
    assert state == db_state(pg_dsn)
    changes, _ = await sc.pull_all(1)
    row4 = next(c for c in changes if c["key"] == {"id": 4, "region": "eu"})
    status, body = await sc.push(
        [
            {
                "id": "p1",
                "collection": "events",
                "op": "update",
                "key": {"id": 4, "region": "eu"},
                "data": {"body": "pushed"},
                "base_rev": row4["rev"],
            }
        ]
    )
    assert status == 200 and body["results"][0]["status"] == "applied", body
    with psycopg.connect(pg_dsn) as conn:
        pubs = conn.execute("SELECT pubviaroot FROM pg_publication").fetchall()
        assert pubs == [(True,)]
        assert conn.execute("SELECT body FROM events_eu WHERE id = 4").fetchone() == ("pushed",)
