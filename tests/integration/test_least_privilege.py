"""The sidecar as ops should run it: a role with REPLICATION and exactly the table grants
the YAML needs, over a publication the DBA created (the SQL of docs/ops.md)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import psycopg
import pytest

from sidecar.cli import main
from tests.fixtures.service import SECRET

pytestmark = pytest.mark.pg

SCHEMA = """
CREATE TABLE todo_items (id serial PRIMARY KEY, title text NOT NULL, owner_id int NOT NULL);
INSERT INTO todo_items (title, owner_id) VALUES ('mine', 1), ('theirs', 2);
CREATE TABLE secrets (id int PRIMARY KEY, value text);
"""

TODOS = """
  todos:
    table: todo_items
    read: "owner_id = :sub"
    write:
      ops: [insert, update]
      set: {owner_id: ":sub"}
"""


@pytest.fixture
def role(pg_server, pg_dsn, pg_dbname) -> Iterator[str]:
    """A login role with REPLICATION and the grants docs/ops.md tells a DBA to give."""
    name = f"sidecar_{secrets.token_hex(4)}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute(f"CREATE ROLE {name} LOGIN REPLICATION")
        conn.execute(f"GRANT SELECT, INSERT, UPDATE ON todo_items TO {name}")
        conn.execute(f"GRANT USAGE ON SEQUENCE todo_items_id_seq TO {name}")
        conn.execute("CREATE PUBLICATION sidecar_test FOR TABLE todo_items")
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


@pytest.mark.sqlite_store_only("the role has no CREATE for a PostgreSQL store schema")
async def test_pull_and_push_as_a_least_privilege_role(
    role, pg_server, pg_dbname, pg_dsn, sidecar_factory
):
    url = pg_server.url(pg_dbname, user=role)
    sc = await sidecar_factory(url, TODOS, extra="")
    changes, _ = await sc.pull_all(1)
    assert [c["row"]["title"] for c in changes] == ["mine"]
    status, body = await sc.push(
        [{"id": "lp1", "collection": "todos", "op": "insert", "data": {"title": "by role"}}]
    )
    assert status == 200 and body["results"][0]["status"] == "applied", body
    page = await sc.pull(1, after_lsn=body["lsn"])
    assert "by role" in {c["row"]["title"] for c in page["changes"]}
    with psycopg.connect(pg_dsn) as conn:
        owner = conn.execute("SELECT owner_id FROM todo_items WHERE title = 'by role'")
        assert owner.fetchone() == (1,)
        is_super = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (role,))
        assert is_super.fetchone() == (False,)


def test_check_names_each_missing_grant(role, pg_server, pg_dbname, pg_dsn, tmp_path, capsys):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"REVOKE INSERT, UPDATE ON todo_items FROM {role}")
    cfg = tmp_path / "sidecar.yaml"
    cfg.write_text(
        f"""
database: {{url: "{pg_server.url(pg_dbname, user=role)}", slot: s1, publication: sidecar_test,
           create_publication: false}}
store: {{path: "{tmp_path / "store.db"}"}}
auth: {{jwt: {{secret: "{SECRET}"}}}}
collections:
{TODOS}
"""
    )
    assert main(["check", "-c", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert f"role '{role}' lacks INSERT, UPDATE on public.todo_items" in err
    assert f'GRANT INSERT, UPDATE ON "public"."todo_items" TO "{role}";' in err
