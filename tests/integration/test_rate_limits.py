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


def _quota(resp) -> tuple[int, int, int]:  # type: ignore[no-untyped-def]
    h = resp.headers
    return int(h["RateLimit-Limit"]), int(h["RateLimit-Remaining"]), int(h["RateLimit-Reset"])


async def test_sync_answers_tell_the_quota_counting_down_to_the_429(
    pg_dsn, pg_url, sidecar_factory
):
    """Issue 17, item 5: RateLimit-Limit/-Remaining/-Reset on pull, push, the stream's start
    and an adapter's answers, counting down over the subject's requests (all its devices);
    the 429 still has Retry-After."""
    run_sql(pg_dsn, SCHEMA)
    writable = NOTES + '    write: {ops: [insert], check: "owner_id = :sub"}\n'
    sc = await sidecar_factory(pg_url, writable, extra="limits: {rate: 10/h}")
    client = sc.client
    push = {"mutations": [{"id": "m1", "collection": "notes", "op": "insert",
                           "data": {"id": 2, "owner_id": 1, "body": "b"}}]}  # fmt: skip
    answers = [
        await client.get("/v1/pull", headers=auth(1)),
        await client.post("/v1/push", json=push, headers=auth(1, device_id="phone")),
        await client.get("/watermelondb/sync", headers=auth(1)),
        await client.get("/v1/pull", headers={**auth(1), "Accept": "application/x-ndjson"}),
    ]
    async with client.get("/v1/stream", headers=auth(1, device_id="tablet")) as stream:
        assert stream.status == 200 and stream.content_type == "text/event-stream"
        answers.append(stream)
    for resp in answers:
        assert resp.status == 200, await resp.text()
    quotas = [_quota(r) for r in answers]
    assert [q[:2] for q in quotas] == [(10, 9), (10, 8), (10, 7), (10, 6), (10, 5)], quotas
    assert all(0 < reset <= 3600 for _, _, reset in quotas), quotas
    assert answers[0].headers["RateLimit-Policy"] == "10;w=3600"
    remaining = [_quota(await client.get("/v1/pull", headers=auth(1)))[1] for _ in range(5)]
    assert remaining == [4, 3, 2, 1, 0]
    refused = await client.get("/v1/pull", headers=auth(1))
    assert refused.status == 429 and int(refused.headers["Retry-After"]) >= 1
    limit, left, reset = _quota(refused)
    assert (limit, left) == (10, 0) and reset >= int(refused.headers["Retry-After"])
    other = await client.get("/v1/pull", headers=auth(2))  # a bucket of its own
    assert other.status == 200 and _quota(other)[:2] == (10, 9)


async def test_no_quota_headers_where_no_limit_applies(pg_dsn, pg_url, sidecar_factory):
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, NOTES, extra="limits: {unauthenticated_rate: 30/m}")
    pulled = await sc.client.get("/v1/pull", headers=auth(1))  # limits.rate: none
    assert pulled.status == 200 and "RateLimit-Limit" not in pulled.headers
    health = [await sc.client.get("/healthz") for _ in range(2)]  # the address's limit
    assert [_quota(r)[:2] for r in health] == [(30, 29), (30, 28)]
    assert health[0].headers["RateLimit-Policy"] == "30;w=60"
