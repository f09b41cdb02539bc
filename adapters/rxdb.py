"""Adapter: RxDB's HTTP replication (pull handler, push handler, pull stream) on the core.

Routes, with the same bearer token as `/v1` (see docs/adapters/rxdb.md):

- `GET /rxdb/{collection}/pull?id=&lwt=&limit=` → `{"documents": [...], "checkpoint": {...}}`
- `POST /rxdb/{collection}/push` with `[{assumedMasterState, newDocumentState}]` → the master
  documents of the rows in conflict (`[]` when every row was written)
- `GET /rxdb/{collection}/pullStream?id=&lwt=` → Server-Sent Events, each `data:` a
  `{documents, checkpoint}` or `"RESYNC"`

Mapping:

- checkpoint `{"id": <store epoch>, "lwt": <store version>}` is the core cursor `<id>-<lwt>`;
  under a membership rule, when the cursor names more than its version (the scopes'
  version, a move-in under way), `id` is the whole core cursor and `lwt` its version. The
  client sends both fields back as the `id` and `lwt` query parameters (both are always
  there: RxDB merges checkpoints field by field, so an optional field would outlive its
  checkpoint);
- a document is the row's exposed columns plus `_deleted`; its primary key is the
  collection's single key column, an integer key as a decimal string (RxDB keys are strings);
- a push row becomes an insert (no assumed master), an update, or a delete; `base_rev` is the
  rev of the assumed master state, computed as the core computes `rev`. When the core reports
  a conflict, the server row it returns decides: equal to the new state (a retried push that
  was applied) → done; equal to the assumed state on every field the client has (the client
  was not stale, only its copy lacked a column) → sent again with that row's rev; else the
  row is returned as the master document and RxDB's conflict handler runs;
- the server never alters a pushed field silently: a row whose `write.set` column the client
  sent with another value is refused (not written) and answered like a conflict, and so is
  an applied row that came back different from what was sent (a trigger, a normalised value).
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from aiohttp import web

from sidecar.auth import Principal
from sidecar.changes import Cursor, rev_of
from sidecar.collection import Collection
from sidecar.edge import (
    float_param,
    int_param,
    json_body,
    json_response,
    principal_of,
    revalidated,
    service_of,
)
from sidecar.errors import InvalidRequest, PayloadTooLarge
from sidecar.mutations import Mutation, MutationResult
from sidecar.pull import PullRequest, StreamEvent
from sidecar.service import Service
from sidecar.values import JSON_OPTIONS, loads_exact

log = structlog.get_logger("sidecar.adapters.rxdb")

MAX_LIMIT = 10_000  # most documents in one pull (RxDB's pull.batchSize)
RESERVED = frozenset({"_deleted", "_meta", "_rev", "_attachments"})  # RxDB's, not columns
INTEGER_TYPES = frozenset({"smallint", "integer", "bigint"})
ROUNDS = 3  # push attempts of a row whose assumed state was current but whose rev was not
UNKNOWN_REV = "unknown"  # a base_rev no row has: the core answers with the current row
SSE_RETRY_MS = 3000
RESYNC = b'data: "RESYNC"\n\n'
_DECIMAL = re.compile(r"^-?[0-9]{1,19}$")


def install(app: web.Application, service: Service) -> None:
    """Add this adapter's routes to `app`."""
    app.router.add_get("/rxdb/{collection}/pull", pull)
    app.router.add_post("/rxdb/{collection}/push", push)
    app.router.add_get("/rxdb/{collection}/pullStream", pull_stream)


# -- documents ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Shape:
    """How the rows of one collection look as RxDB documents."""

    route: Collection
    primary: str  # the key column: RxDB's primaryKey
    numeric: bool  # an integer key, carried as a decimal string

    def doc_id(self, value: Any) -> str:
        return value if isinstance(value, str) else orjson.dumps(value).decode()

    def key_value(self, doc_id: Any, where: str) -> Any:
        """The key column's value of a document id (`where`: its JSON pointer)."""
        if not isinstance(doc_id, str) or not doc_id:
            raise InvalidRequest(
                f"{where} must be a non-empty string (the RxDB primary key)", pointer=where
            )
        if not self.numeric:
            return doc_id
        if not _DECIMAL.match(doc_id):
            raise InvalidRequest(
                f"{where} must be a decimal integer: {self.primary} is an integer column",
                pointer=where,
            )
        return int(doc_id)

    def document(self, row: Mapping[str, Any], key: Mapping[str, Any]) -> dict[str, Any]:
        """The RxDB document of a row (exposed columns as JSON) and its key."""
        doc = dict(row)
        doc[self.primary] = self.doc_id(key[self.primary])
        doc["_deleted"] = False
        return doc

    def tombstone(self, key: Mapping[str, Any]) -> dict[str, Any]:
        return {self.primary: self.doc_id(key[self.primary]), "_deleted": True}

    def of_change(self, line: bytes) -> dict[str, Any]:
        """The document of one core change line (a delete: a tombstone)."""
        change = loads_exact(line)
        if change["op"] == "delete":
            return self.tombstone(change["key"])
        return self.document(change["row"], change["key"])

    def row_of(self, doc: Mapping[str, Any], where: str) -> dict[str, Any]:
        """A document's fields as row JSON: without RxDB's fields, the key as the column's."""
        row = {c: v for c, v in doc.items() if c not in RESERVED}
        row[self.primary] = self.key_value(doc.get(self.primary), f"{where}/{self.primary}")
        return row


