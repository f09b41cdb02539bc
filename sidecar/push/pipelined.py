"""The push transaction's fast path: every step of `pusher.py` in a few round trips.

The steps and guarantees are the pusher's (its docstring); only how the statements travel
differs. The connection is in pipeline mode for the whole transaction (autocommit, so
BEGIN and COMMIT are statements of the pipeline), and each round trip carries every
statement that does not need an answer of the round trip before:

1. BEGIN, the advisory locks of the (subject, id)s (and the WAL insert position), one
   `SELECT … FOR UPDATE` per collection. Once the id locks are held (not before: a
   first attempt still running could record its ids after a look), the pending ids and
   the store are read on worker threads while the mutations are planned;
   (`pg_xact_status` of recorded ids: one more round trip, on a retry only);
2. the writes — updates of the same columns as one statement — and the transaction's id;
3. the WAL messages, while the applied ids are recorded as pending (fsynced on a worker
   thread): COMMIT is sent only once that record is durable;
4. COMMIT and the WAL position after it (read-your-writes).

If a rule or the database refuses a write, the transaction is rolled back and
`SlowPath` tells the pusher to run the batch again one savepoint per mutation.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import errors as pge
from psycopg.pq import TransactionStatus

from sidecar import failpoints, write_sql
from sidecar.auth import Principal
from sidecar.errors import Forbidden
from sidecar.lsn import str_to_lsn
from sidecar.mutations import Mutation, MutationResult
from sidecar.push import idempotency
from sidecar.push.plan import Current, Plan, Write, aborted, verdict
from sidecar.walmessage import MutationMessage

if TYPE_CHECKING:
    from sidecar.push.pusher import Pusher, PushResult

# What PostgreSQL says when a rule cannot be evaluated with the caller's claims (a claim
# of another type than the column it is compared with: `text = boolean`).
CLAIM_TYPE_ERRORS = (
    pge.UndefinedFunction,
    pge.DatatypeMismatch,
    pge.AmbiguousFunction,
    pge.IndeterminateDatatype,
)

LOCK_IDS = (
    "WITH locked AS (SELECT count(pg_advisory_xact_lock(k)) AS n FROM (SELECT DISTINCT "
    "hashtextextended('sidecar:' || length($1) || ':' || $2 || ':' || i, 0) AS k "
    "FROM unnest($3::text[]) AS i ORDER BY 1) AS ids) "
    "SELECT n, pg_current_wal_insert_lsn()::text FROM locked"
)


class SlowPath(Exception):
    """Roll the batch back and run it again one savepoint per mutation."""


class Aborted(Exception):
    """An atomic batch stops at its first mutation that is not applied."""

    def __init__(self, result: MutationResult) -> None:
        super().__init__(result.status)
        self.result = result
        self.results: dict[str, MutationResult] = {}  # decided before it (duplicates)


def transient(exc: psycopg.Error, conn: psycopg.AsyncConnection) -> bool:
    """An error of the moment, not of the mutation: a lock or statement timeout, the
    server shutting down, a connection lost. The batch is answered 503 (retry)."""
    return (
        isinstance(exc, pge.LockNotAvailable | pge.QueryCanceled | pge.OperatorIntervention)
        or conn.broken
    )


def claims_refused(reason: str, collection: str | None = None) -> Forbidden:
    where = f" of collection {collection!r}" if collection else ""
    return Forbidden(
        f"a rule{where} cannot be evaluated with your token's claims ({reason}): a claim a "
        "rule compares with a column must be a value of the column's kind",
        **({"collection": collection} if collection else {}),
    )


async def send(
    conn: psycopg.AsyncConnection, text: str, params: Sequence[Any] | None = None
) -> psycopg.AsyncRawCursor:
    """A statement queued on the pipeline (sent, not waited for)."""
    cur = psycopg.AsyncRawCursor(conn)
    await cur.execute(text, params)
    return cur


async def run(
    px: Pusher,
    conn: psycopg.AsyncConnection,
    principal: Principal,
    mutations: Sequence[Mutation],
    atomic: bool,
) -> PushResult:
    """The batch in one pipelined transaction (`SlowPath`: run it with savepoints)."""
    if not conn.autocommit:
        await conn.set_autocommit(True)  # BEGIN and COMMIT are the pipeline's statements
    try:
        try:
            async with conn.pipeline() as pipeline:
                results, written, lsn, txid = await _transaction(
                    px, conn, pipeline, principal, mutations, atomic
                )
        except asyncio.CancelledError:
            raise  # the pool rolls back (or drops) a connection given back mid-transaction
        except BaseException:
            if not conn.broken and conn.pgconn.transaction_status in (
                TransactionStatus.INTRANS,
                TransactionStatus.INERROR,
            ):
                await conn.rollback()
            raise
    except Aborted as abort:
        refused = aborted(mutations, abort.result, abort.results)
        px._log_all(principal, mutations, refused)  # refused writes are logged too
        return _result(refused, None, None)
    failpoints.hit("push.after_commit")  # tests: die between COMMIT and the response
    subject = principal.subject
    px.remember(subject, written)
    ordered = [results[m.id] for m in mutations]
    px._log_all(principal, mutations, ordered)
    return _result(ordered, lsn, txid)


def _result(results: list[MutationResult], lsn: int | None, txid: int | None) -> PushResult:
    from sidecar.push.pusher import PushResult

    return PushResult(results, lsn, txid)


async def _transaction(
    px: Pusher,
    conn: psycopg.AsyncConnection,
    pipeline: psycopg.AsyncPipeline,
    principal: Principal,
    mutations: Sequence[Mutation],
    atomic: bool,
) -> tuple[dict[str, MutationResult], list[MutationResult], int | None, int | None]:
    subject = principal.subject
    ids = [m.id for m in mutations]
    # A mutation this process applied recently is a duplicate: its row is not locked.
    recalled = px.recalled_many(subject, ids)
    fresh = [m for m in mutations if m.id not in recalled]
    # round trip 1: BEGIN, the id locks, the row locks
    await send(conn, "BEGIN")
    locking = await send(conn, LOCK_IDS, (subject, subject, sorted(ids)))
    row_locks = [
        (coll, ms, await send(conn, st.text, st.params))
        for coll, ms, st in px._row_locks(principal, fresh)
    ]
    try:
        row = await locking.fetchone()
        locked = [(coll, ms, await cur.fetchall()) for coll, ms, cur in row_locks]
    except CLAIM_TYPE_ERRORS as exc:
        failed = next((c for c, _, cur in row_locks if cur.pgresult is None), None)
        raise claims_refused(exc.diag.message_primary or str(exc), failed) from None
    assert row is not None
    lsn_now = str_to_lsn(row[1])
    # The ids are locked: whether they were applied is read (worker threads) while the
    # mutations are planned; planning has no effect, a duplicate's plan is dropped.
    finding = asyncio.create_task(px._duplicates(conn, subject, ids, lsn_now))
    try:
        current: dict[str, Current] = {}
        for coll, ms, rows in locked:
            px._current_rows(px.routes[coll], ms, rows, current)
        plans = [(m, px._plan(principal, m, current.get(m.id))) for m in mutations]
        duplicates = await finding
    finally:
        if not finding.done():
            finding.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await finding  # its error, if the batch failed first, is dropped
    results: dict[str, MutationResult] = dict(duplicates)
    try:
        return await _apply(px, conn, pipeline, principal, plans, results, atomic)
    except Aborted as abort:
        abort.results = results
        raise


async def _apply(
    px: Pusher,
    conn: psycopg.AsyncConnection,
    pipeline: psycopg.AsyncPipeline,
    principal: Principal,
    plans: Sequence[tuple[Mutation, Plan]],
    results: dict[str, MutationResult],
    atomic: bool,
) -> tuple[dict[str, MutationResult], list[MutationResult], int | None, int | None]:
    """The writes of the planned mutations that are no duplicates, the WAL messages,
    the pending record, COMMIT."""
    subject = principal.subject
    writes: list[Write] = []
    for m, decided in plans:
        if m.id in results:  # a duplicate
            continue
        if isinstance(decided, Write):
            writes.append(decided)
            continue
        results[m.id] = decided
        if atomic and decided.status != "applied":
            raise Aborted(decided)
    written: list[MutationResult] = []
    txid = lsn = None
    if writes:
        # round trip 2: the writes and the transaction's id
        done, records, xid = await _write(px, conn, principal, writes, atomic)
        results.update(done)
        written = [done[w.m.id] for w in writes]
        txid = xid & 0xFFFFFFFF
        px.tracing.note_xid(xid)  # capture's span of this transaction: a child of ours
        # round trip 3: the WAL messages, while the ids are recorded (fsync) before COMMIT
        recording = asyncio.create_task(
            idempotency.record(px.pending, px.store, subject, written, xid)
        )
        try:
            st = write_sql.emit_messages(records)
            emitted = await send(conn, st.text, st.params)
            await emitted.fetchone()
        finally:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.shield(recording)
        await recording  # its error refuses the push: the transaction is rolled back
        failpoints.hit("push.before_commit")  # tests: die with ids pending
    # round trip 4: COMMIT and the WAL position after it
    await send(conn, "COMMIT")
    if written:
        position = await send(conn, "SELECT pg_current_wal_insert_lsn()::text")
        row = await position.fetchone()
        lsn = str_to_lsn(row[0]) if row else None
    else:
        await pipeline.sync()
    return results, written, lsn, txid


async def _write(
    px: Pusher,
    conn: psycopg.AsyncConnection,
    principal: Principal,
    writes: Sequence[Write],
    atomic: bool,
) -> tuple[dict[str, MutationResult], list[MutationMessage], int]:
    """Every write, then the transaction's id, in one round trip; the results, the WAL
    records and the id (64 bits)."""
    groups: dict[tuple[str, tuple[str, ...]], list[int]] = {}
    singles: list[int] = []
    for n, w in enumerate(writes):
        if w.data:  # an update: rows changing the same columns share one statement
            groups.setdefault((w.route.name, tuple(w.data)), []).append(n)
        else:
            singles.append(n)
    rows: list[Sequence[Any] | None] = [None] * len(writes)
    try:
        sent = []
        for n in singles:
            st = writes[n].build()
            sent.append((await send(conn, st.text, st.params), [n]))
        for (coll, cols), members in groups.items():
            items = [(writes[n].key or {}, writes[n].data or {}) for n in members]
            st = write_sql.update_many(px.routes[coll], items, cols, principal.claims)
            sent.append((await send(conn, st.text, st.params), members))
        xact = await send(conn, "SELECT pg_current_xact_id()::text")
        xid_row = await xact.fetchone()
        for cur, members in sent:
            if len(members) == 1 and members[0] in singles:
                n = members[0]
                rows[n] = await cur.fetchone() if writes[n].returns_row else None
            else:
                for got in await cur.fetchall():
                    rows[members[got[0]]] = got[1:]
    except (pge.SerializationFailure, pge.DeadlockDetected):
        raise
    except psycopg.Error as exc:
        if transient(exc, conn):
            raise
        raise SlowPath() from None
    assert xid_row is not None
    out: dict[str, MutationResult] = {}
    records: list[MutationMessage] = []
    for w, returned in zip(writes, rows, strict=True):
        result, record = verdict(principal, w, returned)
        if record is None:
            if atomic:
                raise Aborted(result)
            raise SlowPath()  # undo just this one: run the batch with savepoints
        out[w.m.id] = result
        records.append(record)
    return out, records, int(xid_row[0])
