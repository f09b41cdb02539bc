"""The read path end to end: real PostgreSQL → capture → store → HTTP pull."""

from __future__ import annotations

import psycopg
import pytest

from tests.fixtures.service import run_sql, state_of, wait_until

pytestmark = pytest.mark.pg

SCHEMA = """
CREATE TABLE todo_items (
    id serial PRIMARY KEY,
    title text NOT NULL,
    done boolean NOT NULL DEFAULT false,
    owner_id integer,
    notes text,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO todo_items (title, owner_id) VALUES ('a1', 1), ('a2', 1), ('b1', 2);
"""

TODOS = """
  todos:
    table: todo_items
    columns: [id, title, done, owner_id, notes]
    read: "owner_id = :sub"
"""


def titles(state: dict) -> set[str]:
    return {row["title"] for row in state.values()}


async def test_initial_sync_is_scoped(pg_dsn, pg_url, sidecar_factory):
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, TODOS)
    assert titles(state_of(await sc.sync(1))) == {"a1", "a2"}
    assert titles(state_of(await sc.sync(2))) == {"b1"}
    assert await sc.sync(3) == []
    page = await sc.pull(1)
    assert page["has_more"] is False and page["schema_version"]
    change = page["changes"][0]
    assert set(change) == {"collection", "op", "key", "row", "rev", "version"}
    assert change["collection"] == "todos" and change["op"] == "upsert"
    assert change["key"] == {"id": change["row"]["id"]}
    assert set(change["row"]) == {"id", "title", "done", "owner_id", "notes"}


async def test_deltas_insert_update_delete(pg_dsn, pg_url, sidecar_factory):
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, TODOS)
    state = state_of(await sc.sync(1))
    run_sql(
        pg_dsn,
        "INSERT INTO todo_items (title, owner_id) VALUES ('a3', 1), ('b2', 2)",
        "UPDATE todo_items SET done = true, title = 'a1!' WHERE title = 'a1'",
        "DELETE FROM todo_items WHERE title = 'a2'",
    )
    await sc.caught_up(pg_dsn)
    delta = await sc.sync(1)
    ops = sorted(
        (c["op"], c["row"]["title"] if c["op"] == "upsert" else c["key"]["id"]) for c in delta
    )
    assert [o for o, _ in ops] == ["delete", "upsert", "upsert"]
    state = state_of(delta, state)
    assert titles(state) == {"a1!", "a3"}
    assert next(r for r in state.values() if r["title"] == "a1!")["done"] is True
    # versions strictly increase within a page
    versions = [int(c["version"]) for c in delta]
    assert versions == sorted(versions)
    # nothing new: empty page, same state
    assert await sc.sync(1) == []


async def test_rev_changes_only_with_exposed_columns(pg_dsn, pg_url, sidecar_factory):
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, TODOS)
    first = {c["row"]["title"]: c["rev"] for c in await sc.sync(1)}
    run_sql(
        pg_dsn, "UPDATE todo_items SET updated_at = now() + interval '1 day' WHERE title = 'a1'"
    )
    await sc.caught_up(pg_dsn)
    assert await sc.sync(1) == []  # not exposed: no change for clients
    run_sql(pg_dsn, "UPDATE todo_items SET title = 'x' WHERE title = 'a1'")
    await sc.caught_up(pg_dsn)
    (ch,) = await sc.sync(1)
    assert ch["rev"] != first["a1"] and len(ch["rev"]) == 16


async def test_move_out_and_move_in(pg_dsn, pg_url, sidecar_factory):
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, TODOS)
    s1, s2 = state_of(await sc.sync(1)), state_of(await sc.sync(2))
    run_sql(pg_dsn, "UPDATE todo_items SET owner_id = 2 WHERE title = 'a1'")
    await sc.caught_up(pg_dsn)
    d1, d2 = await sc.sync(1), await sc.sync(2)
    assert [c["op"] for c in d1] == ["delete"]
    assert [c["op"] for c in d2] == ["upsert"]
    assert titles(state_of(d1, s1)) == {"a2"}
    assert titles(state_of(d2, s2)) == {"a1", "b1"}
    run_sql(pg_dsn, "UPDATE todo_items SET owner_id = 1 WHERE title = 'a1'")
    await sc.caught_up(pg_dsn)
    assert titles(state_of(await sc.sync(1), s1)) == {"a1", "a2"}
    assert titles(state_of(await sc.sync(2), s2)) == {"b1"}
    # a NULL owner is in nobody's scope
    run_sql(pg_dsn, "UPDATE todo_items SET owner_id = NULL WHERE title = 'a2'")
    await sc.caught_up(pg_dsn)
    assert titles(state_of(await sc.sync(1), s1)) == {"a1"}


