"""Secrets never reach a log line or an error body: a full scenario of real `sidecar`
processes (JSON logs at debug level, stdout and stderr captured whole) and real HTTP.

The secrets: the database password (in `database.url`), the JWT secret, the store's
encryption key, and every token a client sends (valid, forged, signed with another secret,
expired). The scenario: `sidecar run` with all of them, pulls and pushes with valid
tokens, requests with bad tokens, a reload of a config with new secrets and a mistake
(refused while running), a database URL that cannot connect (`run`, `check`, `status`), a
config with mistakes next to the secrets or in them (`run`, `check`), and a wrong store key.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import jwt
import orjson
import pytest

from sidecar.embedded import free_port
from tests.fixtures.service import SECRET, run_sql, token
from tests.support.process import SidecarRun

pytestmark = [pytest.mark.pg, pytest.mark.slow]

SCHEMA = "CREATE TABLE notes (id int PRIMARY KEY, owner_id int, body text)"
NOTES = """
  notes:
    table: notes
    read: "owner_id = :sub"
    write: {ops: [insert, update], check: "length(body) < 20"}
"""
# The test server trusts local connections: the password is sent and ignored.
DB_PASSWORD = "Db-Pass-7f3a9c21e0"
STORE_KEY = "Store-Key-b81e44d6ac"
NEW_JWT_SECRET = "New-Jwt-Secret-5d2c0b9e1f7a3b8c6d4e"  # in the refused reload
NEW_STORE_KEY = "New-Store-Key-94af02"  # in the refused reload and the bad configs
NUMERIC_KEY = 5647382910564738  # written unquoted: YAML reads numbers
NUMERIC_SECRET = 918273645546372819283746192837465


def _with_password(url: str, password: str) -> str:
    scheme, _, rest = url.partition("://")
    userinfo, _, hostpart = rest.rpartition("@")
    user = userinfo.split(":", 1)[0] if userinfo else "postgres"
    return f"{scheme}://{user}:{password}@{hostpart}"


def _cli(*args: str, env: dict[str, str] | None = None) -> str:
    """`sidecar ARGS` as a process: exit code 1 expected; stdout + stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, (args, done.stdout, done.stderr)
    out = done.stdout + done.stderr
    assert "Traceback" not in out, out
    return out


async def _request(
    http: aiohttp.ClientSession, method: str, url: str, bodies: list[str], **kw: object
) -> tuple[int, str]:
    async with http.request(method, url, **kw) as resp:  # type: ignore[arg-type]
        text = await resp.text()
        bodies.append(f"{resp.status} {dict(resp.headers)} {text}")
        return resp.status, text


