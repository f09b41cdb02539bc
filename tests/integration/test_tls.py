"""HTTPS on the public listener (issue 17, item 1), over real sockets with certificates made
at test time: a pull over HTTPS, plain HTTP refused on the TLS port, mutual TLS (no client
certificate or one of another CA refused; a token bound to the certificate's CN), and
certificate files rotated under a running listener."""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
import structlog
from structlog.testing import LogCapture

from sidecar.embedded import free_port
from sidecar.http.listeners import Listeners
from sidecar.serve import start_http
from sidecar.service import Service
from tests.fixtures.service import auth, make_config, run_sql, wait_until
from tests.support.certs import Authority, Issued

pytestmark = pytest.mark.pg

SCHEMA = """
CREATE TABLE notes (id int PRIMARY KEY, owner_id int, body text);
INSERT INTO notes VALUES (1, 1, 'a');
"""
NOTES = """
  notes:
    table: notes
    read: "owner_id = :sub"
    write: {ops: [insert], check: "owner_id = :sub"}
"""

Start = Callable[[str], Awaitable[str]]


@pytest.fixture
async def https_sidecar(pg_dsn: str, pg_url: str, tmp_path: Path) -> AsyncIterator[Start]:
    """`start(server_yaml)` runs the service with its real listeners (`serve.start_http`)
    and returns the public port's https:// base URL."""
    run_sql(pg_dsn, SCHEMA)
    started: list[tuple[Service, Listeners]] = []

    async def start(server: str) -> str:
        port = free_port()
        extra = f"server: {{host: 127.0.0.1, port: {port}, {server}}}"
        config = make_config(pg_url, tmp_path / "store.db", NOTES, extra)
        service = await Service.start(config)
        listeners = await start_http(service)
        started.append((service, listeners))
        await service.capture.wait_ready(60)
        return f"https://127.0.0.1:{port}"

    yield start
    for service, listeners in started:
        await listeners.close()
        await service.close()


def _client_context(ca: Authority, client: Issued | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.path))
    if client is not None:
        context.load_cert_chain(*client.files())
    return context


async def _get(base: str, path: str, context: ssl.SSLContext, **kw: object) -> tuple[int, dict]:
    return await _call("GET", base, path, context, **kw)


async def _call(
    method: str, base: str, path: str, context: ssl.SSLContext, **kw: object
) -> tuple[int, dict]:
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http,
        http.request(method, base + path, **kw) as resp,  # type: ignore[arg-type]
    ):
        return resp.status, await resp.json(content_type=None)


async def _server_fingerprint(port: int, context: ssl.SSLContext) -> str:
    """The SHA-256 of the certificate a new connection is shown."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return hashlib.sha256(der).hexdigest()
    finally:
        writer.close()


def _tls(server: Issued, **more: str) -> str:
    keys = {"cert": str(server.cert), "key": str(server.key), **more}
    return "tls: {" + ", ".join(f'{k}: "{v}"' for k, v in keys.items()) + "}"


async def test_pull_over_https_and_plain_http_refused(https_sidecar: Start, tmp_path: Path) -> None:
    ca = Authority(tmp_path, "server")
    server = ca.issue(tmp_path / "server", "127.0.0.1", server=True)
    base = await https_sidecar(_tls(server))
    status, body = await _get(base, "/v1/pull", _client_context(ca), headers=auth(1))
    assert status == 200 and [c["row"]["body"] for c in body["changes"]] == ["a"]
    plain = base.replace("https://", "http://")
    with pytest.raises(aiohttp.ClientError):  # the TLS port does not speak plain HTTP
        async with aiohttp.ClientSession() as http, http.get(plain + "/healthz") as resp:
            await resp.read()
    port = int(base.rsplit(":", 1)[1])
    assert await _server_fingerprint(port, _client_context(ca)) == server.fingerprint


async def test_mutual_tls_refuses_clients_without_a_certificate_of_the_ca(
    https_sidecar: Start, tmp_path: Path
) -> None:
    server_ca = Authority(tmp_path, "server")
    devices = Authority(tmp_path, "devices")
    stranger = Authority(tmp_path, "stranger")
    server = server_ca.issue(tmp_path / "server", "127.0.0.1", server=True)
    phone = devices.issue(tmp_path / "phone", "device-7", server=False)
    forged = stranger.issue(tmp_path / "forged", "device-7", server=False)
    base = await https_sidecar(_tls(server, client_ca=str(devices.path), bind_claim="device_id"))
    for client in (None, forged):
        with pytest.raises(aiohttp.ClientError):
            await _get(base, "/healthz", _client_context(server_ca, client))
    context = _client_context(server_ca, phone)
    status, body = await _get(base, "/v1/pull", context, headers=auth(1, device_id="device-7"))
    assert status == 200 and len(body["changes"]) == 1
    # the request's log lines name the client certificate
    push = {"mutations": [{"id": "m1", "collection": "notes", "op": "insert",
                           "data": {"id": 2, "owner_id": 1, "body": "b"}}]}  # fmt: skip
    logs = LogCapture()
    saved = structlog.get_config()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, logs])
    try:
        status, body = await _call(
            "POST", base, "/v1/push", context, json=push, headers=auth(1, device_id="device-7")
        )
    finally:
        structlog.configure(**saved)
    assert status == 200 and body["results"][0]["status"] == "applied", body
    [line] = [e for e in logs.entries if e["event"] == "mutation"]
    assert line["client_cn"] == "device-7" and line["client_cert"] == phone.fingerprint
    # a token of another device (or none named) is refused over this certificate
    for claims in ({"device_id": "device-8"}, {}):
        status, body = await _get(base, "/v1/pull", context, headers=auth(1, **claims))
        assert status == 403 and body["code"] == "certificate_mismatch", body
        assert "server.tls.bind_claim" in body["detail"]


async def test_rotated_certificate_files_are_served_without_a_restart(
    https_sidecar: Start, tmp_path: Path
) -> None:
    ca = Authority(tmp_path, "server")
    live = ca.issue(tmp_path / "live", "127.0.0.1", server=True)
    base = await https_sidecar(_tls(live))
    port = int(base.rsplit(":", 1)[1])
    context = _client_context(ca)
    assert await _server_fingerprint(port, context) == live.fingerprint
    # a half-done rotation (the new certificate, the old key) is not taken
    fresh = ca.issue(tmp_path / "fresh", "127.0.0.1", server=True)
    os.replace(fresh.cert, live.cert)
    await asyncio.sleep(4)  # more than one check of the files (every 3 s)
    assert await _server_fingerprint(port, context) == live.fingerprint
    os.replace(fresh.key, live.key)  # now both: the new pair

    async def rotated() -> bool:
        return await _server_fingerprint(port, context) == fresh.fingerprint

    await wait_until(rotated, timeout=30, what="the rotated certificate")
    status, _ = await _get(base, "/v1/pull", context, headers=auth(1))
    assert status == 200
