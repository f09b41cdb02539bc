"""Tracing end to end: `sidecar run` exporting to a real OTLP/HTTP receiver. A push with a
client's `traceparent` is traced from the client's span through the PostgreSQL transaction
to capture waking a live pull; a pull has its store read; the request's log lines carry the
trace id; answers carry `traceresponse`."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import orjson
import pytest

from sidecar.embedded import free_port
from tests.fixtures.service import auth, run_sql
from tests.support.otlp import OtlpReceiver, ReceivedSpan
from tests.support.process import SidecarRun

pytestmark = [pytest.mark.pg, pytest.mark.slow]

SCHEMA = (
    "CREATE TABLE notes (id serial PRIMARY KEY, owner_id int, body text)",
    "INSERT INTO notes (owner_id, body) VALUES (1, 'first')",
)
NOTES = """
  notes:
    table: notes
    read: "owner_id = :sub"
    write:
      ops: [insert]
      set: {owner_id: ":sub"}
"""
PUSH_TRACE, PUSH_SPAN = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
PULL_TRACE, PULL_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
SERVER, CONSUMER = 2, 5  # SpanKind in OTLP's enum
TRACERESPONSE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-01$")


def traceparent(trace_id: str, span_id: str) -> dict[str, str]:
    return {"traceparent": f"00-{trace_id}-{span_id}-01", "tracestate": "app=mobile"}


def one(spans: list[ReceivedSpan], **match: object) -> ReceivedSpan:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, (match, [(s.name, s.trace_id, s.parent_span_id) for s in spans])
    return found[0]


async def _live_waiters(http: aiohttp.ClientSession, base: str) -> float:
    async with http.get(f"{base}/metrics") as r:
        text = await r.text()
    line = next(ln for ln in text.splitlines() if ln.startswith("sidecar_live_waiters "))
    return float(line.split()[1])


async def test_a_push_is_traced_from_the_client_to_the_live_pull_it_wakes(
    pg_dsn, pg_url, tmp_path, monkeypatch
):
    run_sql(pg_dsn, *SCHEMA)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # export every 0.1 s, not 5 s
    async with OtlpReceiver() as otlp:
        extra = f'observability: {{otlp_endpoint: "{otlp.endpoint}"}}'
        run = await SidecarRun(tmp_path, pg_url, NOTES, extra=extra).start()
        try:
            async with aiohttp.ClientSession() as http:
                headers = {**auth(1), **traceparent(PULL_TRACE, PULL_SPAN)}
                async with http.get(f"{run.base}/v1/pull", headers=headers) as r:
                    assert r.status == 200
                    pulled = await r.json()
                    pull_header = TRACERESPONSE.match(r.headers["traceresponse"])
                assert pull_header and pull_header[1] == PULL_TRACE
                live = asyncio.create_task(
                    http.get(
                        f"{run.base}/v1/pull",
                        params={"cursor": pulled["cursor"], "live": "true", "timeout": "30"},
                        headers=auth(1),
                    )
                )
                for _ in range(300):  # the live pull waits (bounded: 30 s)
                    if await _live_waiters(http, run.base) >= 1:
                        break
                    await asyncio.sleep(0.1)
                body = {"mutations": [{"id": "m1", "collection": "notes", "op": "insert",
                                       "data": {"body": "traced"}}]}  # fmt: skip
                headers = {**auth(1), **traceparent(PUSH_TRACE, PUSH_SPAN)}
                async with http.post(f"{run.base}/v1/push", json=body, headers=headers) as r:
                    assert r.status == 200, await r.text()
                    pushed = await r.json()
                    push_header = TRACERESPONSE.match(r.headers["traceresponse"])
                assert pushed["results"][0]["status"] == "applied"
                assert push_header and push_header[1] == PUSH_TRACE
                async with await asyncio.wait_for(live, 30) as r:
                    woke = await r.json()
                assert [c["row"]["body"] for c in woke["changes"]] == ["traced"]

            spans = await otlp.wait_for(
                lambda spans: any(s.name == "capture" and s.trace_id == PUSH_TRACE for s in spans),
            )
        finally:
            run.stop()

    # the push: a child of the client's span, its transaction, capture of it
    push = one(spans, name="POST /v1/push", trace_id=PUSH_TRACE)
    assert push.kind == SERVER and push.parent_span_id == PUSH_SPAN
    assert push.span_id == push_header[2]  # traceresponse names the server's span
    assert push.attributes["http.response.status_code"] == 200
    assert push.service == "sidecar"
    txn = one(spans, name="PostgreSQL transaction", trace_id=PUSH_TRACE)
    assert txn.parent_span_id == push.span_id
    assert txn.attributes["db.system.name"] == "postgresql"
    assert txn.attributes["sidecar.xid"] == int(pushed["txid"])
    capture = one(spans, name="capture", trace_id=PUSH_TRACE)
    assert capture.kind == CONSUMER and capture.parent_span_id == txn.span_id
    assert capture.attributes["sidecar.xid"] == int(pushed["txid"])
    assert capture.attributes["sidecar.waiters_woken"] >= 1  # the live pull
    assert [name for name, _ in capture.events] == ["stored", "waiters woken"]
    # the pull and its store read
    pull = one(spans, name="GET /v1/pull", trace_id=PULL_TRACE)
    assert pull.parent_span_id == PULL_SPAN and pull.span_id == pull_header[2]
    read = one(spans, name="store read", trace_id=PULL_TRACE)
    assert read.parent_span_id == pull.span_id and read.attributes["sidecar.changes"] == 1

    # the push's log lines carry its trace and the server span's id
    events = [orjson.loads(ln) for ln in run.output().splitlines() if ln.startswith("{")]
    (line,) = [e for e in events if e.get("event") == "push"]  # one line per batch
    assert line["trace_id"] == PUSH_TRACE and line["span_id"] == push.span_id
    assert line["mutations"] == 1 and line["outcomes"] == {"applied": 1}


async def test_without_an_endpoint_requests_still_show_the_clients_trace(
    pg_dsn, pg_url, sidecar_factory
):
    run_sql(pg_dsn, *SCHEMA)
    sc = await sidecar_factory(pg_url, NOTES)
    assert not sc.service.tracing.recording  # nothing exported, nothing recorded
    resp = await sc.get("/v1/pull", headers=traceparent(PULL_TRACE, PULL_SPAN))
    assert resp.status == 200
    trace_id, span_id, flags = resp.headers["traceresponse"].split("-")[1:]
    assert trace_id == PULL_TRACE and span_id != PULL_SPAN and flags == "00"
    resp = await sc.get("/v1/pull", headers={"traceparent": "00-not-a-trace-01"})
    assert resp.status == 200  # a malformed traceparent starts a new trace
    assert resp.headers["traceresponse"].split("-")[1] not in (PULL_TRACE, "0" * 32)
    resp = await sc.get("/v1/pull", params={"limit": "0"})  # refused: traced all the same
    assert resp.status == 400 and resp.headers["traceresponse"]
    resp = await sc.get("/healthz", sub=None)  # probes: no span unless asked for one
    assert resp.status == 200 and "traceresponse" not in resp.headers
    resp = await sc.get("/healthz", sub=None, headers=traceparent(PULL_TRACE, PULL_SPAN))
    assert resp.headers["traceresponse"].split("-")[1] == PULL_TRACE


async def test_a_collector_that_is_down_does_not_hold_pushes_or_the_stop(
    pg_dsn, pg_url, sidecar_factory
):
    run_sql(pg_dsn, *SCHEMA)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    sc = await sidecar_factory(pg_url, NOTES, extra=f'observability: {{otlp_endpoint: "{dead}"}}')
    assert sc.service.tracing.recording
    for n in range(3):
        status, body = await sc.push(
            [{"id": f"d{n}", "collection": "notes", "op": "insert", "data": {"body": "x"}}]
        )
        assert status == 200 and body["results"][0]["status"] == "applied", body
    await asyncio.wait_for(sc.stop(), 30)  # exporting gives up within tracing.CLOSE_WAIT