async def test_no_secret_in_any_log_line_or_error_body(pg_dsn, pg_url, tmp_path):
    run_sql(pg_dsn, SCHEMA, "INSERT INTO notes VALUES (1, 1, 'one')")
    url = _with_password(pg_url, DB_PASSWORD)
    valid = token(1)
    other = token(2, device_id="d2")
    forged = token(1)[:-6] + "AAAAAA"
    wrong_secret = jwt.encode(
        {"sub": "1", "exp": int(time.time()) + 3600}, "another-secret-0123456789abcdefXYZ"
    )
    expired = jwt.encode({"sub": "1", "exp": int(time.time()) - 3600}, SECRET)
    secrets = {
        "database password": DB_PASSWORD,
        "JWT secret": SECRET,
        "store key": STORE_KEY,
        "new JWT secret": NEW_JWT_SECRET,
        "new store key": NEW_STORE_KEY,
        "numeric store key": str(NUMERIC_KEY),
        "numeric JWT secret": str(NUMERIC_SECRET),
    }
    for name, tok in [
        ("token", valid),
        ("other token", other),
        ("forged token", forged),
        ("token of another secret", wrong_secret),
        ("expired token", expired),
    ]:
        secrets[name] = tok
        secrets[f"{name}'s signature"] = tok.rsplit(".", 1)[1]

    bodies: list[str] = []
    outputs: dict[str, str] = {}

    # -- a run with every secret: sync, bad tokens, a refused reload -----------------------
    run = SidecarRun(
        tmp_path,
        url,
        NOTES,
        extra="log: {level: debug, format: json}",
        store=f'{{path: "{tmp_path / "store.db"}", encryption_key: "${{STORE_KEY}}"}}',
        env={"STORE_KEY": STORE_KEY},
    )
    await run.start()
    try:
        async with aiohttp.ClientSession() as http:
            base = run.base
            for tok in (valid, other):
                bearer = {"Authorization": f"Bearer {tok}"}
                status, _ = await _request(http, "GET", f"{base}/v1/pull", bodies, headers=bearer)
                assert status == 200
                await _request(
                    http,
                    "GET",
                    f"{base}/v1/pull",
                    bodies,
                    headers={**bearer, "Accept": "application/x-ndjson"},
                )
            bearer = {"Authorization": f"Bearer {valid}"}
            insert = {"id": "a1", "collection": "notes", "op": "insert"}
            refused = {"id": "a2", "collection": "notes", "op": "insert"}
            push = {
                "mutations": [
                    {**insert, "data": {"id": 2, "owner_id": 1, "body": "two"}},
                    {**refused, "data": {"id": 3, "owner_id": 1, "body": "x" * 40}},  # check
                ]
            }
            status, text = await _request(
                http, "POST", f"{base}/v1/push", bodies, headers=bearer, json=push
            )
            assert status == 200, text
            unknown = {"mutations": [{"id": "a3", "collection": "nope", "op": "insert"}]}
            status, _ = await _request(
                http, "POST", f"{base}/v1/push", bodies, headers=bearer, json=unknown
            )
            assert status == 400
            await _request(
                http, "POST", f"{base}/v1/push", bodies, headers=bearer, data=b"{not json"
            )
            await _request(http, "GET", f"{base}/v1/pull?cursor=zz-9", bodies, headers=bearer)
            await _request(http, "GET", f"{base}/v1/audit?collection=notes", bodies, headers=bearer)
            for bad in (forged, wrong_secret, expired, "not-a-jwt", f"{valid}x"):
                for path in ("/v1/pull", "/v1/stream", "/electric/v1/shape?table=notes&offset=-1"):
                    status, _ = await _request(
                        http,
                        "GET",
                        base + path,
                        bodies,
                        headers={"Authorization": f"Bearer {bad}"},
                    )
                    assert status == 401, (path, status)
                status, _ = await _request(
                    http,
                    "POST",
                    f"{base}/v1/push",
                    bodies,
                    headers={"Authorization": f"Bearer {bad}"},
                    json=push,
                )
                assert status == 401
            await _request(http, "GET", f"{base}/v1/pull", bodies, headers={"Authorization": valid})
            await _request(http, "GET", f"{base}/metrics", bodies)
            await _request(http, "GET", f"{base}/readyz", bodies)

            # a reload of a config with new secrets and a mistake: refused, logged
            good = run.config.read_text()
            broken = (
                good.replace(SECRET, NEW_JWT_SECRET).replace("${STORE_KEY}", NEW_STORE_KEY)
                + "\nlimits: {max_body: lots}\n"
            )
            run.config.write_text(broken)
            assert run.proc is not None
            run.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 30
            while "config reload refused" not in run.output():
                assert time.monotonic() < deadline, "the reload was not refused"
                await asyncio.sleep(0.2)
            run.config.write_text(good)
    finally:
        run.stop()
    output = run.output()
    for line in output.splitlines():
        if line.strip():
            orjson.loads(line)  # JSON lines only
    assert '"mutation"' in output and "config reload refused" in output
    outputs["run"] = output

    # -- a database URL that cannot connect -------------------------------------------------
    dead = _with_password(f"postgresql://sidecar@127.0.0.1:{free_port()}/app", DB_PASSWORD)
    dead_cfg = tmp_path / "dead.yaml"
    dead_cfg.write_text(
        f"""
database: {{url: "{dead}", slot: s, publication: p}}
store: {{path: "{tmp_path / "dead.db"}", encryption_key: "{NEW_STORE_KEY}"}}
server: {{host: 127.0.0.1, port: {free_port()}}}
auth: {{jwt: {{secret: "{NEW_JWT_SECRET}"}}}}
log: {{format: json}}
collections:
{NOTES}
"""
    )
    for verb in ("run", "check", "status"):
        outputs[f"{verb} (database down)"] = _cli(verb, "-c", str(dead_cfg))

    # -- configs with mistakes beside the secrets ------------------------------------------
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text(
        f"""
database: {{url: "{url}", slot: s, publication: p, pool_size: many}}
store:
  path: "{tmp_path / "bad.db"}"
  encryption_key: "{NEW_STORE_KEY}"
  tombstone_retention: forever
auth: {{jwt: {{secret: "{NEW_JWT_SECRET}", algorithms: [HS999]}}}}
collections:
{NOTES}
"""
    )
    typo_cfg = tmp_path / "typo.yaml"  # the secrets where they do not belong
    typo_cfg.write_text(
        f"""
database: {{url: "{url}", slot: s, publication: p, password: "{DB_PASSWORD}"}}
store: {{path: "{tmp_path / "typo.db"}", encryption_key: ["{NEW_STORE_KEY}"]}}
auth: {{jwt: {{secret: {{value: "{NEW_JWT_SECRET}"}}, secrte: "{SECRET}"}}}}
collections:
{NOTES}
"""
    )
    numeric_cfg = tmp_path / "numeric.yaml"  # secrets YAML reads as numbers: refused
    numeric_cfg.write_text(
        f"""
database: {{url: "{url}", slot: s, publication: p}}
store: {{path: "{tmp_path / "numeric.db"}", encryption_key: {NUMERIC_KEY}}}
auth: {{jwt: {{secret: {NUMERIC_SECRET}}}}}
collections:
{NOTES}
"""
    )
    for cfg in (bad_cfg, typo_cfg, numeric_cfg):
        for verb in ("run", "check"):
            out = _cli(verb, "-c", str(cfg))
            assert "problem" in out, out
            outputs[f"{verb} ({cfg.name})"] = out

    # -- the encrypted store opened with a wrong key ----------------------------------------
    outputs["run (wrong store key)"] = _cli(
        "run", "-c", str(run.config), env={"STORE_KEY": NEW_STORE_KEY}
    )
    assert "store.encryption_key" in outputs["run (wrong store key)"]

    everything = {**outputs, **{f"body {i}": b for i, b in enumerate(bodies)}}
    leaks = [
        f"{name} in {where}"
        for where, text in everything.items()
        for name, secret in secrets.items()
        if secret in text
    ]
    assert not leaks, leaks
    Path(tmp_path / "outputs.json").write_bytes(orjson.dumps(everything))  # for a look
