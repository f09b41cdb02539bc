"""The oracle test of membership rules (issue 14): random memberships, rows and pulls
against a real PostgreSQL, and after every complete pull (`has_more` false) a client's
folded state equals PostgreSQL's own `SELECT <columns> FROM tasks WHERE <rule>` with the
caller's claims.

`test_membership_rules_agree_with_postgres` is a hypothesis state machine (derandomized:
the same sequence on every run) over one database and one sidecar for the whole test; each
example starts from the same baseline rows (DELETE, then INSERT: the sidecar captures it
like any change) with clients that hold nothing. Memberships are added, removed and
changed (user, role, project, key), tasks inserted, updated, moved (NULL project
included), deleted and re-keyed, projects move between organisations, and users pull
from any cursor they were ever given (mid-move ones too), folding into the state they had
there, with small page sizes. Deterministic tests cover NDJSON, SSE, `after_lsn` and
ETag/304 with a membership move, under the same oracle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import orjson
import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test

from tests.fixtures.service import Sidecar, auth, run_sql, state_of, wait_until
from tests.integration.test_live import open_stream, read_event

pytestmark = pytest.mark.pg

SCHEMA = """
CREATE TABLE org_members (id int PRIMARY KEY, org_id int, user_id text);
CREATE TABLE projects (id int PRIMARY KEY, org_id int);
CREATE TABLE members (id int PRIMARY KEY, project_id int, user_id text, role text);
CREATE TABLE tasks (id int PRIMARY KEY, project_id int, owner text, title text NOT NULL);
"""
BASELINE = (
    "DELETE FROM tasks",
    "DELETE FROM members",
    "DELETE FROM projects",
    "DELETE FROM org_members",
    "INSERT INTO projects VALUES (1, 10), (2, 10), (3, 20), (4, NULL)",
    "INSERT INTO members VALUES (1, 1, 'alice', 'member'), (2, 2, 'bob', 'viewer'), "
    "(3, 3, 'alice', 'viewer'), (4, NULL, 'carol', 'member'), (5, 2, NULL, 'member')",
    "INSERT INTO org_members VALUES (1, 10, 'carol'), (2, 20, 'bob')",
    "INSERT INTO tasks SELECT g, nullif(g % 5, 0), (ARRAY['alice','bob','carol',NULL])[1 + g % 4],"
    " 't' || g FROM generate_series(1, 10) g",
)

MEMBER = "project_id IN (SELECT project_id FROM members WHERE user_id = :sub AND role <> 'viewer')"
ANY_MEMBER = "project_id IN (SELECT project_id FROM members WHERE user_id = :sub)"
ORG = (
    "project_id IN (SELECT id FROM projects WHERE org_id IN "
    "(SELECT org_id FROM org_members WHERE user_id = :sub))"
)
# collection → (its columns, its rule); every collection reads table tasks
ORACLE = {
    "tasks": ("id, project_id, owner, title", MEMBER),
    "mine": ("id, project_id, title", f"owner = :sub OR {ANY_MEMBER}"),
    "org_tasks": ("id, project_id, title", ORG),
    "either": ("id, project_id", f"{MEMBER} OR {ORG}"),
    "team": ("id, owner", f"owner IN (SELECT user_id FROM members WHERE {ORG})"),
    "pair": (
        "id, title",
        "project_id = ANY (SELECT project_id FROM members WHERE user_id = :sub) AND "
        "owner IN (SELECT user_id FROM org_members WHERE org_id = 10) AND title <> 'x'",
    ),
    # memberships without a user grant to every caller; rows without a project are public
    "open": (
        "id, project_id",
        "project_id IN (SELECT project_id FROM members WHERE user_id = :sub OR role IS NULL) "
        "OR project_id IS NULL",
    ),
}
COLLECTIONS = "".join(
    f"""
  {name}:
    table: tasks
    columns: [{cols}]
    read: "{rule}"
