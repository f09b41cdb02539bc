"""The listening socket under hostile clients: slow headers, too many connections
(`sidecar run` as its own process, real sockets, real PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import orjson
import pytest

from tests.fixtures.service import run_sql
from tests.support.process import SidecarRun

pytestmark = [pytest.mark.pg, pytest.mark.slow]

SCHEMA = "CREATE TABLE notes (id int PRIMARY KEY, owner_id int, body text)"
NOTES = """
  notes:
    table: notes
    read: "owner_id = :sub"
"""
PARTIAL = b"GET /healthz HTTP/1.1\r\nHost: sidecar\r\n"  # headers never finished


async def _closed(reader: asyncio.StreamReader) -> None:
    """Returns once the server has closed the connection (EOF or reset)."""
    with contextlib.suppress(ConnectionError):
        while await reader.read(4096):
            pass


async def _get(port: int, path: str = "/healthz") -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection: status, headers (lower-case names), body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        raw = await reader.read(-1)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return status, headers, body


async def _answer_within(port: int, seconds: float, want: int) -> tuple[dict[str, str], bytes]:
    """Probe until one fresh connection is answered `want` (each probe bounded)."""
    deadline = time.monotonic() + seconds
    seen: list[object] = []
    while time.monotonic() < deadline:
        try:
            status, headers, body = await asyncio.wait_for(_get(port), 5)
            if status == want:
                return headers, body
            seen.append(status)
        except (TimeoutError, ConnectionError, IndexError, ValueError) as exc:
            seen.append(type(exc).__name__)
        await asyncio.sleep(0.2)
    raise AssertionError(f"no {want} within {seconds}s; got {seen[-10:]}")


async def test_slow_headers_are_cut_off_at_the_header_timeout(pg_dsn, pg_url, tmp_path):
    """A slowloris client (headers trickled a line at a time, never finished) and a client
    that sends nothing are closed within limits.header_timeout (default 10 s) + slack."""
    run_sql(pg_dsn, SCHEMA)
    run = await SidecarRun(tmp_path, pg_url, NOTES).start()
    try:
        conns = [await asyncio.open_connection("127.0.0.1", run.port) for _ in range(30)]
        silent = [await asyncio.open_connection("127.0.0.1", run.port) for _ in range(5)]
        for _, writer in conns:
            writer.write(PARTIAL)

        async def trickle() -> None:
            while True:
                await asyncio.sleep(0.5)
                for _, writer in conns:
                    if not writer.is_closing():
                        with contextlib.suppress(ConnectionError):
                            writer.write(b"X-Slow: 1\r\n")

        dripping = asyncio.create_task(trickle())
        try:
            # 10 s header timeout, and generous slack for a loaded machine
            await asyncio.wait_for(
                asyncio.gather(*(_closed(r) for r, _ in conns + silent)), timeout=40
            )
        finally:
            dripping.cancel()
            for _, writer in conns + silent:
                writer.close()
        status, _, _ = await asyncio.wait_for(_get(run.port), 10)
        assert status == 200
    finally:
        run.stop()


async def test_past_the_descriptor_budget_new_connections_get_503_not_a_hang(
    pg_dsn, pg_url, tmp_path
):
    """Under a 256-descriptor limit, 300 connections with unfinished headers: a new
    connection is answered 503 at once (not left hanging), and /healthz is answered
    200 again once the slow ones are cut off."""
    run_sql(pg_dsn, SCHEMA)
    run = await SidecarRun(tmp_path, pg_url, NOTES, nofile=256).start()
    held: list[asyncio.StreamWriter] = []
    try:
        for _ in range(300):
            with contextlib.suppress(ConnectionError, OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", run.port)
                writer.write(PARTIAL)
                held.append(writer)
        headers, body = await _answer_within(run.port, 10, 503)
        assert orjson.loads(body)["code"] == "unavailable"
        assert headers["content-type"] == "application/problem+json"
        assert headers["retry-after"] == "1"
        await _answer_within(run.port, 40, 200)  # the slow ones timed out
    finally:
        for writer in held:
            writer.close()
        run.stop()
    assert run.proc is not None and run.proc.returncode == 0, run.output()[-3000:]


async def test_max_connections_answers_503_and_recovers(pg_dsn, pg_url, tmp_path):
    run_sql(pg_dsn, SCHEMA)
    run = await SidecarRun(
        tmp_path, pg_url, NOTES, extra="limits: {max_connections: 10, header_timeout: 60s}"
    ).start()
    held: list[asyncio.StreamWriter] = []
    try:
        for _ in range(10):
            _, writer = await asyncio.open_connection("127.0.0.1", run.port)
            writer.write(PARTIAL)
            held.append(writer)
        headers, body = await _answer_within(run.port, 10, 503)
        problem = orjson.loads(body)
        assert problem["code"] == "unavailable" and "max_connections" in problem["detail"]
        assert headers["server"] == "sidecar"
        for writer in held:
            writer.close()
        await _answer_within(run.port, 20, 200)
    finally:
        for writer in held:
            writer.close()
        run.stop()
