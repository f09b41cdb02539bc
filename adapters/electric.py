"""Adapter: the ElectricSQL Shape API, `GET /electric/v1/shape`, over the core pull.

Speaks the HTTP protocol of `@electric-sql/client` 1.x (`ShapeStream`, `Shape`): a shape is
one collection (`table=`), optionally narrowed by `columns=` and `where=`; the client walks
a log by `offset` within a `handle`, then long-polls (`live=true`, or Server-Sent Events
with `live_sse=true`). See docs/adapters/electric.md for the user side.

Mapping onto the core (`Puller.pull`, cursors `<epoch>-<version>`):

- **handle** `<epoch>-<shape>-<generation>`: the store epoch, a hash of what decides the
  shape's rows (collection, columns, where and its params, replica, schema version, the
  caller's read scopes and the claims the `where` uses) and the time it was minted (ms).
  A handle whose epoch or shape hash is not current gets `409` + `must-refetch` with a new
  handle (store rebuilt, tombstones past retention, claims or schema changed): handles are
  never reused, as the client requires.
- **offset** `-1` = the initial sync (no cursor); `<version>_0` = after core version
  `<version>` of the handle's epoch. Offsets are decimal integers; the `_0` is Electric's op
  index, always 0 because each change has its own version.
- **messages**: the first response of an initial sync (`offset=-1`) sends each row as
  `insert` and leaves out tombstones; later responses send an upsert as `update` carrying
  the whole row (the core does not tell inserts from updates) and a delete as `delete`.
  With `where`, an upserted row the expression does not admit becomes a `delete`, so a
  row moving out of the shape leaves the client.
- **values** are PostgreSQL's text form, typed by `electric-schema` for the client's
  parser: numbers as decimal text, booleans `t`/`f`, json as JSON text, arrays as array
  literals, timestamps as PostgreSQL prints them; NULL stays `null`.
- **txids** are not sent: the core's change lines carry no transaction id.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal
from uuid import UUID

import orjson
from aiohttp import web
from pglast.parser import ParseError, scan
from psycopg.postgres import types as pg_types

from sidecar.auth import Principal
from sidecar.catalog import ColumnInfo
from sidecar.changes import Cursor, Page
from sidecar.config.expressions import Expression, ExpressionError, parse_expression
from sidecar.edge import principal_of, service_of
from sidecar.errors import CursorExpired, InvalidRequest, SidecarError
from sidecar.pgtypes import float_text, parse_type_name
from sidecar.pull import PullRequest
from sidecar.route import Route
from sidecar.rules.evaluator import EvaluationError, compile_evaluator
from sidecar.service import Service

PREFIX = "/electric/"
PATH = "/electric/v1/shape"
LIVE_TIMEOUT = 20.0  # seconds a long-poll waits, as Electric's server does
SSE_SECONDS = 60.0  # an SSE response ends after this; the client reconnects at once
CURSOR_EPOCH = 1728432000  # 2024-10-09T00:00:00Z: the live cursor counts 20 s from it
EXPOSED = (
    "electric-handle, electric-offset, electric-schema, electric-cursor, "
    "electric-up-to-date, retry-after, x-request-id"
)
UP_TO_DATE: dict[str, Any] = {"headers": {"control": "up-to-date"}}
MUST_REFETCH = b'[{"headers":{"control":"must-refetch"}}]'

Message = dict[str, Any]
Encoder = Callable[[Any], Any]


def install(app: web.Application, service: Service) -> None:
    """Add `GET /electric/v1/shape`, its CORS preflight and CORS headers on its answers."""
    app.router.add_get(PATH, shape)
    app.router.add_route("OPTIONS", PATH, preflight)
    app.on_response_prepare.append(_cors)


# -- the shape a request asks for ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShapeSpec:
    """What the client asked for: a collection, some of its columns, a row filter."""

    route: Route
    columns: tuple[str, ...]
    where: Expression | None
    replica: str

    @property
    def table(self) -> str:
        return self.route.name


def parse_shape(request: web.Request, service: Service) -> ShapeSpec:
    _refuse_unsupported(request)
    route = _route(request.query.get("table", ""), service)
    replica = request.query.get("replica", "default")
    if replica not in ("default", "full"):
        raise InvalidRequest("replica must be default or full", parameter="replica")
    columns = _columns(request.query.get("columns"), route)
    where = _where(request.query.get("where"), _where_params(request), route)
    return ShapeSpec(route, columns, where, replica)


def _refuse_unsupported(request: web.Request) -> None:
    for name in request.query:
        if name.startswith("subset__"):
            raise InvalidRequest("subset snapshots are not supported", parameter=name)
    if request.query.get("log", "full") != "full":
        raise InvalidRequest("only log=full is supported", parameter="log")


def _route(table: str, service: Service) -> Route:
    if table not in service.routes:
        known = ", ".join(service.routes)
        raise InvalidRequest(f"unknown table {table!r}; known: {known}", parameter="table")
    return service.routes[table]


def _columns(raw: str | None, route: Route) -> tuple[str, ...]:
    if not raw:
        return route.exposed
    names = _identifiers(raw)
    unknown = [n for n in names if n not in route.exposed]
    if unknown:
        raise InvalidRequest(f"unknown column(s): {', '.join(unknown)}", parameter="columns")
    missing = [k for k in route.key if k not in names]
    if missing:
        raise InvalidRequest(
            f"columns must include the key column(s): {', '.join(missing)}", parameter="columns"
        )
    return tuple(c for c in route.exposed if c in names)


_IDENTIFIER = re.compile(r'\s*(?:"((?:[^"]|"")*)"|([^",]+?))\s*(?:,|$)')


def _identifiers(raw: str) -> list[str]:
    """`"a","b""c",d` → ['a', 'b"c', 'd'] (unquoted names fold to lower case)."""
    names: list[str] = []
    pos = 0
    while pos < len(raw):
        m = _IDENTIFIER.match(raw, pos)
        if m is None or m.end() == pos:
            raise InvalidRequest("columns must be a comma-separated list", parameter="columns")
        quoted, bare = m.groups()
        names.append(quoted.replace('""', '"') if quoted is not None else bare.lower())
        pos = m.end()
    return names


def _where_params(request: web.Request) -> dict[str, str]:
    """`params[1]=x&params[2]=y` (how the client sends them) → {'1': 'x', '2': 'y'}."""
    out = {}
    for name, value in request.query.items():
        m = re.fullmatch(r"params\[(\d+)\]", name)
        if m:
            out[str(int(m.group(1)))] = value
    return out


def _where(raw: str | None, params: Mapping[str, str], route: Route) -> Expression | None:
    """The client's filter, parsed and checked by the rule parser (its allow-list refuses
    sub-selects, unknown functions, ...): it can only narrow the caller's read rule."""
    if not raw:
        return None
    try:
        expr = parse_expression(_bind_params(raw, params))
    except ExpressionError as exc:
        raise InvalidRequest(
            f"where is refused: {exc.message}", parameter="where", token=exc.token
        ) from None
    unknown = sorted(expr.columns - set(route.exposed))
    if unknown:
        raise InvalidRequest(
            f"where uses unknown column(s): {', '.join(unknown)}", parameter="where"
        )
    return expr


