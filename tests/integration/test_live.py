"""Live sync and big payloads: long-poll fan-out, SSE, NDJSON bootstrap, caching."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.fixtures.service import auth, run_sql, token

pytestmark = pytest.mark.pg

SCHEMA = """
CREATE TABLE todo_items (
    id serial PRIMARY KEY,
    title text NOT NULL,
    owner_id integer,
    notes text
);
INSERT INTO todo_items (title, owner_id) VALUES ('a1', 1), ('a2', 1), ('b1', 2);
"""

TODOS = """
  todos:
    table: todo_items
    read: "owner_id = :sub"
"""


@pytest.fixture
async def sc(pg_dsn, pg_url, sidecar_factory):
    run_sql(pg_dsn, SCHEMA)
    return await sidecar_factory(pg_url, TODOS)


# -- long-poll ------------------------------------------------------------------------------


async def test_long_poll_times_out_with_the_same_cursor(sc):
    _, cursor = await sc.pull_all(1)
    started = time.monotonic()
    page = await sc.pull(1, cursor, live="true", timeout=0.6)
    assert time.monotonic() - started >= 0.5
    assert page["changes"] == [] and page["cursor"] == cursor and page["has_more"] is False


async def test_one_commit_wakes_every_waiter_of_its_scope_with_one_store_read(sc, pg_dsn):
    _, cursor1 = await sc.pull_all(1)
    _, cursor2 = await sc.pull_all(2)
    mine = [asyncio.create_task(sc.pull(1, cursor1, live="true", timeout=20)) for _ in range(12)]
    others = [asyncio.create_task(sc.pull(2, cursor2, live="true", timeout=3)) for _ in range(3)]
    await asyncio.sleep(0.5)
    assert not any(t.done() for t in mine + others)
    cache = sc.service.puller.cache
    misses = cache.misses
    run_sql(pg_dsn, "INSERT INTO todo_items (title, owner_id) VALUES ('ping', 1)")
    pages = await asyncio.wait_for(asyncio.gather(*mine), 10)
    assert all([c["row"]["title"] for c in p["changes"]] == ["ping"] for p in pages)
    assert len({p["cursor"] for p in pages}) == 1
    assert cache.misses - misses == 1  # twelve answers, one read of the store
    await asyncio.sleep(0.3)
    assert not any(t.done() for t in others)  # their scope did not change: still asleep
    for page in await asyncio.gather(*others):
        assert page["changes"] == [] and page["cursor"] == cursor2


async def test_a_commit_between_read_and_wait_is_not_missed(sc, pg_dsn):
    """The waiter registers before it reads, so a change landing in between wakes it."""
    _, cursor = await sc.pull_all(1)
    for n in range(5):
        waiter = asyncio.create_task(sc.pull(1, cursor, live="true", timeout=10))
        await asyncio.sleep(0.002 * n)  # commits at various points of the waiter's start
        run_sql(pg_dsn, f"INSERT INTO todo_items (title, owner_id) VALUES ('r{n}', 1)")
        page = await asyncio.wait_for(waiter, 8)
        assert [c["row"]["title"] for c in page["changes"]] == [f"r{n}"]
        cursor = page["cursor"]


# -- caching ------------------------------------------------------------------------------


async def test_etag_gives_304_until_something_changes(sc, pg_dsn):
    first = await sc.get("/v1/pull")
    body = await first.read()
    etag = first.headers["ETag"]
    assert first.headers["Cache-Control"] == "private, no-cache"
    assert "Authorization" in first.headers["Vary"]
    again = await sc.get("/v1/pull", headers={"If-None-Match": etag})
    assert again.status == 304 and await again.read() == b""
    assert again.headers["ETag"] == etag
    other = await sc.get("/v1/pull", sub=2, headers={"If-None-Match": etag})
    assert other.status == 200  # another caller's answer differs
    run_sql(pg_dsn, "INSERT INTO todo_items (title, owner_id) VALUES ('new', 1)")
    await sc.caught_up(pg_dsn)
    changed = await sc.get("/v1/pull", headers={"If-None-Match": etag})
    assert changed.status == 200 and changed.headers["ETag"] != etag
    assert await changed.read() != body
    schema = await sc.get("/v1/schema")
    assert (
        await sc.get("/v1/schema", headers={"If-None-Match": schema.headers["ETag"]})
    ).status == 304


async def test_large_pages_are_gzipped_when_accepted(sc, pg_dsn):
    run_sql(
        pg_dsn,
        "INSERT INTO todo_items (title, owner_id) "
        "SELECT 'bulk ' || g, 1 FROM generate_series(1, 200) g",
    )
    await sc.caught_up(pg_dsn)
    assert sc.client is not None
    raw = await sc.client.get(
        "/v1/pull", headers={**auth(1), "Accept-Encoding": "gzip"}, auto_decompress=False
    )
    assert raw.headers["Content-Encoding"] == "gzip"
    page = orjson.loads(gzip.decompress(await raw.read()))
    assert len(page["changes"]) == 202
    plain = await sc.client.get("/v1/pull", headers={**auth(1), "Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers
    assert orjson.loads(await plain.read()) == page
    small = await sc.client.get("/v1/pull", headers={**auth(2), "Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in small.headers  # one row: not worth it


async def test_page_cache_hits_are_counted_in_metrics(sc):
    for _ in range(3):
        await sc.pull(1)
    text = await (await sc.get("/metrics", sub=None)).text()
    values = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("sidecar_page_cache_")
    }
    assert values["sidecar_page_cache_hits_total"] >= 2
    assert values["sidecar_page_cache_misses_total"] >= 1


# -- Server-Sent Events ----------------------------------------------------------------------


async def read_event(resp: Any, timeout: float = 10) -> dict[str, str]:
    """The next event or comment of an SSE stream as its fields ({} at the end)."""
    fields: dict[str, str] = {}
    while True:
        line = await asyncio.wait_for(resp.content.readline(), timeout)
        if not line:
            return fields
        text = line.decode().rstrip("\n")
        if text == "":
            if fields:
                return fields
            continue
        name, _, value = text.partition(":")
        fields[name or "comment"] = value.removeprefix(" ")


async def open_stream(sc: Any, sub: int = 1, headers: dict | None = None, **params: Any) -> Any:
    assert sc.client is not None
    resp = await sc.client.get(
        "/v1/stream",
        params={k: str(v) for k, v in params.items()},
        headers={**auth(sub), **(headers or {})},
    )
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"] == "text/event-stream"
    return resp


async def test_stream_sends_pages_and_resumes_with_last_event_id(sc, pg_dsn):
    resp = await open_stream(sc)
    assert await read_event(resp) == {"retry": "3000"}
    first = await read_event(resp)
    assert first["event"] == "changes"
    page = orjson.loads(first["data"])
    assert first["id"] == page["cursor"]
    assert sorted(c["row"]["title"] for c in page["changes"]) == ["a1", "a2"]
    run_sql(pg_dsn, "INSERT INTO todo_items (title, owner_id) VALUES ('other', 2)")
    run_sql(pg_dsn, "INSERT INTO todo_items (title, owner_id) VALUES ('live', 1)")
    second = await read_event(resp)
    assert [c["row"]["title"] for c in orjson.loads(second["data"])["changes"]] == ["live"]
    resp.close()  # the connection drops; the client reconnects with the last id it saw
    run_sql(pg_dsn, "INSERT INTO todo_items (title, owner_id) VALUES ('missed', 1)")
    await sc.caught_up(pg_dsn)
    resumed = await open_stream(sc, headers={"Last-Event-ID": second["id"]})
    await read_event(resumed)  # retry
    event = await read_event(resumed)
    assert [c["row"]["title"] for c in orjson.loads(event["data"])["changes"]] == ["missed"]
    resumed.close()


async def test_stream_heartbeats_while_idle(sc):
    resp = await open_stream(sc, heartbeat=0.2)
    await read_event(resp)
    await read_event(resp)
    started = time.monotonic()
    assert await read_event(resp) == {"comment": "heartbeat"}
    assert time.monotonic() - started < 2
    resp.close()


async def test_stream_ends_with_reauth_when_the_token_expires(sc):
    assert sc.client is not None
    expiring = token(1, exp=int(time.time()) + 2)
    resp = await sc.client.get(
        "/v1/stream", params={"heartbeat": "0.5"}, headers={"Authorization": f"Bearer {expiring}"}
    )
    assert resp.status == 200
    events = []
    while event := await read_event(resp, timeout=10):
        events.append(event)
    assert events[-1]["event"] == "reauth"
    assert orjson.loads(events[-1]["data"])["code"] == "unauthorized"


async def test_stream_problems_are_plain_responses(sc):
    assert sc.client is not None
    bad = await sc.client.get("/v1/stream", headers={**auth(1), "Last-Event-ID": "nope"})
    assert bad.status == 400 and (await bad.json())["code"] == "invalid_request"
    gone = await sc.client.get("/v1/stream", params={"cursor": "00000000-1"}, headers=auth(1))
    assert gone.status == 410 and (await gone.json())["code"] == "cursor_expired"
    anonymous = await sc.client.get("/v1/stream")
    assert anonymous.status == 401


# -- NDJSON bootstrap ----------------------------------------------------------------------


def rss_peak_reset() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux)


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


async def test_ndjson_bootstrap_of_a_large_table_in_bounded_memory(pg_dsn, pg_url, sidecar_factory):
    rows = 60_000
    run_sql(
        pg_dsn,
        SCHEMA,
        "INSERT INTO todo_items (title, owner_id, notes) "
        f"SELECT 'row ' || g, 7, repeat(md5(g::text), 40) FROM generate_series(1, {rows}) g",
    )
    sc = await sidecar_factory(pg_url, TODOS, extra="limits: {page_cache: 2MB}")
    assert sc.client is not None
    rss_peak_reset()
    before = rss_kib("VmRSS")
    resp = await sc.client.get(
        "/v1/pull",
        headers={**auth(7), "Accept": "application/x-ndjson", "Accept-Encoding": "identity"},
    )
    assert resp.status == 200
    await resp.content.readline()
    await asyncio.sleep(1.0)  # a slow reader: the server must wait, not buffer the table
    count, size, last = 1, 0, b""
    async for line in resp.content:
        size += len(line)
        if line.startswith(b'{"collection"'):
            count += 1
        else:
            last = line
    growth_mib = (rss_kib("VmHWM") - before) / 1024
    assert count == rows
    assert orjson.loads(last)["has_more"] is False
    assert size > 80 * 1024 * 1024  # twice the growth allowed below
    print(f"peak RSS growth {growth_mib:.1f} MiB for {size / 2**20:.0f} MiB streamed")
    assert growth_mib < 40, f"peak RSS grew by {growth_mib:.0f} MiB while streaming"


async def test_ndjson_resumes_from_the_last_cursor_line_after_a_drop(
    pg_dsn, pg_url, sidecar_factory
):
    run_sql(
        pg_dsn,
        SCHEMA,
        "INSERT INTO todo_items (title, owner_id) "
        "SELECT 'r' || g, 5 FROM generate_series(1, 950) g",
    )
    sc = await sidecar_factory(pg_url, TODOS, extra="limits: {max_page: 100}")
    assert sc.client is not None
    headers = {**auth(5), "Accept": "application/x-ndjson"}
    seen: list[str] = []
    checkpoint = None
    resp = await sc.client.get("/v1/pull", headers=headers)
    pending: list[str] = []
    async for line in resp.content:
        item = orjson.loads(line)
        if "collection" in item:
            pending.append(item["row"]["title"])
            continue
        seen.extend(pending)  # a client commits what it got up to each checkpoint
        pending = []
        checkpoint = item["cursor"]
        if len(seen) >= 300:
            break
    resp.close()  # the connection drops mid-stream
    assert checkpoint is not None and len(seen) == 300
    resumed = await sc.client.get("/v1/pull", params={"cursor": checkpoint}, headers=headers)
    lines = [orjson.loads(line) for line in (await resumed.read()).splitlines()]
    seen.extend(item["row"]["title"] for item in lines if "collection" in item)
    assert lines[-1]["has_more"] is False
    assert sorted(seen) == sorted(f"r{g}" for g in range(1, 951))  # each row exactly once


async def test_metrics_report_lag_retained_wal_and_push_outcomes(sc, pg_dsn):
    _, body = await sc.push(
        [{"id": "m1", "collection": "todos", "op": "insert", "data": {"title": "x"}}]
    )
    text = await (await sc.get("/metrics", sub=None)).text()
    assert "sidecar_capture_lag_seconds 0.0" in text
    retained = [ln for ln in text.splitlines() if ln.startswith("sidecar_slot_retained_wal_bytes")]
    assert retained and float(retained[0].split()[1]) >= 0
    assert (
        'sidecar_push_mutations_total{collection="todos",status="rejected",strategy="reject"} 1.0'
        in text
    ), body  # the table has no write rules: inserts are refused


async def test_readyz_turns_unready_when_capture_lags_past_the_bound(
    pg_dsn, pg_url, sidecar_factory
):
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, TODOS, extra="server: {ready_max_lag: 1s}")
    assert (await sc.get("/readyz", sub=None)).status == 200
    status = sc.service.capture.status
    status.note_server(status.flushed_lsn + 10_000_000)  # the server reports WAL far ahead
    status.behind_since -= 5  # and it has been so for five seconds
    resp = await sc.get("/readyz", sub=None)
    assert resp.status == 503 and "behind" in (await resp.json())["detail"]


# -- slow clients ---------------------------------------------------------------------------


async def test_a_body_that_never_finishes_gets_408(pg_dsn, pg_url, sidecar_factory):
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, TODOS, extra="limits: {client_timeout: 1s}")
    assert sc.client is not None
    port = sc.client.server.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST /v1/push HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token(1)}\r\n"
        'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"mutations"'.encode()
    )
    await writer.drain()
    started = time.monotonic()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 408"), head
    assert 0.9 <= time.monotonic() - started < 5
    writer.close()


async def test_a_stream_reader_that_stops_reading_is_cut_off(pg_dsn, pg_url, sidecar_factory):
    import socket

    run_sql(
        pg_dsn,
        SCHEMA,
        "INSERT INTO todo_items (title, owner_id, notes) "
        "SELECT 'row ' || g, 9, repeat(md5(g::text), 30) FROM generate_series(1, 20000) g",
    )
    sc = await sidecar_factory(pg_url, TODOS, extra="limits: {client_timeout: 1s}")
    assert sc.client is not None
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that reads nothing
    sock.connect(("127.0.0.1", sc.client.server.port))
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(
        f"GET /v1/pull HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token(9)}\r\n"
        "Accept: application/x-ndjson\r\nAccept-Encoding: identity\r\n\r\n".encode()
    )
    await writer.drain()
    writer.transport.pause_reading()
    await asyncio.sleep(3)  # past client_timeout with the server's writes blocked
    writer.transport.resume_reading()
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := await asyncio.wait_for(reader.read(1 << 20), 10):
            data += chunk
    assert b'"has_more":false' not in data  # cut off before the end
    assert len(data) < 20 * 1024 * 1024
    writer.close()