"""
    for name, (cols, rule) in ORACLE.items()
)
USERS = ("alice", "bob", "carol")

projects = st.sampled_from([1, 2, 3, 4, None])
users = st.sampled_from([*USERS, None])
roles = st.sampled_from(["member", "viewer", None])
orgs = st.sampled_from([10, 20, None])
task_ids = st.integers(1, 12)
member_ids = st.integers(1, 8)


def expected(dsn: str, sub: str) -> dict:
    """PostgreSQL's answer: what `sub` sees, keyed as `state_of` keys a client's state."""
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


def literal(value: Any) -> str:
    if value is None:
        return "NULL"
    return str(value) if isinstance(value, int) else f"'{value}'"


async def prepared(pg_dsn: str, pg_url: str, sidecar_factory: Any) -> Sidecar:
    run_sql(pg_dsn, SCHEMA, *BASELINE)
    return await sidecar_factory(pg_url, COLLECTIONS)


async def pull_all(sc: Sidecar, sub: str, cursor: str | None, state: dict, limit: int) -> str:
    """Pages from `cursor` folded into `state` until `has_more` is false; the last cursor."""
    while True:
        page = await sc.pull(sub, cursor, limit=limit)
        state_of(page["changes"], state)
        cursor = page["cursor"]
        if not page["has_more"]:
            return cursor


async def ndjson_page(sc: Sidecar, sub: str, cursor: str | None, limit: int) -> dict:
    """An NDJSON pull of at most `limit` changes, as a JSON page (its last cursor line)."""
    assert sc.client is not None
    params = {"limit": str(limit), **({"cursor": cursor} if cursor else {})}
    headers = {**auth(sub), "Accept": "application/x-ndjson"}
    resp = await sc.client.get("/v1/pull", params=params, headers=headers)
    assert resp.status == 200, await resp.text()
    lines = [orjson.loads(line) for line in (await resp.read()).splitlines()]
    tail = lines[-1]
    assert "cursor" in tail, tail
    return {**tail, "changes": [item for item in lines if "collection" in item]}


class MembershipMachine(RuleBasedStateMachine):
    """Set on a subclass per test: the loop the sidecar runs on, the sidecar, the DSN."""

    loop: asyncio.AbstractEventLoop
    sc: Sidecar
    dsn: str

    def __init__(self) -> None:
        super().__init__()
        # per user: every (cursor, folded state at that cursor) it was given
        self.held: dict[str, list[tuple[str | None, dict]]] = {u: [(None, {})] for u in USERS}

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(120)

    def sql(self, *statements: str) -> None:
        run_sql(self.dsn, *statements)

    @initialize()
    def baseline(self) -> None:
        self.sql(*BASELINE)

    # -- memberships --------------------------------------------------------------------

    @rule(i=member_ids, project=projects, user=users, role=roles)
    def put_member(self, i: int, project: int | None, user: str | None, role: str | None) -> None:
        values = f"{i}, {literal(project)}, {literal(user)}, {literal(role)}"
        self.sql(
            f"INSERT INTO members VALUES ({values}) ON CONFLICT (id) DO UPDATE SET "
            "project_id = excluded.project_id, user_id = excluded.user_id, role = excluded.role"
        )

    @rule(
        i=member_ids,
        change=st.one_of(
            st.tuples(st.just("user_id"), users),
            st.tuples(st.just("role"), roles),
            st.tuples(st.just("project_id"), projects),
        ),
    )
    def change_member(self, i: int, change: tuple[str, Any]) -> None:
        column, value = change
        self.sql(f"UPDATE members SET {column} = {literal(value)} WHERE id = {i}")

    @rule(i=member_ids)
    def remove_member(self, i: int) -> None:
        self.sql(f"DELETE FROM members WHERE id = {i}")

    @rule(old=member_ids, new=member_ids)
    def rekey_member(self, old: int, new: int) -> None:
        self.sql(
            f"UPDATE members SET id = {new} WHERE id = {old} "
            f"AND NOT EXISTS (SELECT 1 FROM members WHERE id = {new})"
        )

    @rule(i=st.integers(1, 4), org=orgs, user=users)
    def put_org_member(self, i: int, org: int | None, user: str | None) -> None:
        self.sql(
            f"INSERT INTO org_members VALUES ({i}, {literal(org)}, {literal(user)}) "
            "ON CONFLICT (id) DO UPDATE SET org_id = excluded.org_id, user_id = excluded.user_id"
        )

    @rule(i=st.integers(1, 4))
    def remove_org_member(self, i: int) -> None:
        self.sql(f"DELETE FROM org_members WHERE id = {i}")

    @rule(project=st.integers(1, 4), org=orgs)
    def move_project(self, project: int, org: int | None) -> None:
        self.sql(f"UPDATE projects SET org_id = {literal(org)} WHERE id = {project}")

    # -- tasks --------------------------------------------------------------------------

    @rule(i=task_ids, project=projects, owner=users, title=st.sampled_from("abc"))
    def put_task(self, i: int, project: int | None, owner: str | None, title: str) -> None:
        self.sql(
            f"INSERT INTO tasks VALUES ({i}, {literal(project)}, {literal(owner)}, '{title}') "
            "ON CONFLICT (id) DO UPDATE SET project_id = excluded.project_id, "
            "owner = excluded.owner, title = excluded.title"
        )

    @rule(i=task_ids, project=projects)
    def move_task(self, i: int, project: int | None) -> None:
        self.sql(f"UPDATE tasks SET project_id = {literal(project)} WHERE id = {i}")

    @rule(i=task_ids, title=st.sampled_from("xyz"))
    def retitle_task(self, i: int, title: str) -> None:
        self.sql(f"UPDATE tasks SET title = '{title}' WHERE id = {i}")

    @rule(i=task_ids)
    def delete_task(self, i: int) -> None:
        self.sql(f"DELETE FROM tasks WHERE id = {i}")

    @rule(old=task_ids, new=task_ids)
    def rekey_task(self, old: int, new: int) -> None:
        self.sql(
            f"UPDATE tasks SET id = {new} WHERE id = {old} "
            f"AND NOT EXISTS (SELECT 1 FROM tasks WHERE id = {new})"
        )

    @rule(i=member_ids, task=task_ids, project=projects, user=users)
    def together(self, i: int, task: int, project: int | None, user: str | None) -> None:
        """A membership and a task change in one transaction (one captured batch)."""
        with psycopg.connect(self.dsn) as conn:
            conn.execute(f"UPDATE members SET user_id = {literal(user)} WHERE id = {i}")
            conn.execute(f"UPDATE tasks SET project_id = {literal(project)} WHERE id = {task}")
            conn.execute(f"DELETE FROM members WHERE id = {(i % 8) + 1}")

    @rule(table=st.sampled_from(["members", "org_members", "projects", "tasks"]))
    def truncate(self, table: str) -> None:
        self.sql(f"TRUNCATE {table}")

    # -- pulls --------------------------------------------------------------------------

    @rule(
        sub=st.sampled_from(USERS),
        pick=st.integers(0, 1_000_000),
        limit=st.sampled_from([1, 2, 3, 1000]),
        ndjson=st.booleans(),
    )
    def pull(self, sub: str, pick: int, limit: int, ndjson: bool) -> None:
        """From any cursor `sub` was given, with the state it had there, to the end."""
        self.pull_from(sub, pick, limit, ndjson)

    @rule(sub=st.sampled_from(USERS), limit=st.sampled_from([1, 2, 1000]))
    def pull_latest(self, sub: str, limit: int) -> None:
        """From the last cursor `sub` was given (the usual client)."""
        self.pull_from(sub, -1, limit, False)

    def pull_from(self, sub: str, pick: int, limit: int, ndjson: bool) -> None:
        held = self.held[sub]
        cursor, at = held[pick % len(held)]
        state = dict(at)
        self.run(self.sc.caught_up(self.dsn))
        while True:
            if ndjson:
                page = self.run(ndjson_page(self.sc, sub, cursor, limit))
            else:
                page = self.run(self.sc.pull(sub, cursor, limit=limit))
            state_of(page["changes"], state)
            cursor = page["cursor"]
            held.append((cursor, dict(state)))
            if not page["has_more"]:
                break
        del held[1:-40]  # bounded: the first (no cursor) and the 40 newest
        assert state == expected(self.dsn, sub), (sub, cursor)


async def test_membership_rules_agree_with_postgres(pg_dsn, pg_url, sidecar_factory) -> None:
    sc = await prepared(pg_dsn, pg_url, sidecar_factory)
    machine = type(
        "Machine",
        (MembershipMachine,),
        {"loop": asyncio.get_running_loop(), "sc": sc, "dsn": pg_dsn},
    )
    await asyncio.to_thread(
        run_state_machine_as_test,
        machine,
        settings=settings(
            max_examples=12,
            stateful_step_count=50,
            deadline=None,
            derandomize=True,  # the same sequences on every run
            database=None,
            suppress_health_check=list(HealthCheck),
        ),
    )


# -- deterministic: NDJSON, SSE, after_lsn, ETag/304 ------------------------------------------


async def test_ndjson_pull_moves_in_and_out(pg_dsn, pg_url, sidecar_factory) -> None:
    sc = await prepared(pg_dsn, pg_url, sidecar_factory)
    assert sc.client is not None
    headers = {**auth("alice"), "Accept": "application/x-ndjson"}

    async def ndjson(cursor: str | None, state: dict) -> str:
        params = {"limit": "2"} if cursor is None else {"cursor": cursor}
        while True:  # an explicit limit ends the stream early: follow its last cursor
            resp = await sc.client.get("/v1/pull", params=params, headers=headers)
            assert resp.status == 200
            lines = [orjson.loads(line) for line in (await resp.read()).splitlines()]
            state_of([item for item in lines if "collection" in item], state)
            tail = lines[-1]
            if not tail["has_more"]:
                return tail["cursor"]
            params = {"cursor": tail["cursor"]}

    state: dict = {}
    await sc.caught_up(pg_dsn)
    cursor = await ndjson(None, state)
    assert state == expected(pg_dsn, "alice")
    for step in (
        "UPDATE members SET role = 'member' WHERE id = 3",  # move-in of project 3
        "UPDATE members SET user_id = 'bob' WHERE id = 1",  # move-out of project 1
        "UPDATE tasks SET project_id = 3 WHERE id = 1",  # a task moves in
    ):
        run_sql(pg_dsn, step)
        await sc.caught_up(pg_dsn)
        cursor = await ndjson(cursor, state)
        assert state == expected(pg_dsn, "alice"), step


async def test_sse_stream_moves_in_and_out(pg_dsn, pg_url, sidecar_factory) -> None:
    sc = await prepared(pg_dsn, pg_url, sidecar_factory)
    await sc.caught_up(pg_dsn)
    resp = await open_stream(sc, sub="alice")  # type: ignore[arg-type]
    assert await read_event(resp) == {"retry": "3000"}
    state: dict = {}

    async def until_has_no_more() -> None:
        while True:
            event = await read_event(resp)
            assert event.get("event") == "changes", event
            page = orjson.loads(event["data"])
            state_of(page["changes"], state)
            if not page["has_more"]:
                return

    await until_has_no_more()
    assert state == expected(pg_dsn, "alice")
    for step in (
        "INSERT INTO members VALUES (7, 4, 'alice', 'member')",  # move-in of project 4
        "DELETE FROM members WHERE id = 1",  # move-out of project 1
    ):
        run_sql(pg_dsn, step)
        await until_has_no_more()
        await sc.caught_up(pg_dsn)
        assert state == expected(pg_dsn, "alice"), step
    resp.close()


async def test_after_lsn_reads_a_membership_change(pg_dsn, pg_url, sidecar_factory) -> None:
    sc = await prepared(pg_dsn, pg_url, sidecar_factory)
    await sc.caught_up(pg_dsn)
    state: dict = {}
    cursor = await pull_all(sc, "bob", None, state, 1000)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE members SET role = 'member' WHERE id = 2")
        lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
    # no caught_up: after_lsn waits for capture to reach the write
    page = await sc.pull("bob", cursor, after_lsn=str(lsn), limit=1000)
    state_of(page["changes"], state)
    assert not page["has_more"]
    assert state == expected(pg_dsn, "bob")
    assert any(c["collection"] == "tasks" for c in page["changes"])


async def test_etag_304_until_a_membership_change(pg_dsn, pg_url, sidecar_factory) -> None:
    sc = await prepared(pg_dsn, pg_url, sidecar_factory)
    await sc.caught_up(pg_dsn)
    state: dict = {}
    cursor = await pull_all(sc, "alice", None, state, 1000)
    first = await sc.get("/v1/pull", sub="alice", params={"cursor": cursor})
    etag = first.headers["ETag"]
    again = await sc.get(
        "/v1/pull", sub="alice", params={"cursor": cursor}, headers={"If-None-Match": etag}
    )
    assert again.status == 304
    # nothing committed: still 304 (the view reads the same grants at the same version)
    await sc.caught_up(pg_dsn)
    same = await sc.get(
        "/v1/pull", sub="alice", params={"cursor": cursor}, headers={"If-None-Match": etag}
    )
    assert same.status == 304
    # alice's membership moves: the same cursor now answers differently
    run_sql(pg_dsn, "UPDATE members SET role = 'member' WHERE id = 3")
    await sc.caught_up(pg_dsn)
    changed = await sc.get(
        "/v1/pull", sub="alice", params={"cursor": cursor}, headers={"If-None-Match": etag}
    )
    assert changed.status == 200
    page = await changed.json()
    assert page["changes"] and changed.headers["ETag"] != etag
    state_of(page["changes"], state)
    if page["has_more"]:
        await pull_all(sc, "alice", page["cursor"], state, 1000)
    assert state == expected(pg_dsn, "alice")


# -- live waits watch the scopes a caller has when it starts waiting ------------------------


def commit_after_first_read(sc: Sidecar, dsn: str, statement: str) -> None:
    """Make `statement` land (captured, its wake-ups sent) right after the next store read
    of a pull: between a live pull's first read and the start of its wait."""
    assert sc.service is not None
    puller = sc.service.puller
    real = puller._read

    async def read(*args: Any, **kwargs: Any) -> Any:
        del puller._read  # once
        found = await real(*args, **kwargs)
        run_sql(dsn, statement)
        await sc.caught_up(dsn)
        return found

    puller._read = read  # type: ignore[method-assign]


