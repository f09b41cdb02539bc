"""The ElectricSQL adapter (`GET /electric/v1/shape`) driven by the real `@electric-sql/client`.

A Node process (tests/adapters/js/electric/harness.mjs) runs `ShapeStream`/`Shape` against
a real sidecar on 127.0.0.1 while this event loop keeps serving; the two talk in JSON lines
over stdin/stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from psycopg.postgres import types as pg_types

from adapters.electric.values import column_type
from sidecar.catalog import ColumnInfo
from sidecar.serve import build_app
from sidecar.service import Service
from tests.fixtures.service import Sidecar, auth, token

pytestmark = pytest.mark.pg

CLIENT = {"@electric-sql/client": "1.5.28"}
HARNESS = Path(__file__).parent / "js" / "electric" / "harness.mjs"
SHAPE = "electric/v1/shape"

SCHEMA = """
CREATE TABLE items (
    id int PRIMARY KEY,
    owner_id int NOT NULL,
    title text NOT NULL,
    done boolean NOT NULL DEFAULT false,
    amount numeric(10, 2),
    tags text[],
    meta jsonb,
    ratio double precision,
    updated_at timestamptz NOT NULL DEFAULT '2024-03-10 07:00:00.5+00'
);
INSERT INTO items (id, owner_id, title, done, amount, tags, meta, ratio) VALUES
    (1, 1, 'one', false, 12.50, '{a,"b c",NULL}', '{"k": [1, 2.5]}', 1.0),
    (2, 1, 'two', true, NULL, NULL, NULL, 0.25),
    (3, 2, 'three', false, 1, '{}', '[]', NULL);
"""

COLLECTIONS = """
  items:
    table: items
    read: "owner_id = :sub"
    write:
      ops: [insert, update, delete]
      set: {owner_id: ":sub"}
"""

# Row 1 as the client's default parser gives it: ints and floats as numbers, booleans,
# jsonb parsed, arrays split; numeric and timestamptz stay PostgreSQL text.
ROW_1 = {
    "id": 1,
    "owner_id": 1,
    "title": "one",
    "done": False,
    "amount": "12.50",
    "tags": ["a", "b c", None],
    "meta": {"k": [1, 2.5]},
    "ratio": 1,
    "updated_at": "2024-03-10 07:00:00.5+00",
}

ROW_2 = {
    **ROW_1,
    "id": 2,
    "title": "two",
    "done": True,
    "amount": None,
    "tags": None,
    "meta": None,
    "ratio": 0.25,
}

Event = dict[str, Any]


def sql(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def db_rows(dsn: str, owner: int, where: str = "true") -> list[dict]:
    """id, title and done of a user's rows, as the client should hold them."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            f"SELECT id, title, done FROM items WHERE owner_id = %s AND {where} ORDER BY id",
            (owner,),
        ).fetchall()
    return [{"id": i, "title": t, "done": d} for i, t, d in rows]


def brief(rows: list[dict]) -> list[dict]:
    return sorted(({k: r[k] for k in ("id", "title", "done")} for r in rows), key=_id)


def _id(row: dict) -> int:
    return int(row["id"])


