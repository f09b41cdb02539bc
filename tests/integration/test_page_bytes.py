"""Pages bounded in bytes (`limits.max_page_bytes`), end to end over real PostgreSQL.

Rows of a few hundred KiB: a JSON page, an SSE event and an NDJSON page stop adding
changes before they would exceed the bound (a single change larger than it still comes,
alone), and paging through yields exactly the rows PostgreSQL has, none lost or twice.
"""

from __future__ import annotations

import orjson
import psycopg
import pytest

from tests.fixtures.service import Sidecar, auth, run_sql, state_of

pytestmark = pytest.mark.pg

BOUND = 512 * 1024
KIB = 1024

SCHEMA = """
CREATE TABLE blobs (id integer PRIMARY KEY, owner_id integer NOT NULL, body text NOT NULL);
CREATE TABLE notes (id integer PRIMARY KEY, owner_id integer NOT NULL, body text NOT NULL);
ALTER TABLE blobs ALTER COLUMN body SET STORAGE EXTERNAL;
ALTER TABLE notes ALTER COLUMN body SET STORAGE EXTERNAL;
"""

COLLECTIONS = """
  blobs:
    table: blobs
    read: "owner_id = :sub"
  notes:
    table: notes
    read: "owner_id = :sub"
"""
LIMITS = "limits: {max_page_bytes: 512KB}"

# KiB per row: together far more than one page, one row larger than the bound
SIZES = [120, 300, 80, 250, 200, 700, 150, 90, 310, 60, 220, 180]


def _insert(dsn: str, table: str, first: int, sizes: list[int], owner: int = 1) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for n, size in enumerate(sizes, first):
            conn.execute(
                f"INSERT INTO {table} VALUES (%s, %s, repeat(chr(97 + %s %% 26), %s))",
                (n, owner, n, size * KIB),
            )


def _oracle(dsn: str, owner: int = 1) -> dict:
    """What PostgreSQL has for the owner, as a client's state."""
    out = {}
    with psycopg.connect(dsn) as conn:
        for table in ("blobs", "notes"):
            rows = conn.execute(
                f"SELECT id, owner_id, body FROM {table} WHERE owner_id = %s", (owner,)
            )
            for id_, owner_id, body in rows:
                out[table, (("id", id_),)] = {"id": id_, "owner_id": owner_id, "body": body}
    return out


async def _setup(pg_dsn: str, pg_url: str, sidecar_factory) -> Sidecar:
    run_sql(pg_dsn, SCHEMA)
    _insert(pg_dsn, "blobs", 1, SIZES)
    _insert(pg_dsn, "notes", 1, SIZES[:5])
    _insert(pg_dsn, "blobs", 100, [50, 50], owner=2)  # another user's rows
    return await sidecar_factory(pg_url, COLLECTIONS, LIMITS)


async def _raw_pull(sc: Sidecar, cursor: str | None, sub: int = 1) -> tuple[int, dict]:
    params = {"cursor": cursor} if cursor else {}
    resp = await sc.get("/v1/pull", sub=sub, params=params)
    body = await resp.read()
    assert resp.status == 200, body[:500]
    return len(body), orjson.loads(body)


async def _page_through(sc: Sidecar, cursor: str | None) -> tuple[list, str, list]:
    changes: list = []
    pages: list = []
    while True:
        size, page = await _raw_pull(sc, cursor)
        pages.append((size, len(page["changes"])))
        assert size <= BOUND or len(page["changes"]) == 1, (size, len(page["changes"]))
        changes.extend(page["changes"])
        cursor = page["cursor"]
        if not page["has_more"]:
            return changes, cursor, pages


async def test_json_pages_are_bounded_and_page_to_exactly_what_postgres_has(
    pg_dsn, pg_url, sidecar_factory
):
    sc = await _setup(pg_dsn, pg_url, sidecar_factory)
    changes, cursor, pages = await _page_through(sc, None)
    versions = [int(c["version"]) for c in changes]
    assert versions == sorted(set(versions))  # in order, none twice
    assert len(changes) == len(SIZES) + 5
    assert state_of(changes) == _oracle(pg_dsn)
    assert len(pages) >= 6 and any(n > 1 for _, n in pages)
    # the 700 KiB row, larger than the bound, came alone
    assert any(n == 1 and size > BOUND for size, n in pages)

    # deltas: updates, a delete, inserts, a row leaving the caller's scope
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE blobs SET body = repeat('u', 200 * 1024) WHERE id IN (2, 4, 9)")
        conn.execute("DELETE FROM blobs WHERE id = 6")
        conn.execute("UPDATE notes SET owner_id = 2 WHERE id = 3")
    _insert(pg_dsn, "notes", 10, [300, 300, 300])
    await sc.caught_up(pg_dsn)
    delta, _, pages = await _page_through(sc, cursor)
    assert len(pages) >= 3
    assert state_of(delta, state_of(changes)) == _oracle(pg_dsn)


async def test_sse_events_and_ndjson_pages_are_bounded(pg_dsn, pg_url, sidecar_factory):
    sc = await _setup(pg_dsn, pg_url, sidecar_factory)
    assert sc.client is not None

    # SSE: one event per page; read events until the stream has caught up
    resp = await sc.client.get("/v1/stream", headers=auth(1), params={"heartbeat": "30"})
    assert resp.status == 200
    buffer, events, changes = b"", [], []
    while True:
        chunk = await resp.content.readany()
        assert chunk, "the stream ended"
        buffer += chunk
        *done, buffer = buffer.split(b"\n\n")
        for event in done:
            if b"event: changes" in event:
                events.append(event)
                page = orjson.loads(event.split(b"data: ", 1)[1])
                changes.extend(page["changes"])
        if events and not page["has_more"]:
            break
    resp.close()
    for event in events:
        count = len(orjson.loads(event.split(b"data: ", 1)[1])["changes"])
        assert len(event) + 2 <= BOUND or count == 1, (len(event), count)
    assert len(events) >= 6
    assert state_of(changes) == _oracle(pg_dsn)

    # NDJSON: the changes between two cursor lines (one page held at a time) are bounded
    resp = await sc.client.get("/v1/pull", headers={**auth(1), "Accept": "application/x-ndjson"})
    body = await resp.read()
    lines = [orjson.loads(x) for x in body.splitlines()]
    page_bytes, page_count, ndjson = 0, 0, []
    for raw, item in zip(body.splitlines(), lines, strict=True):
        if "cursor" in item:
            assert page_bytes <= BOUND or page_count == 1, (page_bytes, page_count)
            page_bytes = page_count = 0
        else:
            page_bytes += len(raw) + 1
            page_count += 1
            ndjson.append(item)
    assert sum(1 for x in lines if "cursor" in x) >= 6
    assert state_of(ndjson) == _oracle(pg_dsn)
