"""Replicas over the PostgreSQL store, each `python -m sidecar run` on loopback.

1. Commit → live client on a follower (a replica that does not capture): the change goes
   capture (leader) → store → NOTIFY → the follower's waiters. 40 single-row commits.
   Reference: PostgreSQL's LISTEN/NOTIFY with the NOTIFY in the committing transaction,
   measured the same way. Target: p50 ≤ 15 ms.
2. Pulls per second with 1, 2 and 3 replicas: delta pulls (each client's cursor, a page
   of changes since) sent round robin over the replicas by a load generator speaking raw
   HTTP/1.1 with keep-alive, for a fixed time. Reference: the single replica.
3. Live waiters per replica: W waiting long-polls on each replica, one commit, the time
   until all are answered and each replica's peak RSS, for 1, 2 and 3 replicas.

The machine has two cores shared by PostgreSQL, the load generator and the replicas: the
numbers say what the replicas cost, not what more machines would give (docs/scaling.md
models that from these measurements).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import orjson
import psycopg

from bench.harness import SECRET, postgres
from bench.live import free_port, get_request, http_get, rss_peak_mib, token

COLLECTION = """
  items:
    table: items
    read: "team = :team"
"""


def _config(tmp: Path, name: str, app_url: str, store_url: str, port: int, waiters: int) -> Path:
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(
        textwrap.dedent(f"""
        database: {{url: "{app_url}", slot: bench, publication: bench}}
        store: {{url: "{store_url}", schema: sidecar_store}}
        server: {{host: 127.0.0.1, port: {port}}}
        auth: {{jwt: {{secret: "{SECRET}"}}}}
        limits: {{live_total: {waiters + 100}, pull_wait: 60s}}
        log: {{level: warning, format: json}}
        collections:
        """)
        + COLLECTION
    )
    return cfg


class Replica:
    def __init__(self, tmp: Path, name: str, app_url: str, store_url: str, waiters: int) -> None:
        self.port = free_port()
        self.name = name
        self.log = tmp / f"{name}.log"
        self.config = _config(tmp, name, app_url, store_url, self.port, waiters)
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> Replica:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sidecar", "run", "-c", str(self.config)],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        for _ in range(1200):
            await asyncio.sleep(0.1)
            with contextlib.suppress(OSError):
                status, _ = await http_get(self.port, "/readyz")
                if status == 200:
                    return self
            if self.proc.poll() is not None:
                raise RuntimeError(self.log.read_text())
        raise RuntimeError(f"{self.name} did not become ready")

    async def metric(self, name: str) -> float:
        _, body = await http_get(self.port, "/metrics")
        for line in body.decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


async def _leader_first(rs: list[Replica]) -> list[Replica]:
    for _ in range(300):
        leaders = [r for r in rs if await r.metric("sidecar_leader") == 1]
        if leaders:
            return leaders + [r for r in rs if r not in leaders]
        await asyncio.sleep(0.1)
    raise RuntimeError("no replica leads")


async def caught_up(port: int, bearer: str) -> str:
    """The cursor of a client that has pulled everything (every page)."""
    cursor: str | None = None
    while True:
        target = "/v1/pull" + (f"?cursor={cursor}" if cursor else "")
        status, body = await http_get(port, target, bearer)
        assert status == 200, body[:500]
        page = orjson.loads(body)
        cursor = str(page["cursor"])
        if not page["has_more"]:
            return cursor


async def follower_latency(
    dsn: str, follower: Replica, commits: int
) -> tuple[list[float], list[float]]:
    bearer = token(1)
    ours: list[float] = []
    ref: list[float] = []
    async with (
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as writer,
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as listener,
    ):
        await listener.execute("LISTEN bench")

        async def notified() -> None:
            async for _ in listener.notifies(stop_after=1):
                pass

        cursor = await caught_up(follower.port, bearer)
        for n in range(commits):
            target = f"/v1/pull?cursor={cursor}&live=true&timeout=30"
            poll = asyncio.create_task(http_get(follower.port, target, bearer))
            got_notify = asyncio.create_task(notified())
            await asyncio.sleep(0.03)
            async with writer.transaction():
                await writer.execute("INSERT INTO items VALUES (%s, 1, 'x')", (100_000 + n,))
                await writer.execute("NOTIFY bench")
                started = time.perf_counter()
            await got_notify
            ref.append(time.perf_counter() - started)
            status, body = await poll
            ours.append(time.perf_counter() - started)
            page = orjson.loads(body)
            assert status == 200 and len(page["changes"]) == 1, body[:500]
            cursor = page["cursor"]
    return ours, ref


async def pull_rate(rs: list[Replica], cursors: list[str], seconds: float) -> int:
    """Delta pulls answered in `seconds` by 16 keep-alive connections per replica."""
    done = 0
    stop = time.perf_counter() + seconds
    bearer = token(1)

    async def client(port: int, cursor: str) -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        request = (
            f"GET /v1/pull?cursor={cursor}&limit=50 HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {bearer}\r\n\r\n"
        ).encode()
        try:
            while time.perf_counter() < stop:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                assert head.startswith(b"HTTP/1.1 200"), head
                done += 1
        finally:
            writer.close()

    await asyncio.gather(
        *(client(r.port, cursors[i % len(cursors)]) for r in rs for i in range(16))
    )
    return done


async def waiters_on(
    rs: list[Replica], dsn: str, per_replica: int
) -> tuple[float, int, list[float]]:
    """`per_replica` long-polls on each replica, all waiting; one commit; the seconds until
    the last is answered, how many got the row, and each replica's peak RSS."""
    target = f"/v1/pull?cursor={await caught_up(rs[0].port, token(2))}&live=true&timeout=60"
    sem = asyncio.Semaphore(500)  # connect in waves

    async def one(port: int, request: bytes) -> tuple[bool, float]:
        async with sem:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            await writer.drain()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            done = time.perf_counter()
            return head.startswith(b"HTTP/1.1 200") and b'"upsert"' in await reader.read(), done
        finally:
            writer.close()

    tasks = [
        asyncio.create_task(one(r.port, get_request(target, token(1000 + n * per_replica + i))))
        for n, r in enumerate(rs)
        for i in range(per_replica)
    ]
    for _ in range(600):
        await asyncio.sleep(0.2)
        if min([await r.metric("sidecar_live_waiters") for r in rs]) >= per_replica:
            break
    else:
        raise RuntimeError("the clients never all waited")
    started = time.perf_counter()
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
        await c.execute("INSERT INTO items VALUES (0, 1, 'fan-out')")
    results = await asyncio.gather(*tasks)
    peaks = [rss_peak_mib(r.proc.pid) for r in rs if r.proc]
    return max(d for _, d in results) - started, sum(ok for ok, _ in results), peaks


