"""Live delivery, with the sidecar as its own process (`python -m sidecar run`) on loopback.

1. Latency: commit → a long-polling client has the row, over 40 single-row commits.
   Reference: PostgreSQL's own push, LISTEN/NOTIFY, with the NOTIFY in the same
   transaction as the INSERT and measured the same way. Target: p50 ≤ 10 ms.
2. Fan-out: one commit → N waiting long-poll clients (10,000 by default, each its own
   subject, all in the team the row belongs to) all answered; the sidecar's peak RSS.
   Reference: the same clients against a bare aiohttp server that answers every waiter
   when one event fires (the framework's floor). Target: < 1 s and RSS < 1 GiB.

The clients speak raw HTTP/1.1 over asyncio streams, so the client side costs little.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import jwt
import orjson
import psycopg

from bench.harness import SECRET, postgres

TEAM_COLLECTION = """
  items:
    table: items
    read: "team = :team"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def token(sub: int) -> str:
    claims = {"sub": str(sub), "team": 1, "exp": int(time.time()) + 3600}
    return jwt.encode(claims, SECRET, "HS256")


async def http_get(port: int, target: str, bearer: str | None = None) -> tuple[int, bytes]:
    """One GET over a fresh connection; the status and body (Content-Length framed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(get_request(target, bearer))
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        return status, await reader.readexactly(length)
    finally:
        writer.close()


def rss_peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def start_sidecar(
    pg_url: str,
    tmp: Path,
    port: int,
    waiters: int,
    collections: str = TEAM_COLLECTION,
    slot: str = "bench",
) -> subprocess.Popen:
    cfg = tmp / "sidecar.yaml"
    cfg.write_text(
        textwrap.dedent(f"""
        database: {{url: "{pg_url}", slot: {slot}, publication: {slot}}}
        store: {{path: "{tmp / "store.db"}"}}
        server: {{host: 127.0.0.1, port: {port}}}
        auth: {{jwt: {{secret: "{SECRET}"}}}}
        limits: {{live_total: {waiters + 100}, pull_wait: 60s}}
        log: {{level: warning, format: json}}
        collections:
        """)
        + collections
    )
    with open(tmp / "sidecar.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "run", "-c", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    for _ in range(600):
        await asyncio.sleep(0.1)
        try:
            status, _ = await http_get(port, "/readyz")
            if status == 200:
                return proc
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError((tmp / "sidecar.log").read_text())
    raise RuntimeError("the sidecar did not become ready")


async def cursor_of(port: int, bearer: str) -> str:
    status, body = await http_get(port, "/v1/pull", bearer)
    assert status == 200, body
    return str(orjson.loads(body)["cursor"])


async def latency(dsn: str, port: int, commits: int) -> tuple[list[float], list[float]]:
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

        cursor = await cursor_of(port, bearer)
        for n in range(commits):
            target = f"/v1/pull?cursor={cursor}&live=true&timeout=30"
            poll = asyncio.create_task(http_get(port, target, bearer))
            got_notify = asyncio.create_task(notified())
            await asyncio.sleep(0.03)  # the long-poll is waiting on the server
            async with writer.transaction():
                await writer.execute("INSERT INTO items VALUES (%s, 1, 'x')", (n + 1,))
                await writer.execute("NOTIFY bench")
                started = time.perf_counter()  # COMMIT is sent when the block exits
            await got_notify
            ref.append(time.perf_counter() - started)
            status, body = await poll
            ours.append(time.perf_counter() - started)
            page = orjson.loads(body)
            assert status == 200 and len(page["changes"]) == 1, body
            cursor = page["cursor"]
    return ours, ref


async def fan_out(
    port: int,
    requests: list[bytes],
    waiting: Callable[[], Awaitable[int]],
    fire: Callable[[], Awaitable[None]],
) -> tuple[float, int]:
    """Send every request on its own connection, wait until the server holds them all,
    `fire()`, and time until the last response's headers arrive."""
    sem = asyncio.Semaphore(500)  # connect in waves, not 10,000 SYNs at once

    async def one(request: bytes) -> tuple[int, bytes, float]:
        async with sem:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            await writer.drain()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            done = time.perf_counter()
            return int(head.split(b" ", 2)[1]), await reader.read(), done
        finally:
            writer.close()

    tasks = [asyncio.create_task(one(r)) for r in requests]
    for _ in range(600):
        await asyncio.sleep(0.2)
        if await waiting() >= len(requests):
            break
    else:
        raise RuntimeError("the clients never all waited")
    started = time.perf_counter()
    await fire()
    results = await asyncio.gather(*tasks)
    ok = sum(1 for status, body, _ in results if status == 200 and b'"upsert"' in body)
    return max(done for _, _, done in results) - started, ok