async def test_tombstone_reaches_a_late_client(pg_dsn, pg_url, sidecar_factory):
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, TODOS)
    _, cursor = await sc.pull_all(1)
    run_sql(pg_dsn, "DELETE FROM todo_items WHERE title = 'a1'")
    run_sql(pg_dsn, "INSERT INTO todo_items (title, owner_id) VALUES ('later', 1)")
    await sc.caught_up(pg_dsn)
    changes, _ = await sc.pull_all(1, cursor)
    assert [c["op"] for c in changes] == ["delete", "upsert"]
    assert changes[0]["key"] == {"id": 1} and "row" not in changes[0]


async def test_toast_unchanged_value_is_kept(pg_dsn, pg_url, sidecar_factory):
    run_sql(pg_dsn, SCHEMA)
    big = "".join(f"{i:08x}" for i in range(20_000))  # 160 kB, incompressible enough
    run_sql(pg_dsn, f"UPDATE todo_items SET notes = '{big}' WHERE title = 'a1'")
    sc = await sidecar_factory(pg_url, TODOS)
    state = state_of(await sc.sync(1))
    run_sql(pg_dsn, "UPDATE todo_items SET done = true WHERE title = 'a1'")
    await sc.caught_up(pg_dsn)
    (ch,) = await sc.sync(1)
    assert ch["row"]["done"] is True and ch["row"]["notes"] == big
    state_of([ch], state)


async def test_large_rows_in_batches_cut_by_size(pg_dsn, pg_url, sidecar_factory, monkeypatch):
    """Batches are cut by size as well as by count (SQLite takes at most 1e9 bytes per
    statement parameter): with a 4 kB cut, the copy and a transaction of large rows (new,
    changed with their TOASTed value unchanged, deleted) go through many batches, and
    the client ends with what the database holds."""
    monkeypatch.setattr("sidecar.store.sqlite._LOAD_BYTES", 4096)
    monkeypatch.setattr("sidecar.capture.ingest._FLUSH_BYTES", 4096)
    monkeypatch.setattr("sidecar.capture.ingest._PENDING_BYTES", 1024)
    run_sql(pg_dsn, SCHEMA)
    big = "md5(g::text) || repeat(md5((g * 7)::text), 400)"  # ~13 kB, some TOASTed
    run_sql(pg_dsn, f"INSERT INTO todo_items (title, owner_id, notes) SELECT 'c' || g, 1, {big} "
            "FROM generate_series(1, 60) g")  # fmt: skip
    sc = await sidecar_factory(pg_url, TODOS)
    state = state_of(await sc.sync(1))
    run_sql(
        pg_dsn,
        "BEGIN",
        "UPDATE todo_items SET done = true WHERE owner_id = 1",
        f"INSERT INTO todo_items (title, owner_id, notes) SELECT 'd' || g, 1, {big} "
        "FROM generate_series(1, 40) g",
        "DELETE FROM todo_items WHERE title IN ('c1', 'c2', 'a2')",
        "COMMIT",
    )
    await sc.caught_up(pg_dsn)
    state = state_of(await sc.sync(1), state)
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(
            "SELECT id, title, done, owner_id, notes FROM todo_items WHERE owner_id = 1"
        ).fetchall()
    names = ("id", "title", "done", "owner_id", "notes")
    expected = {r[0]: dict(zip(names, r, strict=True)) for r in rows}
    assert {row["id"]: row for row in state.values()} == expected
    assert len(expected) == 60 + 40 + 1 - 2


async def test_primary_key_change(pg_dsn, pg_url, sidecar_factory):
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, TODOS)
    state = state_of(await sc.sync(1))
    run_sql(pg_dsn, "UPDATE todo_items SET id = 100 WHERE title = 'a1'")
    await sc.caught_up(pg_dsn)
    delta = await sc.sync(1)
    assert [(c["op"], c["key"]) for c in delta] == [("delete", {"id": 1}), ("upsert", {"id": 100})]
    state = state_of(delta, state)
    assert sorted(r["id"] for r in state.values()) == [2, 100]


