"""Three replicas (`sidecar run` processes over one PostgreSQL store) on loopback behind a
real load balancer (HAProxy, round robin, `/readyz` checks): a client that only knows the
balancer's address syncs, pushes and long-polls through it while its requests land on
every replica; the leader is killed (SIGKILL) and the client goes on through the same
address — no 410, its retried push answered `duplicate`, its state equal to PostgreSQL's.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from tests.fixtures.service import auth, run_sql
from tests.integration.test_replicas_takeover import (
    ITEMS,
    SCHEMA,
    TAKEOVER,
    current_lsn,
    leader_among,
    table,
)
from tests.support.haproxy import LoadBalancer
from tests.support.process import SidecarRun

pytestmark = pytest.mark.pg


def replica(tmp_path: Path, pg_url: str, name: str) -> SidecarRun:
    home = tmp_path / name
    home.mkdir()
    return SidecarRun(home, pg_url, ITEMS, store=f'{{url: "{pg_url}", schema: sidecar_store}}')


async def pulls_served(http: aiohttp.ClientSession, run: SidecarRun) -> float:
    """The pulls this replica answered 200 (its own /metrics)."""
    async with http.get(f"{run.base}/metrics") as r:
        text = await r.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("sidecar_http_requests_total{")
        and 'endpoint="/v1/pull"' in line
        and 'status="200"' in line
    )


async def sync(
    http: aiohttp.ClientSession, base: str, state: dict, cursor: str | None, **extra: str
) -> str:
    """Pull through `base` until consistent, folding into `state`; a 410 fails."""
    while True:
        params = {**extra, **({"cursor": cursor} if cursor else {})}
        async with http.get(f"{base}/v1/pull", params=params, headers=auth(1)) as r:
            body = await r.json(content_type=None)
            assert r.status == 200, body
        for ch in body["changes"]:
            state[ch["key"]["id"]] = ch["row"]["val"] if ch["op"] == "upsert" else None
        cursor = body["cursor"]
        if not body["has_more"]:
            return str(cursor)


async def push(http: aiohttp.ClientSession, base: str, mutation: dict) -> dict:
    async with http.post(f"{base}/v1/push", json={"mutations": [mutation]}, headers=auth(1)) as r:
        body = await r.json()
        assert r.status == 200, body
        return dict(body["results"][0])


async def test_three_replicas_behind_a_load_balancer_survive_the_leaders_death(
    pg_dsn, pg_url, tmp_path
):
    run_sql(pg_dsn, SCHEMA)
    runs = [replica(tmp_path, pg_url, f"r{i}") for i in range(3)]
    lb: LoadBalancer | None = None
    try:
        for run in runs:
            await run.start()
        lb = LoadBalancer(tmp_path, [run.port for run in runs]).start()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            leader = await leader_among(http, runs, TAKEOVER)
            await asyncio.sleep(1.5)  # the balancer's checks see all three ready
            state: dict = {}
            cursor = await sync(http, lb.base, state, None, limit="10")
            # a pull of each page went through the balancer: every replica served some
            for _ in range(9):
                cursor = await sync(http, lb.base, state, cursor)
            served = [await pulls_served(http, run) for run in runs]
            assert all(n > 0 for n in served), served

            mutation = {
                "id": "lb-1",
                "collection": "items",
                "op": "insert",
                "data": {"id": 800, "owner": 1, "val": 33},
            }
            assert (await push(http, lb.base, mutation))["status"] == "applied"
            # read-your-writes through the balancer, whichever replica answers
            cursor = await sync(http, lb.base, state, cursor, after_lsn=current_lsn(pg_dsn))
            assert state[800] == 33

            # a long-poll through the balancer is woken by the application's commit
            waiter = asyncio.create_task(
                sync(http, lb.base, state, cursor, live="true", timeout="30")
            )
            await asyncio.sleep(0.5)
            run_sql(pg_dsn, "INSERT INTO items VALUES (700, 1, 7)")
            cursor = await asyncio.wait_for(waiter, 25)
            assert state.get(700) == 7

            # the leader dies; the client goes on through the same address
            assert leader.proc is not None
            leader.proc.send_signal(signal.SIGKILL)
            leader.proc.wait(10)
            survivors = [run for run in runs if run is not leader]
            killed_at = time.monotonic()
            await leader_among(http, survivors, TAKEOVER)
            assert time.monotonic() - killed_at <= TAKEOVER + 1
            run_sql(pg_dsn, "UPDATE items SET val = val + 100 WHERE id <= 5")
            # the retry of an applied push, sent again through the balancer: a duplicate
            assert (await push(http, lb.base, mutation))["status"] == "duplicate"
            for _ in range(6):  # every survivor answers some of these: none says 410
                cursor = await sync(
                    http, lb.base, state, cursor, after_lsn=current_lsn(pg_dsn), timeout="20"
                )
            assert {k: v for k, v in state.items() if v is not None} == table(pg_dsn)
    finally:
        if lb is not None:
            lb.stop()
        for run in runs:
            run.stop()
