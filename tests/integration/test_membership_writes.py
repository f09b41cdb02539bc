"""Writes under a membership read rule (issue 14, item 4): the ownership checks of a push
(readable before and after the change, `write.where`, `write.check`) evaluate the rule's
sub-selects inside PostgreSQL, in the write statement, with the caller's claims bound."""

from __future__ import annotations

import psycopg
import pytest

from tests.fixtures.service import run_sql

pytestmark = pytest.mark.pg

SCHEMA = """
CREATE TABLE members (project_id int NOT NULL, user_id text NOT NULL,
                      role text NOT NULL DEFAULT 'member', PRIMARY KEY (project_id, user_id));
CREATE TABLE tasks (id int PRIMARY KEY, project_id int, title text NOT NULL);
INSERT INTO members VALUES (1, 'alice', 'member'), (2, 'alice', 'viewer'), (3, 'bob', 'member');
INSERT INTO tasks VALUES (1, 1, 'a'), (2, 2, 'b'), (3, 3, 'c'), (4, 3, 'd');
"""

RULE = "project_id IN (SELECT project_id FROM public.members WHERE user_id = :sub)"
COLLECTIONS = f"""
  tasks:
    table: tasks
    read: "{RULE}"
    write:
      ops: [insert, update, delete]
"""


def rows(dsn: str, query: str) -> list:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchall()


def insert(mid: str, tid: int, project: int, coll: str = "tasks") -> dict:
    return {
        "id": mid,
        "collection": coll,
        "op": "insert",
        "key": {"id": tid},
        "data": {"project_id": project, "title": mid},
    }


def update(mid: str, tid: int, data: dict, rev: str, coll: str = "tasks") -> dict:
    return {
        "id": mid,
        "collection": coll,
        "op": "update",
        "key": {"id": tid},
        "data": data,
        "base_rev": rev,
    }


def delete(mid: str, tid: int, rev: str, coll: str = "tasks") -> dict:
    return {"id": mid, "collection": coll, "op": "delete", "key": {"id": tid}, "base_rev": rev}


async def revs(sc, sub: str, **claims) -> dict[int, str]:
    assert sc.client is not None
    from tests.fixtures.service import auth

    resp = await sc.client.get("/v1/pull", headers=auth(sub, **claims))
    body = await resp.json()
    return {c["key"]["id"]: c["rev"] for c in body["changes"]}


async def test_inserts_and_moves_into_a_project_of_which_the_caller_is_no_member_are_rejected(
    pg_dsn, pg_url, sidecar_factory
) -> None:
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, COLLECTIONS)
    alice = await revs(sc, "alice")
    assert set(alice) == {1, 2}
    _status, body = await sc.push(
        [
            insert("in-own", 10, 1),  # alice is a member of project 1
            insert("in-other", 11, 3),  # project 3 is bob's
            update("move-out", 1, {"project_id": 3}, alice[1]),  # into bob's project
            update("move-within", 2, {"project_id": 1}, alice[2]),  # between her own
        ],
        sub="alice",
    )
    results = {r["id"]: r for r in body["results"]}
    assert results["in-own"]["status"] == "applied", body
    assert results["move-within"]["status"] == "applied", body
    for refused in ("in-other", "move-out"):
        assert results[refused]["status"] == "rejected", body
        assert results[refused]["error"]["code"] == "forbidden", body
        assert "outside your read scope" in results[refused]["error"]["detail"]
    assert rows(pg_dsn, "SELECT id, project_id FROM tasks ORDER BY id") == [
        (1, 1),
        (2, 1),
        (3, 3),
        (4, 3),
        (10, 1),
    ]


