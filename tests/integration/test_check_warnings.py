"""`sidecar check` warns about valid but risky configs (issue 12, item 5), and `sidecar run`
logs the same warnings once at start: writes under a read rule with a branch that names no
claim, `read: "true"` over every column, `client_wins` with `immutable`, and a short or
published JWT secret. Warnings do not change the exit status (unless `--strict`).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from structlog.testing import capture_logs

from sidecar.service import Service, preflight
from tests.fixtures.service import SECRET, make_config, run_sql

pytestmark = pytest.mark.pg

TABLES = """
CREATE TABLE projects (id int PRIMARY KEY, name text, owner_id text, is_public boolean);
CREATE TABLE notes (id int PRIMARY KEY, body text, owner_id text, org text);
CREATE TABLE settings (id int PRIMARY KEY, value text);
"""

RISKY = """
  projects:
    table: projects
    read: "owner_id = :sub OR is_public"
    write: {ops: [update]}
  notes:
    table: notes
    columns: [id, body, owner_id, org]
    read: "owner_id = :sub"
    write: {ops: [insert, update], immutable: [org]}
    conflict: client_wins
  settings:
    table: settings
    read: "true"
"""

SAFE = """
  projects:
    table: projects
    read: "owner_id = :sub OR is_public"
    write: {ops: [update], where: "owner_id = :sub"}
  notes:
    table: notes
    read: "owner_id = :sub OR :role = 'admin'"
    write: {ops: [insert, update], immutable: [org]}
    conflict: merge
  settings:
    table: settings
    columns: [id, value]
    read: "true"
"""


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar.cli", *args], capture_output=True, text=True, timeout=60
    )


def _file(path: Path, url: str, secret: str, collections: str) -> Path:
    path.write_text(
        f'database: {{url: "{url}"}}\nauth: {{jwt: {{secret: "{secret}"}}}}\n'
        f"collections:\n{collections}"
    )
    return path


def test_check_warns_and_still_exits_0(pg_dsn, pg_url, tmp_path):
    run_sql(pg_dsn, TABLES)
    short = "s3cr3t-but-only-24-bytes"
    proc = _cli("check", "--config", str(_file(tmp_path / "r.yaml", pg_url, short, RISKY)))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("warning: ")]
    text = "\n".join(warnings)
    assert len(warnings) == 4, text
    assert "'projects'" in text and "is_public" in text and "write.where" in text
    assert "'settings'" in text and "every column" in text and "columns:" in text
    assert "'notes'" in text and "client_wins" in text and "immutable" in text
    assert "auth.jwt.secret is 24 bytes" in text and short not in proc.stdout
    assert "ok (3 collections)" in proc.stdout
    # --strict: the same report, exit 1
    proc = _cli(
        "check", "--strict", "--config", str(_file(tmp_path / "r.yaml", pg_url, short, RISKY))
    )
    assert proc.returncode == 1 and "4 warning(s)" in proc.stderr


def test_published_demo_secret_is_a_warning(pg_dsn, pg_url, tmp_path):
    run_sql(pg_dsn, TABLES)
    demo = "demo-secret-change-me-0123456789abcdef"  # sidecar/demo/demo.yaml, docker/
    proc = _cli("check", "--config", str(_file(tmp_path / "d.yaml", pg_url, demo, SAFE)))
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "published example value" in warnings[0], warnings
    assert demo not in proc.stdout


def test_safe_config_has_no_warnings(pg_dsn, pg_url, tmp_path):
    run_sql(pg_dsn, TABLES)
    report = preflight(make_config(pg_url, tmp_path / "s.db", SAFE))
    assert report.ok and report.warnings == (), report.warnings
    proc = _cli(
        "check", "--strict", "--config", str(_file(tmp_path / "s.yaml", pg_url, SECRET, SAFE))
    )
    assert proc.returncode == 0 and "warning" not in proc.stdout, proc.stdout


async def test_run_logs_the_same_warnings_once_at_start(pg_dsn, pg_url, tmp_path):
    run_sql(pg_dsn, TABLES)
    config = make_config(pg_url, tmp_path / "s.db", RISKY)
    expected = preflight(config).warnings
    assert len(expected) == 3  # the fixtures' secret is long enough
    with capture_logs() as logs:
        service = await Service.start(config)
        try:
            await service.capture.wait_ready(30)
        finally:
            await service.close()
    logged = [e["event"] for e in logs if e["log_level"] == "warning"]
    for warning in expected:
        assert logged.count(warning) == 1, (warning, logged)


def test_check_warns_when_a_remote_database_is_not_verified(pg_dsn, pg_url, tmp_path):
    """Issue 17, item 1: a database URL naming another host without sslmode=verify-full.
    (`hostaddr` reaches the test server while `host` names a remote one, as libpq does.)"""
    run_sql(pg_dsn, TABLES)
    parts = urlsplit(pg_url)
    remote = urlunsplit(
        parts._replace(
            netloc=parts.netloc.replace(parts.hostname or "", "db.example.com"),
            query=f"hostaddr={parts.hostname}" + (f"&{parts.query}" if parts.query else ""),
        )
    )
    proc = _cli("check", "--config", str(_file(tmp_path / "r.yaml", remote, SECRET, SAFE)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1, warnings
    assert "database.url connects to db.example.com with no sslmode" in warnings[0]
    assert "sslmode=verify-full" in warnings[0]
    # the same server by its local address: nothing to say
    proc = _cli("check", "--config", str(_file(tmp_path / "l.yaml", pg_url, SECRET, SAFE)))
    assert proc.returncode == 0 and "warning" not in proc.stdout, proc.stdout
