"""Membership tables are captured, not exposed (issue 14, item 2): `sidecar check` names
each problem of a table a read rule's sub-select names, with the SQL that fixes it, and
every refused sub-select form is a located config error saying what to write instead;
`run` publishes the table (creating the publication or adding to it) and serves its rows
to nobody unless a collection maps it."""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.fixtures.service import SECRET, run_sql

pytestmark = pytest.mark.pg

SCHEMA = """
CREATE TABLE members (project_id int NOT NULL, user_id text NOT NULL,
                      PRIMARY KEY (project_id, user_id));
CREATE TABLE tasks (id int PRIMARY KEY, project_id int, title text);
INSERT INTO members VALUES (1, 'alice');
INSERT INTO tasks VALUES (1, 1, 'a'), (2, 2, 'b');
"""

RULE = "project_id IN (SELECT project_id FROM public.members WHERE user_id = :sub)"
TASKS = f"""  tasks:
    table: tasks
    read: "{RULE}"
"""


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar.cli", *args], capture_output=True, text=True, timeout=60
    )


def _file(path: Path, url: str, collections: str, database: str = "") -> Path:
    path.write_text(
        f'database: {{url: "{url}", slot: sidecar_test, publication: sidecar_test{database}}}\n'
        f'store: {{path: "{path.parent / "s.db"}"}}\n'
        f'auth: {{jwt: {{secret: "{SECRET}"}}}}\ncollections:\n{collections}'
    )
    return path


def _check(cfg: Path) -> str:
    proc = _cli("check", "--config", str(cfg))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Traceback" not in out, out
    return proc.stderr


def test_a_missing_table_and_one_without_a_key_are_named_with_their_fix(
    pg_dsn, pg_url, tmp_path
) -> None:
    run_sql(
        pg_dsn,
        SCHEMA,
        "CREATE TABLE keyless (project_id int NOT NULL, user_id text NOT NULL)",
        "CREATE TABLE indexed (project_id int NOT NULL, user_id text NOT NULL)",
        "CREATE UNIQUE INDEX indexed_key ON indexed (project_id, user_id)",
    )
    collections = f"""{TASKS}  ghost_tasks:
    table: tasks
    read: "project_id IN (SELECT project_id FROM public.nosuch WHERE user_id = :sub)"
  keyless_tasks:
    table: tasks
    read: "project_id IN (SELECT project_id FROM keyless WHERE user_id = :sub)"
  indexed_tasks:
    table: tasks
    read: "project_id IN (SELECT project_id FROM indexed WHERE user_id = :sub)"
"""
    err = _check(_file(tmp_path / "c.yaml", pg_url, collections))
    assert "sub-select table public.nosuch does not exist" in err, err
    assert "sub-select table keyless has no replica identity" in err, err
    assert 'ALTER TABLE "public"."keyless" ADD PRIMARY KEY (<key columns>);' in err, err
    assert 'ALTER TABLE "public"."indexed" REPLICA IDENTITY USING INDEX "indexed_key";' in err
    assert "3 problem(s)" in err, err


def test_a_membership_table_missing_from_an_existing_publication(pg_dsn, pg_url, tmp_path):
    run_sql(pg_dsn, SCHEMA, "CREATE PUBLICATION sidecar_test FOR TABLE tasks")
    err = _check(_file(tmp_path / "c.yaml", pg_url, TASKS, ", create_publication: false"))
    assert "publication 'sidecar_test' exists but does not publish public.members" in err, err
    assert 'ALTER PUBLICATION "sidecar_test" ADD TABLE "public"."members";' in err, err


def test_a_missing_publication_is_created_with_the_membership_table(pg_dsn, pg_url, tmp_path):
    run_sql(pg_dsn, SCHEMA)
    err = _check(_file(tmp_path / "c.yaml", pg_url, TASKS, ", create_publication: false"))
    assert (
        'CREATE PUBLICATION "sidecar_test" FOR TABLE "public"."members", "public"."tasks"' in (err)
        or 'FOR TABLE "public"."tasks", "public"."members"' in err
    ), err


@pytest.fixture
def role(pg_server, pg_dsn, pg_dbname) -> Iterator[str]:
    """A login role with REPLICATION, SELECT on tasks only, over the DBA's publication."""
    name = f"sidecar_{secrets.token_hex(4)}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute(f"CREATE ROLE {name} LOGIN REPLICATION")
        conn.execute(f"GRANT SELECT ON tasks TO {name}")
        conn.execute("CREATE PUBLICATION sidecar_test FOR TABLE tasks, members")
    yield name
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
            (name,),
        )
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"DROP OWNED BY {name}")
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(f"DROP ROLE {name}")


def test_a_membership_table_the_role_cannot_read(role, pg_server, pg_dbname, tmp_path) -> None:
    url = pg_server.url(pg_dbname, user=role)
    cfg = _file(tmp_path / "c.yaml", url, TASKS, ", create_publication: false")
    err = _check(cfg)
    assert f"role '{role}' lacks SELECT on public.members" in err, err
    assert f'GRANT SELECT ON "public"."members" TO "{role}";' in err, err
    assert "1 problem(s)" in err, err


