"""Push latency while the application runs a bulk job: single-mutation pushes, one after
the other over HTTP, on a quiet system and then while a bulk UPDATE of every row of a
synced table runs and capture works through it (behind the database), in the same run.

Prints p50/p99 for both and their ratios (bulk ÷ quiet). The pushes insert into another
synced table (the bulk job holds the locks of every row of its table until it commits);
they share the database, the WAL, the capture and the store with the bulk job.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import jwt
import orjson
import psycopg
from aiohttp import web

from bench.harness import SECRET, config, make_items, postgres
from sidecar.lsn import str_to_lsn
from sidecar.serve import build_app
from sidecar.service import Service

COLLECTIONS = """
  items:
    table: items
    read: "true"
  notes:
    table: notes
    read: "true"
    write:
      ops: [insert]
"""


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def run(rows: int, pushes: int) -> dict[str, float]:
    with postgres() as pg, tempfile.TemporaryDirectory() as tmp:
        dsn = pg.dsn("bench")
        make_items(dsn, rows)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE notes (id bigserial PRIMARY KEY, note text NOT NULL)")
        service = await Service.start(config(pg, Path(tmp) / "store.db", COLLECTIONS))
        await service.capture.wait_ready(600)
        runner = web.AppRunner(build_app(service))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        token = jwt.encode({"sub": "1", "exp": int(time.time()) + 3600}, SECRET, "HS256")
        url = f"http://127.0.0.1:{port}/v1/push"
        counter = 0

        async def push_one(http: aiohttp.ClientSession) -> float:
            nonlocal counter
            counter += 1
            body = {
                "mutations": [
                    {
                        "id": f"m{counter}",
                        "collection": "notes",
                        "op": "insert",
                        "data": {"note": "x"},
                    }
                ]
            }
            started = time.perf_counter()
            async with http.post(
                url, data=orjson.dumps(body), headers={"Content-Type": "application/json"}
            ) as r:
                answer = orjson.loads(await r.read())
            took = time.perf_counter() - started
            assert r.status == 200 and answer["results"][0]["status"] == "applied", answer
            return took

        try:
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
                for _ in range(20):  # warm-up: connections, prepared statements
                    await push_one(http)
                quiet = [await push_one(http) for _ in range(pushes)]

                def bulk() -> int:
                    with psycopg.connect(dsn, autocommit=True) as conn:
                        conn.execute("UPDATE items SET val = val + 1")
                        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
                        assert row is not None
                        return str_to_lsn(row[0])

                job = asyncio.create_task(asyncio.to_thread(bulk))
                during: list[float] = []
                behind = 0  # pushes answered while the store was behind the bulk job
                started = time.perf_counter()
                while len(during) < pushes or not job.done():
                    during.append(await push_one(http))
                    if job.done():
                        if service.store.state().lsn < job.result():
                            behind += 1
                        elif len(during) >= pushes:
                            break
                    else:
                        behind += 1
                bulk_end = await job
                await service.capture.wait_for_lsn(bulk_end, 600)
                caught_up = time.perf_counter() - started
        finally:
            await runner.cleanup()
            await service.close()
        q50, q99 = percentile(quiet, 50), percentile(quiet, 99)
        d50, d99 = percentile(during, 50), percentile(during, 99)
        print(
            f"push during bulk: single-mutation pushes, quiet p50 {q50 * 1000:.1f} ms "
            f"p99 {q99 * 1000:.1f} ms ({len(quiet)}); during a {rows:,}-row UPDATE and its "
            f"capture p50 {d50 * 1000:.1f} ms p99 {d99 * 1000:.1f} ms ({len(during)}, "
            f"{behind} while behind; capture caught up after {caught_up:.1f}s); "
            f"ratio p50 {d50 / q50:.2f}x p99 {d99 / q99:.2f}x; "
            f"mean quiet {statistics.fmean(quiet) * 1000:.1f} ms",
            flush=True,
        )
        return {
            "quiet_p50": q50,
            "quiet_p99": q99,
            "bulk_p50": d50,
            "bulk_p99": d99,
            "ratio_p50": d50 / q50,
            "ratio_p99": d99 / q99,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--pushes", type=int, default=300)
    args = parser.parse_args()
    asyncio.run(run(args.rows, args.pushes))


if __name__ == "__main__":
    main()
