"""`write.where`: the rows a caller may write, narrower than the rows it may read.

Issue 12, item 5: with `read: "owner_id = :sub OR is_public"` any user could rename anyone's
public project, and with `read: "owner = :sub OR org = :org"` a user of another org could
insert rows into acme's view. `write.where` is checked on the locked row before the change
and on the new row after it (RETURNING), on every path that writes.
"""

from __future__ import annotations

import psycopg
import pytest

from tests.fixtures.service import make_config

pytestmark = pytest.mark.pg

SCHEMA = """
CREATE TABLE projects (id int PRIMARY KEY, name text, owner_id int, is_public boolean);
INSERT INTO projects VALUES (1, 'alice public', 1, true), (2, 'alice private', 1, false),
                            (3, 'bob public', 2, true);
CREATE TABLE docs (id int PRIMARY KEY, title text, owner text, org text);
INSERT INTO docs VALUES (1, 'acme plan', 'alice', 'acme');
"""

COLLECTIONS = """
  projects:
    table: projects
    read: "owner_id = :sub OR is_public"
    write:
      ops: [insert, update, delete]
      where: "owner_id = :sub"
    conflict: client_wins
  docs:
    table: docs
    read: "owner = :sub OR org = :org"
    write:
      ops: [insert, update]
      where: "org = :org"
"""


def rows(dsn: str, query: str) -> list:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchall()


@pytest.fixture
async def sc(pg_dsn, pg_url, sidecar_factory):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)
    return await sidecar_factory(pg_url, COLLECTIONS)


async def revs(sc, sub: str | int, **claims) -> dict:
    """(collection, id) → rev, as the caller pulled it."""
    assert sc.client is not None
    from tests.fixtures.service import auth

    resp = await sc.client.get("/v1/pull", headers=auth(sub, **claims))
    body = await resp.json()
    return {(c["collection"], c["key"]["id"]): c["rev"] for c in body["changes"]}


def _update(mid: str, pid: int, data: dict, rev: str | None, coll: str = "projects") -> dict:
    return {
        "id": mid,
        "collection": coll,
        "op": "update",
        "key": {"id": pid},
        "data": data,
        "base_rev": rev or "none",
    }


async def test_readable_public_row_of_another_user_cannot_be_written(sc, pg_dsn):
    changes, _ = await sc.pull_all(2)
    assert {c["row"]["name"] for c in changes} == {"alice public", "bob public"}
    rev = (await revs(sc, 2))[("projects", 1)]
    status, body = await sc.push([_update("m1", 1, {"name": "pwned"}, rev)], sub=2)
    assert status == 200
    [result] = body["results"]
    assert result["status"] == "rejected" and result["error"]["code"] == "forbidden"
    assert "write.where" in result["error"]["detail"]
    # every op on it: delete, and an insert on its key that client_wins would turn into
    # an overwrite
    status, body = await sc.push(
        [
            {
                "id": "m2",
                "collection": "projects",
                "op": "delete",
                "key": {"id": 1},
                "base_rev": rev,
            },
            {
                "id": "m3",
                "collection": "projects",
                "op": "insert",
                "key": {"id": 1},
                "data": {"name": "pwned", "owner_id": 2, "is_public": True},
            },
        ],
        sub=2,
    )
    assert [r["status"] for r in body["results"]] == ["rejected", "rejected"], body
    assert rows(pg_dsn, "SELECT name, owner_id FROM projects WHERE id = 1") == [("alice public", 1)]
    # the owner still writes it
    status, body = await sc.push([_update("m4", 1, {"name": "renamed"}, rev)], sub=1)
    assert body["results"][0]["status"] == "applied", body


async def test_the_new_row_must_satisfy_write_where(sc, pg_dsn):
    # bob may insert a project of his own, not one that names alice as its owner
    _, body = await sc.push(
        [
            {
                "id": "i1",
                "collection": "projects",
                "op": "insert",
                "key": {"id": 10},
                "data": {"name": "mine", "owner_id": 2, "is_public": False},
            },
            {
                "id": "i2",
                "collection": "projects",
                "op": "insert",
                "key": {"id": 11},
                "data": {"name": "alice's?", "owner_id": 1, "is_public": True},
            },
            # giving it away would leave his write scope
            _update("u1", 3, {"owner_id": 1}, (await revs(sc, 2))[("projects", 3)]),
        ],
        sub=2,
    )
    assert [r["status"] for r in body["results"]] == ["applied", "rejected", "rejected"], body
    assert rows(pg_dsn, "SELECT id, owner_id FROM projects WHERE id >= 3 ORDER BY id") == [
        (3, 2),
        (10, 2),
    ]


async def test_a_user_of_another_org_cannot_insert_into_acme(sc, pg_dsn):
    # mallory (org evil) owns the row she inserts, so the read rule alone let it in
    _status, body = await sc.push(
        [
            {
                "id": "x1",
                "collection": "docs",
                "op": "insert",
                "key": {"id": 2},
                "data": {"title": "fake memo", "owner": "mallory", "org": "acme"},
            }
        ],
        sub="mallory",
        org="evil",
    )
    [result] = body["results"]
    assert result["status"] == "rejected" and result["error"]["code"] == "forbidden", body
    assert rows(pg_dsn, "SELECT count(*) FROM docs") == [(1,)]
    # an acme member writes acme's rows; pipelined updates go through the same check
    rev = (await revs(sc, "bob", org="acme"))[("docs", 1)]
    update = _update("a1", 1, {"title": "acme plan v2"}, rev, "docs")
    _, body = await sc.push([update], sub="bob", org="acme")
    assert body["results"][0]["status"] == "applied", body
    # alice owns it (she reads it) but left acme: no longer hers to write
    rev = (await revs(sc, "alice", org="evil"))[("docs", 1)]
    update = _update("a2", 1, {"title": "acme plan v3"}, rev, "docs")
    _, body = await sc.push([update], sub="alice", org="evil")
    assert body["results"][0]["status"] == "rejected", body
    assert rows(pg_dsn, "SELECT title FROM docs") == [("acme plan v2",)]


def test_write_where_is_a_checked_rule(pg_url, tmp_path):
    from sidecar.errors import ConfigError

    bad = COLLECTIONS.replace('where: "org = :org"', 'where: "org = (SELECT 1)"')
    with pytest.raises(ConfigError) as caught:
        make_config(pg_url, tmp_path / "s.db", bad)
    assert "collections.docs.write.where" in str(caught.value)
    config = make_config(pg_url, tmp_path / "s.db", COLLECTIONS)
    where = config.collections["projects"].write.where
    assert where is not None and where.columns == {"owner_id"}
