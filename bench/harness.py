"""Shared set-up for the benchmarks: a private PostgreSQL and an in-process service."""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from sidecar.config.loader import load_config_text
from sidecar.config.model import Config
from sidecar.embedded import EmbeddedPostgres
from sidecar.observability import configure_logging

SECRET = "bench-secret-0123456789-0123456789"


def quiet_logs() -> None:
    """Production logging (JSON at info level), written to /dev/null: the cost is measured,
    the terminal is spared."""
    configure_logging("info", "json", open(os.devnull, "w"))  # noqa: SIM115


@contextmanager
def postgres(fsync: bool = False) -> Iterator[EmbeddedPostgres]:
    """A private server; `fsync`: with its commits durable, as in production (the
    embedded server runs without, as the tests do)."""
    quiet_logs()
    settings = {"max_wal_size": "'4GB'", "checkpoint_timeout": "'30min'"}
    if fsync:
        settings["fsync"] = "on"
    pg = EmbeddedPostgres(settings=settings)
    pg.start()
    try:
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        yield pg
    finally:
        pg.stop()


def config(pg: EmbeddedPostgres, store: Path, collections: str, extra: str = "") -> Config:
    text = f"""
database: {{url: "{pg.url("bench")}", slot: bench, publication: bench}}
store: {{path: "{store}"}}
auth: {{jwt: {{secret: "{SECRET}"}}}}
log: {{level: warning, format: json}}
{extra}
collections:
{collections}
"""
    return load_config_text(text, file="bench.yaml", env={})


def current_lsn(pg: EmbeddedPostgres) -> str:
    with psycopg.connect(pg.dsn("bench")) as conn:
        return str(conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0])  # type: ignore[index]


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def report(name: str, rows: int, ours: float, ref_name: str, ref: float) -> dict[str, float]:
    ours_rate, ref_rate = rows / ours, rows / ref
    print(
        f"{name}: {rows:,} rows in {ours:.2f}s = {ours_rate:,.0f} rows/s; "
        f"{ref_name}: {ref:.2f}s = {ref_rate:,.0f} rows/s; ratio {ours_rate / ref_rate:.2f}x",
        flush=True,
    )
    return {
        "rows": rows,
        "seconds": ours,
        "rows_per_s": ours_rate,
        "ref_rows_per_s": ref_rate,
        "ratio": ours_rate / ref_rate,
    }


ITEMS_COLLECTION = """
  items:
    table: items
    read: "owner = :sub"
"""


def make_items(dsn: str, rows: int) -> None:
    """The benchmarks' table: `rows` rows over 1,000 owners, vacuumed and analysed."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE items (id int PRIMARY KEY, owner int NOT NULL, val int NOT NULL, "
            "note text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute(
            "INSERT INTO items SELECT g, g %% 1000, g, 'note ' || g FROM generate_series(1, %s) g",
            (rows,),
        )
        conn.execute("VACUUM ANALYZE items")


def rows_main(run: Callable[[int], Awaitable[object]], doc: str | None, default: int) -> None:
    """The command line of a benchmark whose only knob is the row count."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--rows", type=int, default=default)
    asyncio.run(run(parser.parse_args().rows))