def _shape(service: Service, request: web.Request) -> Shape:
    name = request.match_info["collection"]
    route = service.routes.get(name)
    if route is None:
        known = ", ".join(service.routes)
        raise InvalidRequest(f"unknown collection {name!r}; known: {known}")
    if len(route.key) != 1:
        raise InvalidRequest(
            f"collection {name!r} has the key ({', '.join(route.key)}); RxDB needs a "
            "single-column key (set `key:` in the collection's config)"
        )
    (primary,) = route.key
    column = route.table.column(primary)
    numeric = column is not None and column.type_name in INTEGER_TYPES
    return Shape(route, primary, numeric)


# -- checkpoints --------------------------------------------------------------------------


def checkpoint_of(cursor: Cursor) -> dict[str, Any]:
    plain = cursor.scopes_at is None and cursor.target is None
    return {"id": cursor.epoch if plain else str(cursor), "lwt": cursor.version}


def _checkpoint_param(request: web.Request) -> Cursor | None:
    """The cursor of the checkpoint sent back as `id` and `lwt` (none: initial sync)."""
    epoch, version = request.query.get("id", ""), request.query.get("lwt", "")
    if not epoch and not version:
        return None
    if not (epoch and version):
        missing = "lwt" if epoch else "id"
        raise InvalidRequest(
            "pass both id and lwt (the fields of the last checkpoint), or neither for an "
            "initial sync",
            parameter=missing,
        )
    try:
        if "-" not in epoch:
            return Cursor.parse(f"{epoch}-{version}")
        cursor = Cursor.parse(epoch)  # the whole cursor (module doc)
        if str(cursor.version) != version:
            raise InvalidRequest("id and lwt are of different checkpoints")
        return cursor
    except InvalidRequest:
        raise InvalidRequest(
            "the checkpoint is malformed: send back the id and lwt of a checkpoint this "
            "server returned, or neither for an initial sync",
            parameter="id",
        ) from None


# -- pull ---------------------------------------------------------------------------------


async def pull(request: web.Request) -> web.StreamResponse:
    """RxDB's pull handler: the documents changed after the checkpoint, and the next one."""
    service = service_of(request)
    principal = await principal_of(request)
    shape = _shape(service, request)
    cursor = _checkpoint_param(request)
    limit = int_param(request, "limit", service.config.limits.max_page, 1, MAX_LIMIT)
    documents, cursor = await _documents(service, principal, shape, cursor, limit)
    body = orjson.dumps({"documents": documents, "checkpoint": checkpoint_of(cursor)})
    return revalidated(request, body, "private, no-cache")


async def _documents(
    service: Service, principal: Principal, shape: Shape, cursor: Cursor | None, limit: int
) -> tuple[list[dict[str, Any]], Cursor]:
    """Core pages until `limit` documents, `limits.max_page_bytes` of changes, or no more:
    RxDB stops pulling at a short batch, so a batch is only short when the client is up
    to date or the batch is full in bytes (the pull stream, opened from its checkpoint,
    then goes on where it stopped). A batch holds at least one document, however large."""
    page = await service.puller.batch(principal, PullRequest(cursor, (shape.route.name,)), limit)
    return [shape.of_change(line) for line in page.lines], page.cursor


# -- pull stream --------------------------------------------------------------------------


async def pull_stream(request: web.Request) -> web.StreamResponse:
    """RxDB's `pull.stream$` source: a `{documents, checkpoint}` event per page of changes
    after the checkpoint (or `Last-Event-ID`); `"RESYNC"` and the end when the token expires
    or the store was rebuilt."""
    service = service_of(request)
    principal = await principal_of(request)
    shape = _shape(service, request)
    last_id = request.headers.get("Last-Event-ID")
    cursor = Cursor.parse(last_id) if last_id else _checkpoint_param(request)
    limit = int_param(request, "limit", service.config.limits.max_page, 1, MAX_LIMIT)
    heartbeat = max(float_param(request, "heartbeat", 15.0, 60.0), 0.1)
    req = PullRequest(cursor, (shape.route.name,), limit)
    events = service.puller.stream(principal, req, heartbeat=heartbeat)
    first = await anext(events)  # refusals (401, 403, 410, 503) are still problem responses
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "private, no-store",
            "X-Accel-Buffering": "no",
        }
    )
    await resp.prepare(request)
    await resp.write(f"retry: {SSE_RETRY_MS}\n\n".encode())
    try:
        await resp.write(_sse(shape, first))
        async for event in events:
            await resp.write(_sse(shape, event))
    except ConnectionResetError:
        return resp
    finally:
        await events.aclose()  # frees the live slot and the scope watch at once
    await resp.write_eof()
    return resp


