"""The RxDB adapter, proven with the real rxdb library in Node against a real sidecar.

`js/rxdb/client.mjs` runs RxDB clients (memory storage, `replicateRxCollection` with the
pull handler, the pull stream and the push handler of `js/rxdb/sidecar-replication.mjs`,
the client of docs/adapters/rxdb.md) and takes one JSON command per line on stdin.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.fixtures.service import Sidecar, auth, token, wait_until

pytestmark = pytest.mark.pg

RXDB_PACKAGES = {"rxdb": "17.6.0", "rxjs": "7.8.2", "eventsource": "4.1.1"}
SCRIPTS = Path(__file__).parent / "js" / "rxdb"

SCHEMA = """
CREATE TABLE notes (
    id text PRIMARY KEY,
    title text NOT NULL,
    done boolean NOT NULL DEFAULT false,
    owner_id integer NOT NULL
);
INSERT INTO notes VALUES ('n1', 'first', false, 1), ('n2', 'second', false, 1),
                         ('n3', 'third', true, 1), ('m1', 'theirs', false, 2);
CREATE FUNCTION trim_title() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN NEW.title := btrim(NEW.title); RETURN NEW; END $$;
CREATE TRIGGER trim_title BEFORE INSERT OR UPDATE ON notes
    FOR EACH ROW EXECUTE FUNCTION trim_title();
CREATE TABLE counters (id serial PRIMARY KEY, label text NOT NULL, owner_id integer NOT NULL);
INSERT INTO counters (label, owner_id) VALUES ('c1', 1), ('c2', 1), ('c3', 1);
"""

COLLECTIONS = """
  notes:
    table: notes
    read: "owner_id = :sub"
    write:
      ops: [insert, update, delete]
      set: {owner_id: ":sub"}
  counters:
    table: counters
    read: "owner_id = :sub"
    write:
      ops: [insert, update]
      set: {owner_id: ":sub"}
"""


def sql(dsn: str, *statements: str) -> list[Any]:
    out = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for s in statements:
            cur = conn.execute(s)
            out.append(cur.fetchall() if cur.description else None)
    return out


def note_rows(dsn: str) -> dict[str, tuple[str, bool, int]]:
    (rows,) = sql(dsn, "SELECT id, title, done, owner_id FROM notes")
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def note(id: str, title: str, done: bool = False, owner_id: int = 1, **extra: Any) -> dict:
    return {"id": id, "title": title, "done": done, "owner_id": owner_id, **extra}


class Node:
    """`client.mjs` as a child process: one JSON command per line, one answer per line."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc = proc
        self.log = log

    @classmethod
    async def start(cls, project: Path, log: Path) -> Node:
        proc = await asyncio.create_subprocess_exec(
            "node",
            "client.mjs",
            cwd=project,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log.open("wb"),
        )
        return cls(proc, log)

    async def call(self, cmd: str, name: str = "u1", timeout: float = 20, **args: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, "name": name, **args}).encode() + b"\n")
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise AssertionError(f"node exited: {self.log.read_text()}")
        answer = json.loads(line)
        if not answer["ok"]:
            raise AssertionError(f"{cmd}: {answer['error']}")
        return answer["result"]

    async def close(self) -> None:
        if self.proc.returncode is None:
            try:
                await self.call("close", timeout=10)
                await asyncio.wait_for(self.proc.wait(), 10)
            except (AssertionError, TimeoutError, ConnectionError):
                self.proc.kill()
                await self.proc.wait()


@pytest.fixture
async def sc(pg_dsn: str, pg_url: str, sidecar_factory: Callable[..., Any]) -> Sidecar:
    sql(pg_dsn, SCHEMA)
    return await sidecar_factory(pg_url, COLLECTIONS)


@pytest.fixture
async def node(node_project: Callable[..., Path], tmp_path: Path) -> AsyncIterator[Node]:
    project = node_project("rxdb", RXDB_PACKAGES)
    for script in SCRIPTS.glob("*.mjs"):
        shutil.copyfile(script, project / script.name)
    client = await Node.start(project, tmp_path / "node.log")
    yield client
    await client.close()