def _bind_params(text: str, params: Mapping[str, str]) -> str:
    """Replace each `$n` token by `params[n]` as a string literal (unknown-typed, as
    Electric binds them); the result is parsed and checked like any other expression."""
    try:
        tokens = [t for t in scan(text) if t.name == "PARAM"]
    except ParseError:
        return text  # the parser reports it, located
    for tok in reversed(tokens):
        number = text[tok.start + 1 : tok.end + 1]
        if number not in params:
            raise InvalidRequest(
                f"where uses ${number} but params[{number}] is missing", parameter="params"
            )
        literal = "'" + params[number].replace("'", "''") + "'"
        text = text[: tok.start] + literal + text[tok.end + 1 :]
    return text


def shape_hash(spec: ShapeSpec, principal: Principal, service: Service) -> str:
    """12 hex characters that change whenever the rows this caller gets could change."""
    puller = service.puller
    where = spec.where
    basis = [
        spec.table,
        spec.columns,
        where.text if where else None,
        spec.replica,
        puller.schema_version,
        sorted(puller.scopes_for(principal, [spec.route])),
        [principal.claims.get(c) for c in where.params] if where else [],
    ]
    return hashlib.blake2b(orjson.dumps(basis, default=str), digest_size=6).hexdigest()


# -- handles and offsets ------------------------------------------------------------------

_HANDLE = re.compile(r"^([0-9a-f]{8})-([0-9a-f]{12})-([0-9]{1,20})$")
_OFFSET = re.compile(r"^([0-9]{1,19})_([0-9]{1,19}|inf)$")


@dataclass(frozen=True, slots=True)
class Handle:
    epoch: str
    shape: str
    generation: str

    def __str__(self) -> str:
        return f"{self.epoch}-{self.shape}-{self.generation}"

    @classmethod
    def parse(cls, text: str | None) -> Handle | None:
        m = _HANDLE.match(text or "")
        return cls(*m.groups()) if m else None

    @classmethod
    def mint(cls, epoch: str, shape: str, not_like: Handle | None = None) -> Handle:
        generation = time.time_ns() // 1_000_000
        if not_like is not None and not_like.generation == str(generation):
            generation += 1
        return cls(epoch, shape, str(generation))


