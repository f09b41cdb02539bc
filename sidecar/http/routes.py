"""HTTP handlers: thin named steps (authenticate → parse → call the core → render)."""

from __future__ import annotations

import asyncio
import functools
from importlib import resources

import orjson
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sidecar.audit import audit_query, audit_trail
from sidecar.auth import Principal
from sidecar.changes import Cursor
from sidecar.edge import (
    bool_param,
    etag_of,
    float_param,
    int_param,
    json_body,
    json_response,
    principal_of,
    public,
    revalidated,
    service_of,
)
from sidecar.errors import InvalidRequest, SlotInUse, Unavailable
from sidecar.lsn import lsn_to_str, str_to_lsn
from sidecar.mutations import parse_push
from sidecar.pull import PullRequest, StreamEvent, render_page
from sidecar.service import Service

log = structlog.get_logger("sidecar.http")

NDJSON = "application/x-ndjson"
MAX_TIMEOUT = 60.0
SSE_RETRY_MS = 3000  # the reconnect delay suggested to EventSource clients


# -- parameters ---------------------------------------------------------------------------


def parse_pull(request: web.Request, max_page: int) -> PullRequest:
    raw_cursor = request.query.get("cursor")
    cursor = Cursor.parse(raw_cursor) if raw_cursor else None
    raw_colls = request.query.get("collections")
    collections = tuple(c.strip() for c in raw_colls.split(",") if c.strip()) if raw_colls else None
    after_lsn = None
    if request.query.get("after_lsn"):
        try:
            after_lsn = str_to_lsn(request.query["after_lsn"])
        except ValueError:
            raise InvalidRequest(
                "after_lsn must be an LSN like 0/16B3748 (the `lsn` of a push response)",
                parameter="after_lsn",
            ) from None
    return PullRequest(
        cursor=cursor,
        collections=collections,
        limit=int_param(request, "limit", max_page, 1, 1_000_000),
        live=bool_param(request, "live"),
        timeout=float_param(request, "timeout", 20.0, MAX_TIMEOUT),
        after_lsn=after_lsn,
    )


# -- handlers -----------------------------------------------------------------------------


@functools.cache
def _openapi_document() -> bytes:
    return resources.files("sidecar.http").joinpath("openapi.json").read_bytes()


@public
async def openapi(request: web.Request) -> web.Response:
    """The protocol as an OpenAPI 3.1 document (no token needed)."""
    body = _openapi_document()
    return revalidated(request, body, "public, max-age=300")


@public
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@public
async def readyz(request: web.Request) -> web.Response:
    service = service_of(request)
    breaker = service.pusher.breaker
    progress = service.capture.progress()
    if breaker.open:  # pushes are answered 503 at once; pulls are still served
        raise Unavailable(
            f"not ready: database unavailable for writes ({breaker.reason})",
            retry_after=5,
            progress=progress,
        )
    phase = service.capture.status.phase
    if (
        service.replica is not None
        and phase in ("slot_in_use", "reconnecting")
        and service.capture.ready
    ):  # a replica serves the shared store while its capture waits for the slot (a
        # takeover: the old leader's walsender or lock not gone yet): ready, and says so
        return json_response(
            {
                "status": "ready",
                "role": service.replica.role(),
                "phase": phase,
                "progress": progress,
            }
        )
    if phase == "slot_in_use":  # another sidecar captures from the slot: this one waits
        raise SlotInUse(f"not ready: {progress['error']}", retry_after=5, progress=progress)
    if phase in ("reconnecting", "failed"):  # a complete store is still pulled
        raise Unavailable(f"not ready: {progress['error']}", retry_after=5, progress=progress)
    paused = service.capture.status.store_reason()
    if paused is not None:  # capture waits for the store; pulls are still served
        raise Unavailable(f"not ready: {paused}; capture is paused", retry_after=5)
    if not service.capture.ready:
        raise Unavailable(
            "not ready: " + service.capture.status.phase,
            retry_after=5,
            progress=service.capture.progress(),
        )
    if phase in ("reconciling", "schema_changed"):  # served meanwhile: ready, and says so
        return json_response({"status": "ready", "phase": phase, "progress": progress})
    bound = service.config.server.ready_max_lag
    lag = service.capture.status.lag_seconds()
    if bound is not None and lag > bound:
        raise Unavailable(
            f"not ready: capture is {lag:.0f}s behind the database (server.ready_max_lag)",
            retry_after=5,
        )
    ready = {"status": "ready", "lsn": lsn_to_str(service.capture.status.flushed_lsn)}
    if service.replica is not None:  # a shared store: this replica's role (it serves)
        ready["role"] = service.replica.role()
    return json_response(ready)


@public
async def metrics(request: web.Request) -> web.Response:
    """The Prometheus metrics, from memory: no database or store query per scrape."""
    service = service_of(request)
    service.update_metrics()
    body = generate_latest(service.metrics.registry)
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


async def schema(request: web.Request) -> web.Response:
    principal = await principal_of(request)
    body = orjson.dumps(service_of(request).puller.schema_for(principal))
    return revalidated(request, body, "private, no-cache")


async def pull(request: web.Request) -> web.StreamResponse:
    service = service_of(request)
    principal = await principal_of(request)
    req = parse_pull(request, service.config.limits.max_page)
    puller = service.puller
    if NDJSON in request.headers.get("Accept", ""):
        return await _pull_ndjson(request, service, principal, req)
    page = await puller.pull(principal, req)
    rendered = page.memo.get(puller.schema_version)
    if rendered is None:
        body = render_page(page, puller.schema_version)
        rendered = page.memo[puller.schema_version] = (body, etag_of(body))
    body, etag = rendered
    service.metrics.response_bytes.labels("/v1/pull").inc(len(body))
    return revalidated(request, body, "private, no-cache", etag)


