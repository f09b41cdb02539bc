"""Rate limits over real HTTP: per subject whatever the device claim says, and per client
address for requests without a valid token."""

from __future__ import annotations

import pytest

from tests.fixtures.service import auth, run_sql

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


async def test_rotating_the_device_claim_does_not_escape_the_subjects_limit(
    pg_dsn, pg_url, sidecar_factory
):
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, NOTES, extra="limits: {rate: 5/h}")  # no refill to speak of
    statuses = []
    for i in range(20):
        resp = await sc.client.get("/v1/pull", headers=auth(1, device_id=f"device-{i}"))
        statuses.append(resp.status)
        if resp.status == 429:
            body = await resp.json(content_type=None)
            assert body["code"] == "rate_limited" and int(resp.headers["Retry-After"]) >= 1
    assert statuses.count(200) == 5 and statuses.count(429) == 15, statuses
    other = await sc.client.get("/v1/pull", headers=auth(2, device_id="device-0"))
    assert other.status == 200  # another subject has a bucket of its own


async def test_unauthenticated_flood_from_one_address_gets_429_while_users_are_served(
    pg_dsn, pg_url, sidecar_factory
):
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, NOTES, extra="limits: {unauthenticated_rate: 10/m}")
    statuses = []
    for _ in range(50):
        resp = await sc.client.get("/healthz")
        statuses.append(resp.status)
        if resp.status == 429:
            body = await resp.json(content_type=None)
            assert body["code"] == "rate_limited" and "unauthenticated_rate" in body["detail"]
            assert int(resp.headers["Retry-After"]) >= 1
            break
    assert statuses[-1] == 429, statuses
    # bad tokens count against the address too
    bad = [
        (await sc.client.get("/v1/pull", headers={"Authorization": "Bearer nope"})).status
        for _ in range(5)
    ]
    assert 429 in bad, bad
    # an authenticated caller from the same address is not held back
    for _ in range(30):
        resp = await sc.client.get("/v1/pull", headers=auth(1))
        assert resp.status == 200, await resp.text()