def base_url(sc: Sidecar) -> str:
    assert sc.client is not None
    return str(sc.client.make_url("/"))


def fields(docs: list[dict]) -> list[dict]:
    keep = ("id", "title", "done", "owner_id")
    return [{k: d[k] for k in keep if k in d} for d in docs]


def ids_in_events(events: list[Any]) -> set[str]:
    return {d["id"] for e in events if isinstance(e, dict) for d in e["documents"]}


async def test_rxdb_replicates_both_ways(sc: Sidecar, node: Node, pg_dsn: str) -> None:
    url = base_url(sc)
    # Initial sync: each user gets their own rows only, in pages of 2.
    docs = await node.call("open", url=url, token=token(1))
    assert fields(docs) == [
        note("n1", "first"),
        note("n2", "second"),
        note("n3", "third", done=True),
    ]
    assert fields(await node.call("open", name="u2", url=url, token=token(2))) == [
        note("m1", "theirs", owner_id=2)
    ]
    pulls = (await node.call("report"))["pulls"]
    assert pulls >= 2

    # Changes made in PostgreSQL arrive through the pull stream (no more pulls).
    sql(
        pg_dsn,
        "UPDATE notes SET title = 'edited in sql' WHERE id = 'n2'",
        "INSERT INTO notes VALUES ('n4', 'inserted in sql', false, 1)",
        "DELETE FROM notes WHERE id = 'n3'",
    )
    await node.call("wait", id="n2", fields={"title": "edited in sql"})
    await node.call("wait", id="n4", fields={"title": "inserted in sql"})
    await node.call("wait", id="n3", fields=None)
    report = await node.call("report")
    assert {"n2", "n3", "n4"} <= ids_in_events(report["events"])
    assert report["pulls"] == pulls

    # Changes made in RxDB land in PostgreSQL.
    await node.call("insert", doc=note("n5", "from rxdb"))
    await node.call("patch", id="n1", patch={"done": True})
    await node.call("remove", id="n2")
    await node.call("insync")
    rows = note_rows(pg_dsn)
    assert rows["n5"] == ("from rxdb", False, 1)
    assert rows["n1"] == ("first", True, 1)
    assert "n2" not in rows

    # A conflict: the server changes n1 while the client edits its stale copy.
    await node.call("hold")
    await node.call("patch", id="n1", patch={"title": "client edit"})
    sql(pg_dsn, "UPDATE notes SET title = 'server edit', done = false WHERE id = 'n1'")
    await node.call("release")
    # The handler keeps the server's row with the client's title; both sides agree.
    await node.call("wait", id="n1", fields={"title": "client edit", "done": False})
    await node.call("insync")

    async def settled() -> bool:
        return note_rows(pg_dsn)["n1"] == ("client edit", False, 1)

    await wait_until(settled, what="the resolved conflict in PostgreSQL")
    await node.call("wait", id="n1", fields={"title": "client edit", "done": False})
    report = await node.call("report")
    (conflict,) = report["conflicts"]
    assert conflict["assumedMasterState"]["title"] == "first"
    assert conflict["newDocumentState"]["title"] == "client edit"
    assert conflict["realMasterState"]["title"] == "server edit"
    assert conflict["realMasterState"]["done"] is False
    assert report["errors"] == []

    # The second user never saw any of it.
    await sc.caught_up(pg_dsn)
    assert fields(await node.call("docs", name="u2")) == [note("m1", "theirs", owner_id=2)]
    report2 = await node.call("report", name="u2")
    assert ids_in_events(report2["events"]) <= {"m1"}
    assert report2["errors"] == []
    assert fields(await node.call("docs")) == [
        note("n1", "client edit"),
        note("n4", "inserted in sql"),
        note("n5", "from rxdb"),
    ]


# -- the HTTP protocol -------------------------------------------------------------------


async def rx_push(sc: Sidecar, rows: list[dict], sub: int = 1) -> list[dict]:
    assert sc.client is not None
    resp = await sc.client.post("/rxdb/notes/push", json=rows, headers=auth(sub))
    body = await resp.json(content_type=None)
    assert resp.status == 200, body
    return body


