"""Reconcile, don't rebuild: bring the store to a consistent snapshot in the same epoch.

When the store may no longer match what the database and the rules say, the capture
runner takes a consistent snapshot of the tables concerned (a replication slot's exported
snapshot), compares it with what the store holds and commits only the differences as new
versions: a changed row is an upsert, a vanished row a tombstone, a row whose scopes
changed a move-out and a move-in (the store's netting does all three); membership rows
the same for their grants. Cursors stay valid; a client receives only what changed.
Pulls keep being served from the store's last committed state meanwhile.

- `refresh`: the slot is fine, but collections changed shape (a table re-created, a
  column added or retyped, a new key or read rule), were added or removed. A temporary
  slot's snapshot at LSN C is compared for those collections; the stream then skips their
  changes committed before C (as for a collection added to the config).
- `resync`: the store cannot continue from its slot (missing, invalidated, behind what it
  acknowledged, a new timeline, a store ahead of the database). A new slot's snapshot is
  compared for every collection, and streaming goes on from the new slot.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING

import orjson
import structlog

from sidecar.capture.bootstrap import Plan, stored_shapes
from sidecar.capture.snapshot import CopyProgress
from sidecar.capture.source import ReplicationStream, SystemInfo
from sidecar.collection import Collection
from sidecar.lsn import lsn_to_str
from sidecar.membership import membership_sources
from sidecar.views import next_rules

if TYPE_CHECKING:
    from sidecar.capture.runner import CaptureRunner

log = structlog.get_logger("sidecar.capture")

__all__ = ["record_rules", "refresh", "resync"]


def _sources(routes: Sequence[Collection]) -> dict[str, list[str]]:
    """The membership tables the routes read: name → lookup ids."""
    return {s.name: [lk.id for lk in s.lookups] for s in membership_sources(routes)}


def record_rules(runner: CaptureRunner) -> None:
    """In the open batch: the read rules' history, with the current rules (writer thread)."""
    stored = runner.store.state().rules
    current = {r.name: r.config.read.text for r in runner.routes}
    runner.store.record_rules(lambda since: next_rules(stored, current, since))


async def _compare(
    runner: CaptureRunner,
    snapshot: str | None,
    copy: Sequence[Collection],
    compare: Sequence[Collection],
) -> set[str]:
    """Copy `copy` (new to the store) and compare `compare` under the snapshot, in the
    store's open batch; returns the scopes (and grant keys) that changed."""
    sources = _sources([*copy, *compare])
    names = frozenset([*(r.name for r in compare), *sources])
    touched: set[str] = set()
    runner.status.rows_applied += await runner._copy(snapshot, [*copy, *compare], names, touched)
    finish = [r.name for r in compare]
    touched |= await runner._in_writer(runner.store.reconcile_finish, finish, sources)
    return touched


async def refresh(runner: CaptureRunner, start: Plan) -> None:
    """Copy added collections, reconcile changed ones, drop removed ones (see module)."""
    store, routes = runner.store, runner.routes
    copy = [r for r in routes if r.name in start.backfill]
    compare = [r for r in routes if r.name in start.reconcile]
    log.info(
        "reconciling the store with the database",
        added=[r.name for r in copy],
        changed=[r.name for r in compare],
        removed=list(start.drop),
    )
    state = store.state()
    kept = {
        c: lsn for c, lsn in orjson.loads(state.backfill or "{}").items() if c not in start.drop
    }
    touched: set[str] = set()
    temp = None
    try:
        if copy or compare:
            temp = ReplicationStream(
                runner.config.database.url,
                f"{runner.config.database.slot}_fill_{secrets.token_hex(3)}",
                runner.config.database.publication,
            )
            await temp.connect()
            info = await temp.create_slot(export_snapshot=True, temporary=True)
            runner.status.phase = "reconciling" if compare else "copying"
            runner.status.copy = CopyProgress()
            kept.update(dict.fromkeys([r.name for r in (*copy, *compare)], info.consistent_point))
            touched = await _compare(runner, info.snapshot_name, copy, compare)

        def commit() -> None:
            if start.drop:
                store.drop_collections(start.drop)
            store.set_layout(runner._shape_json(), orjson.dumps(kept).decode())
            record_rules(runner)
            store.commit()  # the stream's position stays where it was

        await runner._in_writer(commit)
    except BaseException:
        await runner._in_writer(store.rollback)
        raise
    finally:
        if temp is not None:
            await temp.close()  # a temporary slot goes with its connection
    runner.notifier.publish(touched)
    log.info("store reconciled", changed_scopes=len(touched))


async def resync(
    runner: CaptureRunner, source: ReplicationStream, reason: str, system: SystemInfo
) -> None:
    """A new slot, and every collection reconciled with its snapshot (see module)."""
    store = runner.store
    log.warning(
        "reconciling the store with a new replication slot (cursors stay valid)", reason=reason
    )
    runner.status.resyncs += 1
    lineage = await runner._drop_slot(system)
    info = await source.create_slot(export_snapshot=True)
    log.info(
        "created replication slot",
        slot=info.name,
        consistent_point=lsn_to_str(info.consistent_point),
    )
    runner.status.phase = "reconciling"
    runner.status.copy = CopyProgress()
    stored = stored_shapes(store.state().shape) or {}
    gone = [c for c in stored if c not in runner._shapes]
    try:
        touched = await _compare(runner, info.snapshot_name, [], runner.routes)

        def commit() -> None:
            store.drop_collections(gone)
            store.adopt(
                slot=runner.config.database.slot,
                system_id=system.system_id,
                database=system.dbname,
                shape=runner._shape_json(),
                lineage=lineage,
                lsn=info.consistent_point,
            )
            record_rules(runner)
            store.commit(info.consistent_point, snapshot_done=True)

        await runner._in_writer(commit)
    except BaseException:
        await runner._in_writer(store.rollback)
        await runner._drop_unused_slot()
        raise
    runner.notifier.publish(touched)
    log.info("store reconciled with the new slot", changed_scopes=len(touched))
