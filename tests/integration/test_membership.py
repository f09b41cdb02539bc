"""Read rules through membership tables: move-in, move-out, moves between projects, the
two-level chain, paging through a move, live wake-ups — each checked against
PostgreSQL's own answer to the rule (the oracle)."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from tests.fixtures.service import Sidecar, run_sql, state_of

pytestmark = pytest.mark.pg

SCHEMA = """
CREATE TABLE orgs_members (org_id int NOT NULL, user_id text NOT NULL,
                           PRIMARY KEY (org_id, user_id));
CREATE TABLE projects (id int PRIMARY KEY, org_id int);
CREATE TABLE members (project_id int NOT NULL, user_id text NOT NULL,
                      role text NOT NULL DEFAULT 'member', PRIMARY KEY (project_id, user_id));
CREATE TABLE tasks (id int PRIMARY KEY, project_id int, owner text, title text NOT NULL);
INSERT INTO projects VALUES (1, 10), (2, 10), (3, 20);
INSERT INTO tasks SELECT g, 1 + g % 3, 'u' || (g % 4), 't' || g FROM generate_series(1, 30) g;
INSERT INTO members VALUES (1, 'alice', 'member'), (2, 'bob', 'member');
INSERT INTO orgs_members VALUES (10, 'carol');
"""

TASK_RULE = "project_id IN (SELECT project_id FROM public.members WHERE user_id = :sub)"
ORG_RULE = (
    "project_id IN (SELECT id FROM projects WHERE org_id IN "
    "(SELECT org_id FROM orgs_members WHERE user_id = :sub))"
)
COLLECTIONS = f"""
  tasks:
    table: tasks
    read: "{TASK_RULE}"
  org_tasks:
    table: tasks
    columns: [id, project_id, title]
    read: "{ORG_RULE}"
  mine:
    table: tasks
    columns: [id, title]
    read: "owner = :sub OR {TASK_RULE}"
