"""Safety preflight and `sidecar check`: every problem at once, with its fix, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from sidecar.errors import PreflightError
from sidecar.service import Service, preflight
from tests.fixtures.service import SECRET, make_config, run_sql

pytestmark = pytest.mark.pg

TABLES = """
CREATE TABLE good (id int PRIMARY KEY, owner int, title text);
CREATE TABLE keyless (a int, b text);
CREATE TABLE unique_only (code text NOT NULL, owner int);
CREATE UNIQUE INDEX unique_only_code ON unique_only (code);
"""


BAD = """
  good:
    table: good
    columns: [id, title, nope]
    read: "owner = :sub AND missing_col = 1"
  keyless:
    table: keyless
    read: "true"
  unique_only:
    table: unique_only
    key: [code]
    read: "owner = :sub"
  ghost:
    table: public.ghost
    read: "true"
"""


def test_preflight_reports_every_problem_with_its_fix(pg_dsn, pg_url, tmp_path):
    run_sql(pg_dsn, TABLES)
    report = preflight(make_config(pg_url, tmp_path / "s.db", BAD))
    text = "\n".join(report.problems)
    assert not report.ok
    assert "columns names column(s) nope" in text
    assert "read rule names column(s) missing_col" in text
    assert "table public.ghost does not exist" in text
    assert 'ALTER TABLE "public"."keyless" ADD PRIMARY KEY' in text
    assert 'REPLICA IDENTITY USING INDEX "unique_only_code"' in text
    assert "application's own UPDATE and DELETE" in text
    assert len(report.problems) == 6, text


def test_role_without_replication_is_refused(pg_dsn, pg_server, pg_dbname, tmp_path):
    run_sql(
        pg_dsn,
        TABLES,
        "DROP ROLE IF EXISTS plain_user",
        "CREATE ROLE plain_user LOGIN",
        "GRANT SELECT ON good TO plain_user",
    )
    url = pg_server.url(pg_dbname, user="plain_user")
    report = preflight(make_config(url, tmp_path / "s.db", "  good: {table: good, read: 'true'}"))
    assert any(
        "cannot start replication" in p and 'ALTER ROLE "plain_user" REPLICATION' in p
        for p in report.problems
    ), report.problems


async def test_service_refuses_to_start_and_creates_exact_publication(pg_dsn, pg_url, tmp_path):
    run_sql(pg_dsn, TABLES)
    with pytest.raises(PreflightError) as caught:
        await Service.start(make_config(pg_url, tmp_path / "s.db", BAD))
    assert len(caught.value.problems) == 6
    with psycopg.connect(pg_dsn) as conn:  # refused: nothing was created
        assert conn.execute("SELECT count(*) FROM pg_publication").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone()[0] == 0
    good = "  good: {table: good, read: 'owner = :sub'}"
    service = await Service.start(make_config(pg_url, tmp_path / "s.db", good))
    try:
        await service.capture.wait_ready(30)
        with psycopg.connect(pg_dsn) as conn:
            pub = conn.execute(
                "SELECT puballtables FROM pg_publication WHERE pubname = 'sidecar_test'"
            ).fetchone()
            tables = conn.execute(
                "SELECT tablename FROM pg_publication_tables WHERE pubname = 'sidecar_test'"
            ).fetchall()
        assert pub == (False,) and tables == [("good",)]
    finally:
        await service.close()


async def test_existing_publication_is_used_as_is(pg_dsn, pg_url, tmp_path):
    run_sql(pg_dsn, TABLES, "CREATE PUBLICATION sidecar_test FOR TABLE good, unique_only")
    service = await Service.start(
        make_config(pg_url, tmp_path / "s.db", "  good: {table: good, read: 'true'}")
    )
    try:
        await service.capture.wait_ready(30)
        with psycopg.connect(pg_dsn) as conn:
            n = conn.execute(
                "SELECT count(*) FROM pg_publication_tables WHERE pubname = 'sidecar_test'"
            ).fetchone()[0]
        assert n == 2  # untouched: the DBA's publication stays as it was
    finally:
        await service.close()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_cli_check_lists_problems_without_traceback(pg_dsn, pg_url, tmp_path: Path):
    run_sql(pg_dsn, TABLES)
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        f'database: {{url: "{pg_url}"}}\nauth: {{jwt: {{secret: {SECRET}}}}}\ncollections:\n{BAD}'
    )
    proc = _cli("check", "--config", str(cfg))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "6 problem(s)" in proc.stderr and "ADD PRIMARY KEY" in proc.stderr
    good = tmp_path / "good.yaml"
    good.write_text(
        f'database: {{url: "{pg_url}"}}\nauth: {{jwt: {{secret: {SECRET}}}}}\n'
        "collections:\n  good: {table: good, read: 'owner = :sub'}\n"
    )
    proc = _cli("check", "--config", str(good))
    assert proc.returncode == 0, proc.stderr
    assert "ok (1 collections)" in proc.stdout


def test_cli_reports_config_errors_and_unreachable_database(tmp_path: Path):
    cfg = tmp_path / "broken.yaml"
    cfg.write_text(
        "database: {url: postgresql://127.0.0.1:1/x}\nauth: {jwt: {secret: s}}\n"
        "collections:\n  t:\n    table: t\n    reed: 'true'\n"
    )
    proc = _cli("check", "--config", str(cfg))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{cfg}:6" in proc.stderr and "reed" in proc.stderr
    cfg.write_text(
        "database: {url: 'postgresql://127.0.0.1:1/x'}\nauth: {jwt: {secret: s}}\n"
        "collections:\n  t: {table: t, read: 'true'}\n"
    )
    proc = _cli("check", "--config", str(cfg))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "cannot reach the database" in proc.stderr
    proc = _cli("check", "--config", str(tmp_path / "missing.yaml"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
