"""The three adapters under a membership rule: a member gains a project with more rows than
one page (small limits), pulls through the adapter's protocol until up to date, and holds
exactly what PostgreSQL's own SELECT with the rule returns (the oracle); then loses it
(move-out deletes: Electric `delete` messages, RxDB `_deleted` documents, WatermelonDB
`deleted` ids) while a row visible through another membership stays. Live: an Electric
long-poll and an RxDB pull stream wake on a membership change.

The clients here speak each protocol as the library does (Electric: follow
`electric-handle`/`electric-offset` to an up-to-date; RxDB: send the checkpoint's `id` and
`lwt` back, stop at a short batch; WatermelonDB: pull from `timestamp` until `has_more` is
false); the real libraries run in test_electric.py, test_rxdb.py, test_watermelondb.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import psycopg
import pytest

from tests.fixtures.service import Sidecar, run_sql, wait_until

pytestmark = pytest.mark.pg

SCHEMA = """
CREATE TABLE members (project_id int NOT NULL, user_id text NOT NULL,
                      PRIMARY KEY (project_id, user_id));
CREATE TABLE team_members (team_id int NOT NULL, user_id text NOT NULL,
                           PRIMARY KEY (team_id, user_id));
CREATE TABLE tasks (id int PRIMARY KEY, project_id int, team_id int, title text NOT NULL);
INSERT INTO tasks SELECT g, 1, NULL, 'one ' || g FROM generate_series(1, 2) g;
INSERT INTO tasks SELECT g, 2, NULL, 'two ' || g || repeat('x', 60) FROM generate_series(3, 16) g;
INSERT INTO tasks VALUES (17, 2, 7, 'two, also team 7'), (18, 3, NULL, 'three');
INSERT INTO members VALUES (1, 'alice'), (3, 'bob');
INSERT INTO team_members VALUES (7, 'alice');
"""
RULE = (
    "project_id IN (SELECT project_id FROM public.members WHERE user_id = :sub) "
    "OR team_id IN (SELECT team_id FROM public.team_members WHERE user_id = :sub)"
)
COLLECTIONS = f"""
  tasks:
    table: tasks
    read: "{RULE}"
