"""Adapter: the WatermelonDB sync protocol (`synchronize()` of `@nozbe/watermelondb`).

`GET /watermelondb/sync?last_pulled_at=` answers `{changes, timestamp, has_more}` from core
pulls, bounded by `limits.max_page_bytes` (`has_more`: the client pulls again from
`timestamp` and merges, see the docs);
`POST /watermelondb/sync?last_pulled_at=` applies the client's `{table: {created, updated,
deleted}}` as one atomic core push, or answers 409 when a pushed record changed on the
server after `last_pulled_at`. Tables are the collections whose key is one column; a
record's `id` is that key as a string. See docs/adapters/watermelondb.md.

Timestamps. WatermelonDB keeps one number; the core cursor is `<epoch>-<version>`. The
timestamp is `tag << 37 | version`, the tag being 16 bits (1‥65535) derived from the
epoch: a timestamp from a rebuilt store (another tag), expired or ahead of the store gets a
full resync with `experimentalStrategy: "replacement"` instead of an error. Under a
membership rule a core cursor may name more than a version (the scopes' version, a
move-in under way: `changes.Cursor`), which no number can carry: an answer therefore
ends only at a plain cursor, reading on past `limits.max_page_bytes` while a move is under
way (`Reader.batch`).

Conflicts. For the pushed tables the caller's whole view is read from the core page by
page, keeping each pushed record's latest `version` and `rev` (memory bounded by the
push). A pushed record whose row has a version after `last_pulled_at` is a conflict (409,
nothing written). Otherwise the row is unchanged since the client's pull, so its current
`rev` is the one the client saw: it is sent as `base_rev`, and the core re-checks it under
a row lock in the push transaction. A change the store has not captured yet therefore
still fails the push (a stale `base_rev`), so there is no window between the check and the
write.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from sidecar.auth import Principal
from sidecar.changes import Cursor, Page
from sidecar.collection import Collection
from sidecar.edge import COMPRESS_FROM, json_body, principal_of
from sidecar.errors import (
    Conflict,
    CursorExpired,
    Forbidden,
    InvalidRequest,
    SidecarError,
    Unavailable,
    ValidationFailed,
)
from sidecar.lsn import lsn_to_str
from sidecar.mutations import Mutation, MutationResult
from sidecar.pull import Puller, PullRequest
from sidecar.service import Service
from sidecar.values import loads_exact

PATH = "/watermelondb/sync"
VERSION_BITS = 37  # versions below 2^37 (137 billion changes per store epoch)
TAG_BITS = 53 - VERSION_BITS  # the rest of a JavaScript safe integer
VERSION_MASK = (1 << VERSION_BITS) - 1
CAPTURE_WAIT = 5.0  # seconds a push waits for its writes to reach the store
INTEGER_TYPES = frozenset({"smallint", "integer", "bigint"})
RESERVED = frozenset({"id", "_status", "_changed"})
BATCH = 1_000_000  # changes in one pull answer: limits.max_page_bytes bounds it first
Latest = dict[tuple[str, str], dict[str, Any]]  # (table, id) → the row's latest change


class TimestampOverflow(SidecarError):
    """The store's version no longer fits in a WatermelonDB timestamp."""


