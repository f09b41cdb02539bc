"""Any value PostgreSQL stores syncs, by the initial copy and by the stream; capture never
stops on a value.

json/jsonb come out as PostgreSQL's own text of the value (docs/protocol.md, "Types"):
numbers beyond 64 bits or 17 digits exactly, nesting as deep as PostgreSQL stores it.
"""

from __future__ import annotations

import json
import random
import re
import string

import psycopg
import pytest

from tests.fixtures.service import Sidecar, run_sql

pytestmark = pytest.mark.pg

SCHEMA = """
CREATE TABLE docs (
    id integer PRIMARY KEY,
    owner integer NOT NULL,
    data jsonb,
    raw json,
    n numeric,
    f float8,
    fs float8[],
    js jsonb[],
    note text
);
ALTER TABLE docs ALTER COLUMN data SET STORAGE EXTERNAL;
"""

DOCS = """
  docs:
    table: docs
    read: "owner = :sub"
    write: {ops: [update]}
  flagged:
    table: docs
    columns: [id, data]
    read: "owner = :sub AND data IS NOT NULL"
"""


def deep(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


# (data jsonb, raw json, n numeric, f float8) per row: each a value that stopped capture
# or lost precision.
POISON = [
    ('{"a": 123456789012345678901234567890}', None, None, None),
    ("18446744073709551616", '{"a": -99999999999999999999999, "a": 1}', None, None),
    ('{"x": 0.1000000000000000055511151231257827}', "[1e400,  2]", "1e100000", None),
    (deep(300), deep(300), "NaN", "NaN"),
    (deep(5000), None, "Infinity", "Infinity"),
    ('{"big": 1e400}', None, "-Infinity", "-Infinity"),
]


def insert_poison(dsn: str, first_id: int) -> list[int]:
    ids = []
    with psycopg.connect(dsn) as conn:
        for i, (data, raw, n, f) in enumerate(POISON):
            ids.append(first_id + i)
            conn.execute(
                "INSERT INTO docs (id, owner, data, raw, n, f, fs, js) VALUES "
                "(%s, 1, %s, %s, %s, %s, ARRAY[%s, 1.5]::float8[], ARRAY[%s::jsonb])",
                (first_id + i, data, raw, n, f, f or "0", data),
            )
    return ids


def pg_texts(dsn: str) -> dict[int, tuple]:
    """PostgreSQL's text of each value, per row id."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT id, data::text, raw::text, n::text, f::text, note FROM docs"
        ).fetchall()
    return {r[0]: r[1:] for r in rows}


async def pulled_body(sc: Sidecar) -> str:
    """The text of a full pull (every page) by subject 1, JSON pages as served."""
    bodies, cursor = [], None
    while True:
        params = {"cursor": cursor} if cursor else {}
        resp = await sc.get("/v1/pull", sub=1, params=params)
        text = await resp.text()
        assert resp.status == 200, text[:500]
        bodies.append(text)
        # the page's own members end it (its rows are too deep for json.loads)
        tail = re.findall(r'"cursor":"([^"]+)","has_more":(true|false)', text)[-1]
        cursor = tail[0]
        if tail[1] == "false":
            return "\n".join(bodies)


def assert_served_exactly(body: str, dsn: str, ids: list[int]) -> None:
    texts = pg_texts(dsn)
    for i in ids:
        data, raw, n, f, _ = texts[i]
        # jsonb and json: PostgreSQL's text, verbatim (json keeps its spacing and keys)
        assert f'"data":{data}' in body, f"row {i}: data"
        if raw is not None:
            assert f'"raw":{raw}' in body, f"row {i}: raw"
        if n is not None:  # numeric: a string of PostgreSQL's digits, NaN and infinities
            assert f'"n":"{n}"' in body, f"row {i}: n"
        if f is not None and f in ("NaN", "Infinity", "-Infinity"):
            assert f'"f":"{f}"' in body, f"row {i}: f"


async def test_poison_values_sync_by_copy_stream_and_restart(pg_dsn, pg_url, sidecar_factory):
    run_sql(pg_dsn, SCHEMA)
    copied = insert_poison(pg_dsn, 1)  # copied by the initial copy
    sc = await sidecar_factory(pg_url, DOCS)
    streamed = insert_poison(pg_dsn, 101)  # streamed
    run_sql(pg_dsn, "INSERT INTO docs (id, owner, note) VALUES (200, 1, 'after the poison')")
    await sc.caught_up(pg_dsn)
    body = await pulled_body(sc)
    assert_served_exactly(body, pg_dsn, copied + streamed)
    assert "after the poison" in body  # capture went on
    # an update leaving the TOASTed jsonb unchanged keeps it exactly (from the store)
    run_sql(pg_dsn, "UPDATE docs SET note = 'touched' WHERE id IN (1, 103, 104, 105)")
    # a change after a restart is captured too (nothing in the store stops it)
    await sc.restart()
    run_sql(pg_dsn, "UPDATE docs SET owner = 1, note = 'after restart' WHERE id = 200")
    await sc.caught_up(pg_dsn)
    body = await pulled_body(sc)
    assert_served_exactly(body, pg_dsn, copied + streamed)
    assert "after restart" in body


async def test_unchanged_toast_json_keeps_exact_text_and_rev(pg_dsn, pg_url, sidecar_factory):
    """A TOASTed jsonb left unchanged by an UPDATE is filled in from the store byte for
    byte: same text, and the rev push computes from the database."""
    run_sql(pg_dsn, SCHEMA)
    rng = random.Random(7)
    big = {
        "n": 123456789012345678901234567890,
        "s": "".join(rng.choices(string.ascii_letters, k=5000)),
        "deep": json.loads(deep(100)),
    }
    run_sql(pg_dsn, f"INSERT INTO docs (id, owner, data) VALUES (1, 1, '{json.dumps(big)}')")
    sc = await sidecar_factory(pg_url, DOCS)
    run_sql(pg_dsn, "UPDATE docs SET note = 'x' WHERE id = 1")
    await sc.caught_up(pg_dsn)
    body = await pulled_body(sc)
    assert_served_exactly(body, pg_dsn, [1])
    changes = [c for c in json.loads(body)["changes"] if c["collection"] == "docs"]
    (change,) = changes
    assert change["row"]["data"]["n"] == big["n"] and change["row"]["note"] == "x"
    # push with that rev as base_rev: no conflict (push reads the row the same way)
    status, result = await sc.push(
        [
            {
                "id": "m1",
                "collection": "docs",
                "op": "update",
                "key": {"id": 1},
                "base_rev": change["rev"],
                "data": {"note": "pushed"},
            }
        ]
    )
    assert status == 200, result
    assert result["results"][0]["status"] == "applied", result


async def test_rules_over_jsonb_columns_see_parsed_values(pg_dsn, pg_url, sidecar_factory):
    run_sql(pg_dsn, SCHEMA)
    run_sql(
        pg_dsn,
        "INSERT INTO docs (id, owner, data) VALUES (1, 1, '{\"a\": 1}'), (2, 1, NULL), "
        f"(3, 1, '{deep(3000)}'), (4, 1, '{{\"a\": 123456789012345678901234567890}}')",
    )
    sc = await sidecar_factory(pg_url, DOCS)
    body = await pulled_body(sc)
    found = re.findall(r'"collection":"flagged","op":"upsert","key":\{"id":(\d+)\}', body)
    assert {int(i) for i in found} == {1, 3, 4}


async def test_adapters_serve_poison_values(pg_dsn, pg_url, sidecar_factory):
    """Electric (values as text), RxDB and WatermelonDB (JSON documents) answer with the
    exact number and the deep value, not a 500."""
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, DOCS)
    insert_poison(pg_dsn, 1)
    await sc.caught_up(pg_dsn)
    big = "123456789012345678901234567890"
    for path, params in (
        ("/electric/v1/shape", {"table": "docs", "offset": "-1"}),
        ("/rxdb/docs/pull", {}),
        ("/watermelondb/sync", {"last_pulled_at": "null"}),
    ):
        resp = await sc.get(path, sub=1, params=params)
        text = await resp.text()
        assert resp.status == 200, (path, text[:300])
        assert big in text, path
        assert "[" * 3000 in text, path
