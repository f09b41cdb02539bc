"""Membership rules (`project_id IN (SELECT project_id FROM members WHERE user_id = :sub)`),
each measurement with its reference from the same run:

1. Nothing-new pull of a member of 1,000 projects (10 rows each), p50 over keep-alive
   HTTP, from a cursor one unrelated commit behind. Reference: the same pull of an
   owner-rule user (`owner = :sub`) holding the same rows. Target: p50 ≤ 5 ms.
2. Move-in: a user waits in a live long-poll; a membership INSERT gives them a project of
   100,000 rows; the long-poll wakes and the client pages (JSON, `limit` = max_page) until
   `has_more` is false. Reference: the NDJSON bootstrap of the same rows (owner rule).
   Target: ≥ 0.5× the bootstrap's rows/s.
3. Capture of a 500,000-row UPDATE under a membership rule vs an owner rule (two stores,
   two slots, the same WAL; medians of `--rounds`, alternating which goes first).
   Target: ≥ 0.8×.
4. One commit wakes 10,000 long-polls of 10,000 distinct users (sidecar as its own
   process): with a claim rule (`team = :team`) and with a membership rule (10,000
   members of the row's team). Target: all answered < 1 s, RSS < 1 GiB.
5. A membership change touching one user (100 rows): commit → that user's live pull has
   all of them, median of rounds, with 10 other users/projects and with 1,000 (100 rows
   each). Target ratio ≈ 1 (work proportional to the user's rows, not everyone's).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import jwt
import orjson
import psycopg
from aiohttp import web

from bench import live
from bench.harness import SECRET, Timer, current_lsn, postgres, quiet_logs, report
from sidecar.config.loader import load_config_text
from sidecar.config.model import Config
from sidecar.embedded import EmbeddedPostgres
from sidecar.lsn import str_to_lsn
from sidecar.serve import build_app
from sidecar.service import Service

MEMBER_RULE = "project_id IN (SELECT project_id FROM members WHERE user_id = :sub)"
COLLECTIONS = f"""
  member_tasks:
    table: tasks
    read: "{MEMBER_RULE}"
  owner_tasks:
    table: tasks
    read: "owner = :sub"
"""
SCHEMA = """
CREATE TABLE members (project_id int NOT NULL, user_id text NOT NULL,
                      PRIMARY KEY (project_id, user_id));
CREATE TABLE tasks (id int PRIMARY KEY, project_id int NOT NULL, owner text NOT NULL,
                    note text NOT NULL);
"""


def make_config(pg: EmbeddedPostgres, store: Path, collections: str, slot: str = "bench") -> Config:
    text = f"""
database: {{url: "{pg.url("bench")}", slot: {slot}, publication: {slot}}}
store: {{path: "{store}"}}
auth: {{jwt: {{secret: "{SECRET}"}}}}
limits: {{live_total: 20000, pull_wait: 60s}}
log: {{level: warning, format: json}}
collections:
{collections}
"""
    return load_config_text(text, file="bench.yaml", env={})


def token(sub: str) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 3600}, SECRET, "HS256")


def add_tasks(conn: psycopg.Connection, first: int, count: int, project: int, owner: str) -> None:
    conn.execute(
        "INSERT INTO tasks SELECT g, %s, %s, 'task ' || g FROM generate_series(%s::int, %s::int) g",
        (project, owner, first, first + count - 1),
    )


class Client:
    """Keep-alive HTTP to an in-process service."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def pull(self, sub: str, collection: str, cursor: str | None, **query: str) -> dict:
        params = {"collections": collection, **query}
        if cursor is not None:
            params["cursor"] = cursor
        headers = {"Authorization": f"Bearer {token(sub)}"}
        async with self.session.get(f"{self.base}/v1/pull", params=params, headers=headers) as r:
            assert r.status == 200, await r.text()
            return dict(orjson.loads(await r.read()))

    async def cursor(self, sub: str, collection: str) -> tuple[str, int]:
        """Page from scratch to the end: the cursor and how many changes came."""
        cursor, got = None, 0
        while True:
            page = await self.pull(sub, collection, cursor)
            got += len(page["changes"])
            cursor = page["cursor"]
            if not page["has_more"]:
                return cursor, got