def parse_offset(raw: str | None) -> int | None:
    """The core version an offset stands for; None for `-1` (from scratch)."""
    if raw is None or raw == "-1":
        return None
    m = _OFFSET.match(raw)
    if m is None:
        raise InvalidRequest("offset must be -1 or <version>_<op>", parameter="offset")
    return int(m.group(1))


def _live_cursor(client: str | None) -> str:
    """`electric-cursor`: a cache buster that moves every 20 s and never repeats the
    client's (as Electric's server computes it)."""
    now = int((time.time() - CURSOR_EPOCH) // 20)
    if client and client.isdigit() and int(client) >= now:
        now = int(client) + 1
    return str(now)


# -- values: the core's JSON → PostgreSQL text -------------------------------------------

_TIMESTAMP = re.compile(
    r"^(-?[0-9]{4,}-[0-9]{2}-[0-9]{2})[T ]([0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]+))?"
    r"(Z|[+-][0-9]{2}:[0-9]{2}(?::[0-9]{2})?)?$"
)
_TIME = re.compile(r"^([0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]+))?([+-][0-9]{2}:[0-9]{2})?$")
_ARRAY_SPECIAL = frozenset('{}",\\')


def _zone(zone: str | None) -> str:
    if not zone:
        return ""
    if zone == "Z":
        return "+00"
    return zone[:3] if zone[3:] in (":00", ":00:00") else zone


def _fraction(frac: str | None) -> str:
    frac = (frac or "").rstrip("0")
    return "." + frac if frac else ""


def _timestamp_text(value: Any) -> Any:
    """ISO 8601 (`2024-03-10T07:00:00.500000+00:00`) → PostgreSQL's `2024-03-10
    07:00:00.5+00`; PostgreSQL's own text (infinity, BC dates) is kept."""
    m = _TIMESTAMP.match(value) if isinstance(value, str) else None
    if m is None:
        return _plain_text(value)
    day, clock, frac, zone = m.groups()
    return f"{day} {clock}{_fraction(frac)}{_zone(zone)}"


def _time_text(value: Any) -> Any:
    m = _TIME.match(value) if isinstance(value, str) else None
    if m is None:
        return _plain_text(value)
    clock, frac, zone = m.groups()
    return f"{clock}{_fraction(frac)}{_zone(zone)}"


def _float_text(value: Any, kind: Literal["float8", "float4"] = "float8") -> Any:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return _plain_text(value)  # "NaN", "Infinity", "-Infinity" already
    return float_text(float(value), kind)


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def _plain_text(value: Any) -> Any:
    if value is True:
        return "t"
    if value is False:
        return "f"
    if isinstance(value, int | float):
        return _float_text(value) if isinstance(value, float) else str(value)
    if isinstance(value, dict | list):
        return _json_text(value)
    return value


_SCALAR_TEXT: dict[str, Encoder] = {
    "float4": lambda value: _float_text(value, "float4"),
    "float8": _float_text,
    "json": _json_text,
    "jsonb": _json_text,
    "timestamptz": _timestamp_text,
    "timestamp": _timestamp_text,
    "time": _time_text,
    "timetz": _time_text,
}


def _array_element(value: Any, element: Encoder) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, list):
        return _array_text(value, element)
    text = str(element(value))
    if (
        text
        and text.upper() != "NULL"
        and not any(c in _ARRAY_SPECIAL or c.isspace() for c in text)
    ):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _array_text(value: Any, element: Encoder) -> Any:
    """A JSON list → PostgreSQL's array literal (`{1,NULL,"a b"}`); text kept as it is."""
    if not isinstance(value, list):
        return value
    return "{" + ",".join(_array_element(v, element) for v in value) + "}"


@dataclass(frozen=True, slots=True)
class ColumnType:
    """A column as `electric-schema` describes it and as its values are written."""

    name: str  # PostgreSQL's internal name: int4, text, timestamptz, an enum's name
    dims: int
    schema: dict[str, Any]
    encode: Encoder


def column_type(info: ColumnInfo) -> ColumnType:
    known = pg_types.get(info.type_oid)
    parsed = parse_type_name(info.type_name)
    base, dims = parsed.base, parsed.dims
    if known is not None:
        base = known.name
        dims = 1 if known.array_oid == info.type_oid and known.oid != info.type_oid else 0
    schema: dict[str, Any] = {"type": base}
    if dims:
        schema["dims"] = dims
    if not info.nullable:
        schema["not_null"] = True
    schema.update(_typmod_schema(base, info.type_name))
    element = _SCALAR_TEXT.get(base, _plain_text)
    encode = (lambda v: _array_text(v, element)) if dims else element
    return ColumnType(base, dims, schema, encode)