# -- tables -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Table:
    """How one collection maps onto a WatermelonDB table."""

    name: str
    key: str  # the one key column; the record's `id` is its value as a string
    integer_key: bool
    columns: frozenset[str]  # exposed columns a record may carry
    encoded: frozenset[str]  # json/jsonb/array columns: JSON text on the client

    @classmethod
    def of(cls, route: Collection) -> Table:
        types = {c: _type_name(route, c) for c in route.exposed}
        return cls(
            name=route.name,
            key=route.key[0],
            integer_key=types.get(route.key[0]) in INTEGER_TYPES,
            columns=frozenset(route.exposed),
            encoded=frozenset(c for c, t in types.items() if _is_encoded(t)),
        )

    def record(self, change: Mapping[str, Any]) -> dict[str, Any]:
        """A pulled upsert as a WatermelonDB raw record."""
        raw = {c: v for c, v in change["row"].items() if c not in RESERVED}
        for c in self.encoded:
            if raw.get(c) is not None:
                raw[c] = orjson.dumps(raw[c]).decode()
        raw["id"] = record_id(change["key"][self.key])
        return raw

    def key_of(self, rid: str) -> dict[str, Any]:
        if self.integer_key:
            try:
                return {self.key: int(rid)}
            except ValueError:
                raise ValidationFailed(
                    f"{self.name}#{rid}: the key {self.key} is an integer; records created "
                    "on the client need a text or uuid key",
                    table=self.name,
                    record_id=rid,
                ) from None
        return {self.key: rid}

    def data_of(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """A pushed record's columns: `_status`, `_changed`, the key and unexposed fields
        dropped, JSON text of json/array columns decoded."""
        data = {c: v for c, v in raw.items() if c in self.columns and c not in RESERVED}
        data.pop(self.key, None)
        for c in self.encoded & data.keys():
            if isinstance(data[c], str):  # not JSON: left as it is, the core judges it
                with contextlib.suppress(orjson.JSONDecodeError):
                    data[c] = orjson.loads(data[c])
        return data


def _type_name(route: Collection, column: str) -> str:
    info = route.table.column(column)
    return info.type_name if info is not None else ""


def _is_encoded(type_name: str) -> bool:
    return type_name in ("json", "jsonb") or type_name.endswith("[]")


def record_id(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def tables_of(routes: Iterable[Collection]) -> dict[str, Table]:
    """The collections WatermelonDB can hold: those keyed by exactly one column."""
    return {r.name: Table.of(r) for r in routes if len(r.key) == 1}


# -- timestamps -------------------------------------------------------------------------


def epoch_tag(epoch: str) -> int:
    return int(epoch, 16) % ((1 << TAG_BITS) - 1) + 1


def to_timestamp(cursor: Cursor) -> int:
    if cursor.version > VERSION_MASK:
        raise TimestampOverflow(
            "the store's version no longer fits in a WatermelonDB timestamp; rebuild the "
            "store (clients then resync)"
        )
    return epoch_tag(cursor.epoch) << VERSION_BITS | cursor.version


def to_cursor(timestamp: int, epoch: str) -> Cursor | None:
    """The cursor a timestamp stands for, or None when it is from another store epoch."""
    if timestamp >> VERSION_BITS != epoch_tag(epoch):
        return None
    return Cursor(epoch, timestamp & VERSION_MASK)


def parse_timestamp(raw: str | None) -> int | None:
    """`last_pulled_at`: None for a first sync (absent, empty, `null`, `undefined`, 0)."""
    if raw is None or raw in ("", "null", "undefined", "0"):
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(
            "last_pulled_at must be the `timestamp` of a previous pull, or null",
            parameter="last_pulled_at",
        ) from None
    if not 0 < value < 1 << 53:
        raise InvalidRequest("last_pulled_at is out of range", parameter="last_pulled_at")
    return value


def wants_migration(raw: str | None) -> bool:
    if raw is None or raw in ("", "null", "undefined"):
        return False
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("migration must be JSON (or null)", parameter="migration") from None
    return True


# -- reading the core -------------------------------------------------------------------


class Reader:
    """Core pulls for one caller over some tables, paged until `has_more` is false."""

    def __init__(self, puller: Puller, principal: Principal, names: Sequence[str], limit: int):
        self.puller = puller
        self.principal = principal
        self.names = tuple(names)
        self.limit = limit
        self.dynamic = any(puller.routes[n].dynamic for n in self.names)

    async def epoch(self) -> str:
        """The store's epoch (a pull over no collection reads nothing)."""
        page = await self.puller.pull(self.principal, PullRequest(None, (), 1))
        return page.cursor.epoch

    async def check(self, cursor: Cursor) -> None:
        """CursorExpired unless the store can serve changes after `cursor`."""
        await self.puller.pull(self.principal, PullRequest(cursor, (), 1))

    async def batch(self, cursor: Cursor | None) -> tuple[Latest, Page]:
        """Each row's latest change after `cursor` (None: every row and kept tombstone) in
        one batch bounded by `limits.max_page_bytes` (at least one change), and the batch
        (its cursor; `has_more` when the view is not consistent at it yet).

        The batch ends at a plain cursor (`<epoch>-<version>`), the only kind a timestamp
        holds: while a membership move is under way (the cursor names the scopes' version
        or a move-in's progress) core batches are read on, past the byte bound."""
        latest: Latest = {}
        while True:
            req = PullRequest(cursor, self.names)
            page = await self.puller.batch(self.principal, req, BATCH)
            latest.update(_latest(page.lines, None))  # later changes of a row win
            cursor = page.cursor
            if cursor.scopes_at is None and cursor.target is None:
                return latest, Page([], cursor, page.has_more)

    async def latest(self, wanted: Set[tuple[str, str]]) -> Latest:
        """The latest change of each (table, id) of `wanted` the caller can see, read page
        by page: only those are kept, so memory is bounded by `wanted`, not the view."""
        latest: Latest = {}
        cursor: Cursor | None = None
        while True:
            req = PullRequest(cursor, self.names, self.limit)
            page = await self.puller.pull(self.principal, req)
            latest.update(_latest(page.lines, wanted))
            cursor = page.cursor
            if not page.has_more:
                return latest

    async def wait_for(self, lsn: int) -> None:
        """Until the store has the push's writes, so the next pull includes them."""
        req = PullRequest(None, (), 1, timeout=CAPTURE_WAIT, after_lsn=lsn)
        with contextlib.suppress(Unavailable):  # applied all the same; a later pull has them
            await self.puller.pull(self.principal, req)


def _latest(lines: Iterable[bytes], wanted: Set[tuple[str, str]] | None) -> Latest:
    latest: Latest = {}
    for line in lines:
        change = loads_exact(line)
        key = change["key"]
        if len(key) == 1:
            ident = change["collection"], record_id(next(iter(key.values())))
            if wanted is None or ident in wanted:
                latest[ident] = change
    return latest


# -- pull -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """Where a pull starts, and how the client applies it."""

    start: Cursor | None  # None: every row
    since: int | None  # deletes after this version are sent (None: none; 0: every one)
    replacement: bool  # the client's copy is replaced (its timestamp was unusable)


async def plan_pull(reader: Reader, timestamp: int | None, migration: bool) -> Plan:
    if timestamp is None:
        return Plan(None, None, False)
    cursor = to_cursor(timestamp, await reader.epoch())
    if cursor is None:
        return Plan(None, None, True)
    try:
        await reader.check(cursor)
    except CursorExpired:
        return Plan(None, None, True)
    if migration:  # new tables or columns on the client: send every row again
        if reader.dynamic:
            # a full read sends no move-out deletes: the client's copy is replaced instead
            return Plan(None, None, True)
        return Plan(None, cursor.version, False)
    # every delete after a cursor counts: a move-out's carries the row's own (older) version
    return Plan(cursor, 0, False)


def changeset(
    tables: Mapping[str, Table], names: Sequence[str], latest: Latest, since: int | None
) -> dict[str, dict[str, list[Any]]]:
    """`{table: {created, updated, deleted}}`: rows as `updated` (the client passes
    `sendCreatedAsUpdated: true`), deletes only when the client may hold the row."""
    out: dict[str, dict[str, list[Any]]] = {
        n: {"created": [], "updated": [], "deleted": []} for n in names
    }
    for (name, rid), change in latest.items():
        if change["op"] == "upsert":
            out[name]["updated"].append(tables[name].record(change))
        elif since is not None and int(change["version"]) > since:
            out[name]["deleted"].append(rid)
    return out


# -- push -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pushed:
    """One record of a push body."""

    table: str
    kind: str  # created | updated | deleted
    id: str
    raw: Mapping[str, Any]


def parse_changes(body: object, tables: Mapping[str, Table]) -> list[Pushed]:
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a changes object {table: {created, updated, …}}")
    out: list[Pushed] = []
    seen: set[tuple[str, str]] = set()
    for name, sets in body.items():
        if name not in tables:
            raise InvalidRequest(f"unknown table {name!r}; known: {', '.join(tables)}")
        if not isinstance(sets, dict):
            raise InvalidRequest(f"{name} must be an object {{created, updated, deleted}}")
        for item in _records(name, sets):
            if (name, item.id) in seen:
                raise InvalidRequest(f"{name}: id {item.id!r} appears twice")
            seen.add((name, item.id))
            out.append(item)
    return out


def _records(name: str, sets: Mapping[str, Any]) -> list[Pushed]:
    out = []
    for kind in ("created", "updated", "deleted"):
        items = sets.get(kind, [])
        if not isinstance(items, list):
            raise InvalidRequest(f"{name}.{kind} must be a list")
        for item in items:
            raw = {"id": item} if kind == "deleted" else item
            if not isinstance(raw, dict) or not isinstance(raw.get("id"), str) or not raw["id"]:
                raise InvalidRequest(f"{name}.{kind}: every record needs a string id")
            out.append(Pushed(name, kind, raw["id"], raw))
    return out


def check_unchanged(pushed: Sequence[Pushed], latest: Latest, since: int) -> None:
    """409 when a pushed record's row changed on the server after the client's pull."""
    for p in pushed:
        change = latest.get((p.table, p.id))
        if change is not None and int(change["version"]) > since:
            raise Conflict(
                f"{p.table}#{p.id} changed on the server after last_pulled_at; pull again, "
                "then push",
                table=p.table,
                record_id=p.id,
            )


def mutation_of(p: Pushed, table: Table, latest: Latest) -> Mutation:
    """The core mutation for a record, its `base_rev` the row's rev as the client saw it.

    created or updated: an update when the row exists, else an insert (a created record
    may have been pushed before without the client learning it). deleted: a delete of
    the row; one the caller does not have is sent too, with no rev (applied when the row
    is gone, a conflict when it has appeared since)."""
    change = latest.get((p.table, p.id))
    rev = change["rev"] if change is not None and change["op"] == "upsert" else None
    mid = f"wmdb-{uuid.uuid4().hex}"
    key = table.key_of(p.id)
    if p.kind == "deleted":
        return Mutation(mid, table.name, "delete", key, {}, base_rev=rev or "")
    data = table.data_of(p.raw)
    if rev is None:
        return Mutation(mid, table.name, "insert", key, data)
    return Mutation(mid, table.name, "update", key, data, base_rev=rev)


_FAILURES: dict[str, type[SidecarError]] = {
    "forbidden": Forbidden,
    "validation_failed": ValidationFailed,
    "not_found": Conflict,  # the row went away: pull, then push again
}


def failure(pushed: Sequence[Pushed], results: Sequence[MutationResult]) -> SidecarError | None:
    """The refusal of an atomic push that was not applied, naming the record at fault."""
    bad = [(p, r) for p, r in zip(pushed, results, strict=True) if r.status == "conflict"]
    bad = bad or [
        (p, r)
        for p, r in zip(pushed, results, strict=True)
        if r.status == "rejected"
        and not str((r.error or {}).get("detail")).startswith("not applied:")
    ]
    if not bad:
        return None
    p, r = bad[0]
    error = dict(r.error or {})
    cls = _FAILURES.get(str(error.get("code")), Conflict)
    detail = f"{p.table}#{p.id}: {error.get('detail', r.status)}; nothing was applied"
    return cls(detail, table=p.table, record_id=p.id)


# -- HTTP -------------------------------------------------------------------------------


class WatermelonSync:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.tables = tables_of(service.routes.values())

    def reader(self, principal: Principal, names: Sequence[str]) -> Reader:
        limit = self.service.config.limits.max_page
        return Reader(self.service.puller, principal, names, limit)

    def readable(self, principal: Principal) -> list[str]:
        routes = self.service.puller.select_routes(principal, None)
        return [r.name for r in routes if r.name in self.tables]

    async def pull(self, request: web.Request) -> web.Response:
        principal = await principal_of(request)
        timestamp = parse_timestamp(request.query.get("last_pulled_at"))
        migration = wants_migration(request.query.get("migration"))
        names = self.readable(principal)
        reader = self.reader(principal, names)
        plan = await plan_pull(reader, timestamp, migration)
        latest, page = await reader.batch(plan.start)
        body: dict[str, Any] = {
            "changes": changeset(self.tables, names, latest, plan.since),
            "timestamp": to_timestamp(page.cursor),
            # cut by limits.max_page_bytes: pull again from `timestamp` (docs/adapters)
            "has_more": page.has_more,
        }
        if plan.replacement:
            body["experimentalStrategy"] = "replacement"
        return _json(body)

    async def push(self, request: web.Request) -> web.Response:
        principal = await principal_of(request)
        timestamp = parse_timestamp(request.query.get("last_pulled_at"))
        if timestamp is None:
            raise InvalidRequest(
                "last_pulled_at is required: the timestamp of the pull before this push",
                parameter="last_pulled_at",
            )
        body = await json_body(request, self.service.config.limits.max_body)
        pushed = parse_changes(body, self.tables)
        if not pushed:
            return _json({"applied": 0, "lsn": None})
        reader = self.reader(principal, sorted({p.table for p in pushed}))
        since = await self.pulled_version(reader, timestamp)
        latest = await reader.latest({(p.table, p.id) for p in pushed})
        check_unchanged(pushed, latest, since)
        mutations = [mutation_of(p, self.tables[p.table], latest) for p in pushed]
        result = await self.service.push(principal, mutations, atomic=True)
        refusal = failure(pushed, result.results)
        if refusal is not None:
            raise refusal
        if result.lsn is None:
            return _json({"applied": len(mutations), "lsn": None})
        await reader.wait_for(result.lsn)
        return _json({"applied": len(mutations), "lsn": lsn_to_str(result.lsn)})

    async def pulled_version(self, reader: Reader, timestamp: int) -> int:
        """The store version of `last_pulled_at`; 409 when the store cannot tell what
        changed since (another epoch, older than the tombstone retention)."""
        cursor = to_cursor(timestamp, await reader.epoch())
        try:
            if cursor is None:
                raise CursorExpired("from another store epoch")
            await reader.check(cursor)
        except CursorExpired:
            raise Conflict(
                "last_pulled_at is from a rebuilt or expired store; pull again, then push"
            ) from None
        return cursor.version


def _json(body: object) -> web.Response:
    data = orjson.dumps(body)
    resp = web.Response(
        body=data, content_type="application/json", headers={"Cache-Control": "private, no-store"}
    )
    if len(data) >= COMPRESS_FROM:
        resp.enable_compression()  # gzip/deflate when Accept-Encoding allows
    return resp


def install(app: web.Application, service: Service) -> None:
    """Add this adapter's routes to `app`."""
    sync = WatermelonSync(service)
    app.router.add_get(PATH, sync.pull)
    app.router.add_post(PATH, sync.push)
