"""Every example of docs/permissions.md runs: its schema, then each `yaml` block as the
collections of a sidecar, with random data and membership changes; each caller's pulled
state equals PostgreSQL's answer to the rule (the oracle)."""

from __future__ import annotations

import random
import re
from pathlib import Path

import psycopg
import pytest
import yaml

from tests.fixtures.service import Sidecar, auth, make_config, run_sql, state_of

pytestmark = pytest.mark.pg

GUIDE = Path(__file__).parents[2] / "docs" / "permissions.md"
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", GUIDE.read_text(), re.S)
SCHEMA = next(text for lang, text in BLOCKS if lang == "sql")
EXAMPLES = [text for lang, text in BLOCKS if lang == "yaml"]
USERS = ("alice", "bob", "carol")
CLAIM = re.compile(r"(?<!:):([a-z_]+)")


def _seed(dsn: str, rng: random.Random) -> None:
    statements = [
        "INSERT INTO orgs VALUES (1, 'o1'), (2, 'o2')",
        "INSERT INTO projects VALUES (1, 1, 'p1', false), (2, 1, 'p2', true), (3, 2, 'p3', false)",
        "INSERT INTO tasks SELECT g, 1 + g % 3, (ARRAY['alice','bob','carol'])[1 + g % 3], "
        "'t' || g, g % 2 = 0 FROM generate_series(1, 24) g",
        "INSERT INTO project_members VALUES (1, 'alice', 'member'), (3, 'bob', 'viewer')",
        "INSERT INTO org_members VALUES (1, 'carol')",
    ]
    run_sql(dsn, *statements)
    del rng


def _changes(rng: random.Random) -> list[str]:
    user = rng.choice(USERS)
    project = rng.randint(1, 3)
    return rng.choice(
        [
            [
                f"INSERT INTO project_members VALUES ({project}, '{user}', "
                f"'{rng.choice(['member', 'viewer'])}') ON CONFLICT DO NOTHING"
            ],
            [f"DELETE FROM project_members WHERE user_id = '{user}'"],
            [f"UPDATE project_members SET role = 'viewer' WHERE user_id = '{user}'"],
            [
                f"INSERT INTO org_members VALUES ({rng.randint(1, 2)}, '{user}') "
                "ON CONFLICT DO NOTHING"
            ],
            [f"DELETE FROM org_members WHERE user_id = '{user}'"],
            [f"UPDATE projects SET org_id = {rng.randint(1, 2)} WHERE id = {project}"],
            [f"UPDATE tasks SET project_id = {project} WHERE id = {rng.randint(1, 24)}"],
            [f"UPDATE projects SET public = NOT public WHERE id = {project}"],
        ]
    )


def _expected(dsn: str, table: str, rule: str, claims: dict) -> dict:
    where = CLAIM.sub(r"%(\1)s", rule)
    sql = f"SELECT * FROM {table} WHERE {where}"
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(sql, claims)
        names = [d.name for d in cur.description or ()]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    return {r["id"]: r for r in rows}


@pytest.mark.parametrize("example", range(len(EXAMPLES)))
async def test_each_example_of_the_guide_follows_postgres(
    example: int, pg_dsn: str, pg_url: str, tmp_path: Path
) -> None:
    assert len(EXAMPLES) >= 6
    run_sql(pg_dsn, SCHEMA)
    rng = random.Random(example)
    _seed(pg_dsn, rng)
    collections = yaml.safe_load(EXAMPLES[example])["collections"]
    body = yaml.safe_dump(collections, indent=2)
    text = "\n".join("  " + line for line in body.splitlines())
    sc = Sidecar(make_config(pg_url, tmp_path / "store.db", text))
    await sc.start()
    try:
        cursors: dict[tuple[str, bool], str | None] = {}
        states: dict[tuple[str, bool], dict] = {}
        for round_ in range(6):
            if round_:
                run_sql(pg_dsn, *_changes(rng))
            await sc.caught_up(pg_dsn)
            for user in USERS:
                for admin in (False, True):
                    key = (user, admin)
                    claims = {"sub": user, "role": "admin" if admin else "user"}
                    headers = auth(user, role=claims["role"])
                    cursor = cursors.get(key)
                    while True:
                        params = {"cursor": cursor} if cursor else {}
                        assert sc.client is not None
                        resp = await sc.client.get("/v1/pull", headers=headers, params=params)
                        page = await resp.json()
                        assert resp.status == 200, page
                        state_of(page["changes"], states.setdefault(key, {}))
                        cursor = page["cursor"]
                        if not page["has_more"]:
                            break
                    cursors[key] = cursor
                    for name, coll in collections.items():
                        want = _expected(pg_dsn, coll["table"], coll["read"], claims)
                        got = {dict(k[1])["id"] for k in states[key] if k[0] == name}
                        assert got == set(want), (name, key, round_)
    finally:
        await sc.stop()
