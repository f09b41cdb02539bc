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


def config(pg: EmbeddedPostgres, store: Path | str, collections: str, extra: str = "") -> Config:
    """A service config over the `bench` database; `store` is the SQLite file, or the
    libpq URL of a PostgreSQL store (`store_database`); `extra`: more top-level YAML."""
    where = f'url: "{store}"' if isinstance(store, str) else f'path: "{store}"'
    text = f"""
database: {{url: "{pg.url("bench")}", slot: bench, publication: bench}}
store: {{{where}}}
auth: {{jwt: {{secret: "{SECRET}"}}}}
log: {{level: warning, format: json}}
{extra}
collections:
{collections}
"""
    return load_config_text(text, file="bench.yaml", env={})


STORES = ("sqlite", "postgresql")
STORE_DATABASE = "sidecar_store_bench"


def store_database(pg: EmbeddedPostgres, tmp: Path, engine: str) -> Path | str:
    """Where a benchmark keeps its store: a SQLite file in `tmp`, or (`postgresql`) a
    separate database of the same server, the deployment the docs describe ("a separate
    database on the application's server"): its writes share the server, its WAL and
    the two cores with the database being captured, as they would in production."""
    if engine == "sqlite":
        return tmp / "store.db"
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {STORE_DATABASE}")
        conn.execute(f"CREATE DATABASE {STORE_DATABASE}")
    return pg.url(STORE_DATABASE)


def server_cpu(pg: EmbeddedPostgres) -> float:
    """CPU seconds the server's processes have used so far: the postmaster, its live
    children (backends, walsenders, background workers) and the children it reaped
    (`cutime`/`cstime`), so a backend that exits between two readings still counts."""
    tick = os.sysconf("SC_CLK_TCK")
    main = int((pg.datadir / "postmaster.pid").read_text().split()[0])
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile: counted in the postmaster's cutime
        pid, ppid = int(entry.name), int(fields[1])
        if pid == main:
            total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
        elif ppid == main:
            total += int(fields[11]) + int(fields[12])
    return total / tick


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