async def _pull_ndjson(
    request: web.Request, service: Service, principal: Principal, req: PullRequest
) -> web.StreamResponse:
    """Every change in the caller's scopes, one per line; a cursor line ends each page
    (the last one has `has_more` false, or the `limit` given was reached)."""
    puller = service.puller
    explicit_limit = "limit" in request.query
    remaining = req.limit if explicit_limit else None
    page_size = service.config.limits.max_page
    page = await puller.pull(principal, _with_limit(req, min(page_size, remaining or page_size)))
    resp = web.StreamResponse(
        headers={"Content-Type": NDJSON, "Cache-Control": "private, no-store"}
    )
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        resp.enable_compression(web.ContentCoding.gzip)
    await resp.prepare(request)
    while True:
        done = not page.has_more or (remaining is not None and remaining <= len(page.lines))
        # Each page ends with a cursor line: a checkpoint a dropped client resumes from.
        tail = orjson.dumps(
            {
                "cursor": str(page.cursor),
                "has_more": page.has_more,
                "schema_version": puller.schema_version,
            }
        )
        # Waits while the client is slow to read (backpressure): at most one page is held
        # in memory. A client that stops reading altogether is cut off.
        if not await _write_or_drop(request, resp, b"\n".join((*page.lines, tail)) + b"\n"):
            return resp
        if remaining is not None:
            remaining -= len(page.lines)
        if done:
            break
        size = min(page_size, remaining or page_size)
        page = await puller.pull(principal, PullRequest(page.cursor, req.collections, size))
    await resp.write_eof()
    return resp


async def stream(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: one `changes` event per page, `id:` = its cursor, so an
    EventSource that reconnects resumes with Last-Event-ID; heartbeat comments while idle;
    a final `reauth` (token expired) or `resync` (store rebuilt) event before it ends."""
    service = service_of(request)
    principal = await principal_of(request)
    req = parse_pull(request, service.config.limits.max_page)
    last_id = request.headers.get("Last-Event-ID")
    if last_id:
        req = PullRequest(Cursor.parse(last_id), req.collections, req.limit)
    heartbeat = float_param(request, "heartbeat", 15.0, MAX_TIMEOUT)
    events = service.puller.stream(principal, req, heartbeat=max(heartbeat, 0.1))
    first = await anext(events)  # problems (410, 403, 503) still become plain responses
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "private, no-store",
            "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
        }
    )
    await resp.prepare(request)
    await resp.write(f"retry: {SSE_RETRY_MS}\n\n".encode())
    try:
        if not await _write_or_drop(request, resp, _sse(first, service)):
            return resp
        async for event in events:
            if not await _write_or_drop(request, resp, _sse(event, service)):
                return resp
    except ConnectionResetError:  # the client went away: nothing more to say
        return resp
    finally:
        await events.aclose()  # frees the live slot and the scope watch at once
    await resp.write_eof()
    return resp


async def _write_or_drop(request: web.Request, resp: web.StreamResponse, data: bytes) -> bool:
    """Write to a stream; False (and the connection closed) when the client has not made
    room for it within limits.client_timeout."""
    timeout = service_of(request).config.limits.client_timeout
    try:
        async with asyncio.timeout(timeout):
            await resp.write(data)
        return True
    except TimeoutError:
        log.info("dropped a client that stopped reading", path=request.path, seconds=timeout)
        if request.transport is not None:
            request.transport.abort()
        return False


def _sse(event: StreamEvent, service: Service) -> bytes:
    if event.kind == "heartbeat":
        return b": heartbeat\n\n"
    if event.page is not None:
        page = event.page
        body = render_page(page, service.puller.schema_version)
        service.metrics.response_bytes.labels("/v1/stream").inc(len(body))
        return b"id: %s\nevent: changes\ndata: %s\n\n" % (str(page.cursor).encode(), body)
    code = "unauthorized" if event.kind == "reauth" else "cursor_expired"
    data = orjson.dumps({"code": code, "detail": event.detail})
    return b"event: %s\ndata: %s\n\n" % (event.kind.encode(), data)


def _with_limit(req: PullRequest, limit: int) -> PullRequest:
    return PullRequest(req.cursor, req.collections, limit, req.live, req.timeout, req.after_lsn)


async def push(request: web.Request) -> web.Response:
    service = service_of(request)
    principal = await principal_of(request)
    body = await json_body(
        request, service.config.limits.max_body, service.config.limits.client_timeout
    )
    mutations, atomic = parse_push(
        body, collections=service.routes, max_push=service.config.limits.max_push
    )
    result = await service.push(principal, mutations, atomic)
    return json_response(
        {
            "results": [r.as_json() for r in result.results],
            "lsn": None if result.lsn is None else lsn_to_str(result.lsn),
            "txid": None if result.txid is None else str(result.txid),
        }
    )


async def audit(request: web.Request) -> web.Response:
    """Who changed a row through the sidecar, newest first (callers with the admin claim)."""
    service = service_of(request)
    principal = await principal_of(request)
    query = audit_query(
        service.config.auth.admin,
        principal,
        service.routes,
        request.query.get("collection", ""),
        request.query.get("key", ""),
    )
    limit = int_param(request, "limit", 100, 1, 1000)
    return json_response(await audit_trail(service.store, query, limit))