def doc(id: str, title: str, done: bool = False, owner_id: int = 1, deleted: bool = False) -> dict:
    return note(id, title, done, owner_id, _deleted=deleted)


async def test_push_conflicts_refusals_and_retries(sc: Sidecar, pg_dsn: str) -> None:
    first = doc("n1", "first")
    # an update from the assumed state: applied, nothing in conflict
    assert (
        await rx_push(sc, [{"assumedMasterState": first, "newDocumentState": doc("n1", "a")}]) == []
    )
    # the same push again (a retry after a lost answer): already so, no conflict
    assert (
        await rx_push(sc, [{"assumedMasterState": first, "newDocumentState": doc("n1", "a")}]) == []
    )
    # a stale update and a stale delete: the current row is the master document
    stale = [
        {"assumedMasterState": first, "newDocumentState": doc("n1", "b")},
        {
            "assumedMasterState": doc("n2", "old"),
            "newDocumentState": doc("n2", "old", deleted=True),
        },
    ]
    assert await rx_push(sc, stale) == [doc("n1", "a"), doc("n2", "second")]
    # an insert without the `set:` column: the server adds it (a field the client did not send)
    new = {"id": "x1", "title": "no owner", "done": False, "_deleted": False}
    assert await rx_push(sc, [{"assumedMasterState": None, "newDocumentState": new}]) == []
    assert note_rows(pg_dsn)["x1"] == ("no owner", False, 1)
    # an assumed state that lacks a column but is current on the others: written
    partial = {"id": "n3", "title": "third", "_deleted": False}
    assert (
        await rx_push(
            sc, [{"assumedMasterState": partial, "newDocumentState": {**partial, "title": "3rd"}}]
        )
        == []
    )
    assert note_rows(pg_dsn)["n3"] == ("3rd", True, 1)


async def test_push_never_alters_sent_fields(sc: Sidecar, pg_dsn: str) -> None:
    before = note_rows(pg_dsn)
    # inserting for another owner: refused; the master is "no such document"
    other = doc("x2", "for user 2", owner_id=2)
    assert await rx_push(sc, [{"assumedMasterState": None, "newDocumentState": other}]) == [
        {"id": "x2", "_deleted": True}
    ]
    # giving a row away (the server keeps owner_id): refused; the master is the assumed state
    first = doc("n1", "first")
    give = {"assumedMasterState": first, "newDocumentState": doc("n1", "first", owner_id=2)}
    assert await rx_push(sc, [give]) == [first]
    # another user's row: not in their view, answered as a missing one ("no such document")
    theirs = {"assumedMasterState": first, "newDocumentState": doc("n1", "mine now")}
    assert await rx_push(sc, [theirs], sub=2) == [{"id": "n1", "_deleted": True}]
    assert note_rows(pg_dsn) == before
    # a value the database changed on the way in (a trigger trims titles): written, and the
    # row is answered as the master document, so RxDB's conflict handler sees the change
    padded = doc("x3", "  padded  ")
    assert await rx_push(sc, [{"assumedMasterState": None, "newDocumentState": padded}]) == [
        doc("x3", "padded")
    ]
    assert note_rows(pg_dsn)["x3"] == ("padded", False, 1)