async def run(commits: int, waiters: int, seconds: float) -> None:
    with postgres() as pg, tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        dsn = pg.dsn("bench")
        with psycopg.connect(pg.dsn("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench_store")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE items (id int PRIMARY KEY, team int, note text)")
            conn.execute(
                "INSERT INTO items SELECT g, 1, 'row ' || g FROM generate_series(1, 2000) g"
            )
        app_url, store_url = pg.url("bench"), pg.url("bench_store")
        rs: list[Replica] = []
        try:
            for n in range(3):
                rs.append(await Replica(tmp, f"r{n}", app_url, store_url, waiters).start())
            rs = await _leader_first(rs)
            ours, ref = await follower_latency(dsn, rs[1], commits)
            p50, p95 = statistics.median(ours), statistics.quantiles(ours, n=20)[-1]
            r50 = statistics.median(ref)
            print(
                f"commit → live client on a follower over {commits} commits: p50 "
                f"{p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms; LISTEN/NOTIFY p50 "
                f"{r50 * 1000:.1f} ms; ratio (p50) {p50 / r50:.1f}x (target p50 ≤ 15 ms)",
                flush=True,
            )
            # cursors spread over the history: each pull returns up to 50 changes
            status, body = await http_get(rs[0].port, "/v1/pull?limit=50", token(1))
            assert status == 200, body
            cursors = [orjson.loads(body)["cursor"]]
            rates: dict[int, float] = {}
            for n in (1, 2, 3):
                done = await pull_rate(rs[:n], cursors, seconds)
                rates[n] = done / seconds
            print(
                "delta pulls/s: "
                + ", ".join(
                    f"{n} replica{'s' if n > 1 else ''} {rate:,.0f}/s "
                    f"({rate / rates[1]:.2f}x of one)"
                    for n, rate in rates.items()
                ),
                flush=True,
            )
        finally:
            for r in rs:
                r.stop()
        for n in (1, 2, 3):
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("DELETE FROM items WHERE id = 0")
            group: list[Replica] = []
            try:
                for i in range(n):
                    group.append(
                        await Replica(tmp, f"w{n}-{i}", app_url, store_url, waiters).start()
                    )
                took, ok, peaks = await waiters_on(group, dsn, waiters)
            finally:
                for r in group:
                    r.stop()
            print(
                f"{n} replica{'s' if n > 1 else ''} × {waiters:,} live waiters: {ok:,} answered "
                f"in {took:.2f}s; peak RSS per replica " + ", ".join(f"{p:.0f} MiB" for p in peaks),
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--commits", type=int, default=40)
    parser.add_argument("--waiters", type=int, default=2_000, help="per replica")
    parser.add_argument("--seconds", type=float, default=10.0, help="per pull-rate run")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    asyncio.run(run(args.commits, args.waiters, args.seconds))


if __name__ == "__main__":
    main()
