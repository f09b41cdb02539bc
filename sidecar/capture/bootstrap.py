"""Does the store agree with the slot? The capture runner's start-up decision, as pure code.

At every session start the runner reads the store's state and the slot's row, then asks
:func:`plan`: rebuild the store from a new slot (and why), or continue from the store's
LSN, first copying the collections added to the config since the store was made. After
that, :func:`backfilled` says which collections' copies are newer than the store's LSN
(their older changes on the stream are in the copy already). No I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from sidecar.capture.slots import SlotState
from sidecar.lsn import lsn_to_str
from sidecar.store.base import StoreState

__all__ = ["Plan", "Target", "backfilled", "plan", "stored_shapes"]


@dataclass(frozen=True, slots=True)
class Target:
    """What the running sidecar streams from: its configured slot, the server's system
    id and database (``IDENTIFY_SYSTEM``), and each collection's current shape."""

    slot: str
    system_id: str
    dbname: str
    shapes: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Plan:
    """``rebuild``: why the store must be made again (None: it continues from the slot);
    ``backfill``: the collections to copy first when it continues (in config order)."""

    rebuild: str | None
    backfill: tuple[str, ...] = ()


def stored_shapes(text: str | None) -> dict[str, str] | None:
    """The per-collection shapes a store records (None: none, or an older format)."""
    if not text:
        return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def rebuild_reason(state: StoreState, slot: SlotState | None, target: Target) -> str | None:
    """Why the store cannot continue from the slot (None: it can)."""
    if not state.snapshot_done:
        return "the store has no completed initial copy"
    if (state.slot, state.system_id, state.database) != (
        target.slot,
        target.system_id,
        target.dbname,
    ):
        return "the store was made for another database or slot"
    stored = stored_shapes(state.shape)
    if stored is None:
        return "the store does not record its collections' shapes (an older format)"
    current = target.shapes
    changed = sorted(c for c, h in stored.items() if current.get(c) != h)
    if changed:
        return (
            f"collection(s) {', '.join(changed) or '(all)'} changed (table, key, columns, "
            "types or read rule) or were removed since the store was made"
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
    """Rebuild (and why), or continue and copy the collections the store does not hold."""
    reason = rebuild_reason(state, slot, target)
    if reason is not None:
        return Plan(reason)
    stored = stored_shapes(state.shape) or {}
    return Plan(None, tuple(c for c in target.shapes if c not in stored))


def backfilled(state: StoreState) -> dict[str, int]:
    """Collections copied later than the rest whose copy is ahead of the store's LSN, and
    the LSN of the snapshot each was copied at."""
    return {c: lsn for c, lsn in orjson.loads(state.backfill or "{}").items() if lsn > state.lsn}
