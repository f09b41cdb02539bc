"""The push transaction: a batch of mutations applied in one PostgreSQL transaction.

1. lock the mutation ids (advisory locks), then decide which ids were already applied.
   An id is the client's and unique only per subject: locks, the recent-push cache and
   the records are all keyed by (subject, id), so the same id from another subject is
   another mutation and nothing of theirs is ever answered. The ids applied: the
   recent-push cache, then the ids recorded as pending before an earlier COMMIT, asked of
   PostgreSQL (`pg_xact_status`), then the store (fed by capture) — `idempotency.py`; no
   wait for capture. That check runs while step 2 locks the rows and plans (no effect
   until step 3, which skips duplicates);
2. lock the target rows (`SELECT … FOR UPDATE`), each tagged with whether it satisfies the
   caller's read rule, and compute its current `rev` exactly as the read path does; each
   mutation is decided against its row (`plan.py`, conflict strategies in `conflicts.py`);
3. run the writes with bound parameters, each statement RETURNING the read rule
   (ownership after the change) and the `check:` rule, both evaluated by PostgreSQL on the
   new row; then `pg_logical_emit_message(true, 'sidecar', …)` carrying mutation id,
   subject, device and client time — the idempotency record, audit trail and echo tag,
   with no table added to the application's database; and, just before COMMIT, the
   applied ids recorded as pending with the transaction's id (fsynced).

The whole transaction is pipelined first (`pipelined.py`: four round trips; updates of
the same columns share one statement); if a rule or the database refuses one, the
transaction is rolled back and the batch runs again one savepoint per mutation, so a
refused one never blocks the others. `atomic: true` is all or nothing. Serialization
failures and deadlocks retry the whole batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import structlog
from cachetools import TTLCache
from psycopg import errors as pge
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from sidecar import failpoints, write_sql
from sidecar.auth import Principal
from sidecar.collection import Collection
from sidecar.errors import Conflict, Forbidden, SidecarError, Unavailable, ValidationFailed
from sidecar.lsn import lsn_to_str, str_to_lsn
from sidecar.mutations import Mutation, MutationResult, rejected
from sidecar.permissions import Permissions
from sidecar.push import conflicts, idempotency, pipelined
from sidecar.push.breaker import Breaker, within
from sidecar.push.idempotency import CaptureProgress
from sidecar.push.pipelined import (
    CLAIM_TYPE_ERRORS,
    LOCK_IDS,
    Aborted,
    SlowPath,
    claims_refused,
    transient,
)
from sidecar.push.plan import (
    Current,
    Plan,
    Write,
    aborted,
    key_ok,
    plan_safely,
    verdict,
    with_body_pointers,
)
from sidecar.store.base import PendingMutations, StoreReader
from sidecar.tracing import Tracing
from sidecar.values import JsonRow

log = structlog.get_logger("sidecar.push")

POOL_WAIT = 10.0  # seconds a push waits for a database connection before a 503
DEADLINE_SLACK = 2.0  # a push's transaction gives up this long after statement_timeout
LOCKED_RETRY = 1  # Retry-After (s) of a push refused for a locked row or a slow statement
RETRIES = 3


@dataclass(frozen=True, slots=True)
class PushResult:
    results: list[MutationResult]
    lsn: int | None
    txid: int | None = None  # the transaction that applied the writes (when any)


class _Refused(Exception):
    """Undo this mutation's statements and report it."""

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
    if isinstance(exc, CLAIM_TYPE_ERRORS):
        return claims_refused(primary)
    if isinstance(exc, pge.IntegrityConstraintViolation | pge.DataError):
        return ValidationFailed(f"the database refused the values: {primary}", **extra)
    return ValidationFailed(f"the database refused the change: {primary}", **extra)


def unbindable_claims(route: Collection, claims: Mapping[str, Any]) -> list[str]:
    """The claims the collection's rules and `set:` use whose values are no SQL value
    (a JSON object, or a list holding objects or lists): they cannot be bound."""
    wc = route.config.write
    used = set(route.config.read.claims)
    used |= set(wc.check.claims if wc.check is not None else ())
    used |= set(wc.where.claims if wc.where is not None else ())
    used |= {v[1:] for v in wc.set.values() if isinstance(v, str) and v.startswith(":")}

    def bad(value: Any) -> bool:
        if isinstance(value, list):
            return any(isinstance(v, dict | list) for v in value)
        return isinstance(value, dict)

    return sorted(c for c in used if bad(claims.get(c)))


