"""Harness for end-to-end tests: a real database, the real service, real HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from sidecar.config.loader import load_config_text
from sidecar.config.model import Config
from sidecar.serve import build_app
from sidecar.service import Service

SECRET = "test-secret-0123456789-0123456789"


def run_sql(dsn: str, *statements: str) -> None:
    """Run statements on the test database, each in its own transaction."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for s in statements:
            conn.execute(s)


def token(sub: str | int, **claims: Any) -> str:
    now = int(time.time())
    body = {"sub": str(sub), "iat": now, "exp": now + 3600, **claims}
    return jwt.encode(body, SECRET, algorithm="HS256")


def auth(sub: str | int, **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(sub, **claims)}"}


def make_config(
    url: str, store: Path, collections: str, extra: str = "", admin: str | None = None
) -> Config:
    admin_key = f', admin: "{admin}"' if admin else ""
    text = f"""
database: {{url: "{url}", slot: sidecar_test, publication: sidecar_test}}
store: {{path: "{store}"}}
auth: {{jwt: {{secret: "{SECRET}"}}{admin_key}}}
{extra}
collections:
{collections}
"""
    return load_config_text(text, file="test.yaml", env={})


async def wait_until(
    pred: Callable[[], Awaitable[bool]], timeout: float = 15.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if await pred():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class Sidecar:
    """A started service with an HTTP client; `restart()` keeps the store file."""

    config: Config
    service: Service | None = None
    client: TestClient | None = None
    cursors: dict[str, str] = field(default_factory=dict)

    async def start(self) -> Sidecar:
        self.service = await Service.start(self.config)
        self.client = TestClient(TestServer(build_app(self.service)))
        await self.client.start_server()
        await self.service.capture.wait_ready(60)
        return self

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None
        if self.service is not None:
            await self.service.close()
            self.service = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def get(self, path: str, sub: str | int | None = 1, **kw: Any) -> Any:
        assert self.client is not None
        headers = dict(kw.pop("headers", {}))
        if sub is not None:
            headers.update(auth(sub))
        return await self.client.get(path, headers=headers, **kw)

    async def pull(self, sub: str | int = 1, cursor: str | None = None, **params: Any) -> dict:
        q = {k: str(v) for k, v in params.items()}
        if cursor:
            q["cursor"] = cursor
        resp = await self.get("/v1/pull", sub=sub, params=q)
        body = await resp.json(content_type=None)
        assert resp.status == 200, body
        return body

    async def push(
        self, mutations: list[dict], sub: str | int = 1, atomic: bool = False, **claims: Any
    ) -> tuple[int, dict]:
        assert self.client is not None
        resp = await self.client.post(
            "/v1/push",
            json={"mutations": mutations, "atomic": atomic},
            headers=auth(sub, **claims),
        )
        return resp.status, await resp.json(content_type=None)

    async def pull_all(self, sub: str | int = 1, cursor: str | None = None) -> tuple[list, str]:
        """Every page until has_more is false."""
        changes: list = []
        while True:
            page = await self.pull(sub, cursor)
            changes.extend(page["changes"])
            cursor = page["cursor"]
            if not page["has_more"]:
                return changes, cursor

    async def sync(self, sub: str | int = 1) -> list:
        """Pull from this subject's last cursor (remembered) until consistent."""
        changes, self.cursors[str(sub)] = await self.pull_all(sub, self.cursors.get(str(sub)))
        return changes

    async def caught_up(self, dsn: str) -> None:
        """Wait until the store has applied everything committed so far."""
        with psycopg.connect(dsn) as conn:
            lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        assert self.service is not None
        from sidecar.lsn import str_to_lsn

        ok = await self.service.capture.wait_for_lsn(str_to_lsn(str(lsn)), 15)
        assert ok, "capture did not catch up"


def state_of(changes: list, state: dict | None = None) -> dict:
    """Apply changes to a client-side map of key → row, like a client would."""
    state = {} if state is None else state
    for ch in changes:
        k = (ch["collection"], tuple(sorted(ch["key"].items())))
        if ch["op"] == "upsert":
            state[k] = ch["row"]
        else:
            state.pop(k, None)
    return state


@pytest.fixture
async def sidecar_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Sidecar]]]:
    made: list[Sidecar] = []

    async def factory(
        url: str, collections: str, extra: str = "", admin: str | None = None
    ) -> Sidecar:
        sc = Sidecar(make_config(url, tmp_path / "store.db", collections, extra, admin))
        made.append(sc)
        return await sc.start()

    yield factory
    for sc in made:
        await sc.stop()
