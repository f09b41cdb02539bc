"""Does the store agree with the slot? The capture runner's start-up decision, as pure code.

At every session start the runner reads the store's state and the slot's row, then asks
:func:`plan`:

- **rebuild** (a new epoch: clients resync) only when the store holds no completed copy;
- **resync**: the store cannot continue from the slot (missing, invalidated, behind what
  it acknowledged, another database, a new timeline, a store ahead of the server): a new
  slot's snapshot is *reconciled* with the store — only the differences become new
  versions, in the same epoch, and streaming goes on from the new slot;
- otherwise continue from the store's LSN, first reconciling the collections whose shape
  changed (table re-created, columns, types, key, read rule), dropping those removed and
  copying those added (all under one temporary slot's snapshot).

After that, :func:`backfilled` says which collections' copies are newer than the store's
LSN (their older changes on the stream are in the copy already). No I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from sidecar.capture.slots import SlotState
from sidecar.lsn import lsn_to_str
from sidecar.store.base import StoreState

__all__ = ["Plan", "Target", "backfilled", "plan", "resync_reason", "stored_shapes"]


@dataclass(frozen=True, slots=True)
class Target:
    """What the running sidecar streams from: its configured slot, the server's system
    id and database (``IDENTIFY_SYSTEM``), and each collection's current shape."""

    slot: str
    system_id: str
    dbname: str
    shapes: Mapping[str, str]
    timeline: int | None = None  # the server's (IDENTIFY_SYSTEM), None: not known
    position: int | None = None  # the server's current WAL position, None: not known


@dataclass(frozen=True, slots=True)
class Plan:
    """``rebuild``: why the store must be made again (None: it need not); ``resync``: why
    it must be reconciled with a new slot; else it continues from the slot after copying
    ``backfill``, reconciling ``reconcile`` and dropping ``drop`` (config order)."""

    rebuild: str | None
    backfill: tuple[str, ...] = ()
    resync: str | None = None
    reconcile: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()


def stored_shapes(text: str | None) -> dict[str, str] | None:
    """The per-collection shapes a store records (None: none, or an older format)."""
    if not text:
        return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def rebuild_reason(state: StoreState) -> str | None:
    """Why the store must be made from scratch (None: it holds a completed copy)."""
    if not state.snapshot_done:
        return "the store has no completed initial copy"
    return None


def resync_reason(state: StoreState, slot: SlotState | None, target: Target) -> str | None:
    """Why the store cannot continue from the slot (None: it can)."""
    if (state.slot, state.system_id, state.database) != (
        target.slot,
        target.system_id,
        target.dbname,
    ):
        return "the store was made for another database or slot"
    if stored_shapes(state.shape) is None:
        return "the store does not record its collections' shapes (an older format)"
    timeline = state.lineage.partition(":")[0]
    if target.timeline is not None and timeline and timeline != str(target.timeline):
        return (
            f"the database is on timeline {target.timeline}, the store was made on "
            f"{timeline} (a failover or a restore)"
        )
    if target.position is not None and state.lsn > target.position:
        return (
            f"the store ({lsn_to_str(state.lsn)}) is ahead of the database "
            f"({lsn_to_str(target.position)}): a failover to a standby that was behind, or "
            "a database restored from a backup"
        )
    if slot is None:
        return f"replication slot {target.slot!r} is missing"
    confirmed = slot.confirmed_flush
    if confirmed > max(state.lsn, state.acked_lsn):
        return (
            f"replication slot {target.slot!r} has confirmed "
            f"{slot.confirmed_flush_lsn}, past the store's "
            f"{lsn_to_str(max(state.lsn, state.acked_lsn))}: "
            "the store is older than what it acknowledged (restored from a backup?), "
            "and the changes in between are gone from the slot"
        )
    if slot.wal_status == "lost":
        return f"replication slot {target.slot!r} was invalidated (WAL removed)"
    if slot.plugin != "pgoutput" or slot.database != target.dbname:
        return f"replication slot {target.slot!r} belongs to something else"
    return None


def plan(state: StoreState, slot: SlotState | None, target: Target) -> Plan:
    """Rebuild, resync (and why), or continue: copy the collections the store does not
    hold, reconcile those whose shape changed, drop those no longer configured."""
    reason = rebuild_reason(state)
    if reason is not None:
        return Plan(reason)
    resync = resync_reason(state, slot, target)
    if resync is not None:
        return Plan(None, resync=resync)
    stored = stored_shapes(state.shape) or {}
    current = target.shapes
    return Plan(
        None,
        backfill=tuple(c for c in current if c not in stored),
        reconcile=tuple(c for c in current if c in stored and stored[c] != current[c]),
        drop=tuple(c for c in stored if c not in current),
    )


def backfilled(state: StoreState) -> dict[str, int]:
    """Collections copied later than the rest whose copy is ahead of the store's LSN, and
    the LSN of the snapshot each was copied at."""
    return {c: lsn for c, lsn in orjson.loads(state.backfill or "{}").items() if lsn > state.lsn}
