"""A second instance never harms the first (issue 16, item 4).

Two `sidecar run` processes on the same database and slot, each with its own SQLite store:
the second one refuses and waits (`/readyz`: `503 slot_in_use`, a log line) — also in the
moments the slot is not streamed because the first one's replication connection was cut —
while the first keeps capturing and its clients' cursors stay valid (no 410). When the
first one stops, the second takes the slot over (it was free: nobody captures).
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import psycopg
import pytest

from tests.fixtures.service import auth, run_sql
from tests.support.process import SidecarRun

pytestmark = [pytest.mark.pg, pytest.mark.slow]

ITEMS = """
  items:
    table: items
    read: "true"
"""


async def _pull_all(http: aiohttp.ClientSession, base: str, cursor: str | None) -> tuple[list, str]:
    changes: list = []
    while True:
        params = {"cursor": cursor} if cursor else {}
        async with http.get(f"{base}/v1/pull", params=params, headers=auth(1)) as r:
            body = await r.json(content_type=None)
            assert r.status == 200, body  # never a 410 for the first one's clients
        changes.extend(body["changes"])
        cursor = body["cursor"]
        if not body["has_more"]:
            return changes, cursor


async def _readyz(http: aiohttp.ClientSession, base: str) -> tuple[int, dict]:
    try:
        async with http.get(f"{base}/readyz") as r:
            return r.status, await r.json(content_type=None)
    except aiohttp.ClientError:
        return 0, {}


async def _until(pred, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await pred()
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def _cut_replication(dsn: str) -> bool:
    """End the backend streaming the slot (the first one reconnects): True if there was one."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
            "WHERE slot_name = 'run_test' AND active"
        ).fetchone()
    return row is not None


async def test_a_second_instance_on_the_same_slot_waits_and_never_harms_the_first(
    pg_dsn, pg_url, tmp_path
):
    run_sql(
        pg_dsn,
        "CREATE TABLE items (id int PRIMARY KEY, val text)",
        "INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 50) g",
    )
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = await SidecarRun(tmp_path / "a", pg_url, ITEMS).start()
    second = SidecarRun(tmp_path / "b", pg_url, ITEMS)
    try:
        async with aiohttp.ClientSession() as http:
            changes, cursor = await _pull_all(http, first.base, None)
            assert len(changes) == 50
            await second.start(wait_ready=False)

            async def waiting() -> dict | None:
                status, body = await _readyz(http, second.base)
                return body if status == 503 and body.get("code") == "slot_in_use" else None

            body = await _until(waiting, 60, "the second instance to say slot_in_use")
            detail = body["detail"]
            assert "run_test" in detail and "PostgreSQL backend" in detail, body
            assert body["progress"]["phase"] == "slot_in_use", body
            async with http.get(f"{second.base}/v1/pull", headers=auth(1)) as r:
                refused = await r.json(content_type=None)
            assert r.status == 503 and refused["code"] == "unavailable", refused
            assert "another sidecar" in refused["detail"], refused

            # Each cut leaves the slot unstreamed while the first one reconnects: the
            # second one (retrying meanwhile) must not take it.
            for round_ in range(3):
                assert _cut_replication(pg_dsn)
                key = 100 + round_
                run_sql(pg_dsn, f"INSERT INTO items VALUES ({key}, 'new')")

                async def arrived(key: int = key) -> list | None:
                    nonlocal cursor
                    got, cursor = await _pull_all(http, first.base, cursor)
                    return [c for c in got if c["key"] == {"id": key}] or None

                await _until(arrived, 60, f"row {key} on the first instance")
                assert await waiting(), await _readyz(http, second.base)

            status, _ = await _readyz(http, first.base)
            assert status == 200

            # The first one stops: the slot is free, the second one takes it.
            first.stop()

            async def ready() -> bool:
                return (await _readyz(http, second.base))[0] == 200

            await _until(ready, 90, "the second instance to capture once the first stopped")
            rows, _ = await _pull_all(http, second.base, None)
            assert len(rows) == 53
    finally:
        second.stop()
        first.stop()
    out = second.output()
    assert "replication slot in use; waiting" in out, out[-3000:]
    # it dropped the slot only after the first one had stopped (nobody streamed it)
    assert "rebuilding" not in first.output()
