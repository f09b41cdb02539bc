"""Push: mutations applied to the application's own tables, checked by the rules.

A batch runs in one PostgreSQL transaction on one connection:

1. lock the mutation ids (advisory locks), then decide which ids were already applied:
   the recent-push cache, then the store (fed by capture from the WAL messages), after
   waiting (bounded) for capture to reach the current WAL position — so a retry whose
   first attempt committed but was not yet captured is still recognised;
2. lock the target rows (`SELECT … FOR UPDATE`), each tagged with whether it satisfies the
   caller's read rule, and compute its current `rev` exactly as the read path does;
3. per mutation: op allowed? columns writable, values of the right type, `set:` columns
   assigned from claims, immutable columns unchanged; compare `base_rev` and resolve by the
   collection's conflict strategy; write with bound parameters, the statement RETURNING
   the read rule (ownership after the change) and the `check:` rule, both evaluated by
   PostgreSQL on the new row; then `pg_logical_emit_message(true, 'sidecar', …)` carrying
   mutation id, subject, device and client time — the idempotency record, audit trail and
   echo tag, with no table added to the application's database.

Non-atomic batches give each mutation a savepoint: a refused one never blocks the others.
`atomic: true` is all or nothing.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import psycopg
import structlog
from cachetools import TTLCache
from psycopg import errors as pge
from psycopg_pool import AsyncConnectionPool

from sidecar import failpoints, write_sql
from sidecar.auth import Principal
from sidecar.capture.pgoutput import str_to_lsn
from sidecar.config.model import CollectionConfig
from sidecar.errors import (
    Conflict,
    Forbidden,
    NotFound,
    SidecarError,
    Unavailable,
    ValidationFailed,
)
from sidecar.mutations import Mutation, MutationResult, check_value, rejected
from sidecar.route import Route
from sidecar.store.base import ChangeStore
from sidecar.values import to_json_value

log = structlog.get_logger("sidecar.push")

CAPTURE_WAIT = 5.0  # seconds a push waits for capture before deciding on duplicates
RETRIES = 3

# Mutation ids whose changes were written in the current push (zero-row effects are not).
_written: contextvars.ContextVar[set[str]] = contextvars.ContextVar("sidecar_push_written")


class CaptureProgress(Protocol):
    async def wait_for_lsn(self, lsn: int, timeout: float) -> bool: ...


@dataclass(frozen=True, slots=True)
class PushResult:
    results: list[MutationResult]
    lsn: int | None


@dataclass(frozen=True, slots=True)
class Current:
    """A locked row: its JSON values, rev, and whether the caller may see it now."""

    values: Mapping[str, Any]  # typed values of route.needed
    row: Mapping[str, Any]  # JSON form of the exposed columns
    rev: str
    readable: bool


class _Refused(Exception):
    """Undo this mutation's statements and report it."""

    def __init__(self, result: MutationResult) -> None:
        super().__init__(result.status)
        self.result = result


class _Aborted(Exception):
    """An atomic batch stops at its first mutation that is not applied."""

    def __init__(self, result: MutationResult) -> None:
        super().__init__(result.status)
        self.result = result


def _db_error(exc: psycopg.Error) -> SidecarError:
    """A database refusal as a stable problem (never a 500)."""
    diag = exc.diag
    constraint = diag.constraint_name
    column = diag.column_name
    primary = diag.message_primary or str(exc)
    extra = {k: v for k, v in (("constraint", constraint), ("column", column)) if v}
    if isinstance(exc, pge.UniqueViolation):
        return Conflict(f"unique constraint {constraint} refused the change: {primary}", **extra)
    if isinstance(exc, pge.InsufficientPrivilege):
        return Forbidden(f"the database refused the sidecar's role: {primary}", **extra)
    if isinstance(exc, pge.IntegrityConstraintViolation | pge.DataError):
        return ValidationFailed(f"the database refused the values: {primary}", **extra)
    return ValidationFailed(f"the database refused the change: {primary}", **extra)


