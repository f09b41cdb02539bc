"""Capture throughput: a 500,000-row UPDATE, commit → applied in the store.

Reference: `pg_recvlogical` (pgoutput to /dev/null) over the same WAL range, from a slot
created at the same point. Both start after the UPDATE committed and a CHECKPOINT (so the
UPDATE's write-back does not land on whichever runs first), so both decode the same WAL
from the slot; they run one after the other so they do not share the two cores. The CPU
time our process used is printed too: on two cores, the walsender and the sidecar's
threads share them, so CPU per row is what bounds the rate.
Target: ≥ 1.0× pg_recvlogical and ≥ 100,000 row changes/s.
"""

from __future__ import annotations

import os
import resource
import subprocess
import tempfile
import time
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
            conn.execute("CHECKPOINT")
        target = current_lsn(pg)
        os.sync()

        cpu = time.process_time()
        with Timer() as ours:
            service = await Service.start(cfg)
            ok = await service.capture.wait_for_lsn(str_to_lsn(target), 600)
        cpu = time.process_time() - cpu
        applied = service.capture.status.rows_applied
        st = service.capture.status
        print(
            f"batches {st.batches}; sidecar CPU {cpu:.2f}s = {cpu / rows * 1e6:.1f} us/row",
            flush=True,
        )
        await service.close()
        assert ok, "capture did not reach the target LSN"
        assert applied >= rows, f"only {applied} rows applied"

        children = resource.getrusage(resource.RUSAGE_CHILDREN)
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
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        ref_cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
        print(f"pg_recvlogical CPU {ref_cpu:.2f}s = {ref_cpu / rows * 1e6:.1f} us/row", flush=True)
        return report("capture", rows, ours.seconds, "pg_recvlogical", ref.seconds)


def main() -> None:
    rows_main(run, __doc__, 500_000)


if __name__ == "__main__":
    main()
