"""HTTP handlers: thin named steps (authenticate → parse → call the core → render)."""

from __future__ import annotations

import asyncio
import functools
import hashlib
from importlib import resources

import orjson
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sidecar.auth import Principal
from sidecar.changes import Cursor
from sidecar.errors import (
    Forbidden,
    InvalidRequest,
    PayloadTooLarge,
    RequestTimeout,
    Unavailable,
)
from sidecar.lsn import lsn_to_str, str_to_lsn
from sidecar.mutations import parse_push
from sidecar.pull import PullRequest, StreamEvent, render_page
from sidecar.rules.evaluator import evaluate
from sidecar.service import Service

SERVICE = web.AppKey("service", Service)
log = structlog.get_logger("sidecar.http")

NDJSON = "application/x-ndjson"
MAX_TIMEOUT = 60.0
COMPRESS_FROM = 1400  # bytes: smaller JSON bodies are sent as they are (one packet anyway)
SSE_RETRY_MS = 3000  # the reconnect delay suggested to EventSource clients


def _service(request: web.Request) -> Service:
    return request.app[SERVICE]


async def _principal(request: web.Request) -> Principal:
    """The authenticated caller, who also spends one token of their rate limit."""
    service = _service(request)
    principal = await service.auth.authenticate(request.headers.get("Authorization"))
    structlog.contextvars.bind_contextvars(subject=principal.subject)  # on every log line
    if service.limiter is not None:
        service.limiter.take(principal.subject, principal.device)
    return principal


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def etag_of(body: bytes) -> str:
    return '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


def _revalidated(
    request: web.Request, body: bytes, cache_control: str, etag: str | None = None
) -> web.Response:
    """A JSON answer that depends on the token: an ETag over the exact bytes, 304 when the
    client already has them, gzip when accepted and worth it."""
    etag = etag or etag_of(body)
    headers = {"ETag": etag, "Cache-Control": cache_control, "Vary": "Authorization"}
    if etag in _etags(request.headers.get("If-None-Match", "")):
        return web.Response(status=304, headers=headers)
    resp = web.Response(body=body, content_type="application/json", headers=headers)
    if len(body) >= COMPRESS_FROM:
        resp.enable_compression()  # picks gzip/deflate from Accept-Encoding, or nothing
    return resp


def _etags(header: str) -> set[str]:
    tags = {t.strip() for t in header.split(",") if t.strip()}
    return {t[2:] if t.startswith("W/") else t for t in tags}


# -- parameters ---------------------------------------------------------------------------


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer", parameter=name) from None
    if not lo <= value <= hi:
        raise InvalidRequest(f"{name} must be between {lo} and {hi}", parameter=name)
    return value


def _bool_param(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "false").lower()
    if raw in ("true", "1", "yes"):
        return True
    if raw in ("false", "0", "no", ""):
        return False
    raise InvalidRequest(f"{name} must be true or false", parameter=name)


def _float_param(request: web.Request, name: str, default: float, hi: float) -> float:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be a number of seconds", parameter=name) from None
    if not 0 <= value <= hi:
        raise InvalidRequest(f"{name} must be between 0 and {hi:g}", parameter=name)
    return value


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
        limit=_int_param(request, "limit", max_page, 1, 1_000_000),
        live=_bool_param(request, "live"),
        timeout=_float_param(request, "timeout", 20.0, MAX_TIMEOUT),
        after_lsn=after_lsn,
    )


# -- handlers -----------------------------------------------------------------------------


@functools.cache
def _openapi_document() -> bytes:
    return resources.files("sidecar.http").joinpath("openapi.json").read_bytes()


async def openapi(request: web.Request) -> web.Response:
    """The protocol as an OpenAPI 3.1 document (no token needed)."""
    body = _openapi_document()
    return _revalidated(request, body, "public, max-age=300")


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    service = _service(request)
    if not service.capture.ready:
        raise Unavailable(
            "not ready: " + service.capture.status.phase,
            retry_after=5,
            progress=service.capture.progress(),
        )
    bound = service.config.server.ready_max_lag
    lag = service.capture.status.lag_seconds()
    if bound is not None and lag > bound:
        raise Unavailable(
            f"not ready: capture is {lag:.0f}s behind the database (server.ready_max_lag)",
            retry_after=5,
        )
    return _json({"status": "ready", "lsn": lsn_to_str(service.capture.status.flushed_lsn)})


