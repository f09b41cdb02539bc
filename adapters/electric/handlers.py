"""`GET /electric/v1/shape` and its CORS preflight: requests onto the core pull.

A request is authenticated and parsed (`ShapeRequest`), then answered with one chunk of
the shape log (`_chunk`), a live long-poll, Server-Sent Events (`_sse`), or `409` +
`must-refetch` with a new handle when the client's handle is not this shape's any more.
Every answer under `/electric/` may be read cross-origin (`cors`). A shape with `where`
is compiled and its pages filtered in a small thread pool of its own (`_WHERE_THREADS`),
never on the event loop: other clients are answered while a costly filter runs, and the
store's reader threads are not taken by it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from aiohttp import web

from adapters.electric.messages import Renderer, key_json
from adapters.electric.protocol import (
    EXPOSED,
    LIVE_TIMEOUT,
    MUST_REFETCH,
    PREFIX,
    SSE_SECONDS,
    UP_TO_DATE,
    Handle,
    live_cursor,
    offset_of,
    parse_offset,
)
from adapters.electric.shape import ShapeSpec, parse_shape, shape_hash
from sidecar.auth import Principal
from sidecar.changes import Cursor, Page
from sidecar.edge import principal_of, public, service_of
from sidecar.errors import CursorExpired, InvalidRequest, SidecarError
from sidecar.pull import PullRequest
from sidecar.service import Service
from sidecar.values import loads_exact

__all__ = ["cors", "preflight", "shape"]

_WHERE_THREADS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="electric-where")
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class ShapeRequest:
    """One shape request, authenticated and parsed."""

    service: Service
    principal: Principal
    spec: ShapeSpec
    shape: str  # the shape hash
    offset: Cursor | None  # the offset's core cursor in the handle's epoch; None for -1
    handle: Handle | None  # as the client sent it
    live: bool
    sse: bool
    cursor: str | None


async def _off_loop(req: ShapeRequest, fn: Callable[..., _T], *args: Any) -> _T:
    """`fn(*args)`, in the `where` threads when the shape has a `where` (compiling it,
    evaluating it on a page of rows), else here (no client expression)."""
    if req.spec.where is None:
        return fn(*args)
    return await asyncio.get_running_loop().run_in_executor(_WHERE_THREADS, fn, *args)


async def _parse(request: web.Request) -> ShapeRequest:
    service = service_of(request)
    principal = await principal_of(request)
    spec = parse_shape(request, service)
    service.puller.select_routes(principal, [spec.table])  # 403 past scopes or roles
    raw_handle = request.query.get("handle")
    handle = Handle.parse(raw_handle)
    offset = parse_offset(request.query.get("offset"), handle.epoch if handle else "0" * 8)
    if offset is not None and not raw_handle:
        raise InvalidRequest("handle is required with an offset other than -1", parameter="handle")
    live = request.query.get("live", "false") == "true" and offset is not None
    sse = live and "true" in (
        request.query.get("live_sse"),
        request.query.get("experimental_live_sse"),
    )
    return ShapeRequest(
        service,
        principal,
        spec,
        shape_hash(spec, principal, service),
        offset,
        handle,
        live,
        sse,
        request.query.get("cursor"),
    )


async def shape(request: web.Request) -> web.StreamResponse:
    """`GET /electric/v1/shape`: one chunk of the shape log, or a live wait for the next."""
    req = await _parse(request)
    if req.offset is None:
        page = await _pull(req, None, live=False)
        handle = req.handle
        if handle is None or (handle.epoch, handle.shape) != (page.cursor.epoch, req.shape):
            handle = Handle.mint(page.cursor.epoch, req.shape)
        return await _chunk(req, handle, page, initial=True)
    handle = req.handle
    if handle is None or handle.shape != req.shape:
        return await _must_refetch(req)
    try:
        if req.sse:
            return await _sse(request, req, handle)
        page = await _pull(req, req.offset, live=req.live)
    except CursorExpired:
        return await _must_refetch(req)
    return await _chunk(req, handle, page, initial=False)


async def _pull(
    req: ShapeRequest,
    cursor: Cursor | None,
    live: bool,
    timeout: float = LIVE_TIMEOUT,
    limit: int | None = None,
) -> Page:
    limit = limit or req.service.config.limits.max_page
    pull = PullRequest(cursor, (req.spec.table,), limit, live, timeout)
    return await req.service.puller.pull(req.principal, pull)


def _headers(req: ShapeRequest, renderer: Renderer, handle: Handle, offset: str) -> dict[str, str]:
    headers = {
        "electric-handle": str(handle),
        "electric-offset": offset,
        "electric-schema": json.dumps(renderer.schema(), separators=(",", ":")),
        "Cache-Control": "private, no-store",
        "Vary": "Authorization",
    }
    # Live answers only, as Electric does: a cursor on a catch-up answer would make a
    # client that restarts within a minute take that answer for a cached replay and
    # swallow its up-to-date.
    if req.live:
        headers["electric-cursor"] = live_cursor(req.cursor)
    return headers


async def _parsed(req: ShapeRequest, page: Page) -> tuple[list[Any], dict[str, int]]:
    """The page's changes, parsed once, and the push transactions behind their rows (for
    the client's `awaitTxId`)."""
    changes = [loads_exact(line) for line in page.lines]
    keys = [key_json(change["key"]) for change in changes]
    subject = req.principal.subject
    return changes, await req.service.puller.txids(req.spec.table, keys, subject)


