"""What the process writes: JSON lines only (not on a terminal), and never a token, the
JWT secret or a database password — also when aiohttp refuses a malformed request."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from tests.fixtures.service import SECRET, run_sql, token
from tests.support.process import SidecarRun

pytestmark = [pytest.mark.pg, pytest.mark.slow]

SCHEMA = "CREATE TABLE notes (id int PRIMARY KEY, owner_id int, body text)"
NOTES = """
  notes:
    table: notes
    read: "owner_id = :sub"
"""
PASSWORD = "hunter2-db-password"  # the test server trusts local connections: ignored


async def _raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(-1), 15)
    finally:
        writer.close()


async def test_malformed_requests_log_json_lines_without_tokens_or_secrets(
    pg_dsn, pg_url, tmp_path
):
    run_sql(pg_dsn, SCHEMA)
    url = pg_url.replace("postgresql://", "postgresql://").replace("@", f":{PASSWORD}@", 1)
    run = await SidecarRun(tmp_path, url, NOTES, extra="log: {level: debug}").start()
    bearer = token(1)
    forged = token(2)[:-6] + "AAAAAA"  # a bad signature: refused with 401
    try:
        answers = [
            await _raw(
                run.port,
                b"GET /v1/pull HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                + bearer.encode()
                + b"\r\nX-Note: a\x01b\r\n\r\n",
            ),
            await _raw(
                run.port,
                b"GET /v1/pull HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                + bearer.encode()
                + b"\x01\r\n\r\n",
            ),
            await _raw(
                run.port,
                b"GET /v1/pull HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Authorization: Bearer " + forged.encode() + b"\r\n\r\n",
            ),
        ]
    finally:
        run.stop()
    output = run.output()
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert lines, "the process logged nothing"
    events = []
    for ln in lines:
        try:
            events.append(orjson.loads(ln))
        except orjson.JSONDecodeError:
            raise AssertionError(f"not a JSON line: {ln!r}") from None
    for secret in (bearer, bearer.split(".")[2], forged.split(".")[2], SECRET, PASSWORD):
        assert secret not in output, f"{secret[:12]}… reached the log"
    assert any(e.get("logger") == "asyncio" for e in events), events  # stdlib logging: JSON
    refused = [e for e in events if e.get("event") == "refused a malformed HTTP request"]
    assert len(refused) == 2 and "Invalid header value char" in refused[0]["reason"], refused
    for raw in answers:
        head = raw.partition(b"\r\n\r\n")[0].decode("latin-1")
        status = int(head.split()[1])
        assert status in (400, 401), head
        assert "Content-Type: application/problem+json" in head, head
        assert bearer.encode() not in raw
        assert "Server: sidecar\r\n" in head + "\r\n", head
        assert "X-Content-Type-Options: nosniff" in head, head