"""
# small pages, so that the move-in of project 2 spans several (WatermelonDB's answers are
# bounded in bytes only: a small byte bound)
EXTRA = "limits: {max_page: 3}"
SMALL_ANSWERS = "limits: {max_page: 3, max_page_bytes: 700}"
GAIN = "INSERT INTO members VALUES (2, 'alice')"
LOSE = "DELETE FROM members WHERE project_id = 2 AND user_id = 'alice'"
ROUNDS = 60  # requests a client may need to be up to date (a restarting move never is)


def oracle(dsn: str, sub: str) -> dict[int, dict[str, Any]]:
    sql = f"SELECT id, project_id, team_id, title FROM tasks WHERE {RULE}"
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(sql.replace(":sub", "%(sub)s"), {"sub": sub})
        return {
            r[0]: dict(zip(("id", "project_id", "team_id", "title"), r, strict=True)) for r in cur
        }


async def scenario(sc: Sidecar, dsn: str, sync: Any) -> None:
    """Initial sync, move-in of project 2 (15 rows), move-out of it (row 17 stays)."""
    assert await sync() == oracle(dsn, "alice")
    for step in (GAIN, LOSE):
        run_sql(dsn, step)
        await sc.caught_up(dsn)
        state = await sync()
        assert state == oracle(dsn, "alice"), step
    assert 17 in state and 3 not in state


# -- Electric ---------------------------------------------------------------------------


class ElectricClient:
    """A ShapeStream: follows handle and offset; applies insert/update/delete."""

    def __init__(self, sc: Sidecar) -> None:
        self.sc = sc
        self.handle: str | None = None
        self.offset = "-1"
        self.rows: dict[str, dict[str, Any]] = {}

    async def request(self, live: bool = False) -> bool:
        params = {"table": "tasks", "offset": self.offset}
        if self.handle:
            params["handle"] = self.handle
        if live:
            params["live"] = "true"
        resp = await self.sc.get("/electric/v1/shape", sub="alice", params=params)
        assert resp.status == 200, await resp.text()
        self.handle = resp.headers["electric-handle"]
        self.offset = resp.headers["electric-offset"]
        for message in await resp.json():
            op = message["headers"].get("operation")
            if op in ("insert", "update"):
                self.rows[message["key"]] = message["value"]
            elif op == "delete":
                self.rows.pop(message["key"], None)
        return resp.headers.get("electric-up-to-date") == "true"

    async def sync(self) -> dict[int, dict[str, Any]]:
        for _ in range(ROUNDS):
            if await self.request():
                return self.state()
        raise AssertionError("never up to date")

    def state(self) -> dict[int, dict[str, Any]]:
        def typed(v: dict[str, Any]) -> dict[str, Any]:
            ints = ("id", "project_id", "team_id")
            return {k: (int(x) if k in ints and x is not None else x) for k, x in v.items()}

        return {int(v["id"]): typed(v) for v in self.rows.values()}


async def test_electric_move_in_and_out(pg_dsn, pg_url, sidecar_factory) -> None:
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, COLLECTIONS, EXTRA)
    await scenario(sc, pg_dsn, ElectricClient(sc).sync)


async def test_electric_long_poll_wakes_on_membership(pg_dsn, pg_url, sidecar_factory) -> None:
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, COLLECTIONS, EXTRA)
    client = ElectricClient(sc)
    await client.sync()
    waiting = asyncio.ensure_future(client.request(live=True))
    await asyncio.sleep(0.5)
    assert not waiting.done()
    run_sql(pg_dsn, GAIN)
    await asyncio.wait_for(waiting, 10)  # woken (well before the 20 s long-poll ends)
    assert await client.sync() == oracle(pg_dsn, "alice")


# -- RxDB -------------------------------------------------------------------------------


def apply_documents(rows: dict[int, dict[str, Any]], documents: list[dict[str, Any]]) -> None:
    for doc in documents:
        if doc["_deleted"]:
            rows.pop(int(doc["id"]), None)
        else:
            rows[int(doc["id"])] = {k: v for k, v in doc.items() if k != "_deleted"} | {
                "id": int(doc["id"])
            }


class RxClient:
    """RxDB's downstream: pull batches of `limit` from the checkpoint until a short one."""

    limit = 3

    def __init__(self, sc: Sidecar) -> None:
        self.sc = sc
        self.checkpoint: dict[str, Any] | None = None
        self.rows: dict[int, dict[str, Any]] = {}

    def params(self) -> dict[str, str]:
        if self.checkpoint is None:
            return {}
        return {"id": self.checkpoint["id"], "lwt": str(self.checkpoint["lwt"])}

    async def sync(self) -> dict[int, dict[str, Any]]:
        for _ in range(ROUNDS):
            params = self.params() | {"limit": str(self.limit)}
            resp = await self.sc.get("/rxdb/tasks/pull", sub="alice", params=params)
            body = await resp.json()
            assert resp.status == 200, body
            apply_documents(self.rows, body["documents"])
            # RxDB stacks checkpoints field by field
            self.checkpoint = {**(self.checkpoint or {}), **body["checkpoint"]}
            if len(body["documents"]) < self.limit:
                return dict(self.rows)
        raise AssertionError("never a short batch")


async def test_rxdb_move_in_and_out(pg_dsn, pg_url, sidecar_factory) -> None:
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, COLLECTIONS, EXTRA)
    await scenario(sc, pg_dsn, RxClient(sc).sync)


