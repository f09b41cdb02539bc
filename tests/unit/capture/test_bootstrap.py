"""Unit tests of the capture start-up decision: rebuild (and why), or continue and backfill."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from sidecar.capture.bootstrap import Plan, Target, backfilled, plan, stored_shapes
from sidecar.capture.slots import SlotState
from sidecar.store.base import StoreState

SHAPES = {"todos": "aaaa", "lists": "bbbb"}
TARGET = Target(slot="sidecar", system_id="7300", dbname="app", shapes=SHAPES)


def store(**changes: object) -> StoreState:
    """A store that agrees with TARGET and SLOT, at LSN 0/1000."""
    state = StoreState(
        epoch="3fa9c2d1",
        lsn=0x1000,
        version=42,
        snapshot_done=True,
        purged_version=0,
        slot="sidecar",
        system_id="7300",
        database="app",
        shape=orjson.dumps(SHAPES).decode(),
        acked_lsn=0x1000,
    )
    return dataclasses.replace(state, **changes)  # type: ignore[arg-type]


SLOT = SlotState(
    plugin="pgoutput",
    database="app",
    active=False,
    active_pid=None,
    wal_status="reserved",
    restart_lsn="0/F00",
    confirmed_flush_lsn="0/1000",
    retained_bytes=256,
    lag_bytes=0,
)


def slot(**changes: object) -> SlotState:
    return dataclasses.replace(SLOT, **changes)  # type: ignore[arg-type]


def test_a_store_that_agrees_with_the_slot_continues() -> None:
    assert plan(store(), SLOT, TARGET) == Plan(None, ())


def test_no_completed_initial_copy() -> None:
    got = plan(store(snapshot_done=False), None, TARGET)
    assert got == Plan("the store has no completed initial copy")
    # the first reason wins even when the slot is missing too
    assert plan(store(snapshot_done=False), SLOT, TARGET).rebuild == got.rebuild


@pytest.mark.parametrize(
    "changes", [{"slot": "other"}, {"system_id": "9999"}, {"database": "other"}, {"slot": None}]
)
def test_store_made_for_another_database_or_slot(changes: dict[str, object]) -> None:
    got = plan(store(**changes), SLOT, TARGET)
    assert got.rebuild is None  # reconciled with a new slot, not rebuilt
    assert got.resync == "the store was made for another database or slot"
    assert got.backfill == ()


@pytest.mark.parametrize("shape", [None, "", "not json", "[1, 2]", '"text"'])
def test_store_without_recorded_shapes(shape: str | None) -> None:
    assert plan(store(shape=shape), SLOT, TARGET).resync == (
        "the store does not record its collections' shapes (an older format)"
    )


def test_changed_or_removed_collections_are_reconciled_or_dropped_in_order() -> None:
    stored = {"todos": "old!", "lists": "bbbb", "gone": "cccc"}
    got = plan(store(shape=orjson.dumps(stored).decode()), SLOT, TARGET)
    assert (got.rebuild, got.resync) == (None, None)
    assert (got.reconcile, got.drop, got.backfill) == (("todos",), ("gone",), ())


def test_a_new_timeline_or_a_store_ahead_of_the_server_resyncs() -> None:
    target = dataclasses.replace(TARGET, timeline=2, position=0x5000)
    assert plan(store(lineage="1:16384"), SLOT, target).resync == (
        "the database is on timeline 2, the store was made on 1 (a failover or a restore)"
    )
    assert plan(store(lineage="2:16384"), SLOT, target).resync is None
    ahead = plan(store(lineage="2:16384", lsn=0x6000), SLOT, target).resync
    assert ahead is not None and ahead.startswith("the store (0/6000) is ahead of the database")


def test_missing_slot() -> None:
    assert plan(store(), None, TARGET).resync == "replication slot 'sidecar' is missing"


def test_slot_confirmed_past_the_store() -> None:
    got = plan(store(lsn=0x800, acked_lsn=0x900), slot(confirmed_flush_lsn="0/1000"), TARGET)
    assert got.resync == (
        "replication slot 'sidecar' has confirmed 0/1000, past the store's 0/900: "
        "the store is older than what it acknowledged (restored from a backup?), "
        "and the changes in between are gone from the slot"
    )


def test_slot_confirmed_up_to_the_acknowledged_position_is_fine() -> None:
    # idle acknowledgements move the slot past the last commit, not past acked_lsn
    assert plan(store(lsn=0x800, acked_lsn=0x1000), SLOT, TARGET).resync is None
    # a slot with no confirmed position yet reads as 0
    assert plan(store(), slot(confirmed_flush_lsn=None), TARGET).resync is None


def test_lost_slot() -> None:
    assert plan(store(), slot(wal_status="lost"), TARGET).resync == (
        "replication slot 'sidecar' was invalidated (WAL removed)"
    )


@pytest.mark.parametrize("changes", [{"plugin": "test_decoding"}, {"database": "other"}])
def test_slot_of_something_else(changes: dict[str, object]) -> None:
    assert plan(store(), slot(**changes), TARGET).resync == (
        "replication slot 'sidecar' belongs to something else"
    )


def test_collections_added_to_the_config_are_backfilled_in_config_order() -> None:
    target = dataclasses.replace(TARGET, shapes={"new1": "1111", **SHAPES, "new2": "2222"})
    assert plan(store(), SLOT, target) == Plan(None, backfill=("new1", "new2"))


def test_no_backfill_when_resyncing() -> None:
    target = dataclasses.replace(TARGET, shapes={**SHAPES, "new": "1111"})
    assert plan(store(), None, target).backfill == ()


def test_backfilled_keeps_copies_ahead_of_the_store() -> None:
    state = store(
        lsn=0x1000, backfill=orjson.dumps({"a": 0x800, "b": 0x1000, "c": 0x1800}).decode()
    )
    assert backfilled(state) == {"c": 0x1800}
    assert backfilled(store(backfill=None)) == {}


def test_stored_shapes() -> None:
    assert stored_shapes('{"todos": "aaaa"}') == {"todos": "aaaa"}
    assert stored_shapes(None) is None
    assert stored_shapes("") is None
    assert stored_shapes("{") is None
    assert stored_shapes("[]") is None
