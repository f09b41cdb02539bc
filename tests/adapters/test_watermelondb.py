"""The WatermelonDB adapter against the real `@nozbe/watermelondb` `synchronize()`.

Each Node process (tests/adapters/js/watermelondb/driver.cjs) holds WatermelonDB databases
on the LokiJS in-memory adapter, one per user, and is driven over stdin/stdout JSON lines
while the sidecar keeps serving on this event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from adapters.watermelondb import TAG_BITS, VERSION_BITS, epoch_tag, to_cursor, to_timestamp
from sidecar.changes import Cursor
from tests.fixtures.service import Sidecar, auth, token

pytestmark = pytest.mark.pg

PACKAGES = {"@nozbe/watermelondb": "0.28.0"}  # brings its LokiJS fork as a dependency
DRIVER = Path(__file__).parent / "js" / "watermelondb" / "driver.cjs"
STEP = 30.0  # seconds one driver command may take

SCHEMA = """
CREATE TABLE notes (
    id text PRIMARY KEY,
    title text NOT NULL,
    done boolean NOT NULL DEFAULT false,
    tags text[],
    owner_id text NOT NULL,
    secret text
);
INSERT INTO notes VALUES
    ('n1', 'buy milk', false, '{home}', 'alice', 'x'),
    ('n2', 'call bob', false, NULL, 'alice', 'x'),
    ('n3', 'water plants', true, NULL, 'alice', 'x'),
    ('b1', 'bob note', false, NULL, 'bob', 'x');
CREATE TABLE projects (id serial PRIMARY KEY, name text NOT NULL, owner_id text NOT NULL);
INSERT INTO projects (name, owner_id) VALUES ('garden', 'alice'), ('work', 'bob');
"""

COLLECTIONS = """
  notes:
    table: notes
    columns: [id, title, done, tags, owner_id]
    read: "owner_id = :sub"
    write:
      ops: [insert, update, delete]
      set: {owner_id: ":sub"}
  projects:
    table: projects
    read: "owner_id = :sub"
"""

CLIENT_TABLES = {  # the app's WatermelonDB schema: [column, type, optional]
    "notes": [
        ["title", "string"],
        ["done", "boolean"],
        ["tags", "string", True],
        ["owner_id", "string"],
    ],
    "projects": [["name", "string"], ["owner_id", "string"]],
}


def sql(dsn: str, statement: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(statement)
        return cur.fetchall() if cur.description else []


class Node:
    """One driver process; `call` sends a command and returns its result."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc = proc
        self.log = log

    async def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        await self.proc.stdin.drain()

    async def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), STEP)
        assert line, f"the driver exited; its log:\n{self.log.read_text()[-3000:]}"
        return json.loads(line)

    async def answer(self, cmd: str, **args: Any) -> dict[str, Any]:
        await self.send({"cmd": cmd, **args})
        return await self.read()

    async def call(self, cmd: str, **args: Any) -> Any:
        reply = await self.answer(cmd, **args)
        assert reply["ok"], f"{cmd}: {reply['error']}\n{self.log.read_text()[-3000:]}"
        return reply["result"]

    async def open(self, client: str, sc: Sidecar) -> None:
        assert sc.client is not None
        url = str(sc.client.make_url("/"))
        await self.call("open", client=client, token=token(client), url=url, tables=CLIENT_TABLES)

    async def notes(self, client: str) -> dict[str, dict[str, Any]]:
        return {r["id"]: r for r in await self.call("dump", client=client, table="notes")}

    async def sync_errors(self) -> list[str]:
        """WatermelonDB's complaints about the server's answers since the last check."""
        return [m for m in await self.call("logs") if "[Sync]" in m]


@pytest.fixture
async def node(
    node_project: Callable[[str, dict[str, str]], Path], tmp_path: Path
) -> AsyncIterator[Node]:
    root = node_project("watermelondb", PACKAGES)
    # A name of its own: the install directory is shared by every checkout on the machine,
    # and another one's driver must not replace this one's between copy and start.
    script = root / f"watermelondb-driver-{os.getpid()}-{uuid.uuid4().hex[:8]}.cjs"
    shutil.copyfile(DRIVER, script)
    log = tmp_path / "node.log"
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            "node",
            str(script),
            cwd=root,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
        )
    driver = Node(proc, log)
    yield driver
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        await asyncio.wait_for(proc.wait(), 5)
    except TimeoutError:
        proc.kill()
        await proc.wait()
    script.unlink(missing_ok=True)


@pytest.fixture
async def sc(pg_dsn: str, pg_url: str, sidecar_factory: Callable[..., Awaitable[Sidecar]]) -> Any:
    sql(pg_dsn, SCHEMA)
    return await sidecar_factory(pg_url, COLLECTIONS, extra="limits: {max_page: 2}")


