"""The fault proxy against a tiny HTTP server (no database): each fault does what it says."""

from __future__ import annotations

import asyncio
import random

import aiohttp
import pytest
from aiohttp import web

from tests.sim.faultproxy import FAULTS, FaultProxy, Faults


@pytest.fixture
async def upstream():
    """A server counting the requests it handled; `/big` answers 200 KB."""
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(await request.text())
        size = 200_000 if request.path == "/big" else 5
        return web.Response(body=b"x" * size)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield port, seen
    await runner.cleanup()


async def _proxy(port: int, **faults: float) -> FaultProxy:
    proxy = FaultProxy(port, random.Random(1), Faults(**faults))
    await proxy.start()
    return proxy


async def _post(port: int, body: str, path: str = "/") -> tuple[int, bytes]:
    connector = aiohttp.TCPConnector(force_close=True)
    timeout = aiohttp.ClientTimeout(total=5)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as http,
        http.post(f"http://127.0.0.1:{port}{path}", data=body) as r,
    ):
        return r.status, await r.read()


async def test_without_faults_every_request_passes_once(upstream):
    port, seen = upstream
    proxy = await _proxy(port)
    try:
        for i in range(5):
            assert await _post(proxy.port, f"m{i}") == (200, b"xxxxx")
        status, body = await _post(proxy.port, "big", "/big")
        assert (status, len(body)) == (200, 200_000)
    finally:
        await proxy.close()
    assert seen == ["m0", "m1", "m2", "m3", "m4", "big"]
    assert proxy.counts["pass"] == 6


async def test_drop_never_reaches_the_server(upstream):
    port, seen = upstream
    proxy = await _proxy(port, drop=1.0)
    try:
        with pytest.raises(aiohttp.ClientError):
            await _post(proxy.port, "lost")
    finally:
        await proxy.close()
    assert seen == []


async def test_cut_lets_the_server_act_and_loses_the_answer(upstream):
    port, seen = upstream
    proxy = await _proxy(port, cut=1.0)
    try:
        with pytest.raises(aiohttp.ClientError):
            await _post(proxy.port, "acted")
    finally:
        await proxy.close()
    assert seen == ["acted"]


async def test_truncate_delivers_part_of_the_answer(upstream):
    port, seen = upstream
    proxy = await _proxy(port, truncate=1.0)
    try:
        with pytest.raises(aiohttp.ClientError):  # a body shorter than Content-Length
            await _post(proxy.port, "half", "/big")
    finally:
        await proxy.close()
    assert seen == ["half"]


async def test_duplicate_sends_the_request_twice_and_answers_once(upstream):
    port, seen = upstream
    proxy = await _proxy(port, duplicate=1.0)
    try:
        assert await _post(proxy.port, "twice") == (200, b"xxxxx")
        await asyncio.wait_for(proxy.idle(), 5)
    finally:
        await proxy.close()
    assert seen == ["twice", "twice"]


async def test_delay_still_delivers(upstream):
    port, seen = upstream
    proxy = await _proxy(port, delay=1.0, max_delay=0.05)
    try:
        assert await _post(proxy.port, "slow") == (200, b"xxxxx")
    finally:
        await proxy.close()
    assert seen == ["slow"]
    assert proxy.counts["delay"] == 1


async def test_pause_holds_new_connections_until_resumed(upstream):
    port, seen = upstream
    proxy = await _proxy(port)
    try:
        proxy.pause()
        held = asyncio.create_task(_post(proxy.port, "held"))
        await asyncio.sleep(0.3)
        assert seen == [] and not held.done()
        await asyncio.wait_for(proxy.idle(), 1)  # a held connection is not in flight
        proxy.resume()
        assert await held == (200, b"xxxxx")
    finally:
        await proxy.close()
    assert seen == ["held"]


async def test_a_server_that_is_down_closes_the_client_connection():
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # nothing listens there once closed
    proxy = await _proxy(dead)
    try:
        with pytest.raises(aiohttp.ClientError):
            await _post(proxy.port, "nobody")
    finally:
        await proxy.close()
    assert proxy.counts["upstream_down"] == 1


def test_faults_are_drawn_with_their_probabilities():
    faults = Faults(drop=0.1, delay=0.2, cut=0.1, truncate=0.05, duplicate=0.15)
    rng = random.Random(3)
    drawn = [faults.choose(rng) for _ in range(20_000)]
    share = {name: drawn.count(name) / len(drawn) for name in (*FAULTS, "pass")}
    expected = {"drop": 0.1, "delay": 0.2, "cut": 0.1, "truncate": 0.05, "duplicate": 0.15}
    expected["pass"] = 0.4
    for name, p in expected.items():
        assert abs(share[name] - p) < 0.02, (name, share[name])
    # the same seed draws the same faults
    again = random.Random(3)
    assert [faults.choose(again) for _ in range(100)] == drawn[:100]
