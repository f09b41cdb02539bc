"""Push under attack (issue 12): mutation ids scoped to the subject, every write of an
existing row through the same checks, immutable and `set:` columns refused rather than
dropped, no answer telling whether a key exists outside the caller's view, and no 500
for odd claims, nested or huge JSON values, or a database that is down."""

from __future__ import annotations

import asyncio

import orjson
import psycopg
import pytest

from tests.fixtures.service import auth

pytestmark = pytest.mark.pg

SCHEMA = """
CREATE TABLE notes (
    id int PRIMARY KEY,
    org text NOT NULL,
    owner text NOT NULL,
    title text,
    doc jsonb
);
INSERT INTO notes VALUES (1, 'acme', 'u1', 'acme note', NULL),
                         (2, 'globex', 'u2', 'globex note', NULL);
"""


def collections(conflict: str = "reject") -> str:
    return f"""
  notes:
    table: notes
    read: "org = :org"
    write:
      ops: [insert, update, delete]
      set: {{owner: ":sub"}}
      immutable: [org]
    conflict: {conflict}
"""


def sql(dsn: str, statement: str) -> list:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(statement)
        return cur.fetchall() if cur.description else []


async def push(sc, mutations: list[dict], sub: str = "u1", org: object = "acme") -> tuple:
    return await sc.push(mutations, sub=sub, org=org)


async def rev_of(sc, key: int, sub: str = "u1", org: str = "acme") -> str:
    resp = await sc.client.get("/v1/pull", headers=auth(sub, org=org))
    body = await resp.json()
    (change,) = [c for c in body["changes"] if c["key"] == {"id": key}]
    return change["rev"]


@pytest.fixture
async def make(pg_dsn, pg_url, sidecar_factory):
    sql(pg_dsn, SCHEMA)

    async def start(conflict: str = "reject"):
        return await sidecar_factory(pg_url, collections(conflict))

    return start


# -- 1. mutation ids belong to their subject ----------------------------------------------


async def test_the_same_mutation_id_from_two_subjects_is_two_mutations(make, pg_dsn):
    sc = await make()
    theirs = {"id": "predictable-id-42", "collection": "notes", "op": "insert"}
    _, body = await push(
        sc, [{**theirs, "key": {"id": 20}, "data": {"title": "u2's", "org": "acme"}}], "u2"
    )
    assert body["results"][0]["status"] == "applied"
    their_rev = body["results"][0]["rev"]
    mine = {**theirs, "key": {"id": 10}, "data": {"title": "mine", "org": "acme"}}
    _, body = await push(sc, [mine])
    (r,) = body["results"]
    assert r["status"] == "applied" and r["rev"] != their_rev  # not u2's duplicate
    assert sql(pg_dsn, "SELECT id, owner FROM notes WHERE id IN (10, 20) ORDER BY id") == [
        (10, "u1"),
        (20, "u2"),
    ]
    _, again = await push(sc, [mine])  # my own replay: a duplicate with my rev
    assert again["results"][0] == {
        "id": "predictable-id-42",
        "status": "duplicate",
        "rev": r["rev"],
    }
    await sc.restart()  # the recent cache is gone: the store (fed by capture) decides
    _, after = await push(sc, [mine])
    assert after["results"][0] == {
        "id": "predictable-id-42",
        "status": "duplicate",
        "rev": r["rev"],
    }
    # a third subject replaying the id learns nothing of the others' mutations
    _, third = await push(
        sc, [{**theirs, "key": {"id": 30}, "data": {"title": "u3", "org": "acme"}}], "u3"
    )
    assert third["results"][0]["status"] == "applied"
    assert third["results"][0]["rev"] not in (r["rev"], their_rev)


# -- 2. an insert that client_wins turns into an update has the update's checks -------------