async def test_rows_of_projects_of_which_the_caller_is_no_member_are_not_there_for_it(
    pg_dsn, pg_url, sidecar_factory
) -> None:
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, COLLECTIONS)
    bob = await revs(sc, "bob")
    # alice updates and deletes bob's tasks, with the revs bob sees: as if they did not exist
    _status, body = await sc.push(
        [update("u", 3, {"title": "pwned"}, bob[3]), delete("d", 4, bob[4])], sub="alice"
    )
    update_result, delete_result = body["results"]
    assert update_result["status"] == "conflict", body
    assert update_result["error"]["code"] == "not_found", body
    assert delete_result["status"] == "applied", body  # already gone from her view
    assert rows(pg_dsn, "SELECT id, title FROM tasks WHERE project_id = 3 ORDER BY id") == [
        (3, "c"),
        (4, "d"),
    ]
    # a membership makes them hers to write: the rule reads the table at the push
    run_sql(pg_dsn, "INSERT INTO members VALUES (3, 'alice')")
    _status, body = await sc.push(
        [update("u2", 3, {"title": "shared"}, bob[3]), delete("d2", 4, bob[4])], sub="alice"
    )
    assert [r["status"] for r in body["results"]] == ["applied", "applied"], body
    assert rows(pg_dsn, "SELECT id, title FROM tasks WHERE project_id = 3") == [(3, "shared")]


WRITE_COLLECTIONS = f"""
  tasks:
    table: tasks
    read: "{RULE}"
    write:
      ops: [insert, update, delete]
      where: "project_id IN (SELECT project_id FROM members WHERE user_id = :sub
              AND role = 'member')"
      check: "project_id NOT IN (SELECT project_id FROM members WHERE role = 'archived')"
  group_tasks:
    table: tasks
    read: "project_id IN (SELECT project_id FROM members WHERE user_id = ANY(:groups))"
    write:
      ops: [insert, update]
"""


async def test_write_where_and_check_with_sub_selects(pg_dsn, pg_url, sidecar_factory) -> None:
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, WRITE_COLLECTIONS)
    alice = await revs(sc, "alice")
    _status, body = await sc.push(
        [
            update("member", 1, {"title": "ok"}, alice[1]),  # project 1: alice is a member
            update("viewer", 2, {"title": "no"}, alice[2]),  # project 2: only a viewer
            insert("viewer-insert", 20, 2),
        ],
        sub="alice",
    )
    results = {r["id"]: r for r in body["results"]}
    assert results["member"]["status"] == "applied", body
    for refused in ("viewer", "viewer-insert"):
        assert results[refused]["status"] == "rejected", body
        assert results[refused]["error"]["code"] == "forbidden", body
        assert "write.where" in results[refused]["error"]["detail"]
    # write.check (evaluated by PostgreSQL only, so a negated sub-select is fine there):
    # no task goes into a project someone archived
    _status, body = await sc.push([insert("before", 21, 1)], sub="alice")
    assert body["results"][0]["status"] == "applied", body
    run_sql(pg_dsn, "INSERT INTO members VALUES (1, 'dave', 'archived')")
    _status, body = await sc.push([insert("after", 22, 1)], sub="alice")
    [result] = body["results"]
    assert result["status"] == "rejected", body
    assert result["error"]["code"] == "validation_failed", body
    assert rows(pg_dsn, "SELECT id FROM tasks WHERE id >= 20 ORDER BY id") == [(21,)]


async def test_a_scalar_claim_used_as_any_inside_a_sub_select_is_a_one_element_list(
    pg_dsn, pg_url, sidecar_factory
) -> None:
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, WRITE_COLLECTIONS)
    # `user_id = ANY(:groups)` with groups a string: read as a one-element list, as pulls do
    mine = await revs(sc, "x", groups="alice")
    assert {1, 2} <= set(mine)
    _status, body = await sc.push(
        [
            insert("own", 30, 1, coll="group_tasks"),
            insert("other", 31, 3, coll="group_tasks"),
            update("edit", 2, {"title": "via group"}, mine[2], coll="group_tasks"),
        ],
        sub="x",
        groups="alice",
    )
    assert [r["status"] for r in body["results"]] == ["applied", "rejected", "applied"], body
    assert body["results"][1]["error"]["code"] == "forbidden", body
    assert rows(pg_dsn, "SELECT id FROM tasks WHERE id >= 30") == [(30,)]
