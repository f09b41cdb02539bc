"""Initial copy: every mapped table read with COPY under the slot's exported snapshot.

Rows stream from COPY in batches into the store's open transaction; the
store commits once, with the slot's consistent point as its LSN, so a crash during the
copy leaves a store that is rebuilt on the next start.

psycopg parses the COPY text and loads each column with the same loaders the replication
stream uses (`values.ADAPTERS`, chosen by the column type OIDs given to `set_types`), so
rows arrive typed, without a str → bytes → typed round trip. A batch ends at `BATCH` rows
or at `batch_bytes` of rows as COPY sent them (`limits.memory`, see `budget.py`), so wide
rows make smaller batches and memory stays bounded whatever their width. One thread
reads, routes and writes (the store's writer): the server produces the COPY stream on
the other core.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import structlog
from psycopg import sql

from sidecar.capture.ingest import Ingest
from sidecar.collection import Collection
from sidecar.membership import MembershipSource, membership_sources
from sidecar.values import ADAPTERS, NETWORK_KWARGS, session_options

log = structlog.get_logger("sidecar.snapshot")

BATCH = 10_000  # rows per batch, at most
BATCH_BYTES = 16 << 20  # bytes of COPY data per batch, at most, unless told


class CopyCancelled(Exception):
    """Raised by `on_batch` to stop a copy between two batches."""


PROGRESS_EVERY = 100_000


@dataclass(slots=True)
class CopyProgress:
    table: str = ""
    rows: int = 0
    estimated_rows: int = 0
    tables_done: int = 0
    tables_total: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "table": self.table,
            "rows_copied": self.rows,
            "rows_estimated": self.estimated_rows,
            "tables_done": self.tables_done,
            "tables_total": self.tables_total,
        }


def _estimate(conn: psycopg.Connection, routes: Sequence[Collection | MembershipSource]) -> int:
    total = 0
    for r in routes:
        row = conn.execute(
            "SELECT reltuples FROM pg_class WHERE oid = %s", (r.table.oid,)
        ).fetchone()
        if row and row[0] and row[0] > 0:
            total += int(row[0])
    return total


def copy_tables(
    dsn: str,
    snapshot_name: str | None,
    routes: Sequence[Collection],
    ingest: Ingest,
    progress: CopyProgress,
    on_batch: Callable[[], None] | None = None,
    batch_bytes: int = BATCH_BYTES,
) -> int:
    """Copy every route's table into the store (uncommitted), and the membership tables
    their rules read; returns rows copied."""
    tables: list[Collection | MembershipSource] = [*routes, *membership_sources(routes)]
    started = time.monotonic()
    with psycopg.connect(
        dsn,
        autocommit=True,
        options=session_options(),
        application_name="sidecar-copy",
        context=ADAPTERS,
        **NETWORK_KWARGS,
    ) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        if snapshot_name:
            conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_name)))
        progress.tables_total = len(tables)
        progress.estimated_rows = _estimate(conn, tables)
        logged = progress.rows
        for route in tables:
            progress.table = route.name
            table = sql.Identifier(route.table.ref.schema, route.table.ref.name)
            columns = sql.SQL(", ").join(sql.Identifier(c) for c in route.needed)
            # COPY cannot read a partitioned table itself; a query over it can.
            form = (
                "COPY (SELECT {1} FROM {0}) TO STDOUT"
                if route.table.partitioned
                else ("COPY {0} ({1}) TO STDOUT")
            )
            query = sql.SQL(form).format(table, columns)
            n = 0
            with conn.cursor().copy(query) as copy:
                copy.set_types(list(route.needed_oids))
                parse = copy.formatter.parse_row  # what copy.rows() does, sizes seen
                batch: list[tuple[Any, ...]] = []
                size = 0
                for data in copy:  # one row of COPY text each
                    batch.append(parse(data))  # type: ignore[arg-type]  # never None here
                    size += len(data)
                    if len(batch) >= BATCH or size >= batch_bytes:
                        ingest.snapshot_rows(route, batch)
                        n += len(batch)
                        progress.rows += len(batch)
                        batch, size = [], 0
                        if progress.rows >= logged + PROGRESS_EVERY:
                            logged = progress.rows
                            log.info("copying", **progress.as_dict())
                        if on_batch:
                            on_batch()
                if batch:
                    ingest.snapshot_rows(route, batch)
                    n += len(batch)
                    progress.rows += len(batch)
            progress.tables_done += 1
            log.info("copied table", collection=route.name, table=str(route.table.ref), rows=n)
        conn.execute("COMMIT")
    ingest.drain()
    elapsed = time.monotonic() - started
    log.info(
        "initial copy done",
        rows=progress.rows,
        seconds=round(elapsed, 2),
        rows_per_s=int(progress.rows / elapsed) if elapsed > 0 else None,
    )
    return progress.rows