async def test_insert_over_an_existing_key_cannot_rewrite_immutable_or_the_key(make, pg_dsn):
    sc = await make("client_wins")
    attempts = [
        ({"id": 1}, {"org": "globex", "title": "moved"}, "org"),  # into another tenant
        ({"id": 1}, {"id": 99, "title": "renamed"}, "id"),  # the key renamed
        ({"id": 1}, {"owner": "u9", "title": "stolen"}, "owner"),  # a set: column
    ]
    for n, (key, data, column) in enumerate(attempts):
        m = {"id": f"i{n}", "collection": "notes", "op": "insert", "key": key, "data": data}
        status, body = await push(sc, [m])
        assert status == 200, body
        (r,) = body["results"]
        assert r["status"] == "rejected", r
        assert r["error"]["code"] == "validation_failed"
        assert r["error"]["pointer"] == f"/mutations/0/data/{column}"
    assert sql(pg_dsn, "SELECT id, org, owner, title FROM notes ORDER BY id") == [
        (1, "acme", "u1", "acme note"),
        (2, "globex", "u2", "globex note"),
    ]
    ok = {"id": "i9", "collection": "notes", "op": "insert", "key": {"id": 1}}
    _, body = await push(sc, [{**ok, "data": {"org": "acme", "title": "overwritten"}}])
    assert body["results"][0]["status"] == "applied"  # the same values: the client wins


# -- 3. immutable (and set:) columns refused, never silently dropped ------------------------


async def test_an_update_changing_an_immutable_or_set_column_is_rejected(make, pg_dsn):
    sc = await make()
    rev = await rev_of(sc, 1)
    base = {"collection": "notes", "op": "update", "key": {"id": 1}, "base_rev": rev}
    for n, (data, column) in enumerate([({"org": "globex"}, "org"), ({"owner": "u2"}, "owner")]):
        _, body = await push(sc, [{**base, "id": f"u{n}", "data": {**data, "title": "x"}}])
        (r,) = body["results"]
        assert r["status"] == "rejected", r
        assert r["error"]["code"] == "validation_failed" and r["error"]["column"] == column
        assert r["error"]["pointer"] == f"/mutations/0/data/{column}"
    assert sql(pg_dsn, "SELECT org, owner, title FROM notes WHERE id = 1") == [
        ("acme", "u1", "acme note")
    ]
    same = {"org": "acme", "owner": "u1", "title": "same values are fine"}
    _, body = await push(sc, [{**base, "id": "u9", "data": same}])
    assert body["results"][0]["status"] == "applied"


# -- 403 vs 404: nothing tells whether a key exists outside the caller's view ---------------


async def test_a_row_outside_the_callers_view_is_answered_like_a_missing_one(make, pg_dsn):
    sc = await make()

    async def answer(op: str, key: int) -> dict:
        m = {"id": f"{op}-{key}", "collection": "notes", "op": op, "key": {"id": key}}
        m |= {"base_rev": "x", "data": {"title": "t"}} if op != "insert" else {"data": {}}
        _, body = await push(sc, [m])
        (r,) = body["results"]
        r.pop("id")
        if "error" in r:
            r["error"].pop("detail")
        return r

    for op in ("update", "delete"):  # row 2 is globex's; row 77 does not exist
        assert await answer(op, 2) == await answer(op, 77)
    r = await answer("insert", 2)  # existence is inherent to a unique key: nothing more
    assert r["status"] == "rejected" and r["error"]["code"] == "conflict"
    assert "row" not in r and "rev" not in r
    assert sql(pg_dsn, "SELECT id, title FROM notes ORDER BY id") == [
        (1, "acme note"),
        (2, "globex note"),
    ]


# -- 14. no 500: odd claims, nested JSON, the database down --------------------------------


@pytest.mark.parametrize("org", [{"a": 1}, True, [{"a": 1}]])
async def test_an_object_or_boolean_claim_used_by_a_rule_is_refused_not_a_500(make, org):
    sc = await make()
    rev = await rev_of(sc, 1)
    update = {"id": "c1", "collection": "notes", "op": "update", "key": {"id": 1}}
    update |= {"base_rev": rev, "data": {"title": "t"}}
    insert = {"id": "c2", "collection": "notes", "op": "insert", "key": {"id": 5}}
    insert["data"] = {"org": "acme"}
    for m in (update, insert):
        status, body = await push(sc, [m], org=org)
        if status == 200:
            (r,) = body["results"]
            assert r["status"] == "rejected" and r["error"]["code"] == "forbidden", r
        else:
            assert status == 403 and body["code"] == "forbidden", body


