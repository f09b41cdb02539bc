"""`sidecar init | drop | status` against a real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import orjson
import psycopg
import pytest

from sidecar.cli import main
from tests.fixtures.service import SECRET

pytestmark = pytest.mark.pg

SCHEMA = """
CREATE TABLE todo_items (id serial PRIMARY KEY, title text, owner_id int);
INSERT INTO todo_items (title, owner_id) VALUES ('a', 1);
"""


def write_config(tmp_path: Path, url: str) -> Path:
    cfg = tmp_path / "sidecar.yaml"
    cfg.write_text(
        f"""
database: {{url: "{url}", slot: sidecar_test, publication: sidecar_test}}
store: {{path: "{tmp_path / "store.db"}"}}
server: {{host: 127.0.0.1, port: 1}}
auth: {{jwt: {{secret: "{SECRET}"}}}}
collections:
  todos:
    table: todo_items
    read: "owner_id = :sub"
"""
    )
    return cfg


def objects(dsn: str) -> tuple[int, int]:
    with psycopg.connect(dsn) as conn:
        pubs = conn.execute("SELECT count(*) FROM pg_publication WHERE pubname = 'sidecar_test'")
        slots = conn.execute(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'sidecar_test'"
        )
        return pubs.fetchone()[0], slots.fetchone()[0]  # type: ignore[index]


@pytest.fixture
def cfg(pg_dsn, pg_url, tmp_path) -> Path:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)
    return write_config(tmp_path, pg_url)


def test_init_dry_run_prints_the_sql_and_changes_nothing(cfg, pg_dsn, capsys):
    assert main(["init", "-c", str(cfg), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert 'CREATE PUBLICATION "sidecar_test" FOR TABLE "public"."todo_items"' in out
    assert "pg_create_logical_replication_slot('sidecar_test', 'pgoutput')" in out
    assert "dry run" in out
    assert objects(pg_dsn) == (0, 0)


def test_init_creates_then_skips(cfg, pg_dsn, capsys):
    assert main(["init", "-c", str(cfg)]) == 0
    assert objects(pg_dsn) == (1, 1)
    capsys.readouterr()
    assert main(["init", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert out.count("-- skipped (exists already)") == 2
    assert objects(pg_dsn) == (1, 1)


def test_init_refuses_a_database_that_is_not_ready(pg_dsn, pg_url, tmp_path, capsys):
    cfg = write_config(tmp_path, pg_url)  # no table
    assert main(["init", "-c", str(cfg)]) == 1
    assert "todo_items does not exist" in capsys.readouterr().err
    assert objects(pg_dsn) == (0, 0)


def test_drop_asks_unless_yes_and_releases_the_slot(cfg, pg_dsn, capsys, monkeypatch):
    assert main(["init", "-c", str(cfg)]) == 0
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["drop", "-c", str(cfg)]) == 1
    assert "--yes" in capsys.readouterr().err
    assert objects(pg_dsn) == (1, 1)
    assert main(["drop", "-c", str(cfg), "--keep-publication", "--yes"]) == 0
    assert objects(pg_dsn) == (1, 0)
    assert main(["drop", "-c", str(cfg), "--yes"]) == 0
    assert objects(pg_dsn) == (0, 0)
    capsys.readouterr()
    assert main(["drop", "-c", str(cfg), "--yes"]) == 0
    assert "nothing to drop" in capsys.readouterr().out


async def test_status_and_drop_beside_a_running_sidecar(cfg, pg_dsn, pg_url, sidecar_factory):
    import asyncio

    sc = await sidecar_factory(pg_url, "  todos:\n    table: todo_items\n    read: 'true'\n")
    info = await asyncio.to_thread(status_json, cfg)
    assert info["slot"]["active"] is True
    assert info["slot"]["wal_status"] == "reserved"
    assert info["publication"]["exists"] is True
    assert info["store"]["rows"] == 1 and info["store"]["initial_copy_done"] is True
    code = await asyncio.to_thread(main, ["drop", "-c", str(cfg), "--yes"])
    assert code == 1  # the slot is in use: refused, nothing dropped
    assert objects(pg_dsn) == (1, 1)
    await sc.stop()
    info = await asyncio.to_thread(status_json, cfg)
    assert info["slot"]["active"] is False
    assert info["service"] is None


def status_json(cfg: Path) -> dict:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["status", "-c", str(cfg), "--json"]) == 0
    return orjson.loads(buf.getvalue())


def test_status_reads_the_store(cfg, pg_dsn, tmp_path, capsys):
    from sidecar.store.sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "store.db")
    store.close()
    assert main(["status", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "slot         sidecar_test: missing" in out
    assert "publication  sidecar_test: missing" in out
    assert "0 rows" in out and "initial copy not done" in out
    assert "service      not reachable" in out


def test_init_adds_a_mapped_table_the_publication_lacks(cfg, pg_dsn, capsys):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE other (id int PRIMARY KEY)")
        conn.execute("CREATE PUBLICATION sidecar_test FOR TABLE other")
    assert main(["init", "-c", str(cfg)]) == 0
    assert 'ALTER PUBLICATION "sidecar_test" ADD TABLE "public"."todo_items"' in (
        capsys.readouterr().out
    )
    with psycopg.connect(pg_dsn) as conn:
        tables = conn.execute(
            "SELECT tablename FROM pg_publication_tables WHERE pubname = 'sidecar_test' ORDER BY 1"
        ).fetchall()
    assert tables == [("other",), ("todo_items",)]
