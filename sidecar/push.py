"""Push: mutations applied to the application's own tables, checked by the rules.

A batch runs in one PostgreSQL transaction on one connection:

1. lock the mutation ids (advisory locks), then decide which ids were already applied:
   the recent-push cache, then the store (fed by capture from the WAL messages), after
   waiting (bounded) for capture to reach the current WAL position — so a retry whose
   first attempt committed but was not yet captured is still recognised. That wait runs
   while step 2 locks the rows and plans (no effect until step 3, which skips duplicates);
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
import contextlib
import dataclasses
from collections.abc import Callable, Mapping, Sequence
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
from sidecar.config.model import CollectionConfig
from sidecar.errors import (
    Conflict,
    Forbidden,
    NotFound,
    SidecarError,
    Unavailable,
    ValidationFailed,
)
from sidecar.lsn import str_to_lsn
from sidecar.mutations import Mutation, MutationResult, check_value, rejected
from sidecar.permissions import Permissions
from sidecar.route import Route
from sidecar.store.base import ChangeStore
from sidecar.values import to_json_value
from sidecar.walmessage import MutationMessage

log = structlog.get_logger("sidecar.push")

CAPTURE_WAIT = 5.0  # seconds a push waits for capture before deciding on duplicates
RETRIES = 3


class CaptureProgress(Protocol):
    async def wait_for_lsn(self, lsn: int, timeout: float) -> bool: ...


@dataclass(frozen=True, slots=True)
class PushResult:
    results: list[MutationResult]
    lsn: int | None
    txid: int | None = None  # the transaction that applied the writes (when any)


@dataclass(frozen=True, slots=True)
class Current:
    """A locked row: its JSON values, rev, and whether the caller may see it now."""

    values: Mapping[str, Any]  # typed values of route.needed
    row: Mapping[str, Any]  # JSON form of the exposed columns
    rev: str
    readable: bool


@dataclass(frozen=True, slots=True)
class _Write:
    """A decided mutation: how to build the statement that carries it out (built only when
    run on its own: the fast path sends same-shape updates as one statement instead)."""

    m: Mutation
    route: Route
    build: Callable[[], write_sql.Statement]
    returns_row: bool  # insert/update RETURN the read/check verdicts and the new row
    key: Mapping[str, Any] | None = None  # deletes: the key (JSON); updates: typed key
    data: Mapping[str, Any] | None = None  # updates: the columns to set


Plan = MutationResult | _Write


class _SlowPath(Exception):
    """Roll the batch back and run it again one savepoint per mutation."""


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


def _with_body_pointers(result: PushResult) -> PushResult:
    """Error pointers of results as JSON pointers into the request body: the core names
    a member of the mutation (`key`), the client needs `/mutations/<i>/key`."""
    fixed = []
    for i, r in enumerate(result.results):
        pointer = (r.error or {}).get("pointer")
        if isinstance(pointer, str) and not pointer.startswith("/"):
            error = {**(r.error or {}), "pointer": f"/mutations/{i}/{pointer}"}
            r = dataclasses.replace(r, error=error)
        fixed.append(r)
    return PushResult(fixed, result.lsn, result.txid)


class Pusher:
    def __init__(
        self,
        routes: Mapping[str, Route],
        store: ChangeStore,
        capture: CaptureProgress,
        pool: AsyncConnectionPool,
        *,
        user_claim: str = "sub",
        permissions: Permissions | None = None,
    ) -> None:
        self.permissions = permissions
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
                    result = await self._push_once(conn, principal, mutations, atomic)
                return _with_body_pointers(result)
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
        """Fast path first (writes pipelined, no savepoints); if any write fails a rule or
        the database refuses one, the transaction is rolled back and the batch runs again
        one savepoint per mutation, so only the culprit is refused."""
        try:
            return await self._run_batch(conn, principal, mutations, atomic, fast=True)
        except _SlowPath:
            return await self._run_batch(conn, principal, mutations, atomic, fast=False)

    async def _run_batch(
        self,
        conn: psycopg.AsyncConnection,
        principal: Principal,
        mutations: Sequence[Mutation],
        atomic: bool,
        *,
        fast: bool,
    ) -> PushResult:
        results: dict[str, MutationResult] = {}
        written: list[MutationResult] = []
        try:
            async with conn.transaction():
                ids = [m.id for m in mutations]
                lsn_now = await self._lock_ids(conn, ids)
                # Whether capture has seen these ids is learnt while the rows are locked
                # and the mutations planned: planning has no effect, and a duplicate's
                # plan is dropped before anything is written.
                finding = asyncio.create_task(self._duplicates(ids, lsn_now))
                try:
                    # A mutation this process applied recently is a duplicate: its row
                    # is not locked for nothing.
                    fresh = [m for m in mutations if m.id not in self.recent]
                    current = await self._lock_rows(conn, principal, fresh)
                    plans = [
                        (m, self._plan_safely(principal, m, current.get(m.id))) for m in mutations
                    ]
                    duplicates = await finding
                finally:
                    if not finding.done():
                        finding.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await finding  # its error, if the batch failed first, is dropped
                results.update(duplicates)
                writes: list[_Write] = []
                for m, plan in plans:
                    if m.id in duplicates:
                        continue
                    if isinstance(plan, _Write):
                        writes.append(plan)
                        continue
                    results[m.id] = plan
                    if atomic and plan.status != "applied":
                        raise _Aborted(plan)
                txid = None
                if fast:
                    done, txid = await self._write_pipelined(conn, principal, writes, atomic)
                else:
                    done = await self._write_one_by_one(conn, principal, writes, atomic)
                results.update(done)
                written = [r for w in writes if (r := done[w.m.id]).status == "applied"]
                if written and txid is None:
                    cur = await conn.execute("SELECT pg_current_xact_id()::xid::text")
                    row = await cur.fetchone()
                    txid = int(row[0]) if row else None
        except _Aborted as abort:
            aborted = self._aborted(mutations, abort.result, results)
            for m, r in zip(mutations, aborted, strict=True):
                self._log(principal, m, r)  # refused writes are audited too
            return PushResult(aborted, None)
        failpoints.hit("push.after_commit")  # tests: die between COMMIT and the response
        lsn = None
        if written:
            cur = await conn.execute("SELECT pg_current_wal_insert_lsn()::text")
            row = await cur.fetchone()
            lsn = str_to_lsn(row[0]) if row else None
            for r in written:
                self.recent[r.id] = r
        for m in mutations:
            self._log(principal, m, results[m.id])
        return PushResult([results[m.id] for m in mutations], lsn, txid)

    async def _write_pipelined(
        self,
        conn: psycopg.AsyncConnection,
        principal: Principal,
        writes: Sequence[_Write],
        atomic: bool,
    ) -> tuple[dict[str, MutationResult], int | None]:
        """All writes in one pipeline, then every record in one statement; returns the
        results and the transaction's id (read by that statement)."""
        if not writes:
            return {}, None
        groups: dict[tuple[str, tuple[str, ...]], list[int]] = {}
        singles: list[int] = []
        for n, w in enumerate(writes):
            if w.data:  # an update: rows changing the same columns share one statement
                groups.setdefault((w.route.name, tuple(w.data)), []).append(n)
            else:
                singles.append(n)
        rows: list[Sequence[Any] | None] = [None] * len(writes)
        try:
            async with conn.pipeline():
                pending = []
                for n in singles:
                    cur = psycopg.AsyncRawCursor(conn)
                    st = writes[n].build()
                    await cur.execute(st.text, st.params)
                    pending.append((cur, [n]))
                for (coll, cols), members in groups.items():
                    items = [(writes[n].key or {}, writes[n].data or {}) for n in members]
                    st = write_sql.update_many(self.routes[coll], items, cols, principal.claims)
                    cur = psycopg.AsyncRawCursor(conn)
                    await cur.execute(st.text, st.params)
                    pending.append((cur, members))
            for cur, members in pending:
                if len(members) == 1 and members[0] in singles:
                    n = members[0]
                    rows[n] = await cur.fetchone() if writes[n].returns_row else None
                else:
                    for row in await cur.fetchall():
                        rows[members[row[0]]] = row[1:]
        except (pge.SerializationFailure, pge.DeadlockDetected):
            raise
        except psycopg.Error:
            raise _SlowPath() from None
        out: dict[str, MutationResult] = {}
        records: list[MutationMessage] = []
        for w, row in zip(writes, rows, strict=True):
            result, record = self._verdict(principal, w, row)
            if record is None:
                if atomic:
                    raise _Aborted(result)
                raise _SlowPath()  # undo just this one: run the batch with savepoints
            out[w.m.id] = result
            records.append(record)
        cur = await _raw(conn, write_sql.emit_messages(records))
        row = await cur.fetchone()
        return out, (int(row[1]) if row else None)

    async def _write_one_by_one(
        self,
        conn: psycopg.AsyncConnection,
        principal: Principal,
        writes: Sequence[_Write],
        atomic: bool,
    ) -> dict[str, MutationResult]:
        out: dict[str, MutationResult] = {}
        for w in writes:
            try:
                if atomic:
                    out[w.m.id] = await self._write_one(conn, principal, w)
                else:
                    async with conn.transaction():  # a savepoint: undone if refused
                        out[w.m.id] = await self._write_one(conn, principal, w)
            except _Refused as refused:
                out[w.m.id] = refused.result
            except (pge.SerializationFailure, pge.DeadlockDetected):
                raise
            except psycopg.Error as exc:
                result = rejected(w.m.id, _db_error(exc))
                if atomic:
                    raise _Aborted(result) from None
                out[w.m.id] = result
            if atomic and out[w.m.id].status != "applied":
                raise _Aborted(out[w.m.id])
        return out

    async def _write_one(
        self, conn: psycopg.AsyncConnection, principal: Principal, w: _Write
    ) -> MutationResult:
        cur = await _raw(conn, w.build())
        row = await cur.fetchone() if w.returns_row else None
        result, record = self._verdict(principal, w, row)
        if record is None:
            raise _Refused(result)
        await _raw(conn, write_sql.emit_messages([record]))
        return result

    def _verdict(
        self, principal: Principal, w: _Write, row: Sequence[Any] | None
    ) -> tuple[MutationResult, MutationMessage | None]:
        """The outcome of a write from its RETURNING row, and its WAL record (None: the
        write was refused)."""
        m, route = w.m, w.route
        if not w.returns_row:  # a delete of a row locked and checked beforehand
            return MutationResult(m.id, "applied"), self._record(principal, route, m, None, w.key)
        if row is None:
            return MutationResult(
                m.id, "conflict", error=NotFound("the row is gone").to_problem()
            ), None
        if not row[0]:
            refusal = Forbidden("the change would put the row outside your read scope")
            return rejected(m.id, refusal), None
        if not row[1]:
            refusal = ValidationFailed("the collection's check rule refused the row")
            return rejected(m.id, refusal), None
        image = route.image_of_values(dict(zip(route.needed, row[2:], strict=True)))
        key = orjson.loads(image.key)
        result = MutationResult(m.id, "applied", rev=image.rev, row=orjson.loads(image.row))
        return result, self._record(principal, route, m, image.rev, key)

    def _record(
        self,
        principal: Principal,
        route: Route,
        m: Mutation,
        rev: str | None,
        key: Mapping[str, Any] | None,
    ) -> MutationMessage:
        """The idempotency/audit record carried by pg_logical_emit_message."""
        return MutationMessage(
            mutation_id=m.id,
            subject=principal.subject,
            device=principal.device,
            collection=route.name,
            op=m.op,
            key=key,
            rev=rev,
            client_time=m.client_time,
        )

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

    async def _lock_ids(self, conn: psycopg.AsyncConnection, ids: list[str]) -> int:
        """Lock the mutation ids (one batch at a time per id, across processes); returns
        the WAL insert position read once the locks are held (one round trip)."""
        cur = await conn.execute(
            "WITH locked AS (SELECT count(pg_advisory_xact_lock(k)) AS n FROM (SELECT DISTINCT "
            "hashtextextended('sidecar:' || i, 0) AS k FROM unnest(%s::text[]) AS i "
            "ORDER BY 1) AS ids) SELECT n, pg_current_wal_insert_lsn()::text FROM locked",
            (sorted(ids),),
        )
        row = await cur.fetchone()
        assert row is not None
        return str_to_lsn(row[1])

    async def _duplicates(self, ids: list[str], lsn_now: int) -> dict[str, MutationResult]:
        """The ids already applied (`duplicate`), once capture has reached `lsn_now`, read
        after their locks were taken: any earlier attempt committed before it."""
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
        if not await self.capture.wait_for_lsn(lsn_now, CAPTURE_WAIT):
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

    def _key_ok(self, route: Route, m: Mutation) -> bool:
        try:
            self._check_key(route, m)
        except ValidationFailed:
            return False
        return True

    # -- one mutation --------------------------------------------------------------------

    def _plan_safely(self, principal: Principal, m: Mutation, current: Current | None) -> Plan:
        try:
            return self._plan(principal, m, current)
        except SidecarError as exc:
            return rejected(m.id, exc)

    def _plan(self, principal: Principal, m: Mutation, current: Current | None) -> Plan:
        """Decide a mutation against the locked row: a result now, or a write to run."""
        route = self.routes[m.collection]
        if m.op not in route.config.write.ops:
            raise Forbidden(f"{m.op} is not allowed on collection {m.collection!r}")
        if self.permissions is not None and not self.permissions.can_write(principal, route.config):
            raise Forbidden(f"your token does not allow writing {m.collection!r} (scope or roles)")
        self._check_key(route, m)
        if m.op == "insert":
            return self._plan_insert(principal, route, m, current)
        if current is None:
            if m.op == "delete":  # already gone: the client's intent holds, nothing to do
                return MutationResult(m.id, "applied")
            missing = NotFound(f"no row with key {dict(m.key)} in {m.collection!r}")
            return MutationResult(m.id, "conflict", error=missing.to_problem())
        if not current.readable:
            raise Forbidden("that row is outside your read scope")
        if m.op == "delete":
            if current.rev != m.base_rev and route.config.conflict.kind != "client_wins":
                return self._conflict(m, current, "the row changed since base_rev")
            key = {c: current.values[c] for c in route.key}
            return _Write(
                m, route, lambda: write_sql.delete(route, key), False, _key_of(route, current)
            )
        data = self._data(route, m, principal, inserting=False)
        for c in route.config.write.immutable:
            if c in data and data[c] != current.row.get(c):
                raise ValidationFailed(f"column {c} is immutable", column=c)
        if current.rev != m.base_rev:
            resolved = self._resolve(route.config, m, current, data)
            if isinstance(resolved, MutationResult):
                return resolved
            data = resolved
        return self._update_write(principal, route, m, current, data)

    def _plan_insert(
        self, principal: Principal, route: Route, m: Mutation, current: Current | None
    ) -> Plan:
        if current is None:
            data = self._data(route, m, principal, inserting=True)
            return _Write(m, route, lambda: write_sql.insert(route, data, principal.claims), True)
        if not current.readable:
            raise Forbidden("a row with that key exists outside your read scope")
        if route.config.conflict.kind != "client_wins":
            return self._conflict(m, current, "a row with that key already exists")
        data = self._data(route, m, principal, inserting=False)
        return self._update_write(principal, route, m, current, data)

    def _update_write(
        self,
        principal: Principal,
        route: Route,
        m: Mutation,
        current: Current,
        data: Mapping[str, Any],
    ) -> _Write:
        key = {c: current.values[c] for c in route.key}
        data = dict(data)
        return _Write(
            m,
            route,
            lambda: write_sql.update(route, key, data, principal.claims),
            True,
            key=key,
            data=data,
        )

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
            if inserting:  # server-assigned on insert; a client value is overridden
                data[c] = _claim_value(v, principal.claims)
            else:  # and kept by the server afterwards: a client value is ignored
                data.pop(c, None)
        return data

    def _conflict(self, m: Mutation, current: Current, detail: str) -> MutationResult:
        return MutationResult(
            m.id,
            "conflict",
            rev=current.rev,
            row=current.row,
            error=Conflict(detail).to_problem(),
        )

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
                if server == v or (c in m.base and m.base[c] == server):
                    merged[c] = v  # unchanged on the server, or the same change on both
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


def _key_of(route: Route, current: Current) -> dict[str, Any]:
    return {c: to_json_value(current.values[c]) for c in route.key}


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
