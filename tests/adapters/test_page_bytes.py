"""Each adapter's pull is bounded by `limits.max_page_bytes` (over HTTP, real PostgreSQL):
Electric shape responses, RxDB pull batches, WatermelonDB pull answers. Paging through
each yields exactly the rows PostgreSQL has; a row larger than the bound still comes."""

from __future__ import annotations

import orjson
import psycopg
import pytest

from tests.fixtures.service import Sidecar, auth, run_sql

pytestmark = pytest.mark.pg

BOUND = 512 * 1024
SLACK = 8 * 1024  # an adapter's own framing around the core's changes
KIB = 1024
SIZES = [120, 300, 80, 250, 200, 700, 150, 90, 310, 60, 220, 180]

SCHEMA = """
CREATE TABLE blobs (id text PRIMARY KEY, owner_id text NOT NULL, body text NOT NULL);
ALTER TABLE blobs ALTER COLUMN body SET STORAGE EXTERNAL;
"""
COLLECTIONS = """
  blobs:
    table: blobs
    read: "owner_id = :sub"
    write: {ops: [insert, update, delete]}
"""


def _oracle(dsn: str, owner: str = "1") -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT id, body FROM blobs WHERE owner_id = %s", (owner,))
        return dict(rows.fetchall())


@pytest.fixture
async def sc(pg_dsn, pg_url, sidecar_factory) -> Sidecar:
    run_sql(pg_dsn, SCHEMA)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for n, size in enumerate(SIZES):
            conn.execute(
                "INSERT INTO blobs VALUES (%s, '1', repeat(chr(97 + %s), %s))",
                (f"b{n:02}", n, size * KIB),
            )
        conn.execute("INSERT INTO blobs VALUES ('other', '2', 'not yours')")
    return await sidecar_factory(pg_url, COLLECTIONS, "limits: {max_page_bytes: 512KB}")


def _bounded(size: int, count: int) -> None:
    assert size <= BOUND + SLACK or count == 1, (size, count)


async def test_electric_shape_responses_are_bounded(sc: Sidecar, pg_dsn: str) -> None:
    params = {"table": "blobs", "offset": "-1"}
    rows: dict[str, str] = {}
    responses = 0
    while True:
        resp = await sc.get("/electric/v1/shape", params=params)
        body = await resp.read()
        assert resp.status == 200, body[:300]
        messages = orjson.loads(body)
        changes = [m for m in messages if "key" in m]
        _bounded(len(body), len(changes))
        responses += 1
        for m in changes:
            rows[m["value"]["id"]] = m["value"]["body"]
        if resp.headers.get("electric-up-to-date"):
            break
        params = {
            "table": "blobs",
            "offset": resp.headers["electric-offset"],
            "handle": resp.headers["electric-handle"],
        }
    assert responses >= 6
    assert rows == _oracle(pg_dsn)


async def test_rxdb_pull_batches_are_bounded(sc: Sidecar, pg_dsn: str) -> None:
    params = {"limit": "1000"}
    rows: dict[str, str] = {}
    batches = []
    while True:
        resp = await sc.get("/rxdb/blobs/pull", params=params)
        body = await resp.read()
        assert resp.status == 200, body[:300]
        page = orjson.loads(body)
        if not page["documents"]:
            break
        _bounded(len(body), len(page["documents"]))
        batches.append(len(page["documents"]))
        rows.update({d["id"]: d["body"] for d in page["documents"]})
        checkpoint = page["checkpoint"]
        params = {"id": checkpoint["id"], "lwt": str(checkpoint["lwt"]), "limit": "1000"}
    assert len(batches) >= 6 and 1 in batches
    assert rows == _oracle(pg_dsn)


async def test_watermelondb_pull_answers_are_bounded_and_continue(sc: Sidecar, pg_dsn: str) -> None:
    """One bounded batch per answer, `has_more` until the view is consistent: pulling
    again from each answer's `timestamp` yields every row once, and later deletes."""
    rows: dict[str, str] = {}
    answers = 0
    last = ""
    while True:
        resp = await sc.get("/watermelondb/sync", params={"last_pulled_at": last})
        body = await resp.read()
        assert resp.status == 200, body[:300]
        answer = orjson.loads(body)
        updated = answer["changes"]["blobs"]["updated"]
        _bounded(len(body), len(updated))
        answers += 1
        for record in updated:
            assert record["id"] not in rows
            rows[record["id"]] = record["body"]
        last = str(answer["timestamp"])
        if not answer["has_more"]:
            break
    assert answers >= 6
    assert rows == _oracle(pg_dsn)

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM blobs WHERE id = 'b03'")
    await sc.caught_up(pg_dsn)
    resp = await sc.get("/watermelondb/sync", params={"last_pulled_at": last})
    answer = await resp.json()
    assert answer["changes"]["blobs"]["deleted"] == ["b03"] and not answer["has_more"]

    # a push reads only the pushed records' changes, and still detects the row's rev
    last = str(answer["timestamp"])
    push = {"blobs": {"updated": [{"id": "b05", "owner_id": "1", "body": "short now"}]}}
    resp = await sc.client.post(  # type: ignore[union-attr]
        "/watermelondb/sync",
        params={"last_pulled_at": last},
        json=push,
        headers=auth(1),
    )
    assert resp.status == 200, await resp.text()
    assert _oracle(pg_dsn)["b05"] == "short now"
