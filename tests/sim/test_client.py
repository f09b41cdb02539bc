"""The reference client without a database: backoff, `Retry-After`, which statuses are
retried, 410 → resync, and what each push result does to the replica and the outbox
(against a small aiohttp server playing the sidecar)."""

from __future__ import annotations

import random
from email.utils import formatdate

import pytest
from aiohttp import web

from tests.sim.client import Backoff, Client, Refused, Retry, retry_after_seconds


def test_backoff_grows_exponentially_with_full_jitter_up_to_the_cap():
    b = Backoff(random.Random(1), base=0.5, cap=8.0)
    ceilings = [0.5, 1, 2, 4, 8, 8, 8]
    for ceiling in ceilings:
        assert 0.0 <= b.delay() <= ceiling
    third = []
    for i in range(200):
        b = Backoff(random.Random(i), base=1.0, cap=100.0)
        for _ in range(2):
            b.delay()
        third.append(b.delay())  # the third failure in a row: in [0, 4]
    assert max(third) <= 4.0 and max(third) > 3.0 and min(third) < 1.0  # the whole range


def test_backoff_resets_after_a_success():
    b = Backoff(random.Random(2), base=1.0, cap=100.0)
    for _ in range(6):
        b.delay()
    b.reset()
    assert b.delay() <= 1.0


def test_retry_after_is_a_minimum():
    b = Backoff(random.Random(3), base=0.01, cap=0.02)
    assert b.delay(retry_after=5.0) == 5.0
    big = Backoff(random.Random(3), base=100.0, cap=100.0)
    assert big.delay(retry_after=1.0) >= 1.0


def test_retry_after_header_forms():
    assert retry_after_seconds("2") == 2.0
    assert retry_after_seconds(" 10 ") == 10.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("") is None
    assert retry_after_seconds("soon") is None
    date = formatdate(1_000_030, usegmt=True)
    assert retry_after_seconds(date, now=1_000_000) == pytest.approx(30.0)
    assert retry_after_seconds(formatdate(1_000_000, usegmt=True), now=1_000_030) == 0.0


class FakeSidecar:
    """Answers pushes and pulls from scripted responses."""

    def __init__(self) -> None:
        self.push_answers: list[web.Response] = []
        self.pull_answers: list[web.Response] = []
        self.pushed: list[list[dict]] = []
        self.pulled: list[dict] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/push", self.push)
        app.router.add_get("/v1/pull", self.pull)
        return app

    async def push(self, request: web.Request) -> web.Response:
        self.pushed.append((await request.json())["mutations"])
        return self.push_answers.pop(0)

    async def pull(self, request: web.Request) -> web.Response:
        self.pulled.append(dict(request.query))
        return self.pull_answers.pop(0)


def page(changes: list, cursor: str, has_more: bool = False) -> web.Response:
    body = {"changes": changes, "cursor": cursor, "has_more": has_more, "schema_version": "x"}
    return web.json_response(body)


def problem(status: int, code: str, retry_after: str | None = None) -> web.Response:
    headers = {"Retry-After": retry_after} if retry_after else {}
    body = {"status": status, "code": code}
    return web.json_response(body, status=status, headers=headers)


def upsert(i: int, rev: str, **row) -> dict:
    return {"collection": "t", "op": "upsert", "key": {"id": i},
            "row": {"id": i, **row}, "rev": rev, "version": "1"}  # fmt: skip


@pytest.fixture
async def fake(aiohttp_server):
    sidecar = FakeSidecar()
    server = await aiohttp_server(sidecar.app())
    client = Client(str(server.make_url("")), "token", rng=random.Random(0), backoff_base=0.1)
    return sidecar, client


async def test_a_503_is_retried_after_its_retry_after_and_the_same_ids_are_sent(fake):
    sidecar, client = fake
    m = client.insert("t", {"v": 1}, key={"id": 1})
    sidecar.push_answers.append(problem(503, "unavailable", "2"))
    with pytest.raises(Retry) as retry:
        await client.sync()
    assert retry.value.delay >= 2.0
    assert client.outbox == [m]
    result = {"id": m.id, "status": "duplicate", "rev": "r1"}
    sidecar.push_answers.append(web.json_response({"results": [result], "lsn": None}))
    sidecar.pull_answers.append(page([upsert(1, "r1", v=1)], "e-1"))
    await client.sync()
    assert [b[0]["id"] for b in sidecar.pushed] == [m.id, m.id]
    assert client.outbox == [] and client.backoff.failures == 0
    assert client.replica.table("t") == {(("id", 1),): {"id": 1, "v": 1}}


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_retryable_statuses(fake, status):
    sidecar, client = fake
    sidecar.pull_answers.append(problem(status, "x"))
    with pytest.raises(Retry):
        await client.sync()