async def test_sync_both_ways_in_each_users_scope(sc: Sidecar, node: Node, pg_dsn: str) -> None:
    await node.open("alice", sc)
    await node.open("bob", sc)

    # Initial sync: every row of the user's scope (pulled 2 a page), ids as strings.
    first = await node.call("sync", client="alice")
    notes = await node.notes("alice")
    assert sorted(notes) == ["n1", "n2", "n3"]
    assert notes["n1"]["title"] == "buy milk" and notes["n1"]["tags"] == '["home"]'
    assert notes["n1"]["_status"] == "synced" and "secret" not in notes["n1"]
    projects = await node.call("dump", client="alice", table="projects")
    assert [(p["id"], p["name"]) for p in projects] == [("1", "garden")]
    assert sc.service is not None
    epoch = sc.service.store.state().epoch
    assert first >> VERSION_BITS == epoch_tag(epoch)  # the timestamp carries the epoch

    # The second user sees only their own rows.
    await node.call("sync", client="bob")
    assert sorted(await node.notes("bob")) == ["b1"]
    assert [p["id"] for p in await node.call("dump", client="bob", table="projects")] == ["2"]

    # Server-side changes arrive at the next sync: update, delete, insert.
    sql(pg_dsn, "UPDATE notes SET title = 'buy oat milk' WHERE id = 'n1'")
    sql(pg_dsn, "DELETE FROM notes WHERE id = 'n2'")
    sql(pg_dsn, "INSERT INTO notes VALUES ('n4', 'new on server', false, NULL, 'alice', 'x')")
    sql(pg_dsn, "INSERT INTO notes VALUES ('b2', 'bob again', false, NULL, 'bob', 'x')")
    await sc.caught_up(pg_dsn)
    second = await node.call("sync", client="alice")
    notes = await node.notes("alice")
    assert sorted(notes) == ["n1", "n3", "n4"] and notes["n1"]["title"] == "buy oat milk"
    assert second > first

    # Client changes land in PostgreSQL: create (owner set by the server), update, delete.
    new_id = await node.call(
        "create", client="alice", table="notes", fields={"title": "from phone", "tags": '["x"]'}
    )
    await node.call("update", client="alice", table="notes", id="n3", fields={"done": False})
    await node.call("remove", client="alice", table="notes", id="n4")
    await node.call("sync", client="alice")
    rows = sql(pg_dsn, "SELECT id, title, done, tags, owner_id FROM notes")
    assert {r[0]: r[1:] for r in rows} == {
        "b1": ("bob note", False, None, "bob"),
        "b2": ("bob again", False, None, "bob"),
        new_id: ("from phone", False, ["x"], "alice"),
        "n1": ("buy oat milk", False, ["home"], "alice"),
        "n3": ("water plants", False, None, "alice"),
    }
    notes = await node.notes("alice")
    assert {r["_status"] for r in notes.values()} == {"synced"}
    await node.call("sync", client="alice")  # the server's owner_id comes back
    assert (await node.notes("alice"))[new_id]["owner_id"] == "alice"

    # Bob cannot write Alice's row, even naming its id: refused, nothing written.
    await node.call(
        "put_synced", client="bob", table="notes", raw={"id": "n1", "title": "mine now"}
    )
    await node.call("update", client="bob", table="notes", id="n1", fields={"title": "hacked"})
    reply = await node.answer("sync", client="bob")
    # not in Bob's view: answered as a missing row (409: pull, then push again), never 403,
    # so nothing tells Bob that the key exists elsewhere
    assert not reply["ok"] and "push 409" in reply["error"]
    assert sql(pg_dsn, "SELECT title, owner_id FROM notes WHERE id = 'n1'") == [
        ("buy oat milk", "alice")
    ]
    assert await node.sync_errors() == []  # no complaint from WatermelonDB about the answers