@contextlib.asynccontextmanager
async def serving(cfg: Config) -> AsyncIterator[tuple[Service, Client]]:
    service = await Service.start(cfg)
    await service.capture.wait_ready(600)
    runner = web.AppRunner(build_app(service), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as session:
            yield service, Client(session, f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()
        await service.close()


async def caught_up(service: Service, pg: EmbeddedPostgres) -> None:
    assert await service.capture.wait_for_lsn(str_to_lsn(current_lsn(pg)), 600)


async def nothing_new(service: Service, client: Client, pg: EmbeddedPostgres, n: int) -> None:
    """Item 1."""
    member, _ = await client.cursor("many", "member_tasks")
    owner, _ = await client.cursor("many", "owner_tasks")
    with psycopg.connect(pg.dsn("bench"), autocommit=True) as conn:
        add_tasks(conn, 50_000_000, 1, 999_999, "nobody")  # the store moves on
    await caught_up(service, pg)
    times: dict[str, list[float]] = {"member_tasks": [], "owner_tasks": []}
    for _ in range(n):
        for collection, cursor in (("member_tasks", member), ("owner_tasks", owner)):
            started = time.perf_counter()
            page = await client.pull("many", collection, cursor)
            times[collection].append(time.perf_counter() - started)
            assert not page["changes"] and not page["has_more"], page
    m50, o50 = statistics.median(times["member_tasks"]), statistics.median(times["owner_tasks"])
    m95 = statistics.quantiles(times["member_tasks"], n=20)[-1]
    print(
        f"nothing-new pull, member of 1,000 projects: p50 {m50 * 1000:.2f} ms, p95 "
        f"{m95 * 1000:.2f} ms; owner rule, same rows: p50 {o50 * 1000:.2f} ms; "
        f"ratio {m50 / o50:.1f}x (target p50 ≤ 5 ms)",
        flush=True,
    )


async def ndjson_rows(client: Client, sub: str, collection: str) -> int:
    headers = {"Authorization": f"Bearer {token(sub)}", "Accept": "application/x-ndjson"}
    url = f"{client.base}/v1/pull?collections={collection}"
    changes = 0
    async with client.session.get(url, headers=headers) as resp:
        assert resp.status == 200
        async for line in resp.content:
            if line.startswith(b'{"collection"'):
                changes += 1
    return changes


async def wait_live(service: Service, count: int) -> None:
    for _ in range(6000):
        if service.puller.live_count() >= count:
            await asyncio.sleep(0.05)
            return
        await asyncio.sleep(0.01)
    raise RuntimeError("the long-poll never waited")


async def move_in(
    service: Service, client: Client, pg: EmbeddedPostgres, sub: str, project: int
) -> tuple[float, int]:
    """A waiting long-poll of `sub`; membership of `project` committed; paged to the end.
    Seconds from the commit to the last page, and the rows received."""
    cursor, _ = await client.cursor(sub, "member_tasks")
    poll = asyncio.create_task(
        client.pull(sub, "member_tasks", cursor, live="true", timeout="60", limit="1000")
    )
    await wait_live(service, 1)
    with psycopg.connect(pg.dsn("bench"), autocommit=True) as conn:
        conn.execute("INSERT INTO members VALUES (%s, %s)", (project, sub))
        started = time.perf_counter()
    page = await poll
    got = len(page["changes"])
    while page["has_more"]:
        page = await client.pull(sub, "member_tasks", page["cursor"], limit="1000")
        got += len(page["changes"])
    return time.perf_counter() - started, got


async def big_move_in(service: Service, client: Client, pg: EmbeddedPostgres, rows: int) -> None:
    """Item 2."""
    await ndjson_rows(client, "big", "owner_tasks")  # warm the pages
    service.puller.cache.clear()
    with Timer() as ref:
        got_ref = await ndjson_rows(client, "big", "owner_tasks")
    seconds, got = await move_in(service, client, pg, "newbie", 0)
    assert got == got_ref == rows, (got, got_ref, rows)
    report(f"move-in of a {rows:,}-row project", rows, seconds, "NDJSON bootstrap", ref.seconds)


async def one_user_change(pg: EmbeddedPostgres, tmp: Path, rounds: int) -> None:
    """Item 5."""
    dsn = pg.dsn("bench")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE members, tasks")
        for p in range(1, 11):
            add_tasks(conn, p * 1000, 100, p, f"o{p}")
            conn.execute("INSERT INTO members VALUES (%s, %s)", (p, f"m{p}"))
        add_tasks(conn, 90_000_000, 100, 5_000, "solo-owner")
    cfg = make_config(pg, tmp / "five.db", COLLECTIONS, "five")
    results: dict[int, float] = {}
    async with serving(cfg) as (service, client):
        for others in (10, 1000):
            if others > 10:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    for p in range(11, others + 1):
                        add_tasks(conn, p * 1000, 100, p, f"o{p}")
                        conn.execute("INSERT INTO members VALUES (%s, %s)", (p, f"m{p}"))
                await caught_up(service, pg)
            times = []
            for n in range(rounds):
                sub = f"solo{others}-{n}"
                seconds, got = await move_in(service, client, pg, sub, 5_000)
                assert got == 100, got
                times.append(seconds)
                with psycopg.connect(dsn, autocommit=True) as conn:  # and out again
                    conn.execute("DELETE FROM members WHERE user_id = %s", (sub,))
            results[others] = statistics.median(times)
    small, large = results[10], results[1000]
    print(
        f"one user's membership change (100 rows), commit → pulled: with 1,000 other "
        f"users/projects (100,000 rows) {large * 1000:.1f} ms; with 10 (1,000 rows) "
        f"{small * 1000:.1f} ms; ratio {large / small:.2f}x (target ≈ 1)",
        flush=True,
    )


async def capture(pg: EmbeddedPostgres, tmp: Path, rows: int, rounds: int) -> None:
    """Item 3."""
    dsn = pg.dsn("bench")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE items (id int PRIMARY KEY, owner int NOT NULL, val int NOT NULL, "
            "note text NOT NULL)"
        )
        conn.execute(
            "INSERT INTO items SELECT g, g %% 1000, g, 'note ' || g FROM generate_series(1, %s) g",
            (rows,),
        )
        conn.execute(
            "CREATE TABLE item_members (owner int NOT NULL, user_id text NOT NULL, "
            "PRIMARY KEY (owner, user_id))"
        )
        conn.execute("INSERT INTO item_members SELECT g, 'u' || g FROM generate_series(0, 999) g")
        conn.execute("VACUUM ANALYZE items")
    rules = {
        "owner": "owner = :sub",
        "membership": "owner IN (SELECT owner FROM item_members WHERE user_id = :sub)",
    }
    configs = {
        name: make_config(
            pg, tmp / f"cap-{name}.db", f'  items:\n    table: items\n    read: "{rule}"\n', name
        )
        for name, rule in rules.items()
    }
    for cfg in configs.values():
        service = await Service.start(cfg)
        await service.capture.wait_ready(600)
        await service.close()
    seconds: dict[str, list[float]] = {name: [] for name in configs}
    for n in range(rounds):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("UPDATE items SET val = val + 1")
            conn.execute("CHECKPOINT")
        target = str_to_lsn(current_lsn(pg))
        os.sync()
        order = list(configs) if n % 2 == 0 else list(reversed(configs))
        for name in order:
            with Timer() as t:
                service = await Service.start(configs[name])
                ok = await service.capture.wait_for_lsn(target, 600)
            await service.close()
            assert ok
            seconds[name].append(t.seconds)
        print(
            f"round {n + 1}: membership rule {seconds['membership'][-1]:.2f}s, owner rule "
            f"{seconds['owner'][-1]:.2f}s",
            flush=True,
        )
    report(
        "capture, membership rule (median)",
        rows,
        statistics.median(seconds["membership"]),
        "owner rule",
        statistics.median(seconds["owner"]),
    )


FAN_MEMBER = """
  items:
    table: items
    read: "team IN (SELECT team FROM team_members WHERE user_id = :sub)"
"""


async def fan_out(pg: EmbeddedPostgres, tmp: Path, waiters: int) -> None:
    """Item 4."""
    dsn = pg.dsn("bench")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE fan (id int PRIMARY KEY, team int, note text)")
        conn.execute(
            "CREATE TABLE team_members (team int, user_id text, PRIMARY KEY (team, user_id))"
        )
        conn.execute(
            "INSERT INTO team_members SELECT 1, g::text FROM generate_series(2, %s) g",
            (waiters + 2,),
        )
    for name, rule in (("claim", live.TEAM_COLLECTION), ("membership", FAN_MEMBER)):
        collections = rule.replace("table: items", "table: fan")
        port = live.free_port()
        where = tmp / f"fan-{name}"
        where.mkdir()
        proc = await live.start_sidecar(pg.url("bench"), where, port, waiters, collections, name)
        try:
            cursor = await live.cursor_of(port, live.token(2))
            target = f"/v1/pull?cursor={cursor}&live=true&timeout=60"
            requests = [live.get_request(target, live.token(2 + i)) for i in range(waiters)]
            row = 1 if name == "claim" else 2

            async def commit(row: int = row) -> None:
                async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
                    await c.execute("INSERT INTO fan VALUES (%s, 1, 'fan-out')", (row,))

            seconds, ok = await live.fan_out(
                port, requests, lambda port=port: live.live_requests(port), commit
            )
            peak = live.rss_peak_mib(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)
        print(
            f"one commit → {ok:,}/{waiters:,} long-polls of distinct users answered in "
            f"{seconds:.2f}s, {name} rule; sidecar peak RSS {peak:.0f} MiB "
            f"(target < 1 s, < 1,024 MiB)",
            flush=True,
        )


async def run(
    rows: int = 100_000,
    capture_rows: int = 500_000,
    waiters: int = 10_000,
    rounds: int = 3,
    only: str = "12345",
) -> None:
    quiet_logs()
    with postgres() as pg, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        dsn = pg.dsn("bench")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SCHEMA)
            if "1" in only or "2" in only:
                for p in range(1, 1001):  # 1,000 projects of 10 tasks, all 'many''s
                    add_tasks(conn, p * 10, 10, p, "many")
                conn.execute("INSERT INTO members SELECT g, 'many' FROM generate_series(1, 1000) g")
                add_tasks(conn, 10_000_000, rows, 0, "big")  # project 0, for the move-in
            conn.execute("VACUUM ANALYZE tasks")
        if "1" in only or "2" in only:
            async with serving(make_config(pg, tmp / "store.db", COLLECTIONS)) as (svc, client):
                if "1" in only:
                    await nothing_new(svc, client, pg, 300)
                if "2" in only:
                    await big_move_in(svc, client, pg, rows)
        if "5" in only:
            await one_user_change(pg, tmp, max(rounds, 5))
        if "3" in only:
            await capture(pg, tmp, capture_rows, rounds)
        if "4" in only:
            await fan_out(pg, tmp, waiters)


def main() -> None:
    parser = argparse.ArgumentParser(description=textwrap.dedent(__doc__ or ""))
    parser.add_argument("--rows", type=int, default=100_000, help="the moved-in project's")
    parser.add_argument("--capture-rows", type=int, default=500_000)
    parser.add_argument("--waiters", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="12345", help="which measurements, e.g. 14")
    args = parser.parse_args()
    asyncio.run(run(args.rows, args.capture_rows, args.waiters, args.rounds, args.only))


if __name__ == "__main__":
    main()