def _sse(shape: Shape, event: StreamEvent) -> bytes:
    if event.kind == "heartbeat":
        return b": heartbeat\n\n"
    if event.kind in ("reauth", "resync"):
        return RESYNC  # the stream ends; the client pulls from its checkpoint
    page = event.page
    if page is None or not page.lines:
        return b""  # nothing new: RxDB would ignore it
    documents = [shape.of_change(line) for line in page.lines]
    data = orjson.dumps({"documents": documents, "checkpoint": checkpoint_of(page.cursor)})
    return b"id: %s\ndata: %s\n\n" % (str(page.cursor).encode(), data)


# -- push ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    """One push row: what the client assumed of the server, and what it wants now."""

    key: dict[str, Any]
    sent_assumed: dict[str, Any] | None  # assumedMasterState as sent (RxDB form)
    assumed: dict[str, Any] | None  # as row JSON; None when absent or deleted
    new: dict[str, Any] | None  # as row JSON; None when deleted


async def push(request: web.Request) -> web.Response:
    """RxDB's push handler: write each row through the core; answer the master documents of
    the rows not written as sent."""
    service = service_of(request)
    principal = await principal_of(request)
    shape = _shape(service, request)
    body = await json_body(request, service.config.limits.max_body)
    rows = parse_rows(body, shape, service.config.limits.max_push)
    return json_response(await _write(service, principal, shape, rows))


def parse_rows(body: Any, shape: Shape, max_push: int) -> list[Row]:
    if not isinstance(body, list):
        raise InvalidRequest("the body must be a JSON array of {assumedMasterState, ...}")
    if len(body) > max_push:
        raise PayloadTooLarge(
            f"{len(body)} rows in one push; the limit is {max_push} (limits.max_push): "
            "lower push.batchSize"
        )
    return [_row(item, shape, f"/{i}") for i, item in enumerate(body)]


def _row(item: Any, shape: Shape, where: str) -> Row:
    if not isinstance(item, dict) or not isinstance(item.get("newDocumentState"), dict):
        raise InvalidRequest(
            f"{where} must be an object with newDocumentState (an object) and "
            "assumedMasterState (an object or null)",
            pointer=where,
        )
    new_doc = item["newDocumentState"]
    sent = item.get("assumedMasterState")
    if sent is not None and not isinstance(sent, dict):
        raise InvalidRequest(
            f"{where}/assumedMasterState must be an object or null",
            pointer=f"{where}/assumedMasterState",
        )
    new = shape.row_of(new_doc, f"{where}/newDocumentState")
    assumed = None
    if sent is not None and not sent.get("_deleted"):
        assumed = shape.row_of(sent, f"{where}/assumedMasterState")
        if assumed[shape.primary] != new[shape.primary]:
            raise InvalidRequest(
                f"{where}: the two states are of different documents",
                pointer=f"{where}/assumedMasterState/{shape.primary}",
            )
    key = {shape.primary: new[shape.primary]}
    return Row(key, sent, assumed, None if new_doc.get("_deleted") else new)


@dataclass(frozen=True, slots=True)
class _Pending:
    row: Row
    mutation: Mutation


async def _write(
    service: Service, principal: Principal, shape: Shape, rows: Sequence[Row]
) -> list[dict[str, Any]]:
    """The master documents of the rows not written as sent, in request order."""
    masters: dict[int, dict[str, Any]] = {}
    pending: dict[int, _Pending] = {}
    for n, row in enumerate(rows):
        planned = _plan(shape, principal, row)
        if isinstance(planned, Mutation):
            pending[n] = _Pending(row, planned)
        elif planned is not None:
            masters[n] = planned
    for attempt in range(ROUNDS):
        if not pending:
            break
        results = await _push(service, principal, [p.mutation for p in pending.values()])
        again: dict[int, _Pending] = {}
        for (n, p), result in zip(pending.items(), results, strict=True):
            outcome = _outcome(shape, p, result, last=attempt == ROUNDS - 1)
            if isinstance(outcome, _Pending):
                again[n] = outcome
            elif outcome is not None:
                masters[n] = outcome
        pending = again
    return [masters[n] for n in sorted(masters)]


async def _push(
    service: Service, principal: Principal, mutations: list[Mutation]
) -> list[MutationResult]:
    result = await service.push(principal, mutations, atomic=False)
    return result.results