async def metrics(request: web.Request) -> web.Response:
    service = _service(request)
    service.update_metrics()
    retained = await service.retained_wal()
    if retained is not None:
        service.metrics.retained_wal.set(retained)
    body = generate_latest(service.metrics.registry)
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


async def schema(request: web.Request) -> web.Response:
    principal = await _principal(request)
    body = orjson.dumps(_service(request).puller.schema_for(principal))
    return _revalidated(request, body, "private, no-cache")


async def pull(request: web.Request) -> web.StreamResponse:
    service = _service(request)
    principal = await _principal(request)
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
    return _revalidated(request, body, "private, no-cache", etag)


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
    service = _service(request)
    principal = await _principal(request)
    req = parse_pull(request, service.config.limits.max_page)
    last_id = request.headers.get("Last-Event-ID")
    if last_id:
        req = PullRequest(Cursor.parse(last_id), req.collections, req.limit)
    heartbeat = _float_param(request, "heartbeat", 15.0, MAX_TIMEOUT)
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
    timeout = _service(request).config.limits.client_timeout
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
    service = _service(request)
    principal = await _principal(request)
    body = await _json_body(
        request, service.config.limits.max_body, service.config.limits.client_timeout
    )
    mutations, atomic = parse_push(
        body, collections=service.routes, max_push=service.config.limits.max_push
    )
    result = await service.pusher.push(principal, mutations, atomic)
    outcomes = service.metrics.push_outcomes
    for m, r in zip(mutations, result.results, strict=True):
        strategy = service.routes[m.collection].config.conflict.kind
        outcomes.labels(m.collection, strategy, r.status).inc()
    return _json(
        {
            "results": [r.as_json() for r in result.results],
            "lsn": None if result.lsn is None else lsn_to_str(result.lsn),
            "txid": None if result.txid is None else str(result.txid),
        }
    )


async def _json_body(request: web.Request, max_body: int, timeout: float = 30.0) -> object:
    if request.content_length is not None and request.content_length > max_body:
        raise PayloadTooLarge(f"the body is larger than {max_body} bytes (limits.max_body)")
    try:
        async with asyncio.timeout(timeout):
            raw = await request.read()
    except TimeoutError:
        raise RequestTimeout(
            f"the body did not arrive within {timeout:g}s (limits.client_timeout)"
        ) from None
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(
            f"the body is larger than {max_body} bytes (limits.max_body)"
        ) from None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}") from None


async def audit(request: web.Request) -> web.Response:
    """Who changed a row through the sidecar, newest first (callers with the admin claim)."""
    service = _service(request)
    principal = await _principal(request)
    admin = service.config.auth.admin
    if admin is None or evaluate(admin, {}, principal.claims) is not True:
        raise Forbidden("the audit trail needs the admin claim configured in auth.admin")
    collection = request.query.get("collection", "")
    if collection not in service.routes:
        raise InvalidRequest(f"unknown collection {collection!r}", parameter="collection")
    try:
        key = orjson.loads(request.query.get("key", ""))
    except orjson.JSONDecodeError:
        key = None
    if not isinstance(key, dict) or not key:
        raise InvalidRequest('key must be a JSON object, e.g. key={"id":1}', parameter="key")
    limit = _int_param(request, "limit", 100, 1, 1000)
    records = await asyncio.to_thread(service.store.audit, collection, orjson.dumps(key), limit)
    entries = []
    for r in records:
        outcome = orjson.loads(r.outcome)
        entries.append(
            {
                "id": r.id,
                "subject": r.subject,
                "device": r.device,
                "op": outcome.get("op"),
                "status": outcome.get("status"),
                "rev": outcome.get("rev"),
                "client_time": outcome.get("client_time"),
                "lsn": lsn_to_str(r.lsn),
            }
        )
    return _json({"collection": collection, "key": key, "mutations": entries})
