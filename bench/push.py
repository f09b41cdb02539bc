"""Write path: 10,000 single-row updates pushed in batches of 100 over HTTP.

Reference: the same UPDATEs sent directly with psycopg (`executemany` in transactions of
100), in the same run, against the same table. Target: ≥ 0.5× direct SQL.

The embedded PostgreSQL runs with `fsync=off` (as in the tests) while the sidecar fsyncs
a push's pending mutation ids before each COMMIT (`push/idempotency.py`): `--pg-fsync`
makes both sides pay for durability, as in production.

The HTTP client encodes and decodes JSON with orjson, as a native mobile client would
with its platform's encoder: the time measured is the sidecar's, not the json module's.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import aiohttp
import jwt
import orjson
import psycopg
from aiohttp import web

from bench.harness import SECRET, Timer, config, postgres
from sidecar.serve import build_app
from sidecar.service import Service

COLLECTIONS = """
  items:
    table: items
    read: "owner = :sub"
    write:
      ops: [update]
"""


async def run(
    rows: int, batch: int, fsync: bool = False, otlp: str | None = None
) -> dict[str, float]:
    with postgres(fsync) as pg, tempfile.TemporaryDirectory() as tmp:
        dsn = pg.dsn("bench")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE items (id int PRIMARY KEY, owner int NOT NULL, val int NOT NULL, "
                "note text NOT NULL)"
            )
            conn.execute(
                "INSERT INTO items SELECT g, 1, 0, 'n' FROM generate_series(1, %s) g", (rows,)
            )
        with Timer() as direct, psycopg.connect(dsn) as conn:
            for start in range(1, rows + 1, batch):
                with conn.transaction():
                    conn.cursor().executemany(
                        "UPDATE items SET val = %s WHERE id = %s",
                        [(1, i) for i in range(start, min(start + batch, rows + 1))],
                    )
        traced = f'observability: {{otlp_endpoint: "{otlp}"}}' if otlp else ""
        service = await Service.start(config(pg, Path(tmp) / "store.db", COLLECTIONS, traced))
        await service.capture.wait_ready(300)
        runner = web.AppRunner(build_app(service))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        token = jwt.encode({"sub": "1", "exp": int(time.time()) + 3600}, SECRET, "HS256")
        base = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
                revs: dict[int, str] = {}
                cursor = None
                while True:
                    params = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
                    async with http.get(f"{base}/v1/pull", params=params) as r:
                        page = await r.json()
                    for c in page["changes"]:
                        revs[c["key"]["id"]] = c["rev"]
                    cursor = page["cursor"]
                    if not page["has_more"]:
                        break
                assert len(revs) == rows
                with Timer() as ours:
                    for start in range(1, rows + 1, batch):
                        ms = [
                            {
                                "id": f"u{i}",
                                "collection": "items",
                                "op": "update",
                                "key": {"id": i},
                                "data": {"val": 2},
                                "base_rev": revs[i],
                            }
                            for i in range(start, min(start + batch, rows + 1))
                        ]
                        async with http.post(
                            f"{base}/v1/push",
                            data=orjson.dumps({"mutations": ms}),
                            headers={"Content-Type": "application/json"},
                        ) as r:
                            body = orjson.loads(await r.read())
                        assert all(x["status"] == "applied" for x in body["results"]), body
        finally:
            await runner.cleanup()
            await service.close()
        ratio = direct.seconds / ours.seconds
        print(
            f"push: {rows:,} updates in batches of {batch} in {ours.seconds:.2f}s = "
            f"{rows / ours.seconds:,.0f}/s; direct SQL executemany: {direct.seconds:.2f}s = "
            f"{rows / direct.seconds:,.0f}/s; ratio {ratio:.2f}x",
            flush=True,
        )
        return {"seconds": ours.seconds, "direct_seconds": direct.seconds, "ratio": ratio}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument(
        "--pg-fsync",
        action="store_true",
        help="run PostgreSQL with fsync on, as in production: the sidecar makes a push's "
        "mutation ids durable (fsync) before its COMMIT whatever the server does, so without "
        "it only the reference skips the disk",
    )
    parser.add_argument(
        "--otlp-endpoint", help="export traces there (an OTLP/HTTP collector): tracing's cost"
    )
    args = parser.parse_args()
    asyncio.run(run(args.rows, args.batch, args.pg_fsync, args.otlp_endpoint))


if __name__ == "__main__":
    main()
