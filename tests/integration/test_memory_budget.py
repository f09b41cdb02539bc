"""Memory bounded by bytes, not rows (`limits.memory`): the initial copy and the stream
of a table of wide rows stay within the budget, measured as the sidecar process's peak
resident set (`VmHWM` of /proc/<pid>/status) while it runs as a real process.

The bounds are generous (the interpreter, SQLite's page cache and the libraries count
too) but far below what buffering by row count takes: on a build that batches 10,000 rows
at a time, the 2,000 rows of 200 KB below are one 400 MB batch, held several times over.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import psycopg
import pytest

from tests.fixtures.service import run_sql, token
from tests.support.process import SidecarRun

pytestmark = [pytest.mark.pg, pytest.mark.slow]

MIB = 1 << 20
BUDGET = 64 * MIB
# Peak resident set allowed: the process's own size at rest plus a few times the budget.
PEAK_LIMIT = 400 * MIB
# What the stream's big transaction may add to the peak the process had before it.
STREAM_GROWTH_LIMIT = 3 * BUDGET

SCHEMA = "CREATE TABLE wide (id int PRIMARY KEY, owner_id int NOT NULL, body text NOT NULL)"
WIDE = """
  wide:
    table: wide
    read: "owner_id = :sub"
"""
EXTRA = "limits: {memory: 64MiB}"


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def peak_rss(run: SidecarRun) -> int:
    """The process's peak resident set so far, in bytes."""
    assert run.proc is not None
    return _status_kib(run.proc.pid, "VmHWM") * 1024


def _insert_wide(dsn: str, first: int, count: int, width: int) -> None:
    """`count` rows of `width` bytes of text each, in one transaction (stored compressed,
    sent in full by COPY and by logical decoding)."""
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO wide SELECT g, g %% 10, "
            "left(repeat(md5(g::text), %s::int / 32 + 1), %s::int) "
            "FROM generate_series(%s::int, %s::int) g",
            (width, width, first, first + count - 1),
        )


async def _count(run: SidecarRun, owner: int) -> int:
    """Rows a client of `owner` gets by pulling to the end."""
    n, cursor = 0, None
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token(owner)}"}) as http:
        while True:
            params = {"limit": "1000"}
            if cursor:
                params["cursor"] = cursor
            async with http.get(f"{run.base}/v1/pull", params=params) as r:
                assert r.status == 200, await r.text()
                page = await r.json()
            n += sum(1 for c in page["changes"] if c["op"] == "upsert")
            cursor = page["cursor"]
            if not page["has_more"]:
                return n


async def _until(check, timeout: float = 120) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "not reached within the bound"
        await asyncio.sleep(0.5)


async def test_initial_copy_of_wide_rows_stays_within_the_budget(pg_dsn, pg_url, tmp_path):
    run_sql(pg_dsn, SCHEMA)
    _insert_wide(pg_dsn, 1, 2000, 200_000)  # 400 MB as COPY sends it
    run = await SidecarRun(tmp_path, pg_url, WIDE, extra=EXTRA).start(timeout=300)
    try:
        peak = peak_rss(run)
        print(f"copy of 2,000 rows of 200 KB: peak RSS {peak / MIB:.0f} MiB")
        assert await _count(run, 3) == 200
        assert peak < PEAK_LIMIT, f"peak RSS {peak / MIB:.0f} MiB copying 400 MB of wide rows"
    finally:
        run.stop()


async def test_one_transaction_of_wide_rows_streams_within_the_budget(pg_dsn, pg_url, tmp_path):
    run_sql(pg_dsn, SCHEMA)
    _insert_wide(pg_dsn, 1, 10, 1000)
    run = await SidecarRun(tmp_path, pg_url, WIDE, extra=EXTRA).start(timeout=120)
    try:
        before = peak_rss(run)
        _insert_wide(pg_dsn, 100, 1000, 96_000)  # one transaction of 96 MB as decoded

        async def arrived() -> bool:
            return await _count(run, 5) == 1 + 100

        await _until(arrived, 300)
        peak = peak_rss(run)
        grew = peak - before
        print(
            "one transaction of 1,000 rows of 96 KB: "
            f"peak RSS {before / MIB:.0f} → {peak / MIB:.0f} MiB"
        )
        assert peak < PEAK_LIMIT, f"peak RSS {peak / MIB:.0f} MiB"
        assert grew < STREAM_GROWTH_LIMIT, (
            f"peak RSS grew by {grew / MIB:.0f} MiB ({before / MIB:.0f} → {peak / MIB:.0f} MiB) "
            "streaming one transaction of 1,000 rows of 96 KB"
        )
    finally:
        run.stop()
