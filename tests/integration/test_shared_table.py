"""Several collections over one table: each gets every change of the table.

Random sequences of inserts, updates (scope moves, key changes, values left TOASTed and
unchanged), deletes and truncates; after each round, every collection's pulled state for
every subject equals what PostgreSQL returns for that collection's rule (the oracle: a
SELECT of its columns with the rule's WHERE).
"""

from __future__ import annotations

import random
import string
from typing import Any

import psycopg
import pytest

from sidecar.cli import main as cli_main
from tests.fixtures.service import SECRET, Sidecar, make_config, run_sql, state_of, wait_until

pytestmark = pytest.mark.pg

SUBJECTS = (1, 2, 3)

SCHEMA = """
CREATE TABLE items (
    id integer PRIMARY KEY,
    owner integer NOT NULL,
    viewer integer,
    public boolean NOT NULL DEFAULT false,
    title text NOT NULL,
    body text
);
ALTER TABLE items ALTER COLUMN body SET STORAGE EXTERNAL;
INSERT INTO items VALUES (1, 1, 2, false, 't1', 'b1'), (2, 2, NULL, true, 't2', NULL),
                         (3, 3, 1, false, 't3', 'b3');
"""

MINE = """
  mine:
    table: items
    columns: [id, owner, title, body]
    read: "owner = :sub"
"""
SHARED = """
  shared:
    table: items
    read: "viewer = :sub OR public"
"""
TITLES = """
  titles:
    table: items
    columns: [id, title]
    read: "public"
"""
COLLECTIONS = MINE + SHARED + TITLES

# Per collection: its columns and the rule as SQL (the oracle).
ORACLE = {
    "mine": ("id, owner, title, body", "owner = %(sub)s"),
    "shared": ("id, owner, viewer, public, title, body", "viewer = %(sub)s OR public"),
    "titles": ("id, title", "public"),
}


def expected(dsn: str, sub: int, names: tuple[str, ...] = tuple(ORACLE)) -> dict:
    state: dict = {}
    with psycopg.connect(dsn) as conn:
        for name in names:
            columns, where = ORACLE[name]
            cur = conn.execute(f"SELECT {columns} FROM items WHERE {where}", {"sub": str(sub)})
            names = [d.name for d in cur.description or ()]
            for values in cur.fetchall():
                row = dict(zip(names, values, strict=True))
                state[(name, (("id", row["id"]),))] = row
    return state


def big_text(rng: random.Random) -> str:
    """Incompressible text stored out of line: an UPDATE that leaves it sends it as
    "unchanged" (TOAST)."""
    return "".join(rng.choices(string.ascii_letters + string.digits, k=rng.randint(3000, 5000)))


def random_statement(rng: random.Random, ids: list[int], next_id: list[int]) -> tuple[str, Any]:
    """One random change (SQL and parameters), keeping `ids` (the table's keys) current."""
    kinds = ["insert"] * 3 + ["title", "owner", "viewer", "public", "key", "body", "delete"] * 2
    if rng.random() < 0.03:
        kinds = ["truncate"]
    kind = rng.choice(kinds) if ids else "insert"
    if kind == "insert":
        next_id[0] += 1
        ids.append(next_id[0])
        body = big_text(rng) if rng.random() < 0.5 else rng.choice([None, "short"])
        return (
            "INSERT INTO items VALUES (%s, %s, %s, %s, %s, %s)",
            (next_id[0], rng.choice(SUBJECTS), rng.choice([None, *SUBJECTS]),
             rng.random() < 0.3, f"t{next_id[0]}", body),
        )  # fmt: skip
    if kind == "truncate":
        ids.clear()
        return "TRUNCATE items", None
    row = rng.choice(ids)
    if kind == "delete":
        ids.remove(row)
        return "DELETE FROM items WHERE id = %s", (row,)
    if kind == "key":
        next_id[0] += 1
        ids[ids.index(row)] = next_id[0]
        return "UPDATE items SET id = %s WHERE id = %s", (next_id[0], row)
    column, value = {
        "title": ("title", f"t{row}-{rng.randint(0, 999)}"),
        "owner": ("owner", rng.choice(SUBJECTS)),
        "viewer": ("viewer", rng.choice([None, *SUBJECTS])),
        "public": ("public", rng.random() < 0.5),
        "body": ("body", big_text(rng)),
    }[kind]
    return f"UPDATE items SET {column} = %s WHERE id = %s", (value, row)