class Node:
    """The harness process: commands in, events out (every event is kept)."""

    def __init__(self, proc: asyncio.subprocess.Process, stderr: Path, base: str) -> None:
        self.proc = proc
        self.stderr = stderr
        self.base = base
        self.events: list[Event] = []

    async def send(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        await self.proc.stdin.drain()

    async def shape(self, id: str, sub: int, **params: Any) -> None:
        live_sse = params.pop("live_sse", False)
        params = {"table": "items", **params}
        await self.send(
            cmd="shape",
            id=id,
            url=self.base + SHAPE,
            token=token(sub),
            params=params,
            liveSse=live_sse,
        )

    async def expect(self, pred: Callable[[Event], bool], what: str, timeout: float = 15) -> Event:
        """The first event (already seen or to come) that `pred` accepts."""
        for event in self.events:
            if pred(event):
                return event
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = await asyncio.wait_for(self.proc.stdout.readline(), left)
            except TimeoutError:
                break
            if not line:
                break
            event = json.loads(line)
            self.events.append(event)
            if pred(event):
                return event
        tail = "\n".join(json.dumps(e) for e in self.events[-15:])
        raise AssertionError(
            f"timed out waiting for {what}\nlast events:\n{tail}\n"
            f"node stderr:\n{self.stderr.read_text()[-3000:]}"
        )

    async def rows(self, id: str, expected: list[dict], full: bool = False) -> Event:
        """Wait until shape `id` is up to date holding exactly `expected`."""

        def matches(event: Event) -> bool:
            if event["event"] != "rows" or event["id"] != id or not event["upToDate"]:
                return False
            rows = sorted(event["rows"], key=_id) if full else brief(event["rows"])
            return rows == expected

        return await self.expect(matches, f"shape {id} holding {expected}")

    async def close(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()


@pytest.fixture
async def sc(pg_dsn: str, pg_url: str, sidecar_factory: Callable[..., Any]) -> Sidecar:
    sql(pg_dsn, SCHEMA)
    return await sidecar_factory(pg_url, COLLECTIONS)


@pytest.fixture
async def node(
    sc: Sidecar, node_project: Callable[[str, dict[str, str]], Path], tmp_path: Path
) -> AsyncIterator[Node]:
    """Depends on `sc` so that it is stopped first: no long-poll outlives the server."""
    root = node_project("electric", CLIENT)
    shutil.copy(HARNESS, root / "harness-electric.mjs")
    stderr = tmp_path / "node.stderr"
    with stderr.open("w") as err:
        proc = await asyncio.create_subprocess_exec(
            "node",
            "harness-electric.mjs",
            cwd=root,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
        )
    assert sc.client is not None
    harness = Node(proc, stderr, str(sc.client.make_url("/")))
    try:
        await harness.expect(lambda e: e["event"] == "ready", "the harness to start")
        yield harness
    finally:
        await harness.close()


async def serve(sc: Sidecar, port: int) -> None:
    """Serve `sc.service` on `port` with a server whose stop cancels pending long-polls
    at once (the test harness's waits for them, up to 60 s)."""
    assert sc.service is not None
    server = TestServer(build_app(sc.service), port=port)
    await server.start_server(shutdown_timeout=0.2)
    sc.client = TestClient(server)
    await sc.client.start_server()


async def restart_rebuilt(sc: Sidecar, dsn: str, *while_down: str, lose_store: bool) -> None:
    """Stop, lose the replication slot (the store is reconciled with a new slot) — and the
    store file with it when `lose_store` (a new store, a new epoch) — run `while_down`,
    start again on the same port so the client's URL still works."""
    assert sc.client is not None and sc.client.port is not None
    port = sc.client.port
    await sc.stop()
    sql(dsn, "SELECT pg_drop_replication_slot('sidecar_test')", *while_down)
    if lose_store:
        store = Path(sc.config.store.path)
        for f in store.parent.glob(store.name + "*"):
            f.unlink()
    sc.service = await Service.start(sc.config)
    await sc.service.capture.wait_ready(60)
    await serve(sc, port)


# -- with the real client -----------------------------------------------------------------


async def test_sync_live_changes_push_and_isolation(sc: Sidecar, node: Node, pg_dsn: str):
    await node.shape("u1", 1)
    await node.shape("u2", 2)
    await node.shape("sse", 1, live_sse=True)
    await node.rows("u1", [ROW_1, ROW_2], full=True)
    await node.rows("u2", db_rows(pg_dsn, 2))
    await node.rows("sse", db_rows(pg_dsn, 1))

    # server-side changes arrive live (long-poll and SSE)
    sql(
        pg_dsn,
        "INSERT INTO items (id, owner_id, title) VALUES (10, 1, 'ten')",
        "UPDATE items SET title = 'one!' WHERE id = 1",
        "DELETE FROM items WHERE id = 2",
        "INSERT INTO items (id, owner_id, title) VALUES (11, 2, 'theirs')",
    )
    mine = db_rows(pg_dsn, 1)
    assert [r["id"] for r in mine] == [1, 10]
    await node.rows("u1", mine)
    await node.rows("sse", mine)
    await node.rows("u2", db_rows(pg_dsn, 2))

    # a client write goes through the core's push, then comes back through the shape
    mutation = {
        "id": "m1",
        "collection": "items",
        "op": "insert",
        "key": {"id": 20},
        "data": {"title": "from the client", "done": True},
    }
    await node.send(
        cmd="push", id="p1", url=node.base + "v1/push", token=token(1), mutations=[mutation]
    )
    pushed = await node.expect(lambda e: e["event"] == "pushed", "the push result")
    assert pushed["status"] == 200 and pushed["body"]["results"][0]["status"] == "applied"
    mine = db_rows(pg_dsn, 1)
    assert {"id": 20, "title": "from the client", "done": True} in mine
    await node.rows("u1", mine)
    txid = int(pushed["body"]["txid"])  # the client sees its write's transaction come back
    await node.expect(
        lambda e: e["event"] == "messages" and e.get("id") == "u1" and txid in e["txids"],
        f"a message of user 1's shape carrying txid {txid}",
    )

    # user 2 never received anything of user 1's
    theirs = {r["id"] for r in db_rows(pg_dsn, 2)}
    for event in node.events:
        if event.get("id") == "u2" and event["event"] == "rows":
            assert {r["id"] for r in event["rows"]} <= theirs
        if event.get("id") == "u2" and event["event"] == "messages":
            assert all(key in ('"items"/"3"', '"items"/"11"') for _, key in event["operations"])


async def test_where_narrows_inside_the_read_rule(sc: Sidecar, node: Node, pg_dsn: str):
    await node.shape(
        "open", 1, where="done = $1", params=["false"], columns=["id", "title", "done"]
    )
    await node.shape("theirs", 1, where="owner_id = 2")  # the read rule still applies
    await node.shape("subselect", 1, where="id IN (SELECT id FROM items)")
    await node.shape("function", 1, where="pg_sleep(1) IS NULL")
    opened = await node.rows("open", db_rows(pg_dsn, 1, "NOT done"))
    assert set(opened["rows"][0]) == {"id", "title", "done"}
    await node.rows("theirs", [])
    for name in ("subselect", "function"):
        refused = await node.expect(
            lambda e, n=name: e["event"] == "error" and e["id"] == n, f"{name} refused"
        )
        assert refused["status"] == 400

    sql(
        pg_dsn,
        "UPDATE items SET done = true WHERE id = 1",  # moves out of the shape
        "INSERT INTO items (id, owner_id, title) VALUES (12, 1, 'twelve')",
        "INSERT INTO items (id, owner_id, title) VALUES (13, 2, 'not mine')",
    )
    await node.rows("open", db_rows(pg_dsn, 1, "NOT done"))
    await node.rows("theirs", [])


async def test_a_lost_slot_is_reconciled_and_the_shape_goes_on(
    sc: Sidecar, node: Node, pg_dsn: str
):
    assert sc.client is not None and sc.client.port is not None
    port = sc.client.port
    await sc.client.close()
    await serve(sc, port)
    await node.shape("u1", 1)
    synced = await node.rows("u1", db_rows(pg_dsn, 1))
    await asyncio.sleep(0.3)  # the client is now in a live long-poll
    await restart_rebuilt(
        sc,
        pg_dsn,
        "INSERT INTO items (id, owner_id, title) VALUES (30, 1, 'while down')",
        "DELETE FROM items WHERE id = 2",
        lose_store=False,
    )
    after = await node.rows("u1", db_rows(pg_dsn, 1))
    assert after["handle"] == synced["handle"]  # no must-refetch: only what changed came
    assert sorted(r["id"] for r in after["rows"]) == [1, 30]
    assert not any(
        e["event"] == "messages" and "must-refetch" in e["controls"] for e in node.events
    )


@pytest.mark.sqlite_store_only("loses the store by deleting the SQLite file")
async def test_a_lost_store_gives_must_refetch(sc: Sidecar, node: Node, pg_dsn: str):
    assert sc.client is not None and sc.client.port is not None
    port = sc.client.port
    await sc.client.close()
    await serve(sc, port)
    await node.shape("u1", 1)
    synced = await node.rows("u1", db_rows(pg_dsn, 1))
    await asyncio.sleep(0.3)  # the client is now in a live long-poll
    await restart_rebuilt(
        sc,
        pg_dsn,
        "INSERT INTO items (id, owner_id, title) VALUES (30, 1, 'while down')",
        "DELETE FROM items WHERE id = 2",
        lose_store=True,
    )
    await node.expect(
        lambda e: e["event"] == "messages" and "must-refetch" in e["controls"], "must-refetch"
    )
    after = await node.rows("u1", db_rows(pg_dsn, 1))
    assert after["handle"] != synced["handle"]
    assert sorted(r["id"] for r in after["rows"]) == [1, 30]


# -- the HTTP surface ---------------------------------------------------------------------


async def test_cors_preflight_and_exposed_headers(sc: Sidecar):
    assert sc.client is not None
    resp = await sc.client.options(
        "/" + SHAPE,
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert resp.status == 204
    assert "authorization" in resp.headers["Access-Control-Allow-Headers"].lower()
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    resp = await sc.get("/" + SHAPE, sub=None, params={"table": "items", "offset": "-1"})
    assert resp.status == 401 and resp.headers["Access-Control-Allow-Origin"] == "*"
    resp = await sc.get("/" + SHAPE, params={"table": "items", "offset": "-1"})
    exposed = resp.headers["Access-Control-Expose-Headers"]
    for name in ("electric-handle", "electric-offset", "electric-schema", "electric-up-to-date"):
        assert name in exposed and name in resp.headers
    assert "electric-cursor" in exposed  # sent on live answers
    schema = json.loads(resp.headers["electric-schema"])
    assert schema["id"] == {"type": "int4", "not_null": True}
    assert schema["tags"] == {"type": "text", "dims": 1}
    assert schema["amount"] == {"type": "numeric", "precision": 10, "scale": 2}


async def test_offsets_handles_and_refusals(sc: Sidecar, pg_dsn: str):
    assert sc.client is not None
    url = "/" + SHAPE
    first = await sc.get(url, params={"table": "items", "offset": "-1"})
    handle, offset = first.headers["electric-handle"], first.headers["electric-offset"]
    assert offset.endswith("_0") and offset.split("_")[0].isdigit()
    sql(pg_dsn, "UPDATE items SET title = 'uno' WHERE id = 1")
    await sc.caught_up(pg_dsn)
    live = {"table": "items", "offset": offset, "handle": handle, "live": "true"}
    resp = await sc.get(url, params=live)  # a change is waiting: answers at once
    assert resp.headers["electric-cursor"].isdigit()
    body = await resp.json()
    assert [m["headers"].get("operation") for m in body] == ["update", None]
    assert body[0]["value"]["title"] == "uno" and body[-1]["headers"]["control"] == "up-to-date"
    assert int(resp.headers["electric-offset"].split("_")[0]) > int(offset.split("_")[0])

    # another user's token on this handle: another shape, so 409 with a new handle
    resp = await sc.client.get(
        url, params={"table": "items", "offset": offset, "handle": handle}, headers=auth(2)
    )
    assert resp.status == 409 and resp.headers["electric-handle"] != handle
    assert await resp.json() == [{"headers": {"control": "must-refetch"}}]

    # `where` sees typed values: numeric, timestamptz (JSON strings in the core) compare as such
    typed = "amount >= 12.5 AND updated_at > '2024-03-10T07:00:00Z' AND tags IS NOT NULL"
    resp = await sc.get(url, params={"table": "items", "offset": "-1", "where": typed})
    assert [m["key"] for m in await resp.json() if "key" in m] == ['"items"/"1"']

    for params, parameter in (
        ({"table": "nope", "offset": "-1"}, "table"),
        ({"table": "items", "offset": offset}, "handle"),
        ({"table": "items", "offset": "x"}, "offset"),
        ({"table": "items", "offset": "-1", "columns": "title"}, "columns"),
        ({"table": "items", "offset": "-1", "where": "secret = 1"}, "where"),
        ({"table": "items", "offset": "-1", "where": "id = $1"}, "params"),
        ({"table": "items", "offset": "-1", "replica": "half"}, "replica"),
    ):
        resp = await sc.get(url, params=params)
        problem = await resp.json(content_type=None)
        assert resp.status == 400 and problem["parameter"] == parameter, (params, problem)


async def test_live_sse_events(sc: Sidecar, pg_dsn: str):
    assert sc.client is not None
    first = await sc.get("/" + SHAPE, params={"table": "items", "offset": "-1"})
    handle, offset = first.headers["electric-handle"], first.headers["electric-offset"]
    sql(pg_dsn, "DELETE FROM items WHERE id = 2")
    params = {
        "table": "items",
        "offset": offset,
        "handle": handle,
        "live": "true",
        "live_sse": "true",
    }
    resp = await sc.get("/" + SHAPE, params=params, headers={"Accept": "text/event-stream"})
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    assert resp.headers["electric-offset"] == offset and resp.headers["electric-cursor"]
    events = []
    while len(events) < 2:
        line = (await resp.content.readline()).decode().strip()
        if line.startswith("data: "):
            events.append(json.loads(line[6:]))
    resp.close()
    assert events[0]["headers"]["operation"] == "delete" and events[0]["key"] == '"items"/"2"'
    done = events[1]["headers"]
    assert done["control"] == "up-to-date"
    assert int(done["global_last_seen_lsn"]) > int(offset.split("_")[0])  # the next offset


# -- value encoding -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_name", "value", "text"),
    [
        ("integer", 42, "42"),
        ("bigint", 9007199254740993, "9007199254740993"),
        ("double precision", 1.0, "1"),
        ("double precision", 1e20, "1e+20"),
        ("double precision", 1e15, "1e+15"),  # PostgreSQL's float8out, not Python's repr
        ("real", 123456.0, "123456"),
        ("real", 1234567.0, "1.234567e+06"),  # float4out: exponent form from 1e6
        ("real", 0.1, "0.1"),
        ("double precision", "NaN", "NaN"),
        ("boolean", True, "t"),
        ("numeric", "12.50", "12.50"),
        ("jsonb", {"a": [1, None]}, '{"a":[1,null]}'),
        (
            "timestamp with time zone",
            "2024-03-10T07:00:00.500000+00:00",
            "2024-03-10 07:00:00.5+00",
        ),
        ("timestamp with time zone", "infinity", "infinity"),
        ("timestamp without time zone", "2024-03-10T12:34:56", "2024-03-10 12:34:56"),
        ("time with time zone", "10:30:00+05:30", "10:30:00+05:30"),
        ("integer[]", [[1, 2], [None, 4]], "{{1,2},{NULL,4}}"),
        ("text[]", ["a", "b c", "", "NULL", 'q"\\', None], '{a,"b c","","NULL","q\\"\\\\",NULL}'),
        ("boolean[]", [True, False], "{t,f}"),
        ("jsonb[]", [{"k": 1}], '{"{\\"k\\":1}"}'),
    ],
)
def test_values_are_postgresql_text(type_name: str, value: Any, text: str):
    base = type_name.removesuffix("[]")
    names = {
        "integer": "int4",
        "bigint": "int8",
        "double precision": "float8",
        "real": "float4",
        "boolean": "bool",
        "timestamp with time zone": "timestamptz",
        "timestamp without time zone": "timestamp",
        "time with time zone": "timetz",
    }
    info = pg_types.get(names.get(base, base))
    assert info is not None
    oid = info.array_oid if type_name.endswith("[]") else info.oid
    column = column_type(ColumnInfo("c", oid, type_name, nullable=True))
    assert column.encode(value) == text
    assert column.schema == {"type": info.name, **({"dims": 1} if "[]" in type_name else {})}


async def test_messages_carry_the_txid_of_the_push_that_wrote_them(sc: Sidecar, pg_dsn: str):
    status, body = await sc.push(
        [
            {
                "id": "tx1",
                "collection": "items",
                "op": "insert",
                "key": {"id": 30},
                "data": {"title": "optimistic"},
            }
        ]
    )
    assert status == 200 and body["results"][0]["status"] == "applied", body
    txid = int(body["txid"])
    with psycopg.connect(pg_dsn) as conn:  # the push's transaction, as PostgreSQL saw it
        row = conn.execute("SELECT xmin::text FROM items WHERE id = 30").fetchone()
    assert row == (str(txid),)
    sql(pg_dsn, "UPDATE items SET title = 'plain sql' WHERE id = 1")
    await sc.caught_up(pg_dsn)
    resp = await sc.get("/" + SHAPE, params={"table": "items", "offset": "-1"})
    messages = {m["key"]: m["headers"] for m in await resp.json() if "key" in m}
    assert messages['"items"/"30"']["txids"] == [txid]
    assert "txids" not in messages['"items"/"1"']  # not written through push