REFUSED = {
    "a column the table lacks": (
        "project_id IN (SELECT project_id FROM members WHERE team = :team)",
        "public.members has no column team",
        "correlated sub-selects are not supported",
    ),
    "a correlated column": (
        "project_id IN (SELECT project_id FROM members WHERE user_id = title)",
        "public.members has no column title",
        "correlated sub-selects are not supported",
    ),
    "a join": (
        "project_id IN (SELECT project_id FROM members JOIN projects USING (project_id))",
        "joins, several tables and derived tables are not allowed",
        "nest another sub-select for the next level",
    ),
    "an aggregate": (
        "project_id IN (SELECT max(project_id) FROM members)",
        "selects exactly one bare column (no aggregate",
        "IN (SELECT <column> FROM <table> WHERE <condition>)",
    ),
    "GROUP BY": (
        "project_id IN (SELECT project_id FROM members GROUP BY project_id)",
        "GROUP BY (an aggregate) is not allowed in a rule's sub-select",
        "IN (SELECT <column> FROM <table> WHERE <condition>)",
    ),
    "LIMIT": (
        "project_id IN (SELECT project_id FROM members LIMIT 1)",
        "LIMIT is not allowed in a rule's sub-select",
        "IN (SELECT <column> FROM <table> WHERE <condition>)",
    ),
    "EXISTS": (
        "EXISTS (SELECT 1 FROM members WHERE user_id = :sub)",
        "this sub-select is not allowed",
        "IN (SELECT <column> FROM <table> WHERE <condition>)",
    ),
    "NOT IN": (
        "project_id NOT IN (SELECT project_id FROM members WHERE user_id = :sub)",
        "a sub-select cannot be negated",
        "IN (SELECT <column> FROM <table> WHERE <condition>)",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_refused_sub_select_is_a_located_config_error(pg_dsn, pg_url, tmp_path, case) -> None:
    run_sql(pg_dsn, SCHEMA)
    rule, problem, instead = REFUSED[case]
    cfg = _file(tmp_path / "c.yaml", pg_url, f'  tasks:\n    table: tasks\n    read: "{rule}"\n')
    err = _check(cfg)
    assert f"{cfg}:7: collections.tasks.read" in err, err
    assert problem in err, err
    assert instead in err, err


async def _published(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        return {
            t
            for (t,) in conn.execute(
                "SELECT tablename FROM pg_publication_tables WHERE pubname = 'sidecar_test'"
            )
        }


async def test_the_membership_table_is_published_and_served_to_nobody(
    pg_dsn, pg_url, sidecar_factory
) -> None:
    run_sql(pg_dsn, SCHEMA)
    sc = await sidecar_factory(pg_url, TASKS)  # creates the publication
    assert await _published(pg_dsn) == {"tasks", "members"}
    changes, _ = await sc.pull_all("alice")
    assert {(c["collection"], c["key"]["id"]) for c in changes} == {("tasks", 1)}
    resp = await sc.get("/v1/schema", sub="alice")
    assert set((await resp.json())["collections"]) == {"tasks"}
    for sub in ("alice", "bob"):
        page = await sc.pull(sub)
        assert {c["collection"] for c in page["changes"]} <= {"tasks"}


async def test_the_membership_table_is_added_to_an_existing_publication(
    pg_dsn, pg_url, sidecar_factory
) -> None:
    run_sql(pg_dsn, SCHEMA, "CREATE PUBLICATION sidecar_test FOR TABLE tasks")
    sc = await sidecar_factory(pg_url, TASKS)  # ALTER PUBLICATION … ADD TABLE
    assert await _published(pg_dsn) == {"tasks", "members"}
    resp = await sc.get("/v1/schema", sub="alice")
    assert set((await resp.json())["collections"]) == {"tasks"}
    # captured: a new membership moves rows in
    run_sql(pg_dsn, "INSERT INTO members VALUES (2, 'alice')")
    await sc.caught_up(pg_dsn)
    changes, _ = await sc.pull_all("alice")
    assert {(c["collection"], c["key"]["id"]) for c in changes} == {("tasks", 1), ("tasks", 2)}


async def test_a_membership_table_a_collection_maps_is_served_by_it(
    pg_dsn, pg_url, sidecar_factory
) -> None:
    run_sql(pg_dsn, SCHEMA)
    collections = f"""{TASKS}  my_memberships:
    table: members
    read: "user_id = :sub"
"""
    sc = await sidecar_factory(pg_url, collections)
    assert await _published(pg_dsn) == {"tasks", "members"}
    changes, _ = await sc.pull_all("alice")
    assert [c["row"] for c in changes if c["collection"] == "my_memberships"] == [
        {"project_id": 1, "user_id": "alice"}
    ]
    assert {c["collection"] for c in changes} == {"tasks", "my_memberships"}
    resp = await sc.get("/v1/schema", sub="alice")
    assert set((await resp.json())["collections"]) == {"tasks", "my_memberships"}


def test_write_rule_sub_selects_are_checked_but_not_published(pg_dsn, pg_url, tmp_path) -> None:
    roles = "CREATE TABLE roles (user_id text PRIMARY KEY, project_id int, admin bool)"
    run_sql(pg_dsn, SCHEMA, roles)
    write = """    write:
      ops: [insert, update]
      where: "project_id IN (SELECT project_id FROM members WHERE user_id = :sub)"
      check: "project_id NOT IN (SELECT project_id FROM public.archived)
              AND project_id IN (SELECT project_id FROM roles WHERE admin AND team = 1)"
"""
    err = _check(_file(tmp_path / "c.yaml", pg_url, TASKS + write))
    assert "write.check's sub-select table public.archived does not exist" in err, err
    assert "write.check's sub-select table roles has no column(s) team" in err, err
    assert "correlated sub-selects are not supported" in err, err
    assert "2 problem(s)" in err, err
    ok = write.replace("public.archived", "members WHERE false").replace(" AND team = 1", "")
    proc = _cli("check", "--config", str(_file(tmp_path / "ok.yaml", pg_url, TASKS + ok)))
    assert proc.returncode == 0, proc.stderr
    # `roles` is read by PostgreSQL in the write statement only: not a membership table
    assert "roles" not in proc.stdout + proc.stderr