async def test_pull_pages_checkpoints_and_keys(sc: Sidecar, pg_dsn: str) -> None:
    page = await (await sc.get("/rxdb/notes/pull", params={"limit": "2"})).json()
    assert [d["id"] for d in page["documents"]] == ["n1", "n2"]
    assert page["documents"][0] == doc("n1", "first")
    checkpoint = page["checkpoint"]
    assert set(checkpoint) == {"id", "lwt"} and isinstance(checkpoint["lwt"], int)
    sql(pg_dsn, "DELETE FROM notes WHERE id = 'n1'")
    await sc.caught_up(pg_dsn)
    params = {"id": checkpoint["id"], "lwt": str(checkpoint["lwt"]), "limit": "10"}
    rest = await (await sc.get("/rxdb/notes/pull", params=params)).json()
    assert rest["documents"] == [doc("n3", "third", done=True), {"id": "n1", "_deleted": True}]

    # an integer key is a string in documents, and back to an integer on push
    counters = await (await sc.get("/rxdb/counters/pull")).json()
    assert [d["id"] for d in counters["documents"]] == ["1", "2", "3"]
    c1 = counters["documents"][0]
    assert sc.client is not None
    resp = await sc.client.post(
        "/rxdb/counters/push",
        json=[{"assumedMasterState": c1, "newDocumentState": {**c1, "label": "one"}}],
        headers=auth(1),
    )
    assert await resp.json() == []
    assert sql(pg_dsn, "SELECT label FROM counters WHERE id = 1")[0] == [("one",)]


async def test_problems(sc: Sidecar) -> None:
    assert sc.client is not None
    cases = [
        ("/rxdb/notes/pull", None, {}, 401, "unauthorized"),
        ("/rxdb/nope/pull", 1, {}, 400, "invalid_request"),
        ("/rxdb/notes/pull", 1, {"id": "3fa9c2d1"}, 400, "invalid_request"),
        ("/rxdb/notes/pull", 1, {"id": "x", "lwt": "1"}, 400, "invalid_request"),
        ("/rxdb/notes/pull", 1, {"id": "00000000", "lwt": "0"}, 410, "cursor_expired"),
        ("/rxdb/notes/pull", 1, {"limit": "0"}, 400, "invalid_request"),
        ("/rxdb/notes/pullStream", 1, {"id": "00000000", "lwt": "0"}, 410, "cursor_expired"),
    ]
    for path, sub, params, status, code in cases:
        resp = await sc.get(path, sub=sub, params=params)
        body = await resp.json(content_type=None)
        assert (resp.status, body["code"]) == (status, code), (path, params, body)
        assert resp.content_type == "application/problem+json"
    for body, pointer in (
        ({"rows": []}, None),
        ([{"newDocumentState": "x"}], "/0"),
        (
            [{"assumedMasterState": None, "newDocumentState": {"title": "t"}}],
            "/0/newDocumentState/id",
        ),
    ):
        resp = await sc.client.post("/rxdb/counters/push", json=body, headers=auth(1))
        problem = await resp.json(content_type=None)
        assert (resp.status, problem.get("pointer")) == (400, pointer), problem
    bad_key = [{"assumedMasterState": None, "newDocumentState": {"id": "abc", "label": "x"}}]
    resp = await sc.client.post("/rxdb/counters/push", json=bad_key, headers=auth(1))
    assert (await resp.json(content_type=None))["pointer"] == "/0/newDocumentState/id"


async def test_stream_sends_resync_when_the_token_expires(sc: Sidecar, pg_dsn: str) -> None:
    assert sc.client is not None
    headers = {"Authorization": f"Bearer {token(1, exp=int(time.time()) + 2)}"}
    resp = await sc.client.get("/rxdb/notes/pullStream", headers=headers)
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    data = []
    async with asyncio.timeout(10):
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("data: "):
                data.append(json.loads(line[6:]))
    first, last = data[0], data[-1]
    assert [d["id"] for d in first["documents"]] == ["n1", "n2", "n3"]
    assert set(first["checkpoint"]) == {"id", "lwt"}
    assert last == "RESYNC"


async def test_pull_fills_the_batch_across_core_pages(
    pg_dsn: str, pg_url: str, sidecar_factory: Callable[..., Any]
) -> None:
    """RxDB takes a short batch for "up to date": a batch spans core pages (max_page 2)."""
    sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, COLLECTIONS, extra="limits: {max_page: 2}")
    page = await (await sc.get("/rxdb/notes/pull", params={"limit": "3"})).json()
    assert [d["id"] for d in page["documents"]] == ["n1", "n2", "n3"]
    params = {"id": page["checkpoint"]["id"], "lwt": str(page["checkpoint"]["lwt"])}
    assert (await (await sc.get("/rxdb/notes/pull", params=params)).json())["documents"] == []
