"""`server.admin_port` (issue 17, item 3), over the service's real listeners: with it, the
operations endpoints (health, readiness, metrics, the OpenAPI document, the audit API) are
served on their own port and answer 404 on the public one, which carries only the sync
protocol (and the adapters); without it, everything is on the one port as before."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from sidecar.embedded import free_port
from sidecar.errors import ConfigError
from sidecar.http.listeners import Listeners
from sidecar.serve import start_http
from sidecar.service import Service
from tests.fixtures.service import auth, make_config, run_sql

pytestmark = pytest.mark.pg

SCHEMA = """
CREATE TABLE notes (id int PRIMARY KEY, owner_id int, body text);
INSERT INTO notes VALUES (1, 1, 'a');
"""
NOTES = """
  notes:
    table: notes
    read: "owner_id = :sub"
"""
OPS = ("/healthz", "/readyz", "/metrics", "/v1/openapi.json")
AUDIT = "/v1/audit?collection=notes&key=" + json.dumps({"id": 1})
SYNC = ("/v1/pull", "/v1/schema", "/watermelondb/sync")

Start = Callable[[str], Awaitable[tuple[str, int, int | None]]]


@pytest.fixture
async def listening(pg_dsn: str, pg_url: str, tmp_path: Path) -> AsyncIterator[Start]:
    """`start(server_yaml)` → (host, public port, admin port or None)."""
    run_sql(pg_dsn, SCHEMA)
    started: list[tuple[Service, Listeners]] = []

    async def start(server: str) -> tuple[str, int, int | None]:
        port = free_port()
        extra = f"server: {{host: 127.0.0.1, port: {port}{server}}}"
        config = make_config(pg_url, tmp_path / "store.db", NOTES, extra, ":role = 'admin'")
        service = await Service.start(config)
        listeners = await start_http(service)
        started.append((service, listeners))
        await service.capture.wait_ready(60)
        return "127.0.0.1", port, config.server.admin_port

    yield start
    for service, listeners in started:
        await listeners.close()
        await service.close()


async def _statuses(base: str, paths: tuple[str, ...]) -> dict[str, int]:
    headers = auth(1, role="admin")
    async with aiohttp.ClientSession() as http:
        statuses = {}
        for path in paths:
            async with http.get(base + path, headers=headers) as resp:
                statuses[path.split("?")[0]] = resp.status
                if resp.status == 404:
                    body = await resp.json(content_type=None)
                    assert body["code"] == "not_found", body
        return statuses


async def test_admin_port_serves_the_operations_endpoints_apart(listening: Start) -> None:
    admin_port = free_port()
    host, port, admin = await listening(f", admin_port: {admin_port}")
    assert admin == admin_port
    public = await _statuses(f"http://{host}:{port}", (*OPS, AUDIT, *SYNC))
    assert public == {
        **dict.fromkeys(OPS, 404),
        "/v1/audit": 404,
        **dict.fromkeys(SYNC, 200),
    }, public
    ops = await _statuses(f"http://{host}:{admin_port}", (*OPS, AUDIT, *SYNC))
    assert ops == {**dict.fromkeys(OPS, 200), "/v1/audit": 200, **dict.fromkeys(SYNC, 404)}, ops


async def test_without_admin_port_everything_is_on_the_one_port(listening: Start) -> None:
    host, port, admin = await listening("")
    assert admin is None
    statuses = await _statuses(f"http://{host}:{port}", (*OPS, AUDIT, *SYNC))
    assert set(statuses.values()) == {200}, statuses


async def test_moving_the_admin_port_needs_a_restart(pg_dsn, pg_url, tmp_path, sidecar_factory):
    run_sql(pg_dsn, SCHEMA)
    first, second = free_port(), free_port()
    sc = await sidecar_factory(pg_url, NOTES, extra=f"server: {{admin_port: {first}}}")
    before = sc.service.config
    moved = make_config(pg_url, tmp_path / "store.db", NOTES, f"server: {{admin_port: {second}}}")
    with pytest.raises(ConfigError, match=r"server\.tls/admin_port/admin_host changed"):
        await sc.service.reload(moved)
    assert sc.service.config is before
