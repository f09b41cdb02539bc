"""The pending mutation ids (`PendingMutations`) over every implementation: what the push
path records before COMMIT must be there after a crash, per subject, until forgotten or
pruned."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from sidecar.store.base import PendingMutations, PendingRecord
from tests.support.stores import PENDING, Place


@pytest.fixture
def opener(engine: str, place: Callable[[str], Place]) -> Callable[[], PendingMutations]:
    """Opens the test's pending ids (again, as after a restart), of each engine."""
    return lambda: PENDING[engine](place(""))


@pytest.fixture
def pending(opener: Callable[[], PendingMutations]) -> Iterator[PendingMutations]:
    p = opener()
    yield p
    p.close()


def rec(subject: str, mid: str, xid: int = 100, rev: str | None = "r") -> PendingRecord:
    return PendingRecord(subject, mid, xid, rev, "sys/db/lineage")


def test_records_are_per_subject_and_survive_reopening(opener) -> None:
    first = opener()
    first.record([rec("u1", "m1", 10, "a"), rec("u1", "m2", 10, None), rec("u2", "m1", 11, "b")])
    first.close()  # as a crash would leave it: each record() is its own committed txn
    again = opener()
    try:
        assert again.lookup("u1", ["m1", "m2", "m3"]) == {
            "m1": rec("u1", "m1", 10, "a"),
            "m2": rec("u1", "m2", 10, None),
        }
        assert again.lookup("u2", ["m1"]) == {"m1": rec("u2", "m1", 11, "b")}
        assert again.lookup("u3", ["m1"]) == {}
        assert again.lookup("u1", []) == {}
    finally:
        again.close()


def test_a_new_attempt_replaces_the_record(pending: PendingMutations) -> None:
    pending.record([rec("u1", "m1", 10)])
    pending.record([rec("u1", "m1", 12, "new")])
    assert pending.lookup("u1", ["m1"])["m1"] == rec("u1", "m1", 12, "new")


def test_forget_drops_only_the_subjects_ids(pending: PendingMutations) -> None:
    pending.record([rec("u1", "m1"), rec("u2", "m1")])
    pending.forget("u1", ["m1", "unknown"])
    assert pending.lookup("u1", ["m1"]) == {}
    assert set(pending.lookup("u2", ["m1"])) == {"m1"}


def test_prune_drops_captured_and_old_records(pending: PendingMutations) -> None:
    import time

    pending.record([rec("u1", "captured"), rec("u1", "waiting")])
    dropped = pending.prune(lambda s, i: i == "captured", older_than=time.time() - 60)
    assert dropped == 1
    assert set(pending.lookup("u1", ["captured", "waiting"])) == {"waiting"}
    assert pending.prune(lambda s, i: False, older_than=time.time() + 1) == 1
    assert pending.lookup("u1", ["waiting"]) == {}


def test_covered_from_is_set_once_and_survives_reopening(opener) -> None:
    first = opener()
    assert first.covered_from() is None
    first.cover_from(1000)
    first.cover_from(2000)  # the first position stays
    first.close()
    again = opener()
    try:
        assert again.covered_from() == 1000
    finally:
        again.close()