async def test_truncate_deletes_everything(pg_dsn, pg_url, sidecar_factory):
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, TODOS)
    state = state_of(await sc.sync(1))
    run_sql(pg_dsn, "TRUNCATE todo_items")
    await sc.caught_up(pg_dsn)
    assert state_of(await sc.sync(1), state) == {}
    run_sql(pg_dsn, "INSERT INTO todo_items (title, owner_id) VALUES ('fresh', 1)")
    await sc.caught_up(pg_dsn)
    assert titles(state_of(await sc.sync(1), state)) == {"fresh"}


async def test_or_rule_and_paging(pg_dsn, pg_url, sidecar_factory):
    run_sql(
        pg_dsn,
        "CREATE TABLE projects (id int PRIMARY KEY, name text, owner_id int, is_public bool)",
        "INSERT INTO projects SELECT g, 'p' || g, g % 3, g % 5 = 0 FROM generate_series(1, 250) g",
    )
    sc = await sidecar_factory(
        pg_url,
        """
  projects:
    table: projects
    read: "owner_id = :sub OR is_public"
""",
    )
    expected = {g for g in range(1, 251) if g % 3 == 1 or g % 5 == 0}
    pages = 0
    cursor = None
    seen: list[int] = []
    while True:
        page = await sc.pull(1, cursor, limit=20)
        pages += 1
        seen += [c["key"]["id"] for c in page["changes"]]
        cursor = page["cursor"]
        if not page["has_more"]:
            break
    assert sorted(seen) == sorted(expected) and len(seen) == len(set(seen))
    assert pages >= len(expected) // 20
    # a public project that becomes private leaves user 2's view but stays in owner 1's
    run_sql(pg_dsn, "UPDATE projects SET is_public = false WHERE id = 10")  # owner 1
    run_sql(pg_dsn, "UPDATE projects SET is_public = false WHERE id = 5")  # owner 2
    await sc.caught_up(pg_dsn)
    d1 = await sc.pull(1, cursor)
    ops = {c["key"]["id"]: c["op"] for c in d1["changes"]}
    assert ops == {10: "upsert", 5: "delete"}


async def test_pull_parameters_and_errors(pg_dsn, pg_url, sidecar_factory):
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, TODOS)
    cases = [
        ({"cursor": "nonsense"}, 400, "invalid_request"),
        ({"limit": "0"}, 400, "invalid_request"),
        ({"limit": "ten"}, 400, "invalid_request"),
        ({"collections": "todos,nope"}, 400, "invalid_request"),
        ({"live": "maybe"}, 400, "invalid_request"),
        ({"timeout": "999"}, 400, "invalid_request"),
        ({"after_lsn": "zz"}, 400, "invalid_request"),
        ({"cursor": "00000000-5"}, 410, "cursor_expired"),
    ]
    for params, status, code in cases:
        resp = await sc.get("/v1/pull", params=params)
        body = await resp.json(content_type=None)
        assert resp.status == status, (params, body)
        assert resp.content_type == "application/problem+json"
        assert body["code"] == code and body["status"] == status and body["detail"]
    resp = await sc.get("/v1/pull", sub=None)
    assert resp.status == 401 and (await resp.json(content_type=None))["code"] == "unauthorized"
    resp = await sc.get("/v1/pull", sub=None, headers={"Authorization": "Bearer abc.def.ghi"})
    assert resp.status == 401
    resp = await sc.get("/v1/nothing-here")
    body = await resp.json(content_type=None)
    assert resp.status == 404 and body["code"] == "not_found"


async def test_schema_health_ready_metrics(pg_dsn, pg_url, sidecar_factory):
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, TODOS)
    body = await (await sc.get("/v1/schema")).json()
    todos = body["collections"]["todos"]
    assert todos["key"] == ["id"]
    assert todos["columns"]["title"] == {"type": "text", "nullable": False}
    assert todos["columns"]["owner_id"] == {"type": "integer", "nullable": True}
    assert body["schema_version"] == (await sc.pull(1))["schema_version"]
    assert (await sc.get("/healthz", sub=None)).status == 200
    assert (await sc.get("/readyz", sub=None)).status == 200
    metrics = await (await sc.get("/metrics", sub=None)).text()
    assert 'sidecar_http_requests_total{endpoint="/v1/schema",status="200"}' in metrics

    async def counted() -> bool:  # the store gauges are refreshed in the background
        return "sidecar_store_rows 3.0" in await (await sc.get("/metrics", sub=None)).text()

    await wait_until(counted, what="sidecar_store_rows 3")


