"""The simulated world around the sidecar: the application's schema and the sidecar's
config, the sidecar as a real `sidecar run -c config.yaml` process (killed with SIGKILL),
the "legacy application" writing straight to PostgreSQL with psycopg, and the oracle
(what PostgreSQL says a user may read).

Every collection is one table with the same shape, one per conflict strategy, so the
devices' overlapping edits meet every strategy; `events` is append-only with a
server-made key (`bigserial`) and the mutation id in `mark`: each acknowledged insert
must be there exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

from tests.sim.client import row_key

STRATEGIES = {
    "notes_reject": "reject",
    "notes_merge": "merge",
    "notes_client": "client_wins",
    "notes_server": "server_wins",
    "notes_latest": "{latest_wins: stamp}",
}
NOTES = tuple(STRATEGIES)
TEAMS = ("red", "green", "blue")
HOT = 12  # ids 1..HOT of every notes table: the rows everyone edits
SEED_ROWS = 600  # per notes table; the bulk job updates all of them
LEGACY_IDS = 10_000_000  # the legacy app inserts notes from here; device d from (d+1)·100,000
NOTE_COLUMNS = ("id", "team", "title", "n", "stamp")
EVENT_COLUMNS = ("id", "mark", "team", "device", "body")


def schema_sql() -> list[str]:
    statements = []
    for table in NOTES:
        statements += [
            f"CREATE TABLE {table} (id int PRIMARY KEY, team text NOT NULL, "
            "title text NOT NULL, n int NOT NULL DEFAULT 0, stamp bigint NOT NULL DEFAULT 0)",
            f"INSERT INTO {table} SELECT g, (ARRAY{list(TEAMS)})[1 + g % {len(TEAMS)}], "
            f"'seed ' || g, 0, 0 FROM generate_series(1, {SEED_ROWS}) g",
        ]
    statements.append(
        "CREATE TABLE events (id bigserial PRIMARY KEY, mark text NOT NULL, "
        "team text NOT NULL, device text, body text)"
    )
    return statements


def config_yaml(url: str, store: Path, port: int, secret: str, rate: str) -> str:
    collections = "".join(
        f"""
  {table}:
    table: {table}
    read: "team = :team"
    write: {{ops: [insert, update, delete], set: {{team: ":team"}}}}
    conflict: {strategy}
"""
        for table, strategy in STRATEGIES.items()
    )
    return f"""
database: {{url: "{url}", slot: sim, publication: sim}}
store: {{path: "{store}"}}
server: {{host: 127.0.0.1, port: {port}}}
auth: {{jwt: {{secret: "{secret}"}}}}
limits: {{rate: {rate}}}
log: {{level: info, format: json}}
collections:{collections}
  events:
    table: events
    read: "team = :team"
    write: {{ops: [insert], set: {{team: ":team", device: ":device_id"}}}}
"""


def oracle(dsn: str, team: str) -> dict[str, dict[Any, dict[str, Any]]]:
    """What the read rule `team = :team` admits, straight from PostgreSQL, keyed as the
    replica keys it."""
    out: dict[str, dict[Any, dict[str, Any]]] = {}
    with psycopg.connect(dsn) as conn:
        for table, columns in [(t, NOTE_COLUMNS) for t in NOTES] + [("events", EVENT_COLUMNS)]:
            rows = conn.execute(
                f"SELECT {', '.join(columns)} FROM {table} WHERE team = %s", (team,)
            ).fetchall()
            out[table] = {row_key({"id": r[0]}): dict(zip(columns, r, strict=True)) for r in rows}
    return out


def current_lsn(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        return str(conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0])  # type: ignore[index]


class Clock:
    """One logical clock for every writer's `stamp` (the `latest_wins` column)."""

    def __init__(self) -> None:
        self.now = 0

    def tick(self) -> int:
        self.now += 1
        return self.now


