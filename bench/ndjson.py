"""Streamed bootstrap: `GET /v1/pull` with `Accept: application/x-ndjson`, one caller whose
scope holds every row, over a real socket; rows/s until the cursor line arrives.

Reference: `COPY … TO STDOUT` of the same rows, read by psycopg to nowhere, in the same
run. Target: ≥ 0.2× COPY (≈ 500,000 rows/s on a machine where COPY does 2.7M), for the
first device of a scope (page cache empty). Also printed: the same with gzip, and a second
device of the same scope (pages served from the cache).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import aiohttp
import jwt
import psycopg
from aiohttp import web

from bench.harness import SECRET, Timer, config, make_items, postgres, report, rows_main
from sidecar.serve import build_app
from sidecar.service import Service

EVERYTHING = """
  items:
    table: items
    read: "true"
"""


async def bootstrap(url: str, token: str, encoding: str) -> int:
    """Read the whole stream; returns the number of change lines (not cursor lines)."""
    changes = 0
    tail = b""
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/x-ndjson",
        "Accept-Encoding": encoding,
    }
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        async for block in resp.content.iter_chunked(1 << 20):
            joined = tail[-16:] + block  # a marker may straddle two blocks
            changes += joined.count(b'{"collection"') - tail[-16:].count(b'{"collection"')
            tail = (tail + block)[-200:]
    assert b'"has_more":false' in tail.rsplit(b"\n", 2)[-2], tail
    return changes


async def run(rows: int) -> dict[str, float]:
    with postgres() as pg, tempfile.TemporaryDirectory() as tmp:
        dsn = pg.dsn("bench")
        make_items(dsn, rows)
        with (
            Timer() as ref,
            psycopg.connect(dsn) as conn,
            conn.cursor().copy("COPY items TO STDOUT") as copy,
        ):
            for _ in copy:
                pass
        service = await Service.start(config(pg, Path(tmp) / "store.db", EVERYTHING))
        await service.capture.wait_ready(600)
        runner = web.AppRunner(build_app(service), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        token = jwt.encode({"sub": "1", "exp": int(time.time()) + 3600}, SECRET, "HS256")
        try:
            url = f"http://127.0.0.1:{port}/v1/pull"
            await bootstrap(url, token, "identity")  # warm SQLite's and the OS's pages
            service.puller.cache.clear()  # the first device of its scope: nothing cached
            with Timer() as ours:
                got = await bootstrap(url, token, "identity")
            with Timer() as cached:  # the next device of the same scope
                await bootstrap(url, token, "identity")
            service.puller.cache.clear()
            with Timer() as zipped:
                got_zipped = await bootstrap(url, token, "gzip")
        finally:
            await runner.cleanup()
            await service.close()
        assert got == got_zipped == rows, f"streamed {got} and {got_zipped} of {rows}"
        report("NDJSON bootstrap, gzip", rows, zipped.seconds, "COPY TO STDOUT", ref.seconds)
        report("NDJSON bootstrap, pages cached", rows, cached.seconds, "COPY", ref.seconds)
        return report("NDJSON bootstrap", rows, ours.seconds, "COPY TO STDOUT", ref.seconds)


def main() -> None:
    rows_main(run, __doc__, 500_000)


if __name__ == "__main__":
    main()