@pytest.mark.parametrize("status", [400, 401, 403, 413])
async def test_refusals_are_not_retried_blindly(fake, status):
    sidecar, client = fake
    sidecar.pull_answers.append(problem(status, "x"))
    with pytest.raises(Refused):
        await client.sync()


async def test_a_410_drops_the_replica_and_pulls_from_scratch(fake):
    sidecar, client = fake
    sidecar.pull_answers.append(page([upsert(1, "a", v=1), upsert(2, "b", v=2)], "e1-2"))
    await client.sync()
    sidecar.pull_answers += [problem(410, "cursor_expired"), page([upsert(2, "c", v=3)], "e2-1")]
    await client.sync()
    assert [q.get("cursor") for q in sidecar.pulled] == [None, "e1-2", None]
    assert client.replica.table("t") == {(("id", 2),): {"id": 2, "v": 3}}
    assert client.replica.cursor == "e2-1"


async def test_a_conflict_puts_the_server_row_in_the_replica(fake):
    sidecar, client = fake
    sidecar.pull_answers.append(page([upsert(1, "r0", v=1), upsert(2, "s0", v=1)], "e-1"))
    await client.sync()
    a = client.update("t", {"id": 1}, {"v": 5})
    b = client.update("t", {"id": 2}, {"v": 6})
    assert (a.base_rev, a.base, b.base_rev) == ("r0", {"v": 1}, "s0")
    results = [
        {"id": a.id, "status": "conflict", "rev": "r9", "row": {"id": 1, "v": 9},
         "error": {"code": "conflict"}},
        {"id": b.id, "status": "conflict", "error": {"code": "not_found"}},
    ]  # fmt: skip
    sidecar.push_answers.append(web.json_response({"results": results, "lsn": None}))
    sidecar.pull_answers.append(page([], "e-1"))
    await client.sync()
    assert client.replica.table("t") == {(("id", 1),): {"id": 1, "v": 9}}
    assert client.replica.get("t", {"id": 1}) == ({"id": 1, "v": 9}, "r9")
    assert client.outbox == []
    assert client.answers[a.id]["status"] == "conflict"


async def test_an_applied_edit_rebases_the_later_edits_of_the_same_row(fake, monkeypatch):
    monkeypatch.setattr("tests.sim.client.BATCH", 1)  # one mutation per push
    sidecar, client = fake
    sidecar.pull_answers.append(page([upsert(1, "r0", v=1)], "e-1"))
    await client.sync()
    first = client.update("t", {"id": 1}, {"v": 2})
    second = client.update("t", {"id": 1}, {"v": 3})
    assert first.base_rev == second.base_rev == "r0"
    for m, rev in ((first, "r1"), (second, "r2")):
        result = {"id": m.id, "status": "applied", "rev": rev, "row": {"id": 1, **m.data}}
        sidecar.push_answers.append(web.json_response({"results": [result], "lsn": "0/1"}))
    sidecar.pull_answers.append(page([], "e-1"))
    await client.sync()
    assert [b[0]["base_rev"] for b in sidecar.pushed] == ["r0", "r1"]
    assert client.replica.get("t", {"id": 1}) == ({"id": 1, "v": 3}, "r2")


async def test_an_answer_cut_short_is_retried(fake, aiohttp_server):
    async def cut(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "100"})
        await resp.prepare(request)
        await resp.write(b'{"changes": [')
        request.transport.close()  # type: ignore[union-attr]
        return resp

    app = web.Application()
    app.router.add_get("/v1/pull", cut)
    server = await aiohttp_server(app)
    client = Client(str(server.make_url("")), "t", rng=random.Random(0), backoff_base=0.1)
    with pytest.raises(Retry):
        await client.sync()
    assert client.counts["network_error"] == 1