class Pusher:
    def __init__(
        self,
        routes: Mapping[str, Route],
        store: ChangeStore,
        capture: CaptureProgress,
        pool: AsyncConnectionPool,
        *,
        user_claim: str = "sub",
    ) -> None:
        self.routes = dict(routes)
        self.store = store
        self.capture = capture
        self.pool = pool
        self.user_claim = user_claim
        self.recent: TTLCache[str, MutationResult] = TTLCache(maxsize=100_000, ttl=900)

    # -- entry point ---------------------------------------------------------------------

    async def push(
        self, principal: Principal, mutations: Sequence[Mutation], atomic: bool
    ) -> PushResult:
        for attempt in range(RETRIES):
            try:
                async with self.pool.connection() as conn:
                    return await self._push_once(conn, principal, mutations, atomic)
            except (pge.SerializationFailure, pge.DeadlockDetected):
                await asyncio.sleep(0.01 * (attempt + 1))
        raise Unavailable("the batch kept colliding with concurrent writes; retry", retry_after=1)

    async def _push_once(
        self,
        conn: psycopg.AsyncConnection,
        principal: Principal,
        mutations: Sequence[Mutation],
        atomic: bool,
    ) -> PushResult:
        results: dict[str, MutationResult] = {}
        applied: list[MutationResult] = []
        written: set[str] = set()
        _written.set(written)
        try:
            async with conn.transaction():
                await self._lock_ids(conn, [m.id for m in mutations])
                duplicates = await self._duplicates(conn, [m.id for m in mutations])
                results.update(duplicates)
                todo = [m for m in mutations if m.id not in duplicates]
                current = await self._lock_rows(conn, principal, todo)
                for m in todo:
                    result = await self._one(conn, principal, m, current.get(m.id), atomic)
                    results[m.id] = result
                    if result.status == "applied":
                        applied.append(result)
                    elif atomic:
                        raise _Aborted(result)
        except _Aborted as abort:
            return PushResult(self._aborted(mutations, abort.result, results), None)
        failpoints.hit("push.after_commit")  # tests: die between COMMIT and the response
        lsn = None
        if written:
            cur = await conn.execute("SELECT pg_current_wal_insert_lsn()::text")
            row = await cur.fetchone()
            lsn = str_to_lsn(row[0]) if row else None
            for r in applied:
                self.recent[r.id] = r
        for m in mutations:
            self._log(principal, m, results[m.id])
        return PushResult([results[m.id] for m in mutations], lsn)

    def _aborted(
        self,
        mutations: Sequence[Mutation],
        failed: MutationResult,
        results: Mapping[str, MutationResult],
    ) -> list[MutationResult]:
        out = []
        for m in mutations:
            if m.id == failed.id:
                out.append(failed)
            elif results.get(m.id, failed).status == "duplicate":
                out.append(results[m.id])
            else:
                err = Conflict(
                    f"not applied: mutation {failed.id!r} of this atomic batch was "
                    f"{failed.status}, so none was applied"
                )
                out.append(rejected(m.id, err))
        return out

    def _log(self, principal: Principal, m: Mutation, r: MutationResult) -> None:
        log.info(
            "mutation",
            mutation_id=m.id,
            subject=principal.subject,
            device=principal.device,
            collection=m.collection,
            op=m.op,
            key=dict(m.key),
            outcome=r.status,
            code=(r.error or {}).get("code"),
        )

    # -- idempotency ---------------------------------------------------------------------

    async def _lock_ids(self, conn: psycopg.AsyncConnection, ids: list[str]) -> None:
        await conn.execute(
            "SELECT pg_advisory_xact_lock(k) FROM (SELECT DISTINCT "
            "hashtextextended('sidecar:' || i, 0) AS k FROM unnest(%s::text[]) AS i "
            "ORDER BY 1) AS ids",
            (sorted(ids),),
        )

    async def _duplicates(
        self, conn: psycopg.AsyncConnection, ids: list[str]
    ) -> dict[str, MutationResult]:
        found: dict[str, MutationResult] = {}
        unknown = []
        for i in ids:
            hit = self.recent.get(i)
            if hit is not None:
                found[i] = MutationResult(i, "duplicate", rev=hit.rev)
            else:
                unknown.append(i)
        if not unknown:
            return found
        cur = await conn.execute("SELECT pg_current_wal_insert_lsn()::text")
        row = await cur.fetchone()
        assert row is not None
        if not await self.capture.wait_for_lsn(str_to_lsn(row[0]), CAPTURE_WAIT):
            raise Unavailable(
                "capture is behind the database; cannot tell yet whether these mutations "
                "were already applied — retry",
                retry_after=2,
            )
        records = await asyncio.to_thread(lambda: {i: self.store.mutation(i) for i in unknown})
        for i, rec in records.items():
            if rec is not None:
                outcome = orjson.loads(rec.outcome)
                found[i] = MutationResult(i, "duplicate", rev=outcome.get("rev"))
        return found

    # -- current rows --------------------------------------------------------------------

    async def _lock_rows(
        self, conn: psycopg.AsyncConnection, principal: Principal, todo: Sequence[Mutation]
    ) -> dict[str, Current]:
        by_coll: dict[str, list[Mutation]] = {}
        for m in todo:
            route = self.routes[m.collection]
            if all(c in m.key for c in route.key):
                by_coll.setdefault(m.collection, []).append(m)
        out: dict[str, Current] = {}
        for coll, candidates in by_coll.items():
            route = self.routes[coll]
            ms = [m for m in candidates if self._key_ok(route, m)]  # bad keys: refused later
            if not ms:
                continue
            st = write_sql.lock_rows(route, [m.key for m in ms], principal.claims)
            rows = await (await _raw(conn, st)).fetchall()
            for row in rows:
                m = ms[row[0]]
                values = dict(zip(route.needed, row[2:], strict=True))
                image = route.image_of_values(values)
                out[m.id] = Current(values, orjson.loads(image.row), image.rev, bool(row[1]))
        return out

    @staticmethod
    def _key_ok(route: Route, m: Mutation) -> bool:
        try:
            for c in route.key:
                check_value(route.table.column(c), m.key[c])  # type: ignore[arg-type]
        except ValidationFailed:
            return False
        return True

    # -- one mutation --------------------------------------------------------------------

    async def _one(
        self,
        conn: psycopg.AsyncConnection,
        principal: Principal,
        m: Mutation,
        current: Current | None,
        atomic: bool,
    ) -> MutationResult:
        try:
            if atomic:
                return await self._apply(conn, principal, m, current)
            async with conn.transaction():  # a savepoint: undone if this mutation fails
                return await self._apply(conn, principal, m, current)
        except _Refused as refused:
            return refused.result
        except SidecarError as exc:
            return rejected(m.id, exc)
        except psycopg.Error as exc:
            if isinstance(exc, pge.SerializationFailure | pge.DeadlockDetected):
                raise
            if atomic:
                raise _Aborted(rejected(m.id, _db_error(exc))) from None
            return rejected(m.id, _db_error(exc))

    async def _apply(
        self,
        conn: psycopg.AsyncConnection,
        principal: Principal,
        m: Mutation,
        current: Current | None,
    ) -> MutationResult:
        route = self.routes[m.collection]
        wc = route.config.write
        if m.op not in wc.ops:
            raise Forbidden(f"{m.op} is not allowed on collection {m.collection!r}")
        self._check_key(route, m)
        if m.op == "insert":
            return await self._insert(conn, principal, route, m, current)
        if current is None:
            if m.op == "delete":  # already gone: the client's intent holds, nothing to do
                return MutationResult(m.id, "applied")
            return MutationResult(
                m.id,
                "conflict",
                error=NotFound(f"no row with key {dict(m.key)} in {m.collection!r}").to_problem(),
            )
        if not current.readable:
            raise Forbidden("that row is outside your read scope")
        if m.op == "delete":
            return await self._delete(conn, principal, route, m, current)
        return await self._update(conn, principal, route, m, current)

    def _check_key(self, route: Route, m: Mutation) -> None:
        extra = [c for c in m.key if c not in route.key]
        if extra or (m.op != "insert" and any(c not in m.key for c in route.key)):
            raise ValidationFailed(
                f"key must have exactly the key columns ({', '.join(route.key)})",
                pointer="key",
            )
        for c, v in m.key.items():
            check_value(route.table.column(c), v)  # type: ignore[arg-type]

    def _data(
        self, route: Route, m: Mutation, principal: Principal, *, inserting: bool
    ) -> dict[str, Any]:
        """Client data checked against the collection, with `set:` columns assigned."""
        wc = route.config.write
        unknown = [c for c in m.data if c not in route.exposed]
        if unknown:
            raise ValidationFailed(
                f"column(s) {', '.join(unknown)} cannot be written in {route.name!r}",
                columns=unknown,
            )
        data = dict(m.data)
        if inserting:
            for c, v in m.key.items():
                if c in data and data[c] != v:
                    raise ValidationFailed(f"key column {c} differs between key and data")
                data[c] = v
        for c in data:
            check_value(route.table.column(c), data[c])  # type: ignore[arg-type]
        for c, v in wc.set.items():
            data[c] = _claim_value(v, principal.claims)
        return data

    def _conflict(self, m: Mutation, current: Current, detail: str) -> MutationResult:
        return MutationResult(
            m.id,
            "conflict",
            rev=current.rev,
            row=current.row,
            error=Conflict(detail).to_problem(),
        )

    async def _insert(
        self,
        conn: psycopg.AsyncConnection,
        principal: Principal,
        route: Route,
        m: Mutation,
        current: Current | None,
    ) -> MutationResult:
        if current is not None:  # the key exists already
            if not current.readable:
                raise Forbidden("a row with that key exists outside your read scope")
            strategy = route.config.conflict
            if strategy.kind != "client_wins":
                return self._conflict(m, current, "a row with that key already exists")
            data = self._data(route, m, principal, inserting=False)
            return await self._write_update(conn, principal, route, m, current, data)
        data = self._data(route, m, principal, inserting=True)
        st = write_sql.insert(route, data, principal.claims)
        return await self._finish(conn, principal, route, m, st)

    async def _delete(
        self,
        conn: psycopg.AsyncConnection,
        principal: Principal,
        route: Route,
        m: Mutation,
        current: Current,
    ) -> MutationResult:
        if current.rev != m.base_rev and route.config.conflict.kind != "client_wins":
            return self._conflict(m, current, "the row changed since base_rev")
        await _raw(conn, write_sql.delete(route, m.key))
        await self._emit(conn, principal, route, m, None, orjson.loads(_key_json(route, current)))
        return MutationResult(m.id, "applied")

    async def _update(
        self,
        conn: psycopg.AsyncConnection,
        principal: Principal,
        route: Route,
        m: Mutation,
        current: Current,
    ) -> MutationResult:
        data = self._data(route, m, principal, inserting=False)
        for c in route.config.write.immutable:
            if c in data and c not in route.config.write.set and data[c] != current.row.get(c):
                raise ValidationFailed(f"column {c} is immutable", column=c)
        if current.rev != m.base_rev:
            resolved = self._resolve(route.config, m, current, data)
            if isinstance(resolved, MutationResult):
                return resolved
            data = resolved
        return await self._write_update(conn, principal, route, m, current, data)

    def _resolve(
        self,
        config: CollectionConfig,
        m: Mutation,
        current: Current,
        data: dict[str, Any],
    ) -> dict[str, Any] | MutationResult:
        """Data to write although the row changed since base_rev, or the conflict."""
        kind = config.conflict.kind
        if kind == "client_wins":
            return data
        if kind == "merge":
            if m.base is None:
                return self._conflict(m, current, "the row changed; send `base` to merge")
            merged = {}
            for c, v in data.items():
                server = current.row.get(c, v)
                if c in config.write.set or server == v:
                    merged[c] = v
                elif c in m.base and m.base[c] == server:
                    merged[c] = v  # only the client changed this field
                else:
                    return self._conflict(m, current, f"field {c} changed on both sides")
            return merged
        if kind == "latest_wins":
            column = config.conflict.column
            assert column is not None
            theirs, ours = current.row.get(column), data.get(column)
            if ours is not None and (theirs is None or _newer(ours, theirs)):
                return data
            return self._conflict(m, current, f"the server row is newer ({column})")
        return self._conflict(m, current, "the row changed since base_rev")

    async def _write_update(
        self,
        conn: psycopg.AsyncConnection,
        principal: Principal,
        route: Route,
        m: Mutation,
        current: Current,
        data: dict[str, Any],
    ) -> MutationResult:
        key = {c: current.values[c] for c in route.key}
        st = write_sql.update(route, key, data, principal.claims)
        return await self._finish(conn, principal, route, m, st)

    async def _finish(
        self,
        conn: psycopg.AsyncConnection,
        principal: Principal,
        route: Route,
        m: Mutation,
        st: write_sql.Statement,
    ) -> MutationResult:
        """Run the write, enforce read (ownership after) and check rules, emit the record."""
        row = await (await _raw(conn, st)).fetchone()
        if row is None:
            raise _Refused(
                MutationResult(m.id, "conflict", error=NotFound("the row is gone").to_problem())
            )
        readable, checked = row[0], row[1]
        if not readable:
            raise _Refused(
                rejected(
                    m.id,
                    Forbidden("the change would put the row outside your read scope"),
                )
            )
        if not checked:
            raise _Refused(
                rejected(m.id, ValidationFailed("the collection's check rule refused the row"))
            )
        values = dict(zip(route.needed, row[2:], strict=True))
        image = route.image_of_values(values)
        await self._emit(conn, principal, route, m, image.rev, orjson.loads(image.key))
        return MutationResult(m.id, "applied", rev=image.rev, row=orjson.loads(image.row))

    async def _emit(
        self,
        conn: psycopg.AsyncConnection,
        principal: Principal,
        route: Route,
        m: Mutation,
        rev: str | None,
        key: Mapping[str, Any],
    ) -> None:
        payload = orjson.dumps(
            {
                "id": m.id,
                "sub": principal.subject,
                "dev": principal.device,
                "outcome": {
                    "status": "applied",
                    "rev": rev,
                    "collection": route.name,
                    "op": m.op,
                    "key": key,
                    "client_time": m.client_time,
                },
            }
        )
        await _raw(conn, write_sql.emit_message(payload))
        _written.get().add(m.id)


def _key_json(route: Route, current: Current) -> bytes:
    return orjson.dumps({c: to_json_value(current.values[c]) for c in route.key})


def _claim_value(value: Any, claims: Mapping[str, Any]) -> Any:
    if isinstance(value, str) and value.startswith(":"):
        return claims.get(value[1:])
    return value


def _newer(ours: Any, theirs: Any) -> bool:
    """Client value strictly newer than the server's (ISO timestamps or numbers)."""
    from datetime import datetime

    def parse(v: Any) -> Any:
        if isinstance(v, str):
            try:
                return datetime.fromisoformat(v.replace("Z", "+00:00"))
            except ValueError:
                return v
        return v

    a, b = parse(ours), parse(theirs)
    try:
        return bool(a > b)
    except TypeError:
        return False


async def _raw(conn: psycopg.AsyncConnection, st: write_sql.Statement) -> psycopg.AsyncRawCursor:
    cur = psycopg.AsyncRawCursor(conn)
    await cur.execute(st.text, st.params)
    return cur
