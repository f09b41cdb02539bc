"""The write path end to end: POST /v1/push into the application's own tables."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

pytestmark = pytest.mark.pg

SCHEMA = """
CREATE TABLE users (id int PRIMARY KEY);
INSERT INTO users VALUES (1), (2), (3);
CREATE TABLE todo_items (
    id serial PRIMARY KEY,
    title text NOT NULL,
    done boolean NOT NULL DEFAULT false,
    owner_id integer NOT NULL REFERENCES users (id),
    notes text,
    code text UNIQUE,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO todo_items (title, owner_id, notes) VALUES ('mine', 1, 'n1'), ('theirs', 2, NULL);
CREATE TABLE boards (id int PRIMARY KEY, name text, owner_id int, updated_at timestamptz);
INSERT INTO boards VALUES (1, 'b1', 1, '2024-01-01T00:00:00Z'),
                          (2, 'b2', 2, '2024-01-01T00:00:00Z');
"""


def todos(conflict: str = "reject") -> str:
    return f"""
  todos:
    table: todo_items
    columns: [id, title, done, owner_id, notes, code]
    read: "owner_id = :sub"
    write:
      ops: [insert, update, delete]
      set: {{owner_id: ":sub"}}
      immutable: [id]
      check: "length(title) BETWEEN 1 AND 200 AND (notes IS NULL OR length(notes) < 20)"
    conflict: {conflict}
  boards:
    table: boards
    read: "owner_id = :sub"
    write:
      ops: [update]
    conflict: {{latest_wins: updated_at}}
"""


def sql(dsn: str, *statements: str) -> list:
    out = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for s in statements:
            cur = conn.execute(s)
            out.append(cur.fetchall() if cur.description else None)
    return out


async def current(sc, sub=1, collection="todos") -> dict:
    """title → change (rev and row) as a client sees it after a full sync."""
    changes, _ = await sc.pull_all(sub)
    return {
        c["row"].get("title", c["row"].get("name")): c
        for c in changes
        if c["op"] == "upsert" and c["collection"] == collection
    }


@pytest.fixture
async def sc(pg_dsn, pg_url, sidecar_factory):
    sql(pg_dsn, SCHEMA)
    return await sidecar_factory(pg_url, todos())


async def test_insert_sets_owner_and_rev_matches_pull(sc, pg_dsn):
    status, body = await sc.push(
        [
            {
                "id": "m1",
                "collection": "todos",
                "op": "insert",
                "data": {"title": "new", "owner_id": 2},
            }
        ]
    )
    assert status == 200, body
    (r,) = body["results"]
    assert r["status"] == "applied" and r["row"]["owner_id"] == 1  # set from :sub, not the client
    assert r["row"]["title"] == "new" and isinstance(r["row"]["id"], int)
    page = await sc.pull(1, after_lsn=body["lsn"])  # read-your-writes
    pulled = {c["row"]["title"]: c for c in page["changes"] if c["collection"] == "todos"}
    assert pulled["new"]["rev"] == r["rev"]
    assert sql(pg_dsn, "SELECT owner_id FROM todo_items WHERE title = 'new'")[0] == [(1,)]


async def test_update_with_base_rev_and_stale_rev(sc, pg_dsn):
    row = (await current(sc))["mine"]
    ok = {
        "id": "u1",
        "collection": "todos",
        "op": "update",
        "key": row["key"],
        "data": {"done": True},
        "base_rev": row["rev"],
    }
    _, body = await sc.push([ok])
    assert body["results"][0]["status"] == "applied"
    new_rev = body["results"][0]["rev"]
    await sc.pull(1, after_lsn=body["lsn"])
    assert (await current(sc))["mine"]["rev"] == new_rev
    # a change made directly in the database between pull and push
    sql(pg_dsn, "UPDATE todo_items SET notes = 'direct' WHERE title = 'mine'")
    stale = {**ok, "id": "u2", "data": {"done": False}, "base_rev": new_rev}
    _, body = await sc.push([stale])
    (r,) = body["results"]
    assert r["status"] == "conflict" and r["row"]["notes"] == "direct" and r["row"]["done"] is True
    assert r["error"]["code"] == "conflict" and body["lsn"] is None
    assert sql(pg_dsn, "SELECT done FROM todo_items WHERE title = 'mine'")[0] == [(True,)]


async def test_replay_is_a_duplicate_in_session_and_after_restart(sc, pg_dsn):
    m = {"id": "dup-1", "collection": "todos", "op": "insert", "data": {"title": "once"}}
    _, first = await sc.push([m])
    _, again = await sc.push([m])
    assert first["results"][0]["status"] == "applied"
    assert again["results"][0] == {
        "id": "dup-1",
        "status": "duplicate",
        "rev": first["results"][0]["rev"],
    }
    await sc.restart()  # the recent cache is gone: the store (fed by capture) decides
    _, after = await sc.push([m])
    assert after["results"][0]["status"] == "duplicate"
    assert after["results"][0]["rev"] == first["results"][0]["rev"]
    assert sql(pg_dsn, "SELECT count(*) FROM todo_items WHERE title = 'once'")[0] == [(1,)]


async def test_replayed_update_is_a_duplicate_although_its_base_rev_is_now_stale(sc, pg_dsn):
    """The duplicate check runs while the batch is planned: a replay's plan (a conflict
    now, its base_rev being the row's old one) must neither be reported nor abort the
    atomic batch it arrives in."""
    add = {"id": "add-1", "collection": "todos", "op": "insert", "data": {"title": "mine too"}}
    _, added = await sc.push([add])
    await sc.pull(1, after_lsn=added["lsn"])
    rows = await current(sc)
    update = {
        "id": "again-1",
        "collection": "todos",
        "op": "update",
        "key": rows["mine"]["key"],
        "data": {"done": True},
        "base_rev": rows["mine"]["rev"],
    }
    _, first = await sc.push([update])
    assert first["results"][0]["status"] == "applied"
    for restart in (False, True):
        if restart:
            await sc.restart()  # the store decides, not the recent cache
        fresh = (await current(sc))["mine too"]
        other = {
            "id": f"other-{restart}",
            "collection": "todos",
            "op": "update",
            "key": fresh["key"],
            "data": {"notes": f"n{restart}"},
            "base_rev": fresh["rev"],
        }
        _, body = await sc.push([update, other], atomic=True)
        assert [r["status"] for r in body["results"]] == ["duplicate", "applied"], body
        assert body["results"][0]["rev"] == first["results"][0]["rev"]
        await sc.pull(1, after_lsn=body["lsn"])  # captured before the next round reads it
    assert sql(pg_dsn, "SELECT notes FROM todo_items WHERE title = 'mine too'")[0] == [("nTrue",)]


async def test_replay_after_a_store_rebuild_is_still_a_duplicate(sc, pg_dsn):
    """A resync (here: the slot was dropped) keeps the mutation ids the store recorded
    from the same database: a retried insert with a server-made key is not applied twice."""
    m = {"id": "keep-1", "collection": "todos", "op": "insert", "data": {"title": "once more"}}
    _, first = await sc.push([m])
    await sc.pull(1, after_lsn=first["lsn"])  # captured: the store has the id
    await sc.stop()
    sql(pg_dsn, "SELECT pg_drop_replication_slot('sidecar_test')")
    await sc.start()
    assert sc.service.capture.status.resyncs == 1  # reconciled with a new slot
    _, again = await sc.push([m])
    assert again["results"][0] == {
        "id": "keep-1",
        "status": "duplicate",
        "rev": first["results"][0]["rev"],
    }
    assert sql(pg_dsn, "SELECT count(*) FROM todo_items WHERE title = 'once more'")[0] == [(1,)]


async def test_committed_but_unanswered_mutation_is_recognised(sc, pg_dsn):
    # what a sidecar killed between COMMIT and its response leaves behind
    sql(
        pg_dsn,
        "BEGIN; INSERT INTO todo_items (title, owner_id) VALUES ('ghost', 1); "
        "SELECT pg_logical_emit_message(true, 'sidecar', "
        '\'{"id":"lost-1","sub":"1","dev":null,'
        '"outcome":{"status":"applied","rev":"abc"}}\'); COMMIT',
    )
    # written here without the pending record a push makes before COMMIT (that path:
    # test_push_exactly_once.py), so the store must hold it first: capture records it
    await sc.caught_up(pg_dsn)
    _, body = await sc.push(
        [{"id": "lost-1", "collection": "todos", "op": "insert", "data": {"title": "ghost"}}]
    )
    assert body["results"][0] == {"id": "lost-1", "status": "duplicate", "rev": "abc"}
    assert sql(pg_dsn, "SELECT count(*) FROM todo_items WHERE title = 'ghost'")[0] == [(1,)]


async def test_atomic_and_non_atomic_batches_with_a_bad_member(sc, pg_dsn):
    good = {"id": "a1", "collection": "todos", "op": "insert", "data": {"title": "good"}}
    bad = {"id": "a2", "collection": "todos", "op": "insert", "data": {"title": ""}}  # check
    _, body = await sc.push([good, bad], atomic=True)
    statuses = [r["status"] for r in body["results"]]
    assert statuses == ["rejected", "rejected"] and body["lsn"] is None
    assert body["results"][1]["error"]["code"] == "validation_failed"
    assert "a2" in body["results"][0]["error"]["detail"]
    assert sql(pg_dsn, "SELECT count(*) FROM todo_items WHERE title = 'good'")[0] == [(0,)]
    good2 = {**good, "id": "n1"}
    bad2 = {**bad, "id": "n2"}
    _, body = await sc.push([bad2, good2])
    assert [r["status"] for r in body["results"]] == ["rejected", "applied"]
    assert sql(pg_dsn, "SELECT count(*) FROM todo_items WHERE title = 'good'")[0] == [(1,)]


async def test_an_atomic_batch_refused_answers_its_duplicates_as_duplicates(sc, pg_dsn):
    """Refused by the plan (unknown column) or by the check rule at the write: the batch's
    member applied before is still `duplicate`, not `rejected` (pipelined fast path)."""
    done = {"id": "dup1", "collection": "todos", "op": "insert", "data": {"title": "once"}}
    _, body = await sc.push([done])
    assert body["results"][0]["status"] == "applied"
    unknown = {"id": "dup2", "collection": "todos", "op": "insert", "data": {"nope": 1}}
    checked = {"id": "dup3", "collection": "todos", "op": "insert", "data": {"title": ""}}
    for bad in (unknown, checked):
        _, body = await sc.push([done, bad], atomic=True)
        assert [r["status"] for r in body["results"]] == ["duplicate", "rejected"], body
    assert sql(pg_dsn, "SELECT count(*) FROM todo_items WHERE title = 'once'")[0] == [(1,)]


async def test_ownership_before_and_after(pg_dsn, pg_url, sidecar_factory):
    sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(
        pg_url,
        """
  boards:
    table: boards
    read: "owner_id = :sub"
    write: {ops: [update, delete]}
""",
    )
    mine = (await current(sc, 1, "boards"))["b1"]
    theirs = (await current(sc, 2, "boards"))["b2"]
    # touching a row outside my scope
    _, body = await sc.push(
        [
            {
                "id": "o1",
                "collection": "boards",
                "op": "update",
                "key": theirs["key"],
                "data": {"name": "x"},
                "base_rev": theirs["rev"],
            }
        ]
    )
    # answered as a missing row: nothing tells that the key exists outside my scope
    assert body["results"][0]["status"] == "conflict"
    assert body["results"][0]["error"]["code"] == "not_found"
    _, body = await sc.push(
        [
            {
                "id": "o2",
                "collection": "boards",
                "op": "delete",
                "key": theirs["key"],
                "base_rev": theirs["rev"],
            }
        ]
    )
    assert body["results"][0] == {"id": "o2", "status": "applied"}  # nothing done
    # giving my row away
    _, body = await sc.push(
        [
            {
                "id": "o3",
                "collection": "boards",
                "op": "update",
                "key": mine["key"],
                "data": {"owner_id": 2},
                "base_rev": mine["rev"],
            }
        ]
    )
    assert body["results"][0]["error"]["code"] == "forbidden"
    assert sql(pg_dsn, "SELECT owner_id, name FROM boards ORDER BY id")[0] == [(1, "b1"), (2, "b2")]


async def test_set_immutable_check_and_sql_in_values(sc, pg_dsn):
    row = (await current(sc))["mine"]
    _, body = await sc.push(
        [
            {
                "id": "i1",
                "collection": "todos",
                "op": "update",
                "key": row["key"],
                "data": {"id": 999},
                "base_rev": row["rev"],
            },
            {
                "id": "i2",
                "collection": "todos",
                "op": "update",
                "key": row["key"],
                "data": {"notes": None},
                "base_rev": row["rev"],
            },
            {
                "id": "i3",
                "collection": "todos",
                "op": "insert",
                "data": {"title": "x", "notes": "far too long for the check rule"},
            },
            {
                "id": "i4",
                "collection": "todos",
                "op": "insert",
                "data": {"title": "'); DROP TABLE todo_items; --", "notes": "%_\\'"},
            },
        ]
    )
    r = body["results"]
    assert r[0]["status"] == "rejected" and "immutable" in r[0]["error"]["detail"]
    assert r[1]["status"] == "applied"  # notes NULL: the check's NULL branch admits it
    assert r[2]["status"] == "rejected" and r[2]["error"]["code"] == "validation_failed"
    assert r[3]["status"] == "applied"
    assert sql(
        pg_dsn, "SELECT notes FROM todo_items WHERE title = '''); DROP TABLE todo_items; --'"
    )[0] == [("%_\\'",)]


async def test_bad_input_changes_nothing(sc, pg_dsn):
    assert sc.client is not None
    from tests.fixtures.service import auth

    before = sql(pg_dsn, "SELECT count(*), max(xmin::text::bigint) FROM todo_items")[0]
    cases = [
        (b"{not json", 400, "invalid_request"),
        (b'{"mutations": "x"}', 400, "invalid_request"),
        (b'{"mutations": []}', 400, "invalid_request"),
        (b'{"mutations": [{"collection": "todos", "op": "insert"}]}', 400, "invalid_request"),
        (
            b'{"mutations": [{"id": "d", "collection": "todos", "op": "insert"},'
            b'{"id": "d", "collection": "todos", "op": "insert"}]}',
            400,
            "invalid_request",
        ),
        (
            b'{"mutations": [{"id": "x", "collection": "nope", "op": "insert"}]}',
            400,
            "invalid_request",
        ),
        (
            b'{"mutations": [{"id": "x", "collection": "todos", "op": "upsert"}]}',
            400,
            "invalid_request",
        ),
        (
            b'{"mutations": [{"id": "x", "collection": "todos", "op": "update", '
            b'"key": {"id": 1}}]}',
            400,
            "invalid_request",
        ),
    ]
    for raw, status, code in cases:
        resp = await sc.client.post("/v1/push", data=raw, headers=auth(1))
        body = await resp.json(content_type=None)
        assert resp.status == status and body["code"] == code, (raw, body)
    many = [
        {"id": f"m{i}", "collection": "todos", "op": "insert", "data": {"title": "t"}}
        for i in range(501)
    ]
    status, body = await sc.push(many)
    assert status == 413 and body["code"] == "payload_too_large"
    resp = await sc.client.post("/v1/push", data=b"x" * (6 * 1024 * 1024), headers=auth(1))
    assert resp.status == 413
    assert (await resp.json(content_type=None))["code"] == "payload_too_large"
    _, body = await sc.push(
        [
            {"id": "t1", "collection": "todos", "op": "insert", "data": {"title": 5}},
            {
                "id": "t2",
                "collection": "todos",
                "op": "insert",
                "data": {"title": "a", "secret": 1},
            },
            {
                "id": "t3",
                "collection": "todos",
                "op": "insert",
                "data": {"title": "a", "done": "yes"},
            },
            {"id": "t4", "collection": "boards", "op": "insert", "data": {"name": "x"}},
            {
                "id": "t5",
                "collection": "todos",
                "op": "update",
                "key": {"id": "abc"},
                "data": {},
                "base_rev": "x",
            },
        ]
    )
    codes = [(r["status"], r["error"]["code"]) for r in body["results"]]
    assert codes == [("rejected", "validation_failed")] * 3 + [
        ("rejected", "forbidden"),
        ("rejected", "validation_failed"),
    ]
    assert "title" in body["results"][0]["error"]["detail"]
    assert sql(pg_dsn, "SELECT count(*), max(xmin::text::bigint) FROM todo_items")[0] == before


async def test_database_errors_map_to_problems(sc, pg_dsn):
    _, body = await sc.push(
        [
            {
                "id": "c1",
                "collection": "todos",
                "op": "insert",
                "data": {"title": "a", "code": "X"},
            },
            {
                "id": "c2",
                "collection": "todos",
                "op": "insert",
                "data": {"title": "b", "code": "X"},
            },
        ]
    )
    r = body["results"]
    assert r[0]["status"] == "applied"
    assert r[1]["status"] == "rejected" and r[1]["error"]["code"] == "conflict"
    assert r[1]["error"]["constraint"] == "todo_items_code_key"
    _, body = await sc.push(
        [{"id": "c3", "collection": "todos", "op": "insert", "data": {"title": "x"}}], sub=99
    )  # owner 99 does not exist: the foreign key refuses it
    (r,) = body["results"]
    assert r["status"] == "rejected" and r["error"]["code"] == "validation_failed"
    assert r["error"]["constraint"] == "todo_items_owner_id_fkey"


async def test_update_and_delete_of_missing_rows(sc):
    _, body = await sc.push(
        [
            {
                "id": "g1",
                "collection": "todos",
                "op": "update",
                "key": {"id": 12345},
                "data": {"done": True},
                "base_rev": "x",
            },
            {
                "id": "g2",
                "collection": "todos",
                "op": "delete",
                "key": {"id": 12345},
                "base_rev": "x",
            },
        ]
    )
    r = body["results"]
    assert r[0]["status"] == "conflict" and r[0]["error"]["code"] == "not_found"
    assert "row" not in r[0]
    assert r[1]["status"] == "applied" and body["lsn"] is None  # zero-row effect


async def test_delete_with_rev(sc, pg_dsn):
    row = (await current(sc))["mine"]
    _, body = await sc.push(
        [
            {
                "id": "d0",
                "collection": "todos",
                "op": "delete",
                "key": row["key"],
                "base_rev": "stale",
            }
        ]
    )
    assert body["results"][0]["status"] == "conflict"
    _, body = await sc.push(
        [
            {
                "id": "d1",
                "collection": "todos",
                "op": "delete",
                "key": row["key"],
                "base_rev": row["rev"],
            }
        ]
    )
    assert body["results"][0]["status"] == "applied"
    page = await sc.pull(1, after_lsn=body["lsn"])
    titles = {c["row"].get("title") for c in page["changes"] if c["op"] == "upsert"}
    assert "mine" not in titles
    assert sql(pg_dsn, "SELECT count(*) FROM todo_items WHERE title = 'mine'")[0] == [(0,)]


async def test_concurrent_pushes_of_one_row_exactly_one_wins(sc, pg_dsn):
    row = (await current(sc))["mine"]

    async def attempt(n: int) -> str:
        _, body = await sc.push(
            [
                {
                    "id": f"race-{n}",
                    "collection": "todos",
                    "op": "update",
                    "key": row["key"],
                    "data": {"title": f"v{n}"},
                    "base_rev": row["rev"],
                }
            ]
        )
        assert "results" in body, body
        return body["results"][0]["status"]

    statuses = await asyncio.gather(*(attempt(n) for n in range(8)))
    assert sorted(statuses) == ["applied"] + ["conflict"] * 7


@pytest.mark.parametrize(
    ("strategy", "expect"),
    [("reject", "conflict"), ("client_wins", "applied"), ("server_wins", "conflict")],
)
async def test_strategies(pg_dsn, pg_url, sidecar_factory, strategy, expect):
    sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, todos(strategy))
    row = (await current(sc))["mine"]
    sql(pg_dsn, "UPDATE todo_items SET notes = 'server' WHERE title = 'mine'")
    _, body = await sc.push(
        [
            {
                "id": "s1",
                "collection": "todos",
                "op": "update",
                "key": row["key"],
                "data": {"done": True},
                "base_rev": row["rev"],
            }
        ]
    )
    assert body["results"][0]["status"] == expect
    done = sql(pg_dsn, "SELECT done, notes FROM todo_items WHERE title = 'mine'")[0][0]
    assert done == ((expect == "applied"), "server")


async def test_merge_strategy(pg_dsn, pg_url, sidecar_factory):
    sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, todos("merge"))
    row = (await current(sc))["mine"]
    sql(pg_dsn, "UPDATE todo_items SET notes = 'server' WHERE title = 'mine'")
    base = row["row"]
    # a field only the client changed merges over the server's other change
    _, body = await sc.push(
        [
            {
                "id": "mg1",
                "collection": "todos",
                "op": "update",
                "key": row["key"],
                "data": {"done": True},
                "base": base,
                "base_rev": row["rev"],
            }
        ]
    )
    assert body["results"][0]["status"] == "applied", body
    assert sql(pg_dsn, "SELECT done, notes FROM todo_items WHERE title = 'mine'")[0] == [
        (True, "server")
    ]
    # both sides changed the same field: conflict
    _, body = await sc.push(
        [
            {
                "id": "mg2",
                "collection": "todos",
                "op": "update",
                "key": row["key"],
                "data": {"notes": "client"},
                "base": base,
                "base_rev": row["rev"],
            }
        ]
    )
    assert body["results"][0]["status"] == "conflict"
    assert body["results"][0]["row"]["notes"] == "server"


async def test_latest_wins(sc, pg_dsn):
    board = (await current(sc, 1, "boards"))["b1"]
    sql(
        pg_dsn,
        "UPDATE boards SET name = 'server', updated_at = '2024-06-01T00:00:00Z' WHERE id = 1",
    )
    older = {
        "id": "lw1",
        "collection": "boards",
        "op": "update",
        "key": board["key"],
        "data": {"name": "old", "updated_at": "2024-03-01T00:00:00+00:00"},
        "base_rev": board["rev"],
    }
    newer = {
        **older,
        "id": "lw2",
        "data": {"name": "new", "updated_at": "2024-09-01T00:00:00+00:00"},
    }
    _, body = await sc.push([older, newer])
    assert [r["status"] for r in body["results"]] == ["conflict", "applied"]
    assert sql(pg_dsn, "SELECT name FROM boards WHERE id = 1")[0] == [("new",)]


async def test_op_not_allowed(sc):
    board = (await current(sc, 1, "boards"))["b1"]
    _, body = await sc.push(
        [
            {
                "id": "x1",
                "collection": "boards",
                "op": "delete",
                "key": board["key"],
                "base_rev": board["rev"],
            }
        ]
    )
    assert body["results"][0]["error"]["code"] == "forbidden"


async def test_audit_trail_for_admins(pg_dsn, pg_url, sidecar_factory):
    import json

    from tests.fixtures.service import auth

    sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, todos(), admin=":role = 'admin'")
    row = (await current(sc))["mine"]
    _, body = await sc.push(
        [
            {
                "id": "au1",
                "collection": "todos",
                "op": "update",
                "key": row["key"],
                "data": {"done": True},
                "base_rev": row["rev"],
                "client_time": "2026-11-24T10:00:00Z",
            }
        ]
    )
    await sc.pull(1, after_lsn=body["lsn"])
    params = {"collection": "todos", "key": json.dumps(row["key"])}
    assert sc.client is not None
    resp = await sc.client.get("/v1/audit", params=params, headers=auth(1))
    assert resp.status == 403 and (await resp.json())["code"] == "forbidden"
    resp = await sc.client.get("/v1/audit", params=params, headers=auth(7, role="admin"))
    trail = await resp.json()
    assert resp.status == 200, trail
    (entry,) = trail["mutations"]
    assert entry["id"] == "au1" and entry["subject"] == "1" and entry["op"] == "update"
    assert entry["rev"] == body["results"][0]["rev"]
    assert entry["client_time"] == "2026-11-24T10:00:00Z"
    resp = await sc.client.get(
        "/v1/audit", params={"collection": "todos", "key": "nope"}, headers=auth(7, role="admin")
    )
    assert resp.status == 400


def land_on_page_boundary(dsn: str) -> str:
    """Write WAL so the insert position sits just past a page header (what CI hit once).

    Other sessions may write WAL at any moment (autovacuum, checkpoints, other tests'
    servers are separate, but this one is shared): every attempt starts from a fresh
    reading, and a miss is simply retried.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:

        def insert_lsn() -> int:
            row = conn.execute("SELECT pg_current_wal_insert_lsn() - '0/0'").fetchone()
            assert row is not None
            return int(row[0])

        def emit(size: int) -> None:
            conn.execute("SELECT pg_logical_emit_message(false, 'pad', repeat('a', %s))", (size,))

        overhead = 10_000
        for _ in range(20):  # the record's own bytes, measured on one that stays on its page
            before = insert_lsn()
            emit(300)  # > 255 bytes: the same record header as the filler below
            used = insert_lsn() - before - 300
            if before // 8192 == (before + used + 300) // 8192:
                overhead = min(overhead, used)
        for _ in range(200):
            room = 8192 - insert_lsn() % 8192
            if room - overhead > 300:
                emit(room - overhead)
                if insert_lsn() % 8192 == 24:
                    break
            else:
                emit(300)  # too little room left on this page: move on to the next
        else:
            pytest.fail("could not place the WAL insert position on a page boundary")
        row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
        assert row is not None
        return row[0]


async def test_push_on_an_idle_server_at_a_wal_page_boundary_is_not_stalled(sc, pg_dsn):
    """pg_current_wal_insert_lsn() at a page boundary points past the page header, while
    the walsender reports the boundary itself: both are the same point, so neither a push
    nor a pull with after_lsn may wait for unrelated WAL to show up."""
    await current(sc)
    lsn = land_on_page_boundary(pg_dsn)
    await sc.pull(1, after_lsn=lsn, timeout=1)  # 503 if it had to wait for more WAL
    status, body = await sc.push(
        [{"id": "pb1", "collection": "todos", "op": "insert", "data": {"title": "edge"}}]
    )
    assert status == 200, body
    assert body["results"][0]["status"] == "applied"