async def test_nested_json_values(make, pg_dsn):
    sc = await make()
    doc = {"a": {"b": [1, {"c": [True, None, "x"]}]}, "n": [[1, 2], [3]]}
    m = {"id": "j1", "collection": "notes", "op": "insert", "key": {"id": 7}}
    _, body = await push(sc, [{**m, "data": {"doc": doc, "org": "acme"}}])
    (r,) = body["results"]
    assert r["status"] == "applied" and r["row"]["doc"] == doc
    assert sql(pg_dsn, "SELECT doc FROM notes WHERE id = 7") == [(doc,)]
    _, body = await push(sc, [{**m, "id": "j2", "key": {"id": 8}, "data": {"title": doc}}])
    (r,) = body["results"]  # a nested value for a text column: refused, pointing at it
    assert r["status"] == "rejected" and r["error"]["code"] == "validation_failed"
    assert r["error"]["pointer"] == "/mutations/0/data/title"


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize(
    "value",
    [b'{"a": 123456789012345678901234567890}', b"18446744073709551616", _nested(300)],
    ids=["beyond-64-bits", "2**64", "300-deep"],
)
async def test_huge_numbers_and_deep_nesting_in_jsonb_are_kept_or_refused(make, pg_dsn, value):
    sc = await make()
    body = (
        b'{"mutations": [{"id": "big", "collection": "notes", "op": "insert", '
        b'"key": {"id": 9}, "data": {"org": "acme", "doc": ' + value + b"}}]}"
    )
    resp = await sc.client.post("/v1/push", data=body, headers=auth("u1", org="acme"))
    answer = await resp.json(content_type=None)
    assert resp.status == 200, answer
    (r,) = answer["results"]
    stored = sql(pg_dsn, "SELECT doc::text FROM notes WHERE id = 9")
    if r["status"] == "applied":  # kept exactly, as PostgreSQL stores it
        expected = sql(pg_dsn, f"SELECT '{value.decode()}'::jsonb::text")
        assert stored == expected
    else:
        assert r["status"] == "rejected" and r["error"]["code"] == "validation_failed"
        assert stored == []


async def test_a_body_nested_past_the_parsers_limit_is_a_400(make):
    sc = await make()
    resp = await sc.client.post("/v1/push", data=_nested(5000), headers=auth("u1", org="acme"))
    body = await resp.json(content_type=None)
    assert resp.status == 400 and body["code"] == "invalid_request", body


async def test_push_with_the_database_down_is_a_503_with_retry_after(make, pg_server, pg_dbname):
    sc = await make()
    admin = pg_server.dsn("postgres")
    sql(admin, f'ALTER DATABASE "{pg_dbname}" ALLOW_CONNECTIONS false')
    try:  # the push pool's connections die; no new one can be made
        sql(
            admin,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'sidecar-push'",
        )
        m = {"id": "down", "collection": "notes", "op": "insert", "key": {"id": 11}}
        for _ in range(2):  # a dead pooled connection, then no connection at all
            resp = await asyncio.wait_for(
                sc.client.post(
                    "/v1/push",
                    data=orjson.dumps({"mutations": [m]}),
                    headers=auth("u1", org="acme"),
                ),
                timeout=60,  # bounded: the pool wait, not forever
            )
            body = await resp.json(content_type=None)
            assert resp.status == 503 and body["code"] == "unavailable", body
            assert int(resp.headers["Retry-After"]) >= 1
    finally:
        sql(admin, f'ALTER DATABASE "{pg_dbname}" ALLOW_CONNECTIONS true')
