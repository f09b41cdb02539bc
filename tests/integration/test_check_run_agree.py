"""`sidecar check` and `sidecar run` agree (issue 12, item 16): what stops `run` is what
`check` reports, clearly, and neither ends in a traceback — `now()` in a read rule, a read
rule that cannot be turned into scopes over the table's types, a SQL_ASCII database.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from sidecar.errors import PreflightError
from sidecar.service import Service, preflight
from tests.fixtures.service import SECRET, make_config, run_sql

pytestmark = pytest.mark.pg

TABLE = "CREATE TABLE items (id int PRIMARY KEY, owner text, due timestamptz, tags jsonb)"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar.cli", *args], capture_output=True, text=True, timeout=60
    )


def _file(path: Path, url: str, collections: str) -> Path:
    path.write_text(
        f'database: {{url: "{url}"}}\nstore: {{path: "{path.parent / "s.db"}"}}\n'
        f'auth: {{jwt: {{secret: "{SECRET}"}}}}\ncollections:\n{collections}'
    )
    return path


def _check_and_run(cfg: Path) -> tuple[subprocess.CompletedProcess[str], ...]:
    check = _cli("check", "--config", str(cfg))
    run = _cli("run", "--config", str(cfg))  # refused before it serves anything
    for proc in (check, run):
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return check, run


NOW_RULE = """  items:
    table: items
    read: >
      owner = :sub
      AND due > now()
"""


def test_now_in_a_read_rule_is_the_same_config_error_in_check_and_run(pg_dsn, pg_url, tmp_path):
    run_sql(pg_dsn, TABLE)
    cfg = _file(tmp_path / "now.yaml", pg_url, NOW_RULE)
    check, run = _check_and_run(cfg)
    for proc in (check, run):
        assert f"{cfg}:9: collections.items.read" in proc.stderr, proc.stderr
        assert "now() cannot be used in a read rule" in proc.stderr
    # now() is fine where PostgreSQL evaluates it at write time
    ok = NOW_RULE.replace("AND due > now()", "").rstrip() + (
        "\n    write: {ops: [update], check: 'due > now()', where: 'due > now()'}\n"
    )
    proc = _cli("check", "--config", str(_file(tmp_path / "ok.yaml", pg_url, ok)))
    assert proc.returncode == 0, proc.stderr


UNSCOPABLE = """  items:
    table: items
    read: "owner < :sub OR tags = :tags"
"""


async def test_a_rule_run_cannot_compile_is_a_preflight_problem(pg_dsn, pg_url, tmp_path):
    run_sql(pg_dsn, TABLE)
    config = make_config(pg_url, tmp_path / "s.db", UNSCOPABLE)
    report = preflight(config)
    assert not report.ok
    [problem] = report.problems
    assert re.match(r"test\.yaml:\d+: collections\.items\.read: ", problem), problem
    assert "compared to a claim with =, IN (...) or = ANY(...)" in problem
    with pytest.raises(PreflightError) as caught:
        await Service.start(config)
    assert caught.value.problems == [problem]
    cfg = _file(tmp_path / "u.yaml", pg_url, UNSCOPABLE)
    check, run = _check_and_run(cfg)
    for proc in (check, run):
        assert f"{cfg}:7: collections.items.read: a column may only be compared" in proc.stderr


@pytest.fixture
def ascii_url(pg_server, pg_dbname):
    name = pg_dbname + "_ascii"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(
            f"CREATE DATABASE {name} ENCODING 'SQL_ASCII' TEMPLATE template0 "
            "LC_COLLATE 'C' LC_CTYPE 'C'"
        )
    try:
        with psycopg.connect(pg_server.dsn(name), autocommit=True) as conn:
            conn.execute(TABLE)
            conn.execute("INSERT INTO items (id, owner) VALUES (1, 'caf\\xe9'::text)")
        yield pg_server.url(name)
    finally:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
            for (slot,) in conn.execute(
                "SELECT slot_name FROM pg_replication_slots WHERE database = %s", (name,)
            ).fetchall():
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def test_sql_ascii_database_is_refused_clearly(ascii_url, tmp_path):
    rules = '  items: {table: items, read: "owner = :sub"}\n'
    config = make_config(ascii_url, tmp_path / "s.db", rules)
    report = preflight(config)
    assert any("SQL_ASCII" in p and "UTF8" in p for p in report.problems), report.problems
    with pytest.raises(PreflightError):
        await Service.start(config)
    check, run = _check_and_run(_file(tmp_path / "a.yaml", ascii_url, rules))
    assert "SQL_ASCII" in check.stderr and "SQL_ASCII" in run.stderr