"""

ORACLE = {
    "tasks": ("id, project_id, owner, title", TASK_RULE),
    "org_tasks": ("id, project_id, title", ORG_RULE),
    "mine": ("id, title", f"owner = :sub OR {TASK_RULE}"),
}
USERS = ("alice", "bob", "carol", "u1")


def expected(dsn: str, sub: str) -> dict:
    out: dict = {}
    with psycopg.connect(dsn) as conn:
        for name, (cols, rule) in ORACLE.items():
            sql = f"SELECT {cols} FROM tasks WHERE {rule.replace(':sub', '%(sub)s')}"
            cur = conn.execute(sql, {"sub": sub})
            names = [d.name for d in cur.description or ()]
            for row in cur.fetchall():
                as_dict = dict(zip(names, row, strict=True))
                out[(name, (("id", as_dict["id"]),))] = as_dict
    return out


async def check(sc: Sidecar, dsn: str, states: dict, limit: int = 1000) -> None:
    await sc.caught_up(dsn)
    for sub in USERS:
        cursor = sc.cursors.get(sub)
        while True:
            page = await sc.pull(sub, cursor, limit=limit)
            state_of(page["changes"], states.setdefault(sub, {}))
            cursor = page["cursor"]
            if not page["has_more"]:
                break
        sc.cursors[sub] = cursor
        assert states[sub] == expected(dsn, sub), sub


async def test_move_in_move_out_and_moves(pg_dsn, pg_url, sidecar_factory) -> None:
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, COLLECTIONS)
    states: dict = {}
    await check(sc, pg_dsn, states)
    assert len(states["alice"]) > 0
    steps = [
        "INSERT INTO members VALUES (3, 'alice')",  # move-in of old rows
        "DELETE FROM members WHERE project_id = 1 AND user_id = 'alice'",  # move-out
        "INSERT INTO members VALUES (1, 'bob')",
        "UPDATE members SET user_id = 'alice' WHERE project_id = 1 AND user_id = 'bob'",
        "UPDATE tasks SET project_id = 2 WHERE id % 5 = 0",  # rows moving between projects
        "UPDATE projects SET org_id = 10 WHERE id = 3",  # a project moves into carol's org
        "DELETE FROM orgs_members",  # carol loses her org: move-out two levels down
        "INSERT INTO orgs_members VALUES (20, 'carol')",
        "UPDATE tasks SET project_id = NULL WHERE id = 7",
        "INSERT INTO members VALUES (2, 'u1')",  # u1 owns some rows already (OR branch)
        "DELETE FROM members WHERE user_id = 'u1'",
        "TRUNCATE members",
    ]
    for step in steps:
        run_sql(pg_dsn, step)
        await check(sc, pg_dsn, states)


async def test_a_move_in_spans_pages_and_survives_changes_between_them(
    pg_dsn, pg_url, sidecar_factory
) -> None:
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, COLLECTIONS)
    states: dict = {}
    await check(sc, pg_dsn, states, limit=3)
    run_sql(pg_dsn, "INSERT INTO members VALUES (3, 'alice'), (2, 'alice')")
    await sc.caught_up(pg_dsn)
    page = await sc.pull("alice", sc.cursors["alice"], limit=2)
    assert page["has_more"]
    state_of(page["changes"], states["alice"])
    # changes between the pages: the move target is kept, the rest follows
    run_sql(
        pg_dsn,
        "DELETE FROM members WHERE project_id = 2 AND user_id = 'alice'",
        "UPDATE tasks SET title = 'changed' WHERE project_id = 3",
    )
    sc.cursors["alice"] = page["cursor"]
    await check(sc, pg_dsn, states, limit=2)


async def test_a_live_pull_wakes_on_a_membership_change(pg_dsn, pg_url, sidecar_factory) -> None:
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, COLLECTIONS)
    states: dict = {}
    await check(sc, pg_dsn, states)
    waiting = asyncio.ensure_future(
        sc.pull("alice", sc.cursors["alice"], live="true", timeout=20, collections="tasks")
    )
    await asyncio.sleep(0.5)
    assert not waiting.done()
    run_sql(pg_dsn, "INSERT INTO members VALUES (3, 'alice')")
    page = await asyncio.wait_for(waiting, 10)
    assert {c["row"]["project_id"] for c in page["changes"]} == {3}


async def test_one_commit_waking_many_members_reads_the_store_once(
    pg_dsn, pg_url, sidecar_factory
) -> None:
    """Members of one project waiting live are answered from one read of the store (the
    page of their common scopes), not one read per member; each gets the new row."""
    run_sql(pg_dsn, SCHEMA)
    users = [f"m{n}" for n in range(12)]
    run_sql(pg_dsn, *(f"INSERT INTO members VALUES (3, '{u}')" for u in users))
    sc = await sidecar_factory(pg_url, COLLECTIONS)
    await sc.caught_up(pg_dsn)
    cursors = {}
    for u in users:
        page = await sc.pull(u, collections="tasks")
        assert {c["row"]["project_id"] for c in page["changes"]} == {3}
        cursors[u] = page["cursor"]
    waiting = [
        asyncio.ensure_future(sc.pull(u, cursors[u], live="true", timeout=20, collections="tasks"))
        for u in users
    ]
    puller = sc.service.puller
    for _ in range(200):  # every long-poll waits (bounded: 10 s)
        if puller.live_count() == len(users):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # each has read again once watching
    hits, misses = puller.cache.hits, puller.cache.misses
    run_sql(pg_dsn, "INSERT INTO tasks VALUES (100, 3, 'x', 'new')")
    pages = await asyncio.wait_for(asyncio.gather(*waiting), 10)
    for page in pages:
        assert [c["row"]["id"] for c in page["changes"]] == [100]
    read = puller.cache.misses - misses
    assert read + puller.cache.hits - hits == len(users)  # each answer went through it
    assert read <= 2  # one read (two if the wake-ups straddle a second commit)