async def test_rxdb_pull_stream_wakes_on_membership(pg_dsn, pg_url, sidecar_factory) -> None:
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, COLLECTIONS, EXTRA)
    client = RxClient(sc)
    await client.sync()
    resp = await sc.get("/rxdb/tasks/pullStream", sub="alice", params=client.params())
    assert resp.status == 200
    try:

        async def events() -> None:
            while True:
                line = (await resp.content.readline()).decode()
                if line.startswith("data: "):
                    event = json.loads(line[6:])
                    apply_documents(client.rows, event["documents"])
                    client.checkpoint = {**(client.checkpoint or {}), **event["checkpoint"]}

        reading = asyncio.ensure_future(events())
        for step in (GAIN, LOSE):
            run_sql(pg_dsn, step)
            want = oracle(pg_dsn, "alice")

            async def arrived(want: dict = want) -> bool:
                return client.rows == want

            await wait_until(arrived, 10, f"the stream's documents after {step}")
        reading.cancel()
    finally:
        resp.close()
    # the checkpoint the stream left goes on exactly
    assert await client.sync() == oracle(pg_dsn, "alice")


# -- WatermelonDB -----------------------------------------------------------------------


class WatermelonClient:
    """`synchronize()` with the documented `pullChanges`: pull from each answer's
    timestamp until `has_more` is false (applying them in order = merging them). Every
    timestamp must be one a client may store (one that stops after an answer has it)."""

    def __init__(self, sc: Sidecar) -> None:
        self.sc = sc
        self.timestamp: int | None = None
        self.rows: dict[int, dict[str, Any]] = {}
        self.answers = 0

    async def pull(self) -> bool:
        params = {"last_pulled_at": str(self.timestamp or "")}
        resp = await self.sc.get("/watermelondb/sync", sub="alice", params=params)
        body = await resp.json()
        assert resp.status == 200, body
        assert "experimentalStrategy" not in body
        self.answers += 1
        changes = body["changes"]["tasks"]
        for rid in changes["deleted"]:
            self.rows.pop(int(rid), None)
        for record in changes["updated"]:
            self.rows[int(record["id"])] = record | {"id": int(record["id"])}
        assert isinstance(body["timestamp"], int) and body["timestamp"] < 1 << 53
        self.timestamp = body["timestamp"]
        return not body["has_more"]

    async def sync(self) -> dict[int, dict[str, Any]]:
        for _ in range(ROUNDS):
            if await self.pull():
                return dict(self.rows)
        raise AssertionError("never has_more false")


async def test_watermelondb_move_in_and_out(pg_dsn, pg_url, sidecar_factory) -> None:
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, COLLECTIONS, SMALL_ANSWERS)
    client = WatermelonClient(sc)
    await scenario(sc, pg_dsn, client.sync)
    # outside a move the byte bound still cuts answers (and their timestamps go on exactly)
    before = client.answers
    run_sql(pg_dsn, "UPDATE tasks SET title = title || repeat('y', 200)")
    await sc.caught_up(pg_dsn)
    assert await client.sync() == oracle(pg_dsn, "alice")
    assert client.answers - before > 1


async def test_watermelondb_migration_replaces_under_membership(
    pg_dsn, pg_url, sidecar_factory
) -> None:
    """A full read cannot tell which rows a client lost through a membership change: a
    `migration` pull replaces the client's copy."""
    run_sql(pg_dsn, SCHEMA, GAIN)
    sc = await sidecar_factory(pg_url, COLLECTIONS, EXTRA)
    client = WatermelonClient(sc)
    await client.sync()
    run_sql(pg_dsn, LOSE)
    await sc.caught_up(pg_dsn)
    params = {"last_pulled_at": str(client.timestamp), "migration": "{}"}
    resp = await sc.get("/watermelondb/sync", sub="alice", params=params)
    body = await resp.json()
    assert body["experimentalStrategy"] == "replacement"
    ids = {int(r["id"]) for r in body["changes"]["tasks"]["updated"]}
    assert ids == set(oracle(pg_dsn, "alice"))
