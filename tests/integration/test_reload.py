"""Hot reload: write rules, limits and auth change without touching the replication stream;
a config that needs a restart or is invalid is refused and the running one stays."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import jwt
import psycopg
import pytest

from sidecar.config.loader import load_config_text
from sidecar.config.model import Config
from sidecar.embedded import free_port
from sidecar.errors import ConfigError
from tests.fixtures.service import SECRET, Sidecar
from tests.integration.test_durability import SidecarProcess

pytestmark = pytest.mark.pg

SCHEMA = """
CREATE TABLE todo_items (id serial PRIMARY KEY, title text NOT NULL, owner_id int NOT NULL);
INSERT INTO todo_items (title, owner_id) SELECT 't' || g, 1 FROM generate_series(1, 5) g;
"""
OTHER_SECRET = "another-secret-0123456789-0123456789"


def config_text(
    url: str,
    store: Path,
    *,
    secret: str = SECRET,
    ops: str = "[update]",
    read: str = "owner_id = :sub",
    limits: str = "{}",
    port: int = 8080,
) -> str:
    return f"""
database: {{url: "{url}", slot: sidecar_test, publication: sidecar_test}}
store: {{path: "{store}"}}
server: {{host: 127.0.0.1, port: {port}}}
auth: {{jwt: {{secret: "{secret}"}}}}
limits: {limits}
collections:
  todos:
    table: todo_items
    read: "{read}"
    write: {{ops: {ops}, set: {{owner_id: ":sub"}}}}
"""


def config(url: str, store: Path, **kw: object) -> Config:
    return load_config_text(config_text(url, store, **kw), file="test.yaml", env={})  # type: ignore[arg-type]


def bearer(secret: str, sub: str = "1") -> dict[str, str]:
    claims = {"sub": sub, "exp": int(time.time()) + 600}
    return {"Authorization": "Bearer " + jwt.encode(claims, secret, "HS256")}


async def insert(sc: Sidecar, n: int) -> dict:
    assert sc.client is not None
    resp = await sc.client.post(
        "/v1/push",
        json={
            "mutations": [
                {
                    "id": f"i{n}",
                    "collection": "todos",
                    "op": "insert",
                    "data": {"title": f"new {n}"},
                }
            ]
        },
        headers=bearer(SECRET),
    )
    return (await resp.json())["results"][0]


@pytest.fixture
async def sc(pg_dsn, pg_url, tmp_path):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)
    sidecar = Sidecar(config(pg_url, tmp_path / "store.db"))
    await sidecar.start()
    yield sidecar
    await sidecar.stop()


async def test_write_rules_and_limits_reload_in_place(sc, pg_url, tmp_path, pg_dsn):
    assert (await insert(sc, 1))["status"] == "rejected"  # insert is not in write.ops
    streaming_since = sc.service.capture.status.commits_applied
    changed = await sc.service.reload(
        config(pg_url, tmp_path / "store.db", ops="[insert, update]", limits="{max_page: 2}")
    )
    assert set(changed) == {"collections", "limits"}
    assert (await insert(sc, 2))["status"] == "applied"
    page = await sc.pull(1)
    assert len(page["changes"]) == 2 and page["has_more"] is True  # the new max_page
    await sc.caught_up(pg_dsn)  # the same replication stream carried the insert
    assert sc.service.capture.status.commits_applied > streaming_since
    assert sc.service.capture.status.phase == "streaming"


async def test_auth_reloads_old_tokens_stop_working(sc, pg_url, tmp_path):
    assert sc.client is not None
    await sc.service.reload(config(pg_url, tmp_path / "store.db", secret=OTHER_SECRET))
    assert (await sc.client.get("/v1/pull", headers=bearer(SECRET))).status == 401
    assert (await sc.client.get("/v1/pull", headers=bearer(OTHER_SECRET))).status == 200


async def test_a_change_that_needs_a_restart_is_refused_and_nothing_changes(sc, pg_url, tmp_path):
    before = sc.service.config
    with pytest.raises(ConfigError, match=r"server\.host/port changed"):
        await sc.service.reload(config(pg_url, tmp_path / "store.db", port=9999))
    assert sc.service.config is before
    assert (await insert(sc, 3))["status"] == "rejected"  # the old write rules still rule


async def test_sighup_reloads_a_running_process(pg_dsn, pg_url, tmp_path):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)
    port = free_port()
    path = tmp_path / "sidecar.yaml"
    store = tmp_path / "store.db"
    path.write_text(config_text(pg_url, store, port=port))
    proc = SidecarProcess(path, port, tmp_path / "sidecar.log")
    proc.start()
    try:
        await proc.wait_ready()
        url = f"http://127.0.0.1:{port}/v1/pull"
        async with aiohttp.ClientSession() as http:
            path.write_text("database: [not, a, mapping")  # invalid: refused, old one stays
            assert proc.proc is not None
            proc.proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(1.0)
            async with http.get(url, headers=bearer(SECRET)) as r:
                assert r.status == 200
            assert "config reload refused" in (tmp_path / "sidecar.log").read_text()
            path.write_text(config_text(pg_url, store, port=port, secret=OTHER_SECRET))
            proc.proc.send_signal(signal.SIGHUP)
            for _ in range(50):
                await asyncio.sleep(0.1)
                async with http.get(url, headers=bearer(OTHER_SECRET)) as r:
                    if r.status == 200:
                        break
            else:
                raise AssertionError((tmp_path / "sidecar.log").read_text()[-2000:])
            async with http.get(url, headers=bearer(SECRET)) as r:
                assert r.status == 401
            with psycopg.connect(pg_dsn, autocommit=True) as conn:  # replication goes on
                conn.execute("INSERT INTO todo_items (title, owner_id) VALUES ('after', 1)")
            headers = bearer(OTHER_SECRET)
            for _ in range(50):
                async with http.get(url, headers=headers) as r:
                    titles = {c["row"]["title"] for c in (await r.json())["changes"]}
                if "after" in titles:
                    break
                await asyncio.sleep(0.1)
            assert "after" in titles
        assert proc.proc.poll() is None
    finally:
        proc.stop()


async def test_a_collection_added_by_reload_is_copied_without_a_resync(
    sc, pg_url, tmp_path, pg_dsn
):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text, owner_id int)")
        conn.execute("INSERT INTO notes SELECT g, 'n' || g, 1 FROM generate_series(1, 50) g")
    _, cursor = await sc.pull_all(1)
    epoch = sc.service.store.state().epoch
    text = (
        config_text(pg_url, tmp_path / "store.db")
        + """
  notes:
    table: notes
    read: "owner_id = :sub"
"""
    )
    changed = await sc.service.reload(load_config_text(text, file="test.yaml", env={}))
    assert "collections" in changed
    for _ in range(100):
        if sc.service.capture.ready and "notes" in sc.service.routes:
            break
        await asyncio.sleep(0.1)
    assert sc.service.capture.ready
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE notes SET body = 'after' WHERE id = 1")
        conn.execute("INSERT INTO todo_items (title, owner_id) VALUES ('still', 1)")
    await sc.caught_up(pg_dsn)
    assert sc.service.store.state().epoch == epoch  # nobody resyncs
    changes, _ = await sc.pull_all(1, cursor)
    notes = {c["row"]["id"]: c["row"]["body"] for c in changes if c["collection"] == "notes"}
    assert len(notes) == 50 and notes[1] == "after"
    assert "still" in {c["row"].get("title") for c in changes if c["collection"] == "todos"}
    assert sc.service.capture.status.rebuilds == 0