async def assert_matches(
    sc: Sidecar, dsn: str, states: dict, names: tuple[str, ...] = tuple(ORACLE)
) -> None:
    """Each subject's state, pulled on from its last cursor and pulled from scratch, is
    what PostgreSQL says each collection's rule selects."""
    await sc.caught_up(dsn)
    for sub in SUBJECTS:
        want = expected(dsn, sub, names)
        states[sub] = state_of(await sc.sync(sub), states.setdefault(sub, {}))
        assert states[sub] == want, f"subject {sub}: incremental pull"
        fresh, _ = await sc.pull_all(sub)
        assert state_of(fresh) == want, f"subject {sub}: pull from scratch"


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_every_collection_of_a_table_follows_random_changes(
    pg_dsn, pg_url, sidecar_factory, seed
):
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, COLLECTIONS)
    states: dict = {}
    await assert_matches(sc, pg_dsn, states)  # the initial copy
    rng = random.Random(seed)
    ids, next_id = [1, 2, 3], [3]
    for _ in range(6):
        with psycopg.connect(pg_dsn) as conn:
            for _ in range(rng.randint(3, 8)):  # a transaction of a few changes
                with conn.transaction():
                    for _ in range(rng.randint(1, 4)):
                        conn.execute(*random_statement(rng, ids, next_id))
        await assert_matches(sc, pg_dsn, states)


async def test_each_collection_fills_in_its_own_unchanged_toast_values(
    pg_dsn, pg_url, sidecar_factory
):
    run_sql(pg_dsn, SCHEMA)
    long = "x" * 10 + "".join(random.Random(0).choices(string.ascii_letters, k=4000))
    run_sql(pg_dsn, f"UPDATE items SET body = '{long}' WHERE id = 1")
    sc = await sidecar_factory(pg_url, COLLECTIONS)
    states: dict = {}
    await assert_matches(sc, pg_dsn, states)
    # body is not resent ("unchanged"): both collections exposing it keep it
    run_sql(pg_dsn, "UPDATE items SET title = 'moved', owner = 2, viewer = 3 WHERE id = 1")
    await assert_matches(sc, pg_dsn, states)
    assert states[2][("mine", (("id", 1),))]["body"] == long
    assert states[3][("shared", (("id", 1),))]["body"] == long
    # a key change leaves it unchanged too: filled in from the row under its old key
    run_sql(pg_dsn, "UPDATE items SET id = 10, owner = 1 WHERE id = 1")
    await assert_matches(sc, pg_dsn, states)
    assert states[1][("mine", (("id", 10),))]["body"] == long
    assert states[3][("shared", (("id", 10),))]["body"] == long


async def test_a_collection_added_over_a_mapped_table_follows_changes(
    pg_dsn, pg_url, sidecar_factory, tmp_path
):
    """A collection added (at a restart, then by a hot reload) over a table another one
    maps is copied, then follows every change along with the first one."""
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, MINE)
    states: dict = {}
    run_sql(pg_dsn, "UPDATE items SET title = 'before' WHERE id = 2")
    await sc.caught_up(pg_dsn)
    sc.config = make_config(pg_url, tmp_path / "store.db", MINE + SHARED)
    await sc.restart()  # adds `shared`: copied alone, then streamed with `mine`
    run_sql(
        pg_dsn,
        "UPDATE items SET public = false, viewer = 1 WHERE id = 2",
        "DELETE FROM items WHERE id = 3",
        "INSERT INTO items VALUES (4, 1, 3, true, 't4', NULL)",
    )
    await assert_matches(sc, pg_dsn, states, ("mine", "shared"))
    assert sc.service is not None
    changed = await sc.service.reload(make_config(pg_url, tmp_path / "store.db", COLLECTIONS))
    assert "collections" in changed

    async def reloaded() -> bool:
        service = sc.service
        return service is not None and service.capture.ready and "titles" in service.routes

    await wait_until(reloaded, timeout=60, what="the reloaded collection's copy")
    run_sql(pg_dsn, "UPDATE items SET id = 5, owner = 3 WHERE id = 4", "TRUNCATE items")
    run_sql(pg_dsn, "INSERT INTO items VALUES (6, 2, 1, false, 't6', 'b6')")
    await assert_matches(sc, pg_dsn, states)


def test_check_accepts_two_collections_on_one_table(pg_url, pg_dsn, tmp_path, capsys):
    run_sql(pg_dsn, SCHEMA)
    config = tmp_path / "sidecar.yaml"
    config.write_text(
        f"""
database: {{url: "{pg_url}", slot: sidecar_test, publication: sidecar_test}}
store: {{path: "{tmp_path / "store.db"}"}}
auth: {{jwt: {{secret: "{SECRET}"}}}}
collections:
{COLLECTIONS}
"""
    )
    assert cli_main(["check", "--config", str(config)]) == 0