async def test_a_live_pull_watches_a_scope_gained_before_it_waits(
    pg_dsn, pg_url, sidecar_factory
) -> None:
    sc = await prepared(pg_dsn, pg_url, sidecar_factory)
    await sc.caught_up(pg_dsn)
    state: dict = {}
    cursor = await pull_all(sc, "alice", None, state, 1000)
    # alice joins project 5 (no tasks yet) while her long-poll starts: her wait must
    # watch project 5, not only the scopes she had at its first read
    commit_after_first_read(sc, pg_dsn, "INSERT INTO members VALUES (7, 5, 'alice', 'member')")
    waiting = asyncio.ensure_future(
        sc.pull("alice", cursor, live="true", timeout=30, collections="tasks")
    )
    puller = sc.service.puller  # type: ignore[union-attr]

    async def hook_ran() -> bool:
        return "_read" not in vars(puller)

    await wait_until(hook_ran, what="the membership change during the first read")
    await asyncio.sleep(0.3)
    assert not waiting.done()
    run_sql(pg_dsn, "INSERT INTO tasks VALUES (50, 5, 'bob', 'new')")
    page = await asyncio.wait_for(waiting, 10)
    assert [c["key"] for c in page["changes"]] == [{"id": 50}]


async def test_a_stream_watches_a_scope_gained_before_it_waits(
    pg_dsn, pg_url, sidecar_factory
) -> None:
    sc = await prepared(pg_dsn, pg_url, sidecar_factory)
    await sc.caught_up(pg_dsn)
    commit_after_first_read(sc, pg_dsn, "INSERT INTO members VALUES (7, 5, 'alice', 'member')")
    resp = await open_stream(sc, sub="alice", heartbeat=60, collections="tasks")  # type: ignore[arg-type]
    await read_event(resp)  # retry
    state: dict = {}
    first = orjson.loads((await read_event(resp))["data"])
    state_of(first["changes"], state)
    run_sql(pg_dsn, "INSERT INTO tasks VALUES (50, 5, 'bob', 'new')")
    event = await read_event(resp, timeout=10)
    page = orjson.loads(event["data"])
    assert [c["key"] for c in page["changes"]] == [{"id": 50}]
    resp.close()
