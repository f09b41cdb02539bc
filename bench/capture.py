"""Capture throughput: a 500,000-row UPDATE, commit → applied in the store.

Reference: `pg_recvlogical` (pgoutput to /dev/null) over the same WAL range, from a slot
created just before the UPDATE. Both start after the UPDATE committed and a CHECKPOINT (so
the UPDATE's write-back does not land on whichever runs first), so both decode the same
WAL from their slot; they run one after the other so they do not share the two cores.

The machine's speed drifts (other tenants), so the benchmark runs `--rounds` rounds (a
new UPDATE each), alternating which side goes first, and reports the medians. The CPU
time each side used is printed too: on two cores the walsender and the sidecar's threads
share them, so CPU per row is what bounds the rate: the sidecar's process, and the
server's (the walsender decoding for either side, and with `--store postgresql` the
store's backend writing the rows).

`--store postgresql` captures into a PostgreSQL store instead of the SQLite file: a
separate database (`sidecar_store_bench`) of the same server, the deployment the docs
describe for it. Target: SQLite ≥ 1.0× pg_recvlogical and ≥ 100,000 row changes/s;
PostgreSQL ≥ 0.5× pg_recvlogical.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from bench.harness import (
    ITEMS_COLLECTION,
    STORES,
    Timer,
    config,
    current_lsn,
    make_items,
    postgres,
    report,
    server_cpu,
    store_database,
)
from sidecar.config.model import Config
from sidecar.embedded import EmbeddedPostgres
from sidecar.lsn import str_to_lsn
from sidecar.service import Service


async def _ours(
    pg: EmbeddedPostgres, cfg: Config, target: str, rows: int
) -> tuple[float, float, float]:
    """Seconds from start to the store holding `target`, the CPU seconds the process
    used, and those the server used meanwhile."""
    cpu, server = time.process_time(), server_cpu(pg)
    with Timer() as ours:
        service = await Service.start(cfg)
        ok = await service.capture.wait_for_lsn(str_to_lsn(target), 600)
    cpu, server = time.process_time() - cpu, server_cpu(pg) - server
    applied = service.capture.status.rows_applied
    await service.close()
    assert ok, "capture did not reach the target LSN"
    assert applied >= rows, f"only {applied} rows applied"
    return ours.seconds, cpu, server


def _reference(pg: EmbeddedPostgres, slot: str, target: str) -> tuple[float, float, float]:
    """Seconds `pg_recvlogical` takes to stream the slot up to `target`, its CPU, and the
    server's (the walsender's)."""
    before, server = resource.getrusage(resource.RUSAGE_CHILDREN), server_cpu(pg)
    with Timer() as ref:
        subprocess.run(
            [
                str(pg.bindir / "pg_recvlogical"),
                "-d",
                pg.dsn("bench"),
                "-S",
                slot,
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
    after, server = resource.getrusage(resource.RUSAGE_CHILDREN), server_cpu(pg) - server
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return ref.seconds, cpu, server


def _us(seconds: float, rows: int) -> str:
    return f"{seconds / rows * 1e6:.1f}"


async def run(rows: int, rounds: int = 3, store: str = "sqlite") -> dict[str, float]:
    with postgres() as pg, tempfile.TemporaryDirectory() as tmp:
        dsn = pg.dsn("bench")
        make_items(dsn, rows)
        cfg = config(pg, store_database(pg, Path(tmp), store), ITEMS_COLLECTION)
        with Timer() as copy:
            service = await Service.start(cfg)
            await service.capture.wait_ready(600)
        await service.close()
        print(f"{store} store: initial copy of {rows:,} rows in {copy.seconds:.2f}s", flush=True)
        ours_s, ours_cpu, ref_s, ref_cpu, ours_srv, ref_srv = [], [], [], [], [], []
        for n in range(rounds):
            slot = f"ref{n}"
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
                conn.execute("UPDATE items SET val = val + 1, updated_at = now()")
                conn.execute("CHECKPOINT")
            target = current_lsn(pg)
            os.sync()
            if n % 2 == 0:
                seconds, cpu, srv = await _ours(pg, cfg, target, rows)
                ref_seconds, ref_used, ref_server = _reference(pg, slot, target)
            else:
                ref_seconds, ref_used, ref_server = _reference(pg, slot, target)
                seconds, cpu, srv = await _ours(pg, cfg, target, rows)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            ours_s.append(seconds)
            ours_cpu.append(cpu)
            ours_srv.append(srv)
            ref_s.append(ref_seconds)
            ref_cpu.append(ref_used)
            ref_srv.append(ref_server)
            print(
                f"round {n + 1}: sidecar {seconds:.2f}s (CPU {_us(cpu, rows)} us/row, "
                f"server {_us(srv, rows)}), pg_recvlogical {ref_seconds:.2f}s "
                f"(CPU {_us(ref_used, rows)} us/row, server {_us(ref_server, rows)}); "
                f"ratio {ref_seconds / seconds:.2f}x",
                flush=True,
            )
        median = statistics.median
        print(
            f"CPU per row (median): sidecar {_us(median(ours_cpu), rows)} us + server "
            f"{_us(median(ours_srv), rows)} us, pg_recvlogical {_us(median(ref_cpu), rows)} us "
            f"+ server {_us(median(ref_srv), rows)} us",
            flush=True,
        )
        return report(
            f"capture into the {store} store (median)",
            rows,
            median(ours_s),
            "pg_recvlogical",
            median(ref_s),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--store", choices=STORES, default="sqlite")
    args = parser.parse_args()
    asyncio.run(run(args.rows, args.rounds, args.store))


if __name__ == "__main__":
    main()