async def _chunk(req: ShapeRequest, handle: Handle, page: Page, initial: bool) -> web.Response:
    renderer = await _off_loop(req, Renderer, req.spec, req.principal.claims)
    changes, txids = await _parsed(req, page)
    messages = await _off_loop(req, renderer.messages, changes, initial, txids)
    headers = _headers(req, renderer, handle, offset_of(page.cursor))
    if not page.has_more:
        messages.append(UP_TO_DATE)
        headers["electric-up-to-date"] = "true"
    body = orjson.dumps(messages)
    resp = web.Response(body=body, content_type="application/json", headers=headers)
    if len(body) >= 1400:
        resp.enable_compression()
    return resp


async def _must_refetch(req: ShapeRequest) -> web.Response:
    """409: the client's handle is not this shape's any more; it starts again with the
    new handle (a must-refetch control message clears its rows)."""
    probe = await _pull(req, None, live=False, limit=1)  # to learn the store's epoch
    old = req.handle
    handle = Handle.mint(
        probe.cursor.epoch, req.shape, old if old and old.shape == req.shape else None
    )
    headers = {"electric-handle": str(handle), "Cache-Control": "private, no-store"}
    return web.Response(
        status=409, body=MUST_REFETCH, content_type="application/json", headers=headers
    )


async def _sse(request: web.Request, req: ShapeRequest, handle: Handle) -> web.StreamResponse:
    """Live mode over Server-Sent Events: one event per message, an up-to-date (with the
    next offset as `global_last_seen_lsn`) after each page; ends after `SSE_SECONDS`, when
    the token expires or when the store is rebuilt (the reconnect then gets its 409)."""
    assert req.offset is not None
    page = await _pull(req, req.offset, live=True)
    renderer = await _off_loop(req, Renderer, req.spec, req.principal.claims)
    headers = _headers(req, renderer, handle, offset_of(req.offset))
    headers["X-Accel-Buffering"] = "no"
    resp = web.StreamResponse(headers=headers)
    resp.content_type = "text/event-stream"
    await resp.prepare(request)
    deadline = time.monotonic() + SSE_SECONDS
    expires = req.principal.claims.get("exp")
    if isinstance(expires, int | float):
        deadline = min(deadline, time.monotonic() + float(expires) - time.time())
    try:
        while True:
            changes, txids = await _parsed(req, page)
            await resp.write(await _off_loop(req, _sse_events, renderer, page, changes, txids))
            left = deadline - time.monotonic()
            if left <= 0:
                break
            # a position the up-to-date cannot name (a move not settled): read on at once
            settled = _settled(page)
            timeout = min(left, LIVE_TIMEOUT)
            page = await _pull(req, page.cursor, live=settled, timeout=timeout)
    except (SidecarError, ConnectionResetError):  # rebuilt (410), busy, or the client left
        return resp
    await resp.write_eof()
    return resp


def _sse_events(
    renderer: Renderer, page: Page, changes: Sequence[Any], txids: Mapping[str, int]
) -> bytes:
    events = renderer.messages(changes, initial=False, txids=txids)
    if _settled(page):
        done = {"control": "up-to-date", "global_last_seen_lsn": str(page.cursor.version)}
        events.append({"headers": done})
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events)


def _settled(page: Page) -> bool:
    """Whether an SSE up-to-date may follow the page: the client takes its next offset from
    the up-to-date's `global_last_seen_lsn` (`<lsn>_0`, one number), so only a complete page
    at a plain core cursor (`<epoch>-<version>`: no move under way, scopes read at the
    version) is one; otherwise the stream reads on until it is."""
    cursor = page.cursor
    return not page.has_more and cursor.scopes_at is None and cursor.target is None


@public
async def preflight(request: web.Request) -> web.Response:
    """CORS preflight: browsers ask before sending `Authorization`."""
    asked = request.headers.get("Access-Control-Request-Headers", "")
    headers = {
        "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
        "Access-Control-Allow-Headers": asked or "Authorization",
        "Access-Control-Max-Age": "86400",
    }
    return web.Response(status=204, headers=headers)


async def cors(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer under /electric/ (problems and 409s too) may be read cross-origin,
    Electric's headers included. The token travels in a header, never a cookie, so any
    origin may call."""
    if request.path.startswith(PREFIX):
        response.headers.setdefault("Access-Control-Allow-Origin", "*")
        response.headers["Access-Control-Expose-Headers"] = EXPOSED
