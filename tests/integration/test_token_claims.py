"""Token claims of unusual shapes (issue 12, items 14 and 15): time claims that are not
numbers are refused (401 `unauthorized`), long-lived requests end when the token expires,
and a `role` claim that is a list is matched by membership by `auth.admin` (no 500).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jwt
import pytest

from tests.fixtures.service import SECRET, run_sql

pytestmark = pytest.mark.pg

SCHEMA = """
CREATE TABLE items (id int PRIMARY KEY, owner text, title text);
INSERT INTO items VALUES (1, '1', 'one');
"""
COLLECTIONS = '  items: {table: items, read: "owner = :sub"}\n'


def bearer(**claims: Any) -> dict[str, str]:
    now = int(time.time())
    body = {"sub": "1", "iat": now, "exp": now + 3600, **claims}
    return {"Authorization": "Bearer " + jwt.encode(body, SECRET, algorithm="HS256")}


@pytest.fixture
async def sc(pg_dsn, pg_url, sidecar_factory):
    run_sql(pg_dsn, SCHEMA)
    return await sidecar_factory(
        pg_url, COLLECTIONS, extra="limits: {pull_wait: 60s}", admin=":role = 'admin'"
    )


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": str(int(time.time()) + 3600)},  # accepted as a number by PyJWT
        {"nbf": str(int(time.time()) - 60)},
        {"iat": True},
        {"nbf": False},
        {"exp": 10**400},  # no double holds it
    ],
    ids=["exp-string", "nbf-string", "iat-bool", "nbf-bool", "exp-huge"],
)
async def test_time_claims_must_be_numbers(sc, claims):
    assert sc.client is not None
    for path in ("/v1/pull", "/v1/stream"):
        resp = await sc.client.get(path, headers=bearer(**claims))
        body = await resp.json(content_type=None)
        assert resp.status == 401, (path, body)
        assert body["code"] == "unauthorized"
        assert "must be a number" in body["detail"] or "malformed" in body["detail"]


async def test_a_stream_ends_when_its_token_expires(sc):
    assert sc.client is not None
    resp = await sc.client.get(
        "/v1/stream", params={"heartbeat": "1"}, headers=bearer(exp=int(time.time()) + 3)
    )
    assert resp.status == 200
    async with asyncio.timeout(30):  # bound: the token lives 3 s
        text = (await resp.read()).decode()
    assert "event: reauth" in text and '"code":"unauthorized"' in text


async def test_a_live_pull_ends_when_its_token_expires(sc):
    assert sc.client is not None
    page = await sc.pull(1)
    params = {"cursor": page["cursor"], "live": "true", "timeout": "60"}
    async with asyncio.timeout(30):  # bound: the token lives 3 s, the wait asked 60 s
        resp = await sc.client.get(
            "/v1/pull", params=params, headers=bearer(exp=int(time.time()) + 3)
        )
        body = await resp.json()
    assert resp.status == 200 and body["changes"] == [], body
    # within the leeway the token still reads, but a live wait on it is refused at once
    resp = await sc.client.get("/v1/pull", params=params, headers=bearer(exp=int(time.time()) - 5))
    assert resp.status == 401 and (await resp.json())["code"] == "unauthorized"
    resp = await sc.client.get(
        "/v1/pull", params={"cursor": page["cursor"]}, headers=bearer(exp=int(time.time()) - 5)
    )
    assert resp.status == 200


@pytest.mark.parametrize(
    ("role", "status"),
    [
        (["admin", "user"], 200),
        (["user", "admin"], 200),
        ("admin", 200),
        (["user"], 403),
        ([], 403),
        ({"admin": True}, 403),
        (True, 403),
        ([["admin"]], 403),
    ],
)
async def test_admin_rule_matches_list_claims_by_membership(sc, role, status):
    assert sc.client is not None
    resp = await sc.client.get(
        "/v1/audit",
        params={"collection": "items", "key": '{"id": 1}'},
        headers=bearer(role=role),
    )
    body = await resp.json(content_type=None)
    assert resp.status == status, body
    if status == 403:
        assert body["code"] == "forbidden"