async def test_conflict_is_409_then_client_pulls_and_pushes(
    sc: Sidecar, node: Node, pg_dsn: str
) -> None:
    await node.open("alice", sc)
    await node.call("sync", client="alice")
    await node.call("update", client="alice", table="notes", id="n1", fields={"title": "local"})
    await node.call("update", client="alice", table="notes", id="n3", fields={"done": False})
    new_id = await node.call("create", client="alice", table="notes", fields={"title": "draft"})

    # The server changes n1 between the client's pull and its push: 409, nothing applied.
    await node.send({"cmd": "sync", "client": "alice", "pause": True})
    paused = await node.read()
    assert paused["event"] == "before_push"
    assert {r["id"] for r in paused["changes"]["notes"]["updated"]} == {"n1", "n3"}
    sql(pg_dsn, "UPDATE notes SET done = true WHERE id = 'n1'")
    await sc.caught_up(pg_dsn)
    await node.send({"cmd": "resume"})
    reply = await node.read()
    assert not reply["ok"] and "push 409" in reply["error"] and "n1" in reply["error"]
    assert sql(
        pg_dsn, "SELECT id, title, done FROM notes WHERE id IN ('n1', 'n3') ORDER BY id"
    ) == [
        ("n1", "buy milk", True),
        ("n3", "water plants", True),
    ]
    assert sql(pg_dsn, f"SELECT count(*) FROM notes WHERE id = '{new_id}'") == [(0,)]
    statuses = {k: r["_status"] for k, r in (await node.notes("alice")).items()}
    assert statuses == {"n1": "updated", "n2": "synced", "n3": "updated", new_id: "created"}

    # The next sync pulls the server's change (WatermelonDB keeps its own changed columns)
    # and pushes again: accepted.
    await node.call("sync", client="alice")
    notes = await node.notes("alice")
    assert (notes["n1"]["title"], notes["n1"]["done"]) == ("local", True)
    assert {r["_status"] for r in notes.values()} == {"synced"}
    rows = sql(pg_dsn, "SELECT id, title, done FROM notes WHERE owner_id = 'alice'")
    assert {r[0]: r[1:] for r in rows} == {
        "n1": ("local", True),
        "n2": ("call bob", False),
        "n3": ("water plants", False),
        new_id: ("draft", False),
    }
    assert await node.sync_errors() == []


async def test_timestamp_of_another_store_replaces_the_local_copy(
    sc: Sidecar, node: Node, pg_dsn: str
) -> None:
    await node.open("alice", sc)
    await node.call("sync", client="alice")
    # A record the server does not have, as if pulled from an earlier store, and a local
    # draft not pushed yet; then a timestamp from that earlier store (another epoch tag).
    ghost = {"id": "ghost", "title": "from the old store", "owner_id": "alice"}
    await node.call("put_synced", client="alice", table="notes", raw=ghost)
    draft = await node.call("create", client="alice", table="notes", fields={"title": "draft"})
    assert sc.service is not None
    tag = epoch_tag(sc.service.store.state().epoch) % ((1 << TAG_BITS) - 1) + 1
    await node.call("set_last_pulled_at", client="alice", value=tag << VERSION_BITS | 3)

    await node.call("sync", client="alice")  # a replacement sync, then the push
    assert sorted(await node.notes("alice")) == sorted(["n1", "n2", "n3", draft])
    assert sql(pg_dsn, f"SELECT title FROM notes WHERE id = '{draft}'") == [("draft",)]
    # WatermelonDB only notes that the new timestamp is below the old one (another epoch).
    for message in await node.sync_errors():
        assert "previous pulled-at time was greater" in message


async def test_http_contract_and_the_race_after_the_check(sc: Sidecar, pg_dsn: str) -> None:
    assert sc.client is not None
    client, path = sc.client, "/watermelondb/sync"
    assert (await client.get(path)).status == 401
    resp = await client.get(path, params={"last_pulled_at": "soon"}, headers=auth("alice"))
    assert resp.status == 400 and (await resp.json())["parameter"] == "last_pulled_at"

    resp = await client.get(path, params={"last_pulled_at": "null"}, headers=auth("alice"))
    body = await resp.json()
    assert sorted(r["id"] for r in body["changes"]["notes"]["updated"]) == ["n1", "n2", "n3"]
    assert body["changes"]["notes"]["created"] == [] and "experimentalStrategy" not in body
    timestamp = body["timestamp"]
    assert sc.service is not None
    epoch = sc.service.store.state().epoch
    assert to_cursor(timestamp, epoch) == Cursor(epoch, timestamp & ((1 << VERSION_BITS) - 1))
    assert to_timestamp(Cursor(epoch, 7)) & ((1 << VERSION_BITS) - 1) == 7

    async def push(changes: object, **params: Any) -> tuple[int, dict[str, Any]]:
        resp = await client.post(path, params=params, json=changes, headers=auth("alice"))
        return resp.status, await resp.json()

    n1 = {"id": "n1", "title": "t", "_status": "updated", "_changed": "title", "extra": 1}
    assert (await push({"notes": {"updated": [n1]}}))[0] == 400  # no last_pulled_at
    assert (await push({"todos": {}}, last_pulled_at=timestamp))[0] == 400  # unknown table
    status, problem = await push(
        {"projects": {"updated": [{"id": "1", "name": "x"}]}}, last_pulled_at=timestamp
    )
    assert status == 403 and problem["record_id"] == "1"  # a read-only collection

    # The row changes in the database after the adapter's check, before the transaction:
    # the core's base_rev check (under a row lock) still refuses, and nothing is applied.
    real_push = sc.service.pusher.push

    async def racing_push(*args: Any, **kwargs: Any) -> Any:
        await asyncio.to_thread(sql, pg_dsn, "UPDATE notes SET done = true WHERE id = 'n1'")
        return await real_push(*args, **kwargs)

    sc.service.pusher.push = racing_push  # type: ignore[method-assign]
    n3 = {"id": "n3", "title": "changed too", "done": True}
    status, problem = await push({"notes": {"updated": [n3, n1]}}, last_pulled_at=timestamp)
    assert status == 409 and problem["code"] == "conflict" and problem["record_id"] == "n1"
    assert sql(pg_dsn, "SELECT id, title FROM notes WHERE id IN ('n1', 'n3') ORDER BY id") == [
        ("n1", "buy milk"),
        ("n3", "water plants"),
    ]
    sc.service.pusher.push = real_push  # type: ignore[method-assign]

    # After pulling again the same push goes through; `extra`, `_status`, `_changed` dropped.
    await sc.caught_up(pg_dsn)
    resp = await client.get(path, params={"last_pulled_at": timestamp}, headers=auth("alice"))
    body = await resp.json()
    assert [r["id"] for r in body["changes"]["notes"]["updated"]] == ["n1"]
    status, result = await push({"notes": {"updated": [n3, n1]}}, last_pulled_at=body["timestamp"])
    assert status == 200 and result["applied"] == 2
    assert sql(
        pg_dsn, "SELECT id, title, done FROM notes WHERE id IN ('n1', 'n3') ORDER BY id"
    ) == [
        ("n1", "t", True),
        ("n3", "changed too", True),
    ]


