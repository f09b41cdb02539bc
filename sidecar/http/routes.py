"""HTTP handlers: thin named steps (authenticate → parse → call the core → render)."""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sidecar.auth import Principal
from sidecar.capture.pgoutput import lsn_to_str, str_to_lsn
from sidecar.changes import Cursor
from sidecar.errors import Forbidden, InvalidRequest, PayloadTooLarge, Unavailable
from sidecar.mutations import parse_push
from sidecar.pull import PullRequest, render_page
from sidecar.rules import evaluate
from sidecar.service import Service

SERVICE = web.AppKey("service", Service)

NDJSON = "application/x-ndjson"
MAX_TIMEOUT = 60.0


def _service(request: web.Request) -> Service:
    return request.app[SERVICE]


async def _principal(request: web.Request) -> Principal:
    """The authenticated caller, who also spends one token of their rate limit."""
    service = _service(request)
    principal = await service.auth.authenticate(request.headers.get("Authorization"))
    if service.limiter is not None:
        service.limiter.take(principal.subject, principal.device)
    return principal


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


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
    return _json({"status": "ready", "lsn": lsn_to_str(service.capture.status.flushed_lsn)})


async def metrics(request: web.Request) -> web.Response:
    service = _service(request)
    service.update_metrics()
    body = generate_latest(service.metrics.registry)
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


async def schema(request: web.Request) -> web.Response:
    principal = await _principal(request)
    return _json(_service(request).puller.schema_for(principal))


async def pull(request: web.Request) -> web.StreamResponse:
    service = _service(request)
    principal = await _principal(request)
    req = parse_pull(request, service.config.limits.max_page)
    puller = service.puller
    if NDJSON in request.headers.get("Accept", ""):
        return await _pull_ndjson(request, service, principal, req)
    page = await puller.pull(principal, req)
    body = render_page(page, puller.schema_version)
    service.metrics.response_bytes.labels("/v1/pull").inc(len(body))
    resp = web.Response(body=body, content_type="application/json")
    resp.headers["Cache-Control"] = "private, no-store"
    return resp


async def _pull_ndjson(
    request: web.Request, service: Service, principal: Principal, req: PullRequest
) -> web.StreamResponse:
    """Every change in the caller's scopes, one per line, the cursor line last."""
    puller = service.puller
    explicit_limit = "limit" in request.query
    remaining = req.limit if explicit_limit else None
    page_size = service.config.limits.max_page
    page = await puller.pull(principal, _with_limit(req, min(page_size, remaining or page_size)))
    resp = web.StreamResponse(
        headers={"Content-Type": NDJSON, "Cache-Control": "private, no-store"}
    )
    await resp.prepare(request)
    while True:
        if page.lines:
            await resp.write(b"\n".join(page.lines) + b"\n")
        if remaining is not None:
            remaining -= len(page.lines)
        if not page.has_more or (remaining is not None and remaining <= 0):
            break
        nxt = PullRequest(page.cursor, req.collections, min(page_size, remaining or page_size))
        page = await puller.pull(principal, nxt)
    tail = {
        "cursor": str(page.cursor),
        "has_more": page.has_more,
        "schema_version": puller.schema_version,
    }
    await resp.write(orjson.dumps(tail) + b"\n")
    await resp.write_eof()
    return resp


def _with_limit(req: PullRequest, limit: int) -> PullRequest:
    return PullRequest(req.cursor, req.collections, limit, req.live, req.timeout, req.after_lsn)


async def push(request: web.Request) -> web.Response:
    service = _service(request)
    principal = await _principal(request)
    body = await _json_body(request, service.config.limits.max_body)
    mutations, atomic = parse_push(
        body, collections=service.routes, max_push=service.config.limits.max_push
    )
    result = await service.pusher.push(principal, mutations, atomic)
    return _json(
        {
            "results": [r.as_json() for r in result.results],
            "lsn": None if result.lsn is None else lsn_to_str(result.lsn),
        }
    )


async def _json_body(request: web.Request, max_body: int) -> object:
    if request.content_length is not None and request.content_length > max_body:
        raise PayloadTooLarge(f"the body is larger than {max_body} bytes (limits.max_body)")
    try:
        raw = await request.read()
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