def _plan(shape: Shape, principal: Principal, row: Row) -> Mutation | dict[str, Any] | None:
    """The mutation of a row; a master document when it is refused here; None when there
    is nothing to write (a document created and deleted before it was ever pushed)."""
    if row.new is None and row.assumed is None:
        return None
    if row.new is not None and _alters_set_column(shape, principal, row):
        log.info(
            "push row refused: it changes a write.set column",
            collection=shape.route.name,
            key=row.key,
            subject=principal.subject,
        )
        return _refusal(shape, row)
    mid = "rxdb-" + uuid.uuid4().hex  # retries are recognised by content (module doc)
    name = shape.route.name
    if row.new is None:
        return Mutation(mid, name, "delete", row.key, {}, base_rev=_base_rev(shape, row))
    data = {c: v for c, v in row.new.items() if c != shape.primary}
    if row.assumed is None:
        return Mutation(mid, name, "insert", row.key, data)
    changed = _changed(shape, row.assumed, row.new)
    if not changed:
        return None
    base = {c: v for c, v in row.assumed.items() if c != shape.primary}
    return Mutation(mid, name, "update", row.key, changed, _base_rev(shape, row), base)


def _changed(shape: Shape, assumed: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The fields the client changed; a field it removed becomes null."""
    changed = {c: v for c, v in new.items() if c not in assumed or not same(v, assumed[c])}
    changed.update({c: None for c in assumed if c not in new})
    changed.pop(shape.primary, None)
    return changed


def _base_rev(shape: Shape, row: Row) -> str:
    """The core's rev of the assumed master state (it hashes the exposed columns' JSON)."""
    assumed = row.assumed or {}
    exposed = shape.route.exposed
    if not all(c in assumed for c in exposed):
        return UNKNOWN_REV
    try:
        return rev_of(orjson.dumps({c: assumed[c] for c in exposed}, option=JSON_OPTIONS))
    except orjson.JSONEncodeError:
        return UNKNOWN_REV


def _alters_set_column(shape: Shape, principal: Principal, row: Row) -> bool:
    """Whether the server would write another value than the client sent to a `write.set`
    column (it assigns them on insert and keeps them on update)."""
    assert row.new is not None
    assumed = row.assumed or {}
    for column, value in shape.route.config.write.set.items():
        if column not in row.new:
            if column in assumed:  # removed by the client: the server keeps it
                return True
            continue
        server = assumed[column] if column in assumed else _set_value(value, principal.claims)
        if not _set_matches(row.new[column], server):
            return True
    return False


def _set_value(value: Any, claims: Mapping[str, Any]) -> Any:
    if isinstance(value, str) and value.startswith(":"):
        return claims.get(value[1:])
    return value


def _set_matches(sent: Any, server: Any) -> bool:
    """A claim is a string even for an integer column: compare scalars as text too."""
    if same(sent, server):
        return True
    scalars = (str, int, float)
    if isinstance(sent, bool) or isinstance(server, bool):
        return False
    return isinstance(sent, scalars) and isinstance(server, scalars) and str(sent) == str(server)


def _refusal(shape: Shape, row: Row) -> dict[str, Any]:
    """The master document of a row the server does not write: what the client last had
    of the server (a tombstone when it had nothing)."""
    if row.sent_assumed is None or row.assumed is None:
        return shape.tombstone(row.key)
    return dict(row.sent_assumed)


def _outcome(
    shape: Shape, p: _Pending, result: MutationResult, *, last: bool
) -> _Pending | dict[str, Any] | None:
    """None: written as sent; a master document; or the mutation to send again."""
    row = p.row
    if result.status in ("applied", "duplicate"):
        if result.row is not None and row.new is not None and not agrees(result.row, row.new):
            return shape.document(result.row, row.key)  # the server changed a sent field
        return None
    if result.status == "rejected":
        return _refusal(shape, row)
    if result.row is None:  # conflict: the row is gone
        return None if row.new is None else shape.tombstone(row.key)
    if row.new is not None and agrees(result.row, row.new):
        return None  # already as the client wants it (e.g. a retry of an applied push)
    if row.assumed is not None and agrees(result.row, row.assumed) and result.rev and not last:
        return _Pending(row, dataclasses.replace(p.mutation, base_rev=result.rev))
    return shape.document(result.row, row.key)


# -- comparing JSON values ----------------------------------------------------------------


def agrees(server: Mapping[str, Any], fields: Mapping[str, Any]) -> bool:
    """Whether the server row has every one of these fields with the same value."""
    return all(c in server and same(server[c], v) for c, v in fields.items())


def same(a: Any, b: Any) -> bool:
    """JSON equality: numbers by value (1 == 1.0), booleans only equal to booleans."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b
