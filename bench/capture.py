"""Capture throughput: a 500,000-row UPDATE, commit → applied in the store.

Reference: `pg_recvlogical` (pgoutput to /dev/null) over the same WAL range, from a slot
created at the same point. Both start after the UPDATE committed, so both decode the same
WAL from the slot; they run one after the other so they do not share the two cores.
Target: ≥ 1.0× pg_recvlogical and ≥ 100,000 row changes/s.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import psycopg

from bench.harness import (
    ITEMS_COLLECTION,
    Timer,
    config,
    current_lsn,
    make_items,
    postgres,
    report,
    rows_main,
)
from sidecar.changes import str_to_lsn
from sidecar.service import Service


async def run(rows: int) -> dict[str, float]:
    with postgres() as pg, tempfile.TemporaryDirectory() as tmp:
        dsn = pg.dsn("bench")
        make_items(dsn, rows)
        cfg = config(pg, Path(tmp) / "store.db", ITEMS_COLLECTION)
        service = await Service.start(cfg)
        await service.capture.wait_ready(600)
        await service.close()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_create_logical_replication_slot('ref', 'pgoutput')")
            conn.execute("UPDATE items SET val = val + 1, updated_at = now()")
        target = current_lsn(pg)

        with Timer() as ours:
            service = await Service.start(cfg)
            ok = await service.capture.wait_for_lsn(str_to_lsn(target), 600)
        applied = service.capture.status.rows_applied
        st = service.capture.status
        print(f"batches {st.batches}, writer {st.writer_seconds:.2f}s", flush=True)
        await service.close()
        assert ok, "capture did not reach the target LSN"
        assert applied >= rows, f"only {applied} rows applied"

        with Timer() as ref:
            subprocess.run(
                [
                    str(pg.bindir / "pg_recvlogical"),
                    "-d",
                    pg.dsn("bench"),
                    "-S",
                    "ref",
                    "--start",
                    "-E",
                    target,
                    "-o",
                    "proto_version=1",
                    "-o",
                    "publication_names=bench",
                    "-f",
                    "/dev/null",
                    "--no-loop",
                ],
                check=True,
            )
        return report("capture", rows, ours.seconds, "pg_recvlogical", ref.seconds)


def main() -> None:
    rows_main(run, __doc__, 500_000)


if __name__ == "__main__":
    main()