async def test_read_your_writes_with_after_lsn(pg_dsn, pg_url, sidecar_factory):
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, TODOS)
    _, cursor = await sc.pull_all(1)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO todo_items (title, owner_id) VALUES ('mine', 1)")
        lsn = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
    page = await sc.pull(1, cursor, after_lsn=lsn)
    assert [c["row"]["title"] for c in page["changes"]] == ["mine"]


async def test_live_pull_wakes_on_commit(pg_dsn, pg_url, sidecar_factory):
    import asyncio

    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, TODOS)
    _, cursor = await sc.pull_all(1)
    waiter = asyncio.create_task(sc.pull(1, cursor, live="true", timeout=20))
    await asyncio.sleep(0.3)
    assert not waiter.done()
    run_sql(pg_dsn, "INSERT INTO todo_items (title, owner_id) VALUES ('other', 2)")  # not my scope
    await asyncio.sleep(0.5)
    assert not waiter.done()
    run_sql(pg_dsn, "INSERT INTO todo_items (title, owner_id) VALUES ('ping', 1)")
    page = await asyncio.wait_for(waiter, 10)
    assert [c["row"]["title"] for c in page["changes"]] == ["ping"]
    timed = await sc.pull(1, page["cursor"], live="true", timeout=0.3)
    assert timed["changes"] == [] and timed["cursor"] == page["cursor"]


async def test_not_ready_during_initial_copy(pg_dsn, pg_url, tmp_path):
    from aiohttp.test_utils import TestClient, TestServer

    from sidecar.serve import build_app
    from sidecar.service import Service
    from tests.fixtures.service import auth, make_config

    run_sql(
        pg_dsn,
        SCHEMA,
        "INSERT INTO todo_items (title, owner_id) "
        "SELECT 't' || g, g % 7 FROM generate_series(1, 60000) g",
    )
    service = await Service.start(make_config(pg_url, tmp_path / "s.db", TODOS))
    client = TestClient(TestServer(build_app(service)))
    await client.start_server()
    try:
        resp = await client.get("/readyz")
        body = await resp.json(content_type=None)
        assert resp.status == 503 and body["code"] == "unavailable"
        assert resp.headers["Retry-After"] == "5"
        assert body["progress"]["phase"] in ("starting", "copying")
        resp = await client.get("/v1/pull", headers=auth(1))
        assert resp.status == 503 and (await resp.json(content_type=None))["code"] == "unavailable"
        assert (await client.get("/healthz")).status == 200
        await service.capture.wait_ready(60)
        assert (await client.get("/readyz")).status == 200
        assert service.capture.status.copy.rows == 60003
    finally:
        await client.close()
        await service.close()


async def test_rate_limit_under_concurrent_load(pg_dsn, pg_url, sidecar_factory):
    import asyncio

    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, TODOS, extra="limits: {rate: 5/s}")
    responses = await asyncio.gather(*(sc.get("/v1/pull") for _ in range(20)))
    statuses = sorted(r.status for r in responses)
    assert statuses.count(200) in (5, 6) and statuses.count(429) >= 14
    limited = next(r for r in responses if r.status == 429)
    body = await limited.json(content_type=None)
    assert body["code"] == "rate_limited" and int(limited.headers["Retry-After"]) >= 1
    assert (await sc.get("/v1/pull", sub=2)).status == 200  # another caller is unaffected
    await asyncio.sleep(1.1)
    assert (await sc.get("/v1/pull")).status == 200  # refilled


async def test_live_pulls_per_subject_are_bounded(pg_dsn, pg_url, sidecar_factory):
    import asyncio

    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, TODOS, extra="limits: {live_per_subject: 3}")
    _, cursor = await sc.pull_all(1)
    params = {"cursor": cursor, "live": "true", "timeout": "3"}
    waiting = [asyncio.create_task(sc.get("/v1/pull", params=params)) for _ in range(3)]
    await asyncio.sleep(0.5)
    extra = await sc.get("/v1/pull", params=params)
    assert extra.status == 503 and (await extra.json())["code"] == "unavailable"
    assert extra.headers["Retry-After"] == "2"
    assert (await sc.get("/v1/pull", sub=2, params={"live": "true", "timeout": "0"})).status == 200
    run_sql(pg_dsn, "INSERT INTO todo_items (title, owner_id) VALUES ('wake', 1)")
    done = await asyncio.gather(*waiting)
    assert all(r.status == 200 for r in done)
