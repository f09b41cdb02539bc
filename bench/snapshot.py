"""Initial copy: rows/s from process start to ready, for a 500,000-row table.

Reference: `COPY … TO STDOUT` of the same rows, read by psycopg to nowhere, in the same
run. Target: ≥ 0.05× COPY and ≥ 150,000 rows/s.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import psycopg

from bench.harness import ITEMS_COLLECTION, Timer, config, make_items, postgres, report, rows_main
from sidecar.service import Service


async def run(rows: int) -> dict[str, float]:
    with postgres() as pg, tempfile.TemporaryDirectory() as tmp:
        dsn = pg.dsn("bench")
        make_items(dsn, rows)
        with Timer() as ref, psycopg.connect(dsn) as conn:
            n = 0
            with conn.cursor().copy("COPY items TO STDOUT") as copy:
                for block in copy:
                    n += len(block)
        cfg = config(pg, Path(tmp) / "store.db", ITEMS_COLLECTION)
        with Timer() as ours:
            service = await Service.start(cfg)
            await service.capture.wait_ready(600)
        copied = service.capture.status.copy.rows
        await service.close()
        assert copied == rows, f"copied {copied} of {rows}"
        return report("initial copy", rows, ours.seconds, "COPY TO STDOUT", ref.seconds)


def main() -> None:
    rows_main(run, __doc__, 500_000)


if __name__ == "__main__":
    main()
