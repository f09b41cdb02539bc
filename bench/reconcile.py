"""Reconcile: a 1,000,000-row table, 1% of its rows changed while the sidecar was stopped
and its slot dropped, so the restart resyncs (`capture/reconcile.py` `resync`): a new
slot's snapshot compared with the whole store, only the differences committed.

Measured from start to streaming: rows compared per second and the process's peak
resident set (VmHWM, reset before each phase through /proc/self/clear_refs). Reference:
the same table's full initial copy in the same run (first phase), for scale.
Target: ≥ 150,000 rows compared/s.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import psycopg

from bench.harness import ITEMS_COLLECTION, Timer, config, make_items, postgres, rows_main
from sidecar.service import Service

MIB = 1 << 20


def reset_peak_rss() -> None:
    """Start the process's VmHWM over from its current resident set (Linux)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


async def run(rows: int, changed_share: float = 0.01) -> dict[str, float]:
    every = max(1, round(1 / changed_share))
    with postgres() as pg, tempfile.TemporaryDirectory() as tmp:
        dsn = pg.dsn("bench")
        make_items(dsn, rows)
        cfg = config(pg, Path(tmp) / "store.db", ITEMS_COLLECTION)
        reset_peak_rss()
        with Timer() as copy:
            service = await Service.start(cfg)
            await service.capture.wait_ready(600)
        copy_peak = peak_rss()
        copied = service.capture.status.copy.rows
        await service.close()
        assert copied == rows, f"copied {copied} of {rows}"

        with psycopg.connect(dsn, autocommit=True) as conn:
            cur = conn.execute("UPDATE items SET val = val + 1 WHERE id %% %s = 0", (every,))
            changed = cur.rowcount
            conn.execute("SELECT pg_drop_replication_slot('bench')")
            conn.execute("CHECKPOINT")

        reset_peak_rss()
        with Timer() as ours:
            service = await Service.start(cfg)
            before = service.store.state().version
            await service.capture.wait_ready(600)
        peak = peak_rss()
        status = service.capture.status
        compared, resyncs = status.copy.rows, status.resyncs
        versions = service.store.state().version - before
        await service.close()
        assert resyncs == 1, f"expected one resync, got {resyncs}"
        assert compared == rows, f"compared {compared} of {rows}"
        assert versions == changed, f"{versions} new versions for {changed} changed rows"

    rate, copy_rate = rows / ours.seconds, rows / copy.seconds
    print(
        f"reconcile: {rows:,} rows compared ({changed:,} changed) in {ours.seconds:.2f}s = "
        f"{rate:,.0f} rows/s, peak RSS {peak / MIB:,.0f} MiB; initial copy: {copy.seconds:.2f}s"
        f" = {copy_rate:,.0f} rows/s, peak RSS {copy_peak / MIB:,.0f} MiB; "
        f"ratio {rate / copy_rate:.2f}x",
        flush=True,
    )
    return {
        "rows": rows,
        "changed": changed,
        "seconds": ours.seconds,
        "rows_per_s": rate,
        "peak_rss": peak,
        "ref_rows_per_s": copy_rate,
        "ref_peak_rss": copy_peak,
        "ratio": rate / copy_rate,
    }


def main() -> None:
    rows_main(run, __doc__, 1_000_000)


if __name__ == "__main__":
    main()
