"""The reconnect backoff (pure) and capture's pause on store trouble (`wait_out`) over a
real SQLite store locked by another connection."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sidecar.capture.status import CaptureStatus
from sidecar.capture.weather import Backoff, wait_out
from sidecar.store.base import StoreUnavailable, StoreWriter
from sidecar.store.sqlite import SQLiteStore


def test_backoff_doubles_up_to_the_cap_while_nothing_works():
    b = Backoff(first=1.0, cap=8.0)
    assert [b.next_delay(float(t)) for t in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_backoff_starts_over_after_a_connection_that_committed():
    b = Backoff(first=1.0, cap=30.0, stable_after=10.0)
    for t in range(5):
        b.next_delay(float(t))  # a database that stays down a while: up to 16
    b.connected(100.0)
    b.worked()  # streamed and the store committed from it
    assert b.next_delay(101.0) == 1.0
    assert b.next_delay(102.0) == 2.0  # the next failures grow again


def test_backoff_starts_over_after_a_connection_that_stayed_up():
    b = Backoff(first=1.0, cap=30.0, stable_after=10.0)
    for t in range(5):
        b.next_delay(float(t))
    b.connected(100.0)
    assert b.next_delay(110.0) == 1.0  # idle, but up for stable_after


def test_backoff_keeps_growing_after_a_connection_that_did_not_work():
    b = Backoff(first=1.0, cap=30.0, stable_after=10.0)
    b.next_delay(0.0)
    b.connected(1.0)
    assert b.next_delay(2.0) == 2.0  # up one second, nothing committed
    assert b.next_delay(3.0) == 4.0  # a failed connect: never up


def test_three_restarts_each_after_a_commit_leave_the_first_delay():
    b = Backoff(first=1.0, cap=30.0)
    now = 0.0
    for _ in range(3):
        delays = [b.next_delay(now), b.next_delay(now + 1)]  # down: a refused connect too
        assert delays == [1.0, 2.0]
        b.connected(now + 3)
        b.worked()
        now += 5
    assert b.next_delay(now) == 1.0


async def test_wait_out_retries_until_the_store_takes_a_write(tmp_path: Path):
    store = SQLiteStore(tmp_path / "store.db")
    other = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another process's lock, in effect
    status = CaptureStatus(phase="streaming")
    attempts: list[float] = []

    async def on_writer(fn, st: StoreWriter) -> None:
        attempts.append(len(attempts))
        if len(attempts) == 3:
            other.execute("COMMIT")  # released before the third try
        fn(st)

    async def no_sleep(_: float) -> None:
        pass

    store._w.execute("PRAGMA busy_timeout = 50")  # fail fast here (5 s in the service)
    await wait_out(
        StoreUnavailable("locked", "database is locked"), status, store, on_writer, no_sleep
    )
    assert len(attempts) == 3
    assert status.store_errors == {"locked": 3}  # the first failure and two failed probes
    assert status.phase == "paused" and status.store_reason() == "store locked by another process"
    status.note_store_ok()
    assert status.store_reason() is None
    store.close()
    other.close()
