"""Replicas as real processes (`sidecar run`) over one PostgreSQL store, under a write
load: the leader killed (SIGKILL), then the next one stopped (SIGTERM) — another replica
captures within the takeover bound each time; replicas replaced one at a time (a rolling
deploy) under pushes and pulls. At the end every committed row is in the store exactly
once (a full pull equals PostgreSQL), clients' cursors taken on a replica that is gone
continue on the others without a 410, a live pull on a follower is woken by a change made
after the takeover, and a push retried on another replica is `duplicate`."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import signal
import threading
import time
from pathlib import Path

import aiohttp
import psycopg
import pytest

from tests.fixtures.service import auth, run_sql
from tests.support.process import SidecarRun

pytestmark = pytest.mark.pg

SCHEMA = """
CREATE TABLE items (id integer PRIMARY KEY, owner integer NOT NULL, val integer NOT NULL);
INSERT INTO items SELECT g, 1, 0 FROM generate_series(1, 50) g;
"""

ITEMS = """
  items:
    table: items
    read: "owner = :sub"
    write: {ops: [insert, update, delete]}
"""

TAKEOVER = 10.0  # store.takeover_timeout (the default): the bound the issue states


def replica(tmp_path: Path, pg_url: str, name: str) -> SidecarRun:
    home = tmp_path / name
    home.mkdir()
    return SidecarRun(home, pg_url, ITEMS, store=f'{{url: "{pg_url}", schema: sidecar_store}}')


async def get(
    http: aiohttp.ClientSession, run: SidecarRun, path: str, **params: str
) -> tuple[int, dict]:
    async with http.get(f"{run.base}{path}", params=params, headers=auth(1)) as r:
        return r.status, await r.json(content_type=None)


async def role(http: aiohttp.ClientSession, run: SidecarRun) -> str | None:
    try:
        status, body = await get(http, run, "/readyz")
    except (TimeoutError, aiohttp.ClientError):
        return None
    return body.get("role") if status == 200 else None


async def leader_among(
    http: aiohttp.ClientSession, runs: list[SidecarRun], within: float
) -> SidecarRun:
    """The replica that says it leads, waited for `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        for run in runs:
            if await role(http, run) == "leader":
                return run
        assert time.monotonic() < deadline, "no replica took over within the bound"
        await asyncio.sleep(0.1)


async def pull_all(
    http: aiohttp.ClientSession, run: SidecarRun, cursor: str | None = None, **extra: str
) -> tuple[dict, str]:
    """Pull until consistent from `cursor`: (the changes folded by key, the cursor).
    A 410 fails the test."""
    state: dict = {}
    while True:
        params = {**extra, **({"cursor": cursor} if cursor else {})}
        status, body = await get(http, run, "/v1/pull", **params)
        assert status == 200, body
        for ch in body["changes"]:
            k = ch["key"]["id"]
            if ch["op"] == "upsert":
                state[k] = ch["row"]["val"]
            else:
                state[k] = None
        cursor = body["cursor"]
        if not body["has_more"]:
            return state, cursor


def current_lsn(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        return str(conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0])


def table(dsn: str) -> dict[int, int]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("SELECT id, val FROM items WHERE owner = 1").fetchall())


class Writer(threading.Thread):
    """The application: inserts and updates rows in its own transactions until stopped."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.done, self.commits = dsn, threading.Event(), 0
        self.next_id = itertools.count(1000)

    def run(self) -> None:
        rnd = random.Random(16)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.done.is_set():
                if rnd.random() < 0.5:
                    conn.execute("INSERT INTO items VALUES (%s, 1, 0)", (next(self.next_id),))
                else:
                    conn.execute(
                        "UPDATE items SET val = val + 1 WHERE id = %s", (rnd.randint(1, 50),)
                    )
                self.commits += 1
                time.sleep(0.01)


async def converged(
    http: aiohttp.ClientSession, run: SidecarRun, dsn: str, state: dict, cursor: str
) -> None:
    """`run` has captured everything committed; the client's state folded from `cursor`
    equals PostgreSQL's rows, and a fresh full pull holds each row once with its value."""
    status, body = await get(
        http, run, "/v1/pull", after_lsn=current_lsn(dsn), cursor=cursor, timeout="20"
    )
    assert status == 200, body
    more, _ = await pull_all(http, run, cursor)
    state.update(more)
    expected = table(dsn)
    assert {k: v for k, v in state.items() if v is not None} == expected
    fresh, _ = await pull_all(http, run)
    assert fresh == expected


async def test_the_leader_killed_then_stopped_another_takes_over_each_time(
    pg_dsn, pg_url, tmp_path
):
    run_sql(pg_dsn, SCHEMA)
    runs = [replica(tmp_path, pg_url, f"r{i}") for i in range(3)]
    writer = Writer(pg_dsn)
    try:
        for run in runs:
            await run.start()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            leader = await leader_among(http, runs, TAKEOVER)
            roles = [await role(http, r) for r in runs]
            assert sorted(roles) == ["follower", "follower", "leader"], roles
            writer.start()
            await asyncio.sleep(1)
            # a client syncs on the leader; a push is applied there
            state, cursor = await pull_all(http, leader)
            push = {
                "id": "p-1",
                "collection": "items",
                "op": "insert",
                "data": {"id": 900, "owner": 1, "val": 9},
            }
            async with http.post(
                f"{leader.base}/v1/push", json={"mutations": [push]}, headers=auth(1)
            ) as r:
                assert (await r.json())["results"][0]["status"] == "applied"

            # SIGKILL of the leader: another replica captures within the bound
            assert leader.proc is not None
            leader.proc.send_signal(signal.SIGKILL)
            leader.proc.wait(10)
            survivors = [r for r in runs if r is not leader]
            second = await leader_among(http, survivors, TAKEOVER)
            follower = next(r for r in survivors if r is not second)
            # the push retried on another replica is a duplicate
            async with http.post(
                f"{follower.base}/v1/push", json={"mutations": [push]}, headers=auth(1)
            ) as r:
                body = await r.json()
                assert r.status == 200 and body["results"][0]["status"] == "duplicate", body
            # the client's cursor from the dead replica continues on a follower
            await converged_partial(http, follower, state, cursor)
            # a live pull on the follower is woken by a change made after the takeover
            _, now = await pull_all(http, follower)
            waiter = asyncio.create_task(
                get(http, follower, "/v1/pull", cursor=now, live="true", timeout="30")
            )
            await asyncio.sleep(0.3)
            run_sql(pg_dsn, "INSERT INTO items VALUES (901, 1, 1)")
            status, page = await asyncio.wait_for(waiter, 20)
            assert status == 200 and page["changes"], page

            # SIGTERM of the new leader: the last replica takes over
            second.stop()
            last = await leader_among(http, [follower], TAKEOVER)
            await asyncio.sleep(1)
            writer.done.set()
            writer.join(10)
            assert writer.commits > 50
            await converged(http, last, pg_dsn, state, cursor)
    finally:
        writer.done.set()
        for run in runs:
            run.stop()


async def converged_partial(
    http: aiohttp.ClientSession, run: SidecarRun, state: dict, cursor: str
) -> None:
    """The client's cursor is accepted by `run` (no 410) and brings it forward."""
    more, _ = await pull_all(http, run, cursor)
    state.update(more)


async def test_a_rolling_deploy_under_pushes_and_pulls(pg_dsn, pg_url, tmp_path):
    """Two replicas replaced one at a time (start the new one, SIGTERM the old one) while a
    client pushes inserts (each retried on the other replica on a failure, same id) and
    pulls: no 410, every push applied once, the client's state equals PostgreSQL."""
    run_sql(pg_dsn, SCHEMA)
    names = (f"r{i}" for i in itertools.count())
    live = [replica(tmp_path, pg_url, next(names)) for _ in range(2)]
    for run in live:
        await run.start()
    gone: list[SidecarRun] = []
    stop = asyncio.Event()
    outcomes: dict[str, str] = {}
    state: dict = {}
    cursor: str | None = None

    async def client(http: aiohttp.ClientSession) -> None:
        nonlocal cursor
        n = 0
        while not stop.is_set():
            n += 1
            mid = f"m-{n}"
            push = {
                "id": mid,
                "collection": "items",
                "op": "insert",
                "data": {"id": 5000 + n, "owner": 1, "val": n},
            }
            for attempt in itertools.count():
                run = live[(n + attempt) % len(live)]
                try:
                    async with http.post(
                        f"{run.base}/v1/push", json={"mutations": [push]}, headers=auth(1)
                    ) as r:
                        if r.status != 200:
                            await asyncio.sleep(0.1)
                            continue
                        status = (await r.json())["results"][0]["status"]
                except (TimeoutError, aiohttp.ClientError):
                    await asyncio.sleep(0.1)
                    continue
                assert status in ("applied", "duplicate"), status
                outcomes.setdefault(mid, status)
                break
            run = live[n % len(live)]
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                more, cursor = await pull_all(http, run, cursor)
                state.update(more)
            await asyncio.sleep(0.02)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        task = asyncio.create_task(client(http))
        try:
            for _ in range(2):
                await asyncio.sleep(2)
                new = replica(tmp_path, pg_url, next(names))
                await new.start()
                live.append(new)
                old = live.pop(0)
                old.stop()
                gone.append(old)
                await leader_among(http, live, TAKEOVER)
            await asyncio.sleep(2)
        finally:
            stop.set()
            await task
        # each push answered applied once (a retry after a lost answer: duplicate)
        assert len(outcomes) > 20, outcomes
        with psycopg.connect(pg_dsn) as conn:
            count = conn.execute("SELECT count(*) FROM items WHERE id > 5000").fetchone()[0]
        assert count == len(outcomes)
        assert cursor is not None
        await converged(http, live[-1], pg_dsn, state, cursor)
    for run in live + gone:
        run.stop()