def _typmod_schema(base: str, type_name: str) -> dict[str, int]:
    numbers = [int(x) for x in parse_type_name(type_name).typmods if x.isdigit()]
    if base == "varchar" and numbers:
        return {"max_length": numbers[0]}
    if base == "bpchar" and numbers:
        return {"length": numbers[0]}
    if base == "numeric" and numbers:
        return dict(zip(("precision", "scale"), numbers, strict=False))
    if base in ("timestamp", "timestamptz", "time", "timetz", "interval") and numbers:
        return {"precision": numbers[0]}
    return {}


# -- values: the core's JSON → typed values for the `where` evaluator ---------------------


def _typed_loader(type_name: str) -> Callable[[str], Any] | None:
    parsed = parse_type_name(type_name)
    if parsed.dims:
        return None
    return {
        "numeric": Decimal,
        "real": float,
        "double precision": float,
        "date": date.fromisoformat,
        "timestamp without time zone": datetime.fromisoformat,
        "timestamp with time zone": datetime.fromisoformat,
        "uuid": UUID,
    }.get(parsed.base)


def _typed_row(row: Mapping[str, Any], loaders: Mapping[str, Callable[[str], Any]]) -> dict:
    """The row as psycopg would load it, for the columns whose JSON form is a string of
    another type (numeric, dates, timestamps, uuid); what does not parse stays text."""
    typed = dict(row)
    for name, load in loaders.items():
        value = typed.get(name)
        if isinstance(value, str):
            with contextlib.suppress(ValueError, InvalidOperation):
                typed[name] = load(value)
    return typed


# -- rendering the core's changes as Electric messages ------------------------------------