class Pusher:
    """Applies pushes: `push` is the entry point (`Service.push` calls it)."""

    def __init__(
        self,
        routes: Mapping[str, Collection],
        store: StoreReader,
        capture: CaptureProgress,
        pool: AsyncConnectionPool,
        *,
        user_claim: str = "sub",
        permissions: Permissions | None = None,
        breaker: Breaker | None = None,
        statement_timeout: float = 10.0,
        pending: PendingMutations,
        tracing: Tracing | None = None,
    ) -> None:
        self.tracing = tracing or Tracing()
        self.permissions = permissions
        self.pending = pending  # ids recorded before COMMIT (`idempotency.py`)
        self.breaker = breaker or Breaker(_never)
        # the pool's sessions run with it as `statement_timeout`; a push's transaction
        # as a whole is given up DEADLINE_SLACK later (a database that stopped answering)
        self.statement_timeout = statement_timeout
        self.routes = routes
        self.store = store
        self.capture = capture
        self.pool = pool
        self.user_claim = user_claim
        # (origin, subject, mutation id) → the result this process gave when it applied
        # it; `origin` is the database lineage the store followed then (`recalled`)
        self.recent: TTLCache[tuple[str, str, str], MutationResult] = TTLCache(
            maxsize=100_000, ttl=900
        )

    @property
    def routes(self) -> dict[str, Collection]:
        return self._routes

    @routes.setter
    def routes(self, routes: Mapping[str, Collection]) -> None:
        """The collections pushed to; each one's conflict strategy must have a function
        (`conflicts.strategy`: ValueError now, not at the first stale push)."""
        for route in routes.values():
            conflicts.strategy(route.config.conflict)
        self._routes = dict(routes)

    # -- this process's recent pushes ----------------------------------------------------

    def remember(self, subject: str, applied: Sequence[MutationResult]) -> None:
        """Mutations this process applied (committed), under the store's lineage."""
        origin = idempotency.origin_of(self.store)
        for r in applied:
            self.recent[(origin, subject, r.id)] = r

    def recalled(self, subject: str, mid: str) -> MutationResult | None:
        """What this process answered when it applied (subject, id) under the lineage
        the store follows now. After a failover or a restore the store follows another
        lineage: what was applied before may be lost, so it is not recalled (a retry is
        applied again), as the store's and the pending records are not."""
        return self.recent.get((idempotency.origin_of(self.store), subject, mid))

    def recalled_many(self, subject: str, ids: Sequence[str]) -> dict[str, MutationResult]:
        """`recalled` of a batch's ids (the lineage read once): the ones recalled, by id."""
        if not self.recent:
            return {}
        origin = idempotency.origin_of(self.store)
        get = self.recent.get
        return {i: hit for i in ids if (hit := get((origin, subject, i))) is not None}

    # -- entry point ---------------------------------------------------------------------

    async def push(
        self, principal: Principal, mutations: Sequence[Mutation], atomic: bool
    ) -> PushResult:
        for name in dict.fromkeys(m.collection for m in mutations):
            bad = unbindable_claims(self.routes[name], principal.claims)
            if bad:
                raise claims_refused(f"{', '.join(bad)}: not a string, number or boolean", name)
        for attempt in range(RETRIES):
            self.breaker.check()  # the database is known to be gone: 503 at once
            try:
                result = await within(
                    lambda held: self._attempt(held, principal, mutations, atomic),
                    self.statement_timeout + DEADLINE_SLACK,
                )
                return PushResult(with_body_pointers(result.results), result.lsn, result.txid)
            except (pge.SerializationFailure, pge.DeadlockDetected):
                await asyncio.sleep(0.01 * (attempt + 1))
            except pge.LockNotAvailable:
                raise Unavailable(
                    "a row of this batch stayed locked by another transaction longer than "
                    "limits.push_lock_timeout; nothing was applied — retry the same mutations",
                    retry_after=LOCKED_RETRY,
                ) from None
            except pge.QueryCanceled:
                raise Unavailable(
                    "a statement of this push ran longer than limits.push_statement_timeout; "
                    "nothing was applied — retry the same mutations",
                    retry_after=LOCKED_RETRY,
                ) from None
            except PoolTimeout:  # every connection busy: the database itself may be fine
                raise Unavailable(
                    "no database connection free for this push (database.pool_size); "
                    "nothing was applied — retry",
                    retry_after=1,
                ) from None
            except (psycopg.OperationalError, TimeoutError) as exc:  # lost, shut down, silent
                silent = isinstance(exc, TimeoutError)
                if not silent and attempt < RETRIES - 1:
                    # A connection lost (terminated, the server restarting): again on
                    # another one, which the pool checks or makes (a database that is
                    # down opens the breaker there). Safe whatever the lost transaction
                    # did: a mutation it committed is answered `duplicate`.
                    log.info("push: connection lost; again on another", error=str(exc)[:200])
                    continue
                error = "no answer" if silent else str(exc).strip()[:200]
                log.warning("push: database unavailable", error=error)
                self.breaker.failed(
                    "the database stopped answering" if silent else "connection lost", error
                )
                raise Unavailable(
                    "the database is unavailable; retry the same mutations (one applied "
                    "before the connection was lost is then answered `duplicate`)",
                    retry_after=2,
                ) from None
        raise Unavailable("the batch kept colliding with concurrent writes; retry", retry_after=1)

    async def _attempt(
        self,
        held: list[psycopg.AsyncConnection],
        principal: Principal,
        mutations: Sequence[Mutation],
        atomic: bool,
    ) -> PushResult:
        """One attempt on a pool connection, which `held` shows to `within`, in a span
        of its PostgreSQL transaction (whose id `note_xid` gives capture's span)."""
        with self.tracing.span(
            "PostgreSQL transaction", **{"db.system.name": "postgresql"}
        ) as span:
            async with self._connection() as conn:
                held.append(conn)
                result = await self._push_once(conn, principal, mutations, atomic)
            if result.txid is not None:
                span.set_attribute("sidecar.xid", result.txid)
            if result.lsn is not None:
                span.set_attribute("sidecar.commit_lsn", lsn_to_str(result.lsn))
            return result

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        """A pool connection, waited for at most POOL_WAIT — or until the breaker opens
        (the pool failed to connect meanwhile): then 503 at once."""
        getting = asyncio.ensure_future(self.pool.getconn(timeout=POOL_WAIT))
        opened = asyncio.ensure_future(self.breaker.wait_open())
        try:
            await asyncio.wait({getting, opened}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            opened.cancel()
            if not getting.done():
                getting.cancel()
                with contextlib.suppress(BaseException):
                    # got just before it was cancelled: back to the pool
                    await self.pool.putconn(await getting)
        if getting.cancelled():
            self.breaker.check()
            raise PoolTimeout("the breaker opened")
        conn = getting.result()
        try:
            yield conn
        finally:
            await self.pool.putconn(conn)

    async def _push_once(
        self,
        conn: psycopg.AsyncConnection,
        principal: Principal,
        mutations: Sequence[Mutation],
        atomic: bool,
    ) -> PushResult:
        """Fast path first (the transaction pipelined, `pipelined.py`); if any write fails
        a rule or the database refuses one, the transaction is rolled back and the batch
        runs again one savepoint per mutation, so only the culprit is refused."""
        try:
            return await pipelined.run(self, conn, principal, mutations, atomic)
        except SlowPath:
            return await self._run_batch(conn, principal, mutations, atomic)

    async def _run_batch(
        self,
        conn: psycopg.AsyncConnection,
        principal: Principal,
        mutations: Sequence[Mutation],
        atomic: bool,
    ) -> PushResult:
        """The savepoint path: one round trip per step and per mutation."""
        results: dict[str, MutationResult] = {}
        written: list[MutationResult] = []
        try:
            async with conn.transaction():
                ids = [m.id for m in mutations]
                subject = principal.subject
                lsn_now = await self._lock_ids(conn, subject, ids)
                # Whether capture has seen these ids is learnt while the rows are locked
                # and the mutations planned: planning has no effect, and a duplicate's
                # plan is dropped before anything is written.
                finding = asyncio.create_task(self._duplicates(conn, subject, ids, lsn_now))
                try:
                    # A mutation this process applied recently is a duplicate: its row
                    # is not locked for nothing.
                    recalled = self.recalled_many(subject, ids)
                    fresh = [m for m in mutations if m.id not in recalled]
                    current = await self._lock_rows(conn, principal, fresh)
                    plans = [(m, self._plan(principal, m, current.get(m.id))) for m in mutations]
                    duplicates = await finding
                finally:
                    if not finding.done():
                        finding.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await finding  # its error, if the batch failed first, is dropped
                results.update(duplicates)
                writes: list[Write] = []
                for m, decided in plans:
                    if m.id in duplicates:
                        continue
                    if isinstance(decided, Write):
                        writes.append(decided)
                        continue
                    results[m.id] = decided
                    if atomic and decided.status != "applied":
                        raise Aborted(decided)
                txid = None
                done = await self._write_one_by_one(conn, principal, writes, atomic)
                results.update(done)
                written = [r for w in writes if (r := done[w.m.id]).status == "applied"]
                if written:
                    xid = await idempotency.current_xid(conn)
                    txid = xid & 0xFFFFFFFF
                    self.tracing.note_xid(xid)
                    await idempotency.record(self.pending, self.store, subject, written, xid)
                    failpoints.hit("push.before_commit")  # tests: die with ids pending
        except Aborted as abort:
            refused = aborted(mutations, abort.result, results)
            self._log_all(principal, mutations, refused)  # refused writes are logged too
            return PushResult(refused, None)
        failpoints.hit("push.after_commit")  # tests: die between COMMIT and the response
        lsn = None
        if written:
            cur = await conn.execute("SELECT pg_current_wal_insert_lsn()::text")
            row = await cur.fetchone()
            lsn = str_to_lsn(row[0]) if row else None
            self.remember(principal.subject, written)
        ordered = [results[m.id] for m in mutations]
        self._log_all(principal, mutations, ordered)
        return PushResult(ordered, lsn, txid)

    async def _write_one_by_one(
        self,
        conn: psycopg.AsyncConnection,
        principal: Principal,
        writes: Sequence[Write],
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
                if transient(exc, conn):
                    raise
                result = rejected(w.m.id, _db_error(exc))
                if atomic:
                    raise Aborted(result) from None
                out[w.m.id] = result
            if atomic and out[w.m.id].status != "applied":
                raise Aborted(out[w.m.id])
        return out

    async def _write_one(
        self, conn: psycopg.AsyncConnection, principal: Principal, w: Write
    ) -> MutationResult:
        cur = await _raw(conn, w.build())
        row = await cur.fetchone() if w.returns_row else None
        result, record = verdict(principal, w, row)
        if record is None:
            raise _Refused(result)
        await _raw(conn, write_sql.emit_messages([record]))
        return result

    def _plan(self, principal: Principal, m: Mutation, current: Current | None) -> Plan:
        """The mutation decided against its locked row (`plan.py`)."""
        return plan_safely(self.routes[m.collection], self.permissions, principal, m, current)

    def _log_all(
        self,
        principal: Principal,
        mutations: Sequence[Mutation],
        results: Sequence[MutationResult],
    ) -> None:
        """One `push` line per batch at info: how many mutations had each outcome, and
        each one that was neither applied nor a duplicate (id, collection, op, key,
        outcome, code). A `mutation` line per mutation at debug only: a line costs more
        than applying the mutation (the applied ones are in the audit trail, `/v1/audit`)."""
        bound = log.bind(subject=principal.subject, device=principal.device)
        outcomes: dict[str, int] = {}
        refused = []
        for m, r in zip(mutations, results, strict=True):
            outcomes[r.status] = outcomes.get(r.status, 0) + 1
            if r.status not in _ROUTINE:
                refused.append(_line(m, r))
        bound.info("push", mutations=len(mutations), outcomes=outcomes, refused=refused)
        if bound.is_enabled_for(logging.DEBUG):
            for m, r in zip(mutations, results, strict=True):
                bound.debug("mutation", **_line(m, r))

    # -- idempotency ---------------------------------------------------------------------

    async def _lock_ids(self, conn: psycopg.AsyncConnection, subject: str, ids: list[str]) -> int:
        """Lock the subject's mutation ids (one batch at a time per (subject, id), across
        processes); returns the WAL insert position read once the locks are held (one
        round trip). The subject is length-prefixed: no (subject, id) pair reads as
        another."""
        cur = await pipelined.send(conn, LOCK_IDS, (subject, subject, sorted(ids)))
        row = await cur.fetchone()
        assert row is not None
        return str_to_lsn(row[1])

    async def _duplicates(
        self, conn: psycopg.AsyncConnection, subject: str, ids: list[str], lsn_now: int
    ) -> dict[str, MutationResult]:
        """The subject's ids already applied (`duplicate`), read after their locks were
        taken: this process's recent pushes, then `idempotency.applied_before`. Another
        subject's mutation of the same id is not a duplicate."""
        recalled = self.recalled_many(subject, ids)
        found = {i: MutationResult(i, "duplicate", rev=hit.rev) for i, hit in recalled.items()}
        unknown = [i for i in ids if i not in found]
        if not unknown:
            return found
        found.update(
            await idempotency.applied_before(
                conn, self.pending, self.store, self.capture, subject, unknown, lsn_now
            )
        )
        return found

    # -- current rows --------------------------------------------------------------------

    async def _lock_rows(
        self, conn: psycopg.AsyncConnection, principal: Principal, todo: Sequence[Mutation]
    ) -> dict[str, Current]:
        out: dict[str, Current] = {}
        for coll, ms, st in self._row_locks(principal, todo):
            try:
                rows = await (await _raw(conn, st)).fetchall()
            except CLAIM_TYPE_ERRORS as exc:
                raise claims_refused(exc.diag.message_primary or str(exc), coll) from None
            self._current_rows(self.routes[coll], ms, rows, out)
        return out

    def _row_locks(
        self, principal: Principal, todo: Sequence[Mutation]
    ) -> list[tuple[str, list[Mutation], write_sql.Statement]]:
        """One `SELECT … FOR UPDATE` per collection: its mutations (with a well-formed
        key; a bad one is refused by the plan) and the statement."""
        by_coll: dict[str, list[Mutation]] = {}
        for m in todo:
            route = self.routes[m.collection]
            if all(c in m.key for c in route.key):
                by_coll.setdefault(m.collection, []).append(m)
        out = []
        for coll, candidates in by_coll.items():
            route = self.routes[coll]
            ms = [m for m in candidates if key_ok(route, m)]  # bad keys: refused later
            if ms:
                out.append(
                    (coll, ms, write_sql.lock_rows(route, [m.key for m in ms], principal.claims))
                )
        return out

    @staticmethod
    def _current_rows(
        route: Collection, ms: Sequence[Mutation], rows: Sequence[Any], out: dict[str, Current]
    ) -> None:
        """The locked rows of `ms` (tagged with their position) as `Current`s, by id."""
        for row in rows:
            m = ms[row[0]]
            values = dict(zip(route.needed, row[3:], strict=True))
            image = route.image_of_values(values)
            # the row's JSON is read only if the plan looks into it (a conflict, `merge`)
            out[m.id] = Current(values, JsonRow(image.row), image.rev, bool(row[1]), bool(row[2]))


_ROUTINE = frozenset({"applied", "duplicate"})


def _line(m: Mutation, r: MutationResult) -> dict[str, Any]:
    """A mutation and its outcome as log fields."""
    return {
        "mutation_id": m.id,
        "collection": m.collection,
        "op": m.op,
        "key": dict(m.key),
        "outcome": r.status,
        "code": (r.error or {}).get("code"),
    }


async def _never() -> None:
    """The probe of a pusher built without a breaker (tests): never connects."""
    raise psycopg.OperationalError("no probe")


async def _raw(conn: psycopg.AsyncConnection, st: write_sql.Statement) -> psycopg.AsyncRawCursor:
    cur = psycopg.AsyncRawCursor(conn)
    await cur.execute(st.text, st.params)
    return cur