class SidecarProcess:
    """`sidecar run -c config.yaml` as a child process; `kill9()` is SIGKILL."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config, self.port, self.log = config, port, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        # compiled modules cached outside the tree: each restart then imports faster
        cache = Path(tempfile.gettempdir()) / f"sidecar-sim-pycache-{os.getuid()}"
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPYCACHEPREFIX=str(cache))
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sidecar", "run", "-c", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        self.starts += 1

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    async def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if not self.alive():
                    raise AssertionError("the sidecar exited:\n" + self.tail())
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{self.port}/readyz") as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise AssertionError("the sidecar did not become ready:\n" + self.tail())

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


@dataclass
class Legacy:
    """The application writing to the same tables with psycopg: small transactions of
    inserts, updates (hot rows, `stamp` from the shared clock), deletes, moves between
    teams (rows leave and enter scopes), events; and once a bulk job updating every row of
    every notes table in one transaction (capture then lags behind)."""

    dsn: str
    rng: random.Random
    clock: Clock
    counts: dict[str, int] = field(default_factory=dict)
    _next_id: int = LEGACY_IDS
    _events: int = 0

    async def run(self, stop: asyncio.Event, bulk_at: list[float]) -> None:
        started = time.monotonic()
        async with await psycopg.AsyncConnection.connect(self.dsn) as conn:
            while not stop.is_set():
                if bulk_at and time.monotonic() - started >= bulk_at[0]:
                    bulk_at.pop(0)
                    await self._bulk(conn)
                try:
                    async with conn.transaction():
                        for _ in range(self.rng.randint(1, 4)):
                            await self._one(conn)
                except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                    self._count("deadlock")  # against a push's row locks: an app moves on
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.rng.uniform(0.02, 0.12))

    async def _bulk(self, conn: psycopg.AsyncConnection[Any]) -> None:
        for _ in range(10):  # a batch job retries a deadlock
            try:
                async with conn.transaction():
                    rows = 0
                    for table in NOTES:
                        cur = await conn.execute(f"UPDATE {table} SET n = n + 1")
                        rows += cur.rowcount
                self._count("bulk_rows", rows)
                return
            except psycopg.errors.DeadlockDetected:
                self._count("deadlock")

    async def _one(self, conn: psycopg.AsyncConnection[Any]) -> None:
        table, x = self.rng.choice(NOTES), self.rng.random()
        hot = self.rng.randint(1, HOT) if self.rng.random() < 0.7 else self.rng.randint(1, 400)
        if x < 0.45:
            await conn.execute(
                f"UPDATE {table} SET title = %s, n = n + 1, stamp = %s WHERE id = %s",
                (f"legacy {self.rng.randint(0, 999)}", self.clock.tick(), hot),
            )
            self._count("update")
        elif x < 0.6:
            self._next_id += 1
            await conn.execute(
                f"INSERT INTO {table} VALUES (%s, %s, 'legacy new', 0, %s)",
                (self._next_id, self.rng.choice(TEAMS), self.clock.tick()),
            )
            self._count("insert")
        elif x < 0.7:
            await conn.execute(f"DELETE FROM {table} WHERE id = %s", (hot,))
            await conn.execute(  # and back, so the hot set stays hot
                f"INSERT INTO {table} VALUES (%s, %s, 'reborn', 0, %s) ON CONFLICT DO NOTHING",
                (hot, self.rng.choice(TEAMS), self.clock.tick()),
            )
            self._count("delete")
        elif x < 0.85:
            await conn.execute(
                f"UPDATE {table} SET team = %s WHERE id = %s", (self.rng.choice(TEAMS), hot)
            )
            self._count("move")
        else:
            self._events += 1
            await conn.execute(
                "INSERT INTO events (mark, team, body) VALUES (%s, %s, 'legacy')",
                (f"legacy-{self._events}", self.rng.choice(TEAMS)),
            )
            self._count("event")

    def _count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n


def derived(seed: int, name: str) -> random.Random:
    """An actor's own generator: its decisions do not shift when another actor draws more."""
    return random.Random(f"{seed}/{name}")


def event_counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("SELECT mark, count(*) FROM events GROUP BY mark").fetchall())


def drop_slot(dsn: str, slot: str = "sim") -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE slot_name = %s",
            (slot,),
        )


def chunks(seq: list[Any], n: int) -> Iterator[list[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]