def get_request(target: str, bearer: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {bearer}\r\n" if bearer else ""
    return f"GET {target} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n".encode()


async def live_requests(port: int) -> int:
    _, body = await http_get(port, "/metrics")
    for line in body.decode().splitlines():
        if line.startswith("sidecar_live_waiters "):
            return int(float(line.split()[1]))
    return 0


BARE_SERVER = """
import asyncio, sys
from aiohttp import web
fire = asyncio.Event()
waiting = 0
async def wait(request):
    global waiting
    waiting += 1
    await fire.wait()
    return web.json_response({"changes": [{"op": "upsert"}]})
async def count(request):
    return web.Response(text=str(waiting))
async def go(request):
    fire.set()
    return web.json_response({})
app = web.Application()
app.router.add_get("/v1/pull", wait)
app.router.add_get("/fire", go)
app.router.add_get("/count", count)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


async def run(commits: int, waiters: int) -> None:
    with postgres() as pg, tempfile.TemporaryDirectory() as tmp:
        dsn = pg.dsn("bench")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE items (id int PRIMARY KEY, team int, note text)")
        port = free_port()
        proc = await start_sidecar(pg.url("bench"), Path(tmp), port, waiters)
        try:
            ours, ref = await latency(dsn, port, commits)
            p50, p95 = statistics.median(ours), statistics.quantiles(ours, n=20)[-1]
            r50, r95 = statistics.median(ref), statistics.quantiles(ref, n=20)[-1]
            print(
                f"commit → live client over {commits} commits: p50 {p50 * 1000:.1f} ms, "
                f"p95 {p95 * 1000:.1f} ms; LISTEN/NOTIFY: p50 {r50 * 1000:.1f} ms, "
                f"p95 {r95 * 1000:.1f} ms; ratio (p50) {p50 / r50:.1f}x",
                flush=True,
            )

            async def commit() -> None:
                async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
                    await c.execute("INSERT INTO items VALUES (0, 1, 'fan-out')")

            cursor = await cursor_of(port, token(2))
            target = f"/v1/pull?cursor={cursor}&live=true&timeout=60"
            requests = [get_request(target, token(2 + i)) for i in range(waiters)]
            seconds, ok = await fan_out(port, requests, lambda: live_requests(port), commit)
            peak = rss_peak_mib(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)
        bare_port = free_port()
        bare = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(bare_port)])
        try:
            for _ in range(600):  # until it answers (bounded: 60 s)
                await asyncio.sleep(0.1)
                try:
                    await http_get(bare_port, "/count")
                    break
                except OSError:
                    if bare.poll() is not None:
                        raise RuntimeError("the reference server exited") from None
            else:
                raise RuntimeError("the reference server did not start")

            async def fire() -> None:
                await http_get(bare_port, "/fire")

            async def count() -> int:
                return int((await http_get(bare_port, "/count"))[1])

            requests = [get_request("/v1/pull")] * waiters
            ref_seconds, ref_ok = await fan_out(bare_port, requests, count, fire)
        finally:
            bare.terminate()
            bare.wait(30)
        print(
            f"one commit → {ok:,}/{waiters:,} long-polls answered in {seconds:.2f}s, sidecar "
            f"peak RSS {peak:.0f} MiB; bare aiohttp, one event → {ref_ok:,} answered in "
            f"{ref_seconds:.2f}s; ratio {seconds / ref_seconds:.1f}x",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--commits", type=int, default=40)
    parser.add_argument("--waiters", type=int, default=10_000)
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    asyncio.run(run(args.commits, args.waiters))


if __name__ == "__main__":
    main()
