"""Which of a subject's mutation ids were already applied, without waiting for capture.

A push records the ids it applies in the pending store (`store.base.PendingMutations`)
with its transaction's 64-bit id, fsynced, just before COMMIT (`record`). A later push of
the same (subject, id) — it holds the id's advisory lock, so the first attempt's
transaction has ended — asks PostgreSQL about that transaction (`pg_xact_status`):

- `committed`: the first attempt's effect is in the database → `duplicate`, with the `rev`
  it was told;
- `aborted` (a rollback, a crash before COMMIT, a killed connection): nothing happened →
  the record is dropped and the mutation is applied now;
- no answer (the transaction is too old for PostgreSQL to remember): capture stored it
  long ago, so the store's record answers.

Ids the pending store does not know are looked up in the store (fed by capture): a
mutation captured and pruned from the pending store is still a duplicate. A commit from
before the pending store covered pushes (`covered_from`: an older version, a lost pending
file) has no record: for those the store must have caught up with that position first
(a bounded wait, else 503), which it almost always has. A record made
on another database (`origin`: system id, database, lineage — a failover or a restore)
is not trusted, as the store's own ids are not across lineages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

import orjson
import psycopg

from sidecar.errors import Unavailable
from sidecar.mutations import MutationResult
from sidecar.store.base import MutationRecord, PendingMutations, PendingRecord, StoreReader
from sidecar.store.sqlite_files import ERRORS as SQLITE_ERRORS


def origin_of(store: StoreReader) -> str:
    """The database the store follows, as pending records name it."""
    st = store.state()
    return f"{st.system_id}/{st.database}/{st.lineage}"


async def current_xid(conn: psycopg.AsyncConnection) -> int:
    """The open transaction's 64-bit id (assigned now if it had none)."""
    cur = await conn.execute("SELECT pg_current_xact_id()::text")
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def record(
    pending: PendingMutations,
    store: StoreReader,
    subject: str,
    applied: Sequence[MutationResult],
    xid: int,
) -> None:
    """Record `applied` as pending in transaction `xid`, durably, before its COMMIT; a
    store that cannot take it refuses the push (503: the transaction is rolled back)."""
    origin = origin_of(store)
    records = [PendingRecord(subject, r.id, xid, r.rev, origin) for r in applied]
    try:
        await asyncio.to_thread(pending.record, records)
    except SQLITE_ERRORS as exc:
        raise Unavailable(
            f"cannot record the mutation ids ({exc}); nothing was applied — retry",
            retry_after=2,
        ) from None


def _lookup(
    pending: PendingMutations,
    store: StoreReader,
    subject: str,
    ids: Sequence[str],
    read_store: bool,
) -> tuple[dict[str, PendingRecord], dict[str, MutationRecord | None] | None]:
    """The pending records of `ids`, and (`read_store`) the store's records of the others."""
    records = pending.lookup(subject, list(ids))
    if not read_store:
        return records, None
    stored = store.mutations(subject, [i for i in ids if i not in records])
    return records, {i: stored.get(i) for i in ids if i not in records}


class CaptureProgress(Protocol):
    async def wait_for_lsn(self, lsn: int, timeout: float) -> bool: ...


CAPTURE_WAIT = 5.0  # seconds to wait for capture to pass `covered_from`


async def applied_before(
    conn: psycopg.AsyncConnection,
    pending: PendingMutations,
    store: StoreReader,
    capture: CaptureProgress,
    subject: str,
    ids: Sequence[str],
    lsn_now: int,
) -> dict[str, MutationResult]:
    """The subject's ids among `ids` already applied, as `duplicate` results. Call with
    the ids' advisory locks held."""
    found: dict[str, MutationResult] = {}
    covered = pending.covered_from()
    since = lsn_now if covered is None else covered
    # Capture has almost always passed `since`: then the store is read with the pending
    # ids, in one trip to a worker thread (for the ids without a pending record).
    early = await capture.wait_for_lsn(since, 0)
    records, stored = await asyncio.to_thread(_lookup, pending, store, subject, ids, early)
    origin = origin_of(store)
    trusted = {i: r for i, r in records.items() if r.origin == origin}
    verdicts: dict[str, str | None] = {}
    if trusted:
        # a transaction id this server has not reached (a record of another server) is
        # not asked about: pg_xact_status would raise
        cur = await conn.execute(
            "SELECT i, CASE WHEN x::xid8 < pg_snapshot_xmax(pg_current_snapshot()) "
            "THEN pg_xact_status(x::xid8) ELSE 'future' END "
            "FROM unnest(%s::text[], %s::text[]) AS t(i, x)",
            (list(trusted), [str(r.xid) for r in trusted.values()]),
        )
        verdicts = {row[0]: row[1] for row in await cur.fetchall()}
    gone = [i for i in records if i not in trusted]
    for i, status in verdicts.items():
        if status == "committed":
            found[i] = MutationResult(i, "duplicate", rev=trusted[i].rev)
        elif status in ("aborted", "future"):
            gone.append(i)
        elif status == "in progress":  # cannot hold the lock and be in progress; be safe
            raise Unavailable("an earlier attempt of this mutation is still running", retry_after=1)
    if gone:
        await asyncio.to_thread(pending.forget, subject, gone)
    rest = [i for i in ids if i not in found and i not in gone]
    if rest:
        if stored is None:
            if not await capture.wait_for_lsn(since, CAPTURE_WAIT):
                raise Unavailable(
                    "capture is behind the database; cannot tell yet whether these "
                    "mutations were already applied — retry",
                    retry_after=2,
                )
            stored = dict(await asyncio.to_thread(store.mutations, subject, rest))
        for i in rest:
            rec = stored.get(i)
            if rec is not None:
                outcome = orjson.loads(rec.outcome)
                found[i] = MutationResult(i, "duplicate", rev=outcome.get("rev"))
    return found