async def test_pushes_are_counted_in_metrics(sc: Sidecar) -> None:
    """A WatermelonDB push goes through the core's push, which counts each mutation's
    outcome (`sidecar_push_mutations_total`) as for `POST /v1/push`."""
    assert sc.client is not None
    client, path = sc.client, "/watermelondb/sync"
    resp = await client.get(path, params={"last_pulled_at": "null"}, headers=auth("alice"))
    timestamp = (await resp.json())["timestamp"]
    changes = {"notes": {"updated": [{"id": "n2", "title": "call bob today"}]}}
    resp = await client.post(
        path, params={"last_pulled_at": timestamp}, json=changes, headers=auth("alice")
    )
    assert resp.status == 200 and (await resp.json())["applied"] == 1
    text = await (await sc.get("/metrics", sub=None)).text()
    assert (
        'sidecar_push_mutations_total{collection="notes",status="applied",strategy="reject"} 1.0'
        in text
    ), [line for line in text.splitlines() if "push_mutations" in line]


@pytest.fixture
async def sc_small(
    pg_dsn: str, pg_url: str, sidecar_factory: Callable[..., Awaitable[Sidecar]]
) -> Any:
    """Answers bounded to about one big note each (limits.max_page_bytes)."""
    sql(pg_dsn, SCHEMA)
    sql(
        pg_dsn,
        "INSERT INTO notes (id, title, owner_id) "
        "SELECT 'big' || n, repeat(chr(96 + n), 900), 'alice' FROM generate_series(1, 6) n",
    )
    return await sidecar_factory(pg_url, COLLECTIONS, extra="limits: {max_page_bytes: 1KB}")


async def test_bounded_answers_are_merged_into_one_sync(
    sc_small: Sidecar, node: Node, pg_dsn: str
) -> None:
    """The documented client pulls until `has_more` is false and merges the answers:
    one synchronize() gets the whole view, though each answer holds about one note."""
    resp = await sc_small.get("/watermelondb/sync", sub="alice")
    first = await resp.json()
    assert first["has_more"] and len(first["changes"]["notes"]["updated"]) < 9
    assert len(orjson.dumps(first)) < 2048

    await node.open("alice", sc_small)
    await node.call("sync", client="alice")
    notes = await node.notes("alice")
    assert sorted(notes) == sorted(["n1", "n2", "n3"] + [f"big{n}" for n in range(1, 7)])
    assert notes["big3"]["title"] == "c" * 900
    assert await node.sync_errors() == []

    # a delete and an update in one sync, each in an answer of its own
    sql(pg_dsn, "DELETE FROM notes WHERE id = 'big2'")
    sql(pg_dsn, "UPDATE notes SET title = repeat('z', 900) WHERE id = 'big5'")
    await sc_small.caught_up(pg_dsn)
    await node.call("sync", client="alice")
    notes = await node.notes("alice")
    assert "big2" not in notes and notes["big5"]["title"] == "z" * 900
    assert len(notes) == 8 and await node.sync_errors() == []
