"""A read rule, the columns or the collections changed by a reload: the store is
reconciled, not rebuilt. A client's old cursor keeps working (no 410, no 503), it receives
only what changed, and its folded state equals PostgreSQL's answer to the new rule — also
when the new rule narrows visibility in a way the old scopes cannot tell (a branch
removed), which needs the rule that was in force at the cursor."""

from __future__ import annotations

import asyncio
import random
import time

import psycopg
import pytest

from tests.fixtures.service import Sidecar, auth, make_config, run_sql, state_of

pytestmark = pytest.mark.pg

SCHEMA = """
CREATE TABLE docs (id int PRIMARY KEY, owner text NOT NULL, public boolean NOT NULL,
                   team text, title text NOT NULL);
INSERT INTO docs SELECT g, (ARRAY['alice','bob','carol'])[1 + g % 3], g % 4 = 0,
    (ARRAY['red','blue', NULL])[1 + g % 3], 't' || g FROM generate_series(1, 60) g;
"""
RULES = [
    "owner = :sub OR public",
    "owner = :sub",  # a branch removed: public rows of others must go
    "owner = :sub OR team = :team",
    "public",
    "team = :team",
    "true",
]
USERS = {"alice": "red", "bob": "blue", "carol": None}


def collections(rule: str, columns: str = "") -> str:
    return f"""
  docs:
    table: docs
    read: "{rule}"{columns}
  others:
    table: docs
    columns: [id, title]
    read: "owner = :sub"
"""


def expected(dsn: str, rule: str, sub: str) -> set[int]:
    where = rule.replace(":sub", "%(sub)s").replace(":team", "%(team)s")
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            f"SELECT id FROM docs WHERE {where}", {"sub": sub, "team": USERS[sub]}
        ).fetchall()
    return {r[0] for r in rows}


async def pull_all(sc: Sidecar, sub: str, cursor: str | None) -> tuple[list, str]:
    assert sc.client is not None
    headers = auth(sub, team=USERS[sub]) if USERS[sub] else auth(sub)
    changes: list = []
    while True:
        params = {"cursor": cursor} if cursor else {}
        resp = await sc.client.get("/v1/pull", headers=headers, params=params)
        body = await resp.json()
        assert resp.status == 200, body  # never a 410 or a 503
        changes.extend(body["changes"])
        cursor = body["cursor"]
        if not body["has_more"]:
            return changes, cursor


async def reloaded(sc: Sidecar, config) -> None:
    assert sc.service is not None
    runner = sc.service.capture
    await sc.service.reload(config)
    deadline = time.monotonic() + 40
    while not (
        sc.service.capture is not runner
        and sc.service.capture.status.phase == "streaming"
        and sc.service.routes["docs"].config.read.text == config.collections["docs"].read.text
    ):
        assert time.monotonic() < deadline, "the reload was not applied"
        await asyncio.sleep(0.05)


async def test_rule_changes_by_reload_move_clients_exactly(pg_dsn, pg_url, tmp_path) -> None:
    run_sql(pg_dsn, SCHEMA)
    store = tmp_path / "store.db"
    sc = Sidecar(make_config(pg_url, store, collections(RULES[0])))
    await sc.start()
    try:
        states: dict[str, dict] = {}
        cursors: dict[str, str | None] = {}
        rng = random.Random(7)
        for rule in RULES:
            if rule != RULES[0]:
                await reloaded(sc, make_config(pg_url, store, collections(rule)))
                run_sql(
                    pg_dsn, f"UPDATE docs SET title = title || '.' WHERE id = {rng.randint(1, 60)}"
                )
            await sc.caught_up(pg_dsn)
            for sub in USERS:
                changes, cursors[sub] = await pull_all(sc, sub, cursors.get(sub))
                state = state_of(changes, states.setdefault(sub, {}))
                got = {dict(k[1])["id"] for k in state if k[0] == "docs"}
                assert got == expected(pg_dsn, rule, sub), (rule, sub)
                others = {dict(k[1])["id"] for k in state if k[0] == "others"}
                assert others == expected(pg_dsn, "owner = :sub", sub)
                if rule != RULES[0]:  # the unchanged collection sent nothing again
                    assert all(
                        c["collection"] == "docs" or "." in c["row"]["title"]
                        for c in changes
                        if c["op"] == "upsert"
                    )
    finally:
        await sc.stop()


async def test_a_collection_removed_and_added_back_by_reload(pg_dsn, pg_url, tmp_path) -> None:
    run_sql(pg_dsn, SCHEMA)
    store = tmp_path / "store.db"
    both = make_config(pg_url, store, collections(RULES[1]))
    sc = Sidecar(both)
    await sc.start()
    try:
        _, cursor = await pull_all(sc, "alice", None)
        only_docs = make_config(
            pg_url,
            store,
            """
  docs:
    table: docs
    read: "owner = :sub"
""",
        )
        assert sc.service is not None
        runner = sc.service.capture
        await sc.service.reload(only_docs)
        deadline = time.monotonic() + 40
        while "others" in sc.service.routes or sc.service.capture is runner:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert sc.client is not None
        resp = await sc.client.get(
            "/v1/pull", headers=auth("alice", team="red"), params={"collections": "others"}
        )
        assert resp.status == 400  # no longer a collection
        changes, cursor = await pull_all(sc, "alice", cursor)
        assert changes == []  # nothing changed for docs
    finally:
        await sc.stop()
