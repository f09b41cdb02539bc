"""Several replicas over one PostgreSQL store, in this process: one leads (captures), the
others follow and serve pull, live pull, push and readiness from the shared store; a
leader whose lock session ends is fenced (its next write refused) and another takes over.
The same with real processes killed and replaced: `test_replicas_takeover.py`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import psycopg
import pytest

from sidecar.store.base import Fenced
from sidecar.store.pg import PGStore
from tests.fixtures.service import Sidecar, make_config, run_sql, wait_until

pytestmark = pytest.mark.pg

SCHEMA = """
CREATE TABLE items (id integer PRIMARY KEY, owner integer NOT NULL, val integer NOT NULL);
INSERT INTO items SELECT g, 1, 0 FROM generate_series(1, 20) g;
"""

ITEMS = """
  items:
    table: items
    read: "owner = :sub"
    write: {ops: [insert, update, delete]}
"""


async def replicas(pg_url: str, tmp_path: Path, n: int) -> list[Sidecar]:
    """`n` replicas over one store (the schema sidecar_store of the test database),
    started one after the other: the first leads."""
    config = make_config(pg_url, tmp_path / "unused.db", ITEMS, engine="postgresql")
    out = []
    for _ in range(n):
        out.append(await Sidecar(config).start())
    return out


def store_of(sc: Sidecar) -> PGStore:
    assert sc.service is not None and isinstance(sc.service.store, PGStore)
    return sc.service.store


async def ready(sc: Sidecar) -> dict:
    resp = await sc.get("/readyz", sub=None)
    body = await resp.json(content_type=None)
    assert resp.status == 200, body
    return body


@pytest.fixture
async def two(pg_dsn, pg_url, tmp_path):
    run_sql(pg_dsn, SCHEMA)
    made = await replicas(pg_url, tmp_path, 2)
    yield made
    for sc in made:
        await sc.stop()


async def test_one_replica_leads_and_the_other_serves_as_a_follower(two, pg_dsn):
    leader, follower = two
    assert store_of(leader).term is not None and store_of(follower).term is None
    assert (await ready(leader))["role"] == "leader"
    assert (await ready(follower))["role"] == "follower"
    metrics = await (await follower.get("/metrics", sub=None)).text()
    await wait_until(
        lambda: _metric(leader, "sidecar_leader 1.0"), 10, "the leader's sidecar_leader gauge"
    )
    assert "sidecar_replica_info{replica=" in metrics
    assert follower.service is not None and follower.service.capture.status.phase == "following"
    # the follower serves what the leader captured
    changes, cursor = await follower.pull_all(1)
    assert len(changes) == 20
    run_sql(pg_dsn, "UPDATE items SET val = 1 WHERE id = 3")
    await follower.caught_up(pg_dsn)  # read-your-writes on a follower: the shared position
    changes, _ = await follower.pull_all(1, cursor)
    assert [(c["key"]["id"], c["row"]["val"]) for c in changes] == [(3, 1)]


async def _metric(sc: Sidecar, line: str) -> bool:
    return line in await (await sc.get("/metrics", sub=None)).text()


async def test_a_live_pull_on_a_follower_is_woken_by_the_leaders_commit(two, pg_dsn):
    _leader, follower = two
    _, cursor = await follower.pull_all(1)
    waiter = asyncio.create_task(follower.pull(1, cursor, live="true", timeout=20))
    await asyncio.sleep(0.3)
    assert not waiter.done()
    run_sql(pg_dsn, "INSERT INTO items VALUES (100, 1, 7)")
    page = await asyncio.wait_for(waiter, 10)  # well before its 20 s timeout
    assert [c["key"]["id"] for c in page["changes"]] == [100]


async def test_a_cursor_taken_on_the_leader_continues_on_a_follower(two, pg_dsn):
    leader, follower = two
    run_sql(pg_dsn, "INSERT INTO items VALUES (101, 1, 0)")
    await leader.caught_up(pg_dsn)
    _, cursor = await leader.pull_all(1)  # at the leader's newest version
    # the follower may not have seen that version yet: it reads the store again, no 410
    page = await follower.pull(1, cursor)
    assert page["changes"] == []
    run_sql(pg_dsn, "UPDATE items SET val = 5 WHERE id = 101")
    await follower.caught_up(pg_dsn)
    changes, _ = await follower.pull_all(1, cursor)
    assert [(c["key"]["id"], c["row"]["val"]) for c in changes] == [(101, 5)]


async def test_a_push_retried_on_another_replica_is_a_duplicate(two, pg_dsn):
    leader, follower = two
    m = {
        "id": "m-1",
        "collection": "items",
        "op": "insert",
        "data": {"id": 200, "owner": 1, "val": 1},
    }
    status, body = await follower.push([m])
    assert status == 200 and body["results"][0]["status"] == "applied", body
    for sc in (leader, follower):  # at once (pending ids) and once captured
        status, body = await sc.push([m])
        assert status == 200 and body["results"][0]["status"] == "duplicate", body
    await follower.caught_up(pg_dsn)
    status, body = await leader.push([m])
    assert body["results"][0]["status"] == "duplicate", body
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM items WHERE id = 200").fetchone() == (1,)


async def test_a_leader_whose_lock_session_ends_is_fenced_and_another_takes_over(two, pg_dsn):
    leader, follower = two
    old, new = store_of(leader), store_of(follower)
    term = old.term
    assert term is not None
    pid = old.writer_pid()
    run_sql(pg_dsn, f"SELECT pg_terminate_backend({pid})")
    # the follower takes the lock and the next term within the takeover bound
    await wait_until(lambda: _is(lambda: new.term is not None), 10, "the follower to take over")
    assert new.term == term + 1
    await wait_until(lambda: _is(lambda: old.term is None), 10, "the old leader to step down")
    # no write under the old term lands: the old writer, connected again and believing
    # it still leads (as a leader cut off and back would), is refused its next commit
    await asyncio.to_thread(old.rollback)
    old._term = term
    with pytest.raises(Fenced):
        await asyncio.to_thread(old.commit, None)
    assert old.term is None
    assert (await ready(follower))["role"] == "leader"
    assert (await ready(leader))["role"] == "follower"
    # the new leader captures; both serve it, each row once
    run_sql(pg_dsn, "INSERT INTO items SELECT g, 1, 0 FROM generate_series(300, 309) g")
    for sc in (follower, leader):
        await sc.caught_up(pg_dsn)
        changes, _ = await sc.pull_all(1)
        ids = [c["key"]["id"] for c in changes]
        assert len(ids) == len(set(ids)) == 30


async def _is(pred) -> bool:
    return bool(pred())


async def test_sidecar_status_lists_every_replica_and_which_one_leads(
    two, pg_url, tmp_path, capsys
):
    from sidecar.cli import main
    from tests.fixtures.service import SECRET

    leader = two[0]
    cfg = tmp_path / "status.yaml"
    cfg.write_text(
        f"""
database: {{url: "{pg_url}", slot: sidecar_test, publication: sidecar_test}}
store: {{url: "{pg_url}", schema: sidecar_store}}
auth: {{jwt: {{secret: "{SECRET}"}}}}
collections:
{ITEMS}
"""
    )

    async def listed() -> list[dict]:
        capsys.readouterr()
        assert await asyncio.to_thread(main, ["status", "-c", str(cfg), "--json"]) == 0
        return orjson.loads(capsys.readouterr().out)["store"]["replicas"]

    async def both() -> bool:  # each heartbeat (every 2 s) says its current role
        return sorted(r["role"] for r in await listed()) == ["follower", "leader"]

    await wait_until(both, 15, "both replicas' heartbeats, with their roles")
    rows = await listed()
    assert [r["role"] for r in rows] == ["leader", "follower"]
    assert rows[0]["term"] == store_of(leader).term
    assert all(r["lag_seconds"] >= 0 and r["lsn"] for r in rows)
    assert await asyncio.to_thread(main, ["status", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert out.count("replica      ") == 2 and ": leader, term" in out
