"""Access control end to end: scopes, roles, claim-only rules, hostile claim values."""

from __future__ import annotations

import psycopg
import pytest

from tests.fixtures.service import auth, state_of

pytestmark = pytest.mark.pg

SCHEMA = """
CREATE TABLE todo_items (id serial PRIMARY KEY, title text NOT NULL, owner_id text NOT NULL);
INSERT INTO todo_items (title, owner_id) VALUES ('a', '1'), ('b', '2'), ('c', '3');
CREATE TABLE notes (id serial PRIMARY KEY, body text);
INSERT INTO notes (body) VALUES ('staff only');
"""

COLLECTIONS = """
  todos:
    table: todo_items
    read: "owner_id = :sub OR :role = 'admin'"
    write:
      ops: [insert, update]
      set: {owner_id: ":sub"}
  notes:
    table: notes
    read: "true"
    roles: [staff]
"""


@pytest.fixture
async def sc(pg_dsn, pg_url, sidecar_factory):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)
    return await sidecar_factory(pg_url, COLLECTIONS)


def titles(changes: list) -> set[str]:
    return {r.get("title", r.get("body")) for r in state_of(changes).values()}


async def pull_with(sc, **claims) -> tuple[int, dict]:
    assert sc.client is not None
    resp = await sc.client.get("/v1/pull", headers=auth(claims.pop("sub", "1"), **claims))
    return resp.status, await resp.json(content_type=None)


async def test_claim_only_rule_and_roles(sc):
    _, body = await pull_with(sc)
    assert titles(body["changes"]) == {"a"}
    _, body = await pull_with(sc, role="admin")
    assert titles(body["changes"]) == {"a", "b", "c"}
    _, body = await pull_with(sc, roles=["staff"])
    assert titles(body["changes"]) == {"a", "staff only"}
    _, body = await pull_with(sc, roles="staff other")  # a space-separated string works too
    assert "staff only" in titles(body["changes"])
    assert sc.client is not None
    resp = await sc.client.get("/v1/schema", headers=auth(1))
    assert set((await resp.json())["collections"]) == {"todos"}  # notes is invisible
    resp = await sc.client.get("/v1/schema", headers=auth(1, roles=["staff"]))
    assert set((await resp.json())["collections"]) == {"todos", "notes"}
    resp = await sc.client.get("/v1/pull", params={"collections": "notes"}, headers=auth(1))
    assert resp.status == 403 and (await resp.json())["code"] == "forbidden"


async def test_scopes(sc):
    read_only = {"scope": "todos:read"}
    _, body = await pull_with(sc, **read_only)
    assert titles(body["changes"]) == {"a"}
    _, body = await sc.push(
        [{"id": "s1", "collection": "todos", "op": "insert", "data": {"title": "x"}}],
        **read_only,
    )
    assert body["results"][0]["error"]["code"] == "forbidden"
    _, body = await sc.push(
        [{"id": "s2", "collection": "todos", "op": "insert", "data": {"title": "x"}}],
        scope=["sync:write"],
    )
    assert body["results"][0]["status"] == "applied"
    lsn = body["lsn"]
    _, body = await pull_with(sc, scope="sync:write")  # write does not imply read
    assert body["changes"] == []
    assert sc.client is not None
    resp = await sc.client.get(
        "/v1/pull", params={"after_lsn": lsn}, headers=auth(1, scope="sync:read sync:write")
    )
    assert titles((await resp.json())["changes"]) == {"a", "x"}


async def test_hostile_claim_values_are_bound_not_spliced(sc, pg_dsn):
    _, body = await pull_with(sc, sub="1' OR '1'='1")
    assert body["changes"] == []
    _, body = await pull_with(sc, sub="x", role="admin' OR 'x'='x")
    assert body["changes"] == []
    evil = "1'); DROP TABLE todo_items; --"
    _, body = await sc.push(
        [{"id": "h1", "collection": "todos", "op": "insert", "data": {"title": "t"}}], sub=evil
    )
    assert body["results"][0]["status"] == "applied"
    with psycopg.connect(pg_dsn) as conn:
        owners = {r[0] for r in conn.execute("SELECT owner_id FROM todo_items").fetchall()}
    assert evil in owners  # stored verbatim as a value; the table is still there


async def test_every_write_accepted_or_refused_leaves_an_audit_line(sc):
    """One `push` line per batch at info (its outcomes, and each mutation not applied);
    a `mutation` line per mutation at debug only: a line per mutation costs more than
    applying it."""
    from structlog.testing import capture_logs

    ok = {"id": "a1", "collection": "todos", "op": "insert", "data": {"title": "fine"}}
    bad = {"id": "a2", "collection": "todos", "op": "insert", "data": {"nope": 1}}
    with capture_logs() as logs:
        await sc.push([ok, bad], device_id="phone-1")
        await sc.push([{**ok, "id": "a3"}, {**bad, "id": "a4"}], atomic=True)
    pushes = [e for e in logs if e.get("event") == "push"]
    assert [e["log_level"] for e in pushes] == ["info", "info"]
    assert pushes[0]["mutations"] == 2 and pushes[0]["device"] == "phone-1"
    assert pushes[0]["outcomes"] == {"applied": 1, "rejected": 1}
    assert [(r["mutation_id"], r["code"]) for r in pushes[0]["refused"]] == [
        ("a2", "validation_failed")
    ]
    assert pushes[1]["outcomes"] == {"rejected": 2}  # the atomic batch was aborted: logged
    assert [r["mutation_id"] for r in pushes[1]["refused"]] == ["a3", "a4"]
    lines = {e["mutation_id"]: e for e in logs if e.get("event") == "mutation"}
    assert {e["log_level"] for e in lines.values()} == {"debug"}
    assert set(lines) == {"a1", "a2", "a3", "a4"}
    assert lines["a1"]["outcome"] == "applied" and lines["a1"]["device"] == "phone-1"
    assert lines["a2"]["outcome"] == "rejected" and lines["a2"]["code"] == "validation_failed"
    assert lines["a3"]["outcome"] == "rejected"
    assert lines["a4"]["code"] == "validation_failed"
    for e in [*lines.values(), *pushes]:
        assert e["subject"] == "1"
        assert "Bearer" not in repr(e) and "eyJ" not in repr(e)  # no token in any line