class Renderer:
    """Turns the core's change lines into Electric messages for one shape and caller."""

    def __init__(self, spec: ShapeSpec, claims: Mapping[str, Any]) -> None:
        route = spec.route
        self.spec = spec
        self.claims = claims
        self.types = {c: column_type(_column(route, c)) for c in spec.columns}
        self.key_types = {k: column_type(_column(route, k)) for k in route.key}
        self.relation = [route.table.ref.schema, route.table.ref.name]
        self.matches: Callable[[Mapping[str, Any]], bool] = lambda row: True
        if spec.where is not None:
            self.matches = self._matcher(spec.where, route)

    def _matcher(self, where: Expression, route: Route) -> Callable[[Mapping[str, Any]], bool]:
        types = {c: _column(route, c).type_name for c in route.exposed}
        fn = compile_evaluator(where, types)
        loaders = {c: f for c in where.columns if (f := _typed_loader(types[c])) is not None}
        claims = self.claims

        def matches(row: Mapping[str, Any]) -> bool:
            try:
                return fn(_typed_row(row, loaders), claims) is True
            except EvaluationError as exc:
                raise InvalidRequest(f"where failed on a row: {exc}", parameter="where") from None

        return matches

    def schema(self) -> dict[str, Any]:
        return {c: t.schema for c, t in self.types.items()}

    def key(self, key: Mapping[str, Any]) -> str:
        parts = [_quote(str(self.key_types[k].encode(key.get(k)))) for k in self.key_types]
        return "/".join([_quote(self.spec.table), *parts])

    def messages(
        self,
        changes: Sequence[Mapping[str, Any]],
        initial: bool,
        txids: Mapping[str, int] | None = None,
    ) -> list[Message]:
        """`changes`: a page's change lines, parsed. `initial`: the first answer to
        `offset=-1`, where the client holds nothing. `txids`: key JSON → transaction that
        last wrote the row through push."""
        out: list[Message] = []
        for change in changes:
            message = self._message(change, initial)
            if message is not None:
                if txids and (xid := txids.get(_key_json(change["key"]))) is not None:
                    message["headers"]["txids"] = [xid]
                out.append(message)
        return out

    def _message(self, change: Mapping[str, Any], initial: bool) -> Message | None:
        key = change["key"]
        if change["op"] == "upsert" and self.matches(change["row"]):
            operation = "insert" if initial else "update"
            return self._change(operation, key, self._value(change["row"]))
        if initial:
            return None  # a tombstone, or a row outside `where`: the client has neither
        value = {k: t.encode(key.get(k)) for k, t in self.key_types.items()}
        return self._change("delete", key, value)

    def _change(self, operation: str, key: Mapping[str, Any], value: Message) -> Message:
        headers = {"operation": operation, "relation": self.relation}
        return {"headers": headers, "key": self.key(key), "value": value}

    def _value(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return {
            c: None if (v := row.get(c)) is None else t.encode(v) for c, t in self.types.items()
        }


def _column(route: Route, name: str) -> ColumnInfo:
    info = route.table.column(name)
    assert info is not None, name
    return info


def _quote(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


# -- HTTP ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShapeRequest:
    """One shape request, authenticated and parsed."""

    service: Service
    principal: Principal
    spec: ShapeSpec
    shape: str  # the shape hash
    version: int | None  # the offset's core version; None for -1
    handle: Handle | None  # as the client sent it
    live: bool
    sse: bool
    cursor: str | None


async def _parse(request: web.Request) -> ShapeRequest:
    service = service_of(request)
    principal = await principal_of(request)
    spec = parse_shape(request, service)
    service.puller.select_routes(principal, [spec.table])  # 403 past scopes or roles
    version = parse_offset(request.query.get("offset"))
    raw_handle = request.query.get("handle")
    if version is not None and not raw_handle:
        raise InvalidRequest("handle is required with an offset other than -1", parameter="handle")
    live = request.query.get("live", "false") == "true" and version is not None
    sse = live and "true" in (
        request.query.get("live_sse"),
        request.query.get("experimental_live_sse"),
    )
    return ShapeRequest(
        service,
        principal,
        spec,
        shape_hash(spec, principal, service),
        version,
        Handle.parse(raw_handle),
        live,
        sse,
        request.query.get("cursor"),
    )


async def shape(request: web.Request) -> web.StreamResponse:
    """`GET /electric/v1/shape`: one chunk of the shape log, or a live wait for the next."""
    req = await _parse(request)
    if req.version is None:
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
        page = await _pull(req, Cursor(handle.epoch, req.version), live=req.live)
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
        headers["electric-cursor"] = _live_cursor(req.cursor)
    return headers


def _key_json(key: Mapping[str, Any]) -> str:
    return orjson.dumps(key).decode()


async def _parsed(req: ShapeRequest, page: Page) -> tuple[list[Any], dict[str, int]]:
    """The page's changes, parsed once, and the push transactions behind their rows (for
    the client's `awaitTxId`)."""
    changes = [orjson.loads(line) for line in page.lines]
    keys = [_key_json(change["key"]) for change in changes]
    return changes, await req.service.puller.txids(req.spec.table, keys)


async def _chunk(req: ShapeRequest, handle: Handle, page: Page, initial: bool) -> web.Response:
    renderer = Renderer(req.spec, req.principal.claims)
    changes, txids = await _parsed(req, page)
    messages = renderer.messages(changes, initial, txids)
    headers = _headers(req, renderer, handle, f"{page.cursor.version}_0")
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
    assert req.version is not None
    page = await _pull(req, Cursor(handle.epoch, req.version), live=True)
    renderer = Renderer(req.spec, req.principal.claims)
    headers = _headers(req, renderer, handle, f"{req.version}_0")
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
            await resp.write(_sse_events(renderer, page, changes, txids))
            left = deadline - time.monotonic()
            if left <= 0:
                break
            cursor = Cursor(handle.epoch, page.cursor.version)
            page = await _pull(req, cursor, live=True, timeout=min(left, LIVE_TIMEOUT))
    except (SidecarError, ConnectionResetError):  # rebuilt (410), busy, or the client left
        return resp
    await resp.write_eof()
    return resp


def _sse_events(
    renderer: Renderer, page: Page, changes: Sequence[Any], txids: Mapping[str, int]
) -> bytes:
    events = renderer.messages(changes, initial=False, txids=txids)
    if not page.has_more:
        done = {"control": "up-to-date", "global_last_seen_lsn": str(page.cursor.version)}
        events.append({"headers": done})
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events)


async def preflight(request: web.Request) -> web.Response:
    """CORS preflight: browsers ask before sending `Authorization`."""
    asked = request.headers.get("Access-Control-Request-Headers", "")
    headers = {
        "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
        "Access-Control-Allow-Headers": asked or "Authorization",
        "Access-Control-Max-Age": "86400",
    }
    return web.Response(status=204, headers=headers)


async def _cors(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer under /electric/ (problems and 409s too) may be read cross-origin,
    Electric's headers included. The token travels in a header, never a cookie, so any
    origin may call."""
    if request.path.startswith(PREFIX):
        response.headers.setdefault("Access-Control-Allow-Origin", "*")
        response.headers["Access-Control-Expose-Headers"] = EXPOSED
