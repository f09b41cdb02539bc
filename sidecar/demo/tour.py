"""`sidecar demo`: a private PostgreSQL, a small legacy app schema, and the sidecar on it."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from importlib import resources
from pathlib import Path

import jwt
import psycopg

from sidecar.config.loader import load_config
from sidecar.embedded import EmbeddedPostgres
from sidecar.observability import configure_logging
from sidecar.serve import serve

DEMO_SECRET = "demo-secret-change-me-0123456789abcdef"


def demo_token(subject: str, secret: str = DEMO_SECRET, hours: int = 24) -> str:
    now = int(time.time())
    claims = {"sub": subject, "device_id": "demo-device", "iat": now, "exp": now + hours * 3600}
    return jwt.encode(claims, secret, algorithm="HS256")


INSERT_BODY = (
    '{"mutations":[{"id":"demo-insert-1","collection":"todos","op":"insert",'
    '"data":{"title":"Written with curl"}}]}'
)
CONFLICT_BODY = (
    '{"mutations":[{"id":"demo-stale-1","collection":"todos","op":"update","key":{"id":2},'
    '"data":{"title":"A stale edit"},"base_rev":"0000000000000000"}]}'
)


def _tour(base: str, token: str, other: str) -> str:
    auth = f'-H "Authorization: Bearer {token}"'
    post = f"{auth} -H 'Content-Type: application/json'"
    return f"""
sidecar demo is running at {base}

  user 1 token: {token}
  user 2 token: {other}

Try (in another terminal):
  # what user 1 may sync, then an initial sync (keep the "cursor" it returns)
  curl -s {auth} {base}/v1/schema
  curl -s {auth} '{base}/v1/pull'
  # user 2 sees only their own rows
  curl -s -H "Authorization: Bearer {other}" '{base}/v1/pull'
  # a live long-poll: waits up to 30 s for user 1's next change (run the push below)
  curl -s {auth} '{base}/v1/pull?cursor=<cursor>&live=true&timeout=30'
  # a write: lands in PostgreSQL's todo_items, owner set from the token
  curl -s {post} -d '{INSERT_BODY}' {base}/v1/push
  # a conflict: an edit made against an old revision gets the server's row back
  curl -s {post} -d '{CONFLICT_BODY}' {base}/v1/push
  # the same changes as Server-Sent Events, as they land
  curl -sN {auth} '{base}/v1/stream'
  curl -s {base}/readyz ; curl -s {base}/metrics | head

Press Ctrl-C to stop (the demo database is removed; --keep keeps the store).
"""


def run_demo(port: int = 8080, keep: bool = False) -> int:
    work = Path(tempfile.mkdtemp(prefix="sidecar-demo-"))
    pg = EmbeddedPostgres()
    pg.start()
    try:
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE demo")
        with psycopg.connect(pg.dsn("demo"), autocommit=True) as conn:
            conn.execute(resources.files("sidecar.demo").joinpath("schema.sql").read_text())
        env = dict(os.environ)
        env["DATABASE_URL"] = pg.url("demo")
        env["SIDECAR_STORE"] = str(work / "sidecar.db")
        env.setdefault("JWT_SECRET", DEMO_SECRET)
        config_path = resources.files("sidecar.demo").joinpath("demo.yaml")
        with resources.as_file(config_path) as path:
            config = load_config(path, env=env)
        config = _with_port(config, port)
        configure_logging(config.log.level, "console", secrets=config.secrets())
        base = f"http://127.0.0.1:{port}"
        message = _tour(
            base, demo_token("1", env["JWT_SECRET"]), demo_token("2", env["JWT_SECRET"])
        )
        asyncio.run(serve(config, ready_message=message, watch=False))
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        pg.stop()
        if keep:
            print(f"demo store kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _with_port(config, port: int):  # type: ignore[no-untyped-def]
    from dataclasses import replace

    return replace(config, server=replace(config.server, port=port, host="127.0.0.1"))
