"""The store contract, writer side: what capture writes (`StoreWriter`) is what a store
keeps and answers. Every store implementation runs it (`tests/support/stores.py`).

Row changes, compaction, tombstones, the initial copy's bulk load, commits and
rollbacks, resets, truncates, purges; a batch applied at once equals its changes applied
one by one.
"""

from __future__ import annotations

import random

import orjson
import pytest

from sidecar.changes import Image, rev_of
from sidecar.store.base import MutationRecord, RowChange
from tests.contract.conftest import current, delete, image, lines, put
from tests.support.stores import load


def test_fresh_state(store):
    st = store.state()
    assert len(st.epoch) == 8 and int(st.epoch, 16) >= 0
    assert (st.lsn, st.version, st.snapshot_done, st.purged_version) == (0, 0, False, 0)


def test_write_commit_pull_in_version_order(store):
    put(store, 1, "one", "a")
    put(store, 2, "two", "a")
    put(store, 3, "three", "b")
    store.commit(100)
    got = lines(store, ["a"])
    assert [c["row"]["title"] for c in got] == ["one", "two"]
    assert [int(c["version"]) for c in got] == [1, 2]
    assert got[0] == {
        "collection": "c",
        "op": "upsert",
        "key": {"id": 1},
        "row": {"id": 1, "title": "one"},
        "rev": rev_of(orjson.dumps({"id": 1, "title": "one"})),
        "version": "1",
    }
    assert store.state().lsn == 100 and store.state().version == 3


def test_compaction_keeps_latest_image_only(store):
    put(store, 1, "v1", "a")
    put(store, 1, "v2", "a")
    put(store, 1, "v3", "a")
    store.commit(1)
    got = lines(store, ["a"])
    assert [c["row"]["title"] for c in got] == ["v3"] and got[0]["version"] == "3"


def test_unchanged_image_makes_no_new_version(store):
    put(store, 1, "same", "a")
    store.commit(1)
    assert put(store, 1, "same", "a") == set()
    store.commit(2)
    assert store.state().version == 1


def test_move_out_leaves_a_tombstone(store):
    put(store, 1, "x", "a")
    store.commit(1)
    touched = put(store, 1, "x", "b")
    store.commit(2)
    assert touched == {"a", "b"}
    after_a = lines(store, ["a"])
    assert [(c["op"], c["key"]) for c in after_a] == [("delete", {"id": 1})]
    assert [c["op"] for c in lines(store, ["b"])] == ["upsert"]
    assert lines(store, ["a"], after=2) == []


def test_delete_tombstones_every_scope(store):
    put(store, 1, "x", "a", "b")
    store.commit(1)
    assert delete(store, 1) == {"a", "b"}
    store.commit(2)
    assert current(store, 1) is None
    for scope in ("a", "b"):
        (c,) = lines(store, [scope])
        assert c["op"] == "delete" and c["version"] == "2" and "row" not in c
    assert delete(store, 99) == set()  # unknown row: nothing


def test_rollback_discards_uncommitted_writes(store):
    put(store, 1, "kept", "a")
    store.commit(10)
    put(store, 2, "lost", "a")
    assert [c["row"]["title"] for c in lines(store, ["a"])] == ["kept"]  # readers see commits only
    store.rollback()
    assert store.state().version == 1 and store.state().lsn == 10
    put(store, 3, "next", "a")
    store.commit(11)
    assert [c["version"] for c in lines(store, ["a"])] == ["1", "2"]


def test_bulk_load_then_incremental_writes(store):
    store.reset(slot="s", system_id="x", database="d")
    load(store, "c", [image(i, f"r{i}", "a") for i in range(1, 6)])
    store.commit(10, snapshot_done=True)
    assert [c["version"] for c in lines(store, ["a"])] == ["1", "2", "3", "4", "5"]
    put(store, 2, "changed", "a")
    store.commit(11)
    got = lines(store, ["a"])
    assert [c["key"]["id"] for c in got] == [1, 3, 4, 5, 2]  # replaced, not duplicated
    assert current(store, 2).row == orjson.dumps({"id": 2, "title": "changed"})


@pytest.mark.parametrize("split", [False, True], ids=["one-statement", "split"])
def test_bulk_load_stores_what_row_changes_would(make_store, monkeypatch, split):
    """Rows in no scope, in several, with a key other than their identity, with hidden
    columns, with quotes and non-ASCII text: a bulk load and the same rows applied one
    change at a time leave stores that answer alike, and that go on alike. `split`: the
    SQLite store cuts a batch of large rows into several statements (here every ~200
    bytes: SQLite takes at most 1e9 bytes per parameter)."""
    if split:
        monkeypatch.setattr("sidecar.store.sqlite._LOAD_BYTES", 200)

    def odd(id_: int, scopes: tuple[str, ...]) -> Image:
        row = orjson.dumps({"id": id_, "title": f'say "hé" \\ {id_}'})
        return Image(
            ident=orjson.dumps({"id": id_}).decode(),
            key=orjson.dumps({"code": f"k{id_}"}) if id_ % 2 else orjson.dumps({"id": id_}),
            row=row,
            rev=rev_of(row),
            scopes=scopes,
            hidden=orjson.dumps({"owner": id_}) if id_ % 3 else b"{}",
        )

    scope_sets = [("a",), (), ("a", 'b"é'), ('b"é',), ("a", 'b"é', "c")]
    images = [odd(i, scope_sets[i % len(scope_sets)]) for i in range(1, 21)]
    loaded, applied = make_store("loaded"), make_store("applied")
    loaded.reset(slot="s", system_id="x", database="d")
    load(loaded, "c", images[:7])
    load(loaded, "c", images[7:])
    applied.apply([RowChange("c", None, im) for im in images])
    for s in (loaded, applied):
        s.commit(10, snapshot_done=True)
        s.apply([RowChange("c", None, odd(3, ("c",))), RowChange("c", odd(5, ()).ident, None)])
        s.commit(11)
    idents = [im.ident for im in images]
    assert loaded.get_rows("c", idents) == applied.get_rows("c", idents)
    for scope in ("a", 'b"é', "c"):
        assert lines(loaded, [scope]) == lines(applied, [scope]), scope
    assert loaded.state().version == applied.state().version == 22


def test_state_survives_reopen(make_store, tmp_path):
    s = make_store()
    put(s, 1, "x", "a")
    s.commit(42, snapshot_done=True)
    epoch = s.state().epoch
    s.close()
    s2 = make_store()
    st = s2.state()
    assert (st.epoch, st.lsn, st.version, st.snapshot_done) == (epoch, 42, 1, True)
    assert current(s2, 1) is not None


def test_reset_starts_a_new_epoch(store):
    put(store, 1, "x", "a")
    store.commit(5, snapshot_done=True)
    old = store.state().epoch
    st = store.reset(slot="slot", system_id="sys", database="db", shape="abc")
    assert st.epoch != old and st.lsn == 0 and st.version == 0 and not st.snapshot_done
    assert (st.slot, st.system_id, st.database, st.shape) == ("slot", "sys", "db", "abc")
    assert lines(store, ["a"]) == [] and current(store, 1) is None


@pytest.mark.parametrize(
    ("system_id", "database", "lineage", "kept"),
    [
        ("sys", "db", "1:16384", True),  # the same database: a lost slot, a new shape
        ("sys", "db", "2:16384", False),  # a new timeline: a failover or a restore
        ("sys", "db", "1:16999", False),  # the database was dropped and created again
        ("other", "db", "1:16384", False),  # another server
        ("sys", "db2", "1:16384", False),  # another database
        ("sys", "db", "", False),  # not known
    ],
)
def test_reset_keeps_mutation_ids_only_for_the_same_database(
    make_store, system_id, database, lineage, kept
):
    s = make_store()
    s.reset(slot="slot", system_id="sys", database="db", lineage="1:16384")
    s.record_mutations([MutationRecord("m1", "u1", "d1", 7, b'{"status":"applied"}')])
    put(s, 1, "x", "a")
    s.commit(5, snapshot_done=True)
    st = s.reset(slot="slot", system_id=system_id, database=database, lineage=lineage)
    assert st.lineage == lineage and st.version == 0 and current(s, 1) is None
    found = s.mutation("u1", "m1")
    assert (found is not None) == kept
    if kept:
        assert found == MutationRecord("m1", "u1", "d1", 7, b'{"status":"applied"}')
    s.close()
    assert (make_store().mutation("u1", "m1") is not None) == kept  # and so it stays
    assert make_store().mutation("u2", "m1") is None  # ids are kept per subject


def test_truncate_tombstones_the_collection_only(store):
    put(store, 1, "x", "a")
    put(store, 2, "y", "b")
    put(store, 3, "z", "a", coll="other")
    store.commit(1)
    assert store.truncate("c") == {"a", "b"}
    store.commit(2)
    assert [c["op"] for c in lines(store, ["a", "b"], after=3)] == ["delete", "delete"]
    assert current(store, 1) is None and current(store, 3, "other") is not None


def test_purge_tombstones_expires_old_cursors(store):
    put(store, 1, "x", "a")
    store.commit(1)
    delete(store, 1)
    store.commit(2)
    assert store.purge_tombstones(older_than=3600) == 0  # too young
    assert store.purge_tombstones(older_than=-1) == 1
    assert store.state().purged_version >= 2
    assert lines(store, ["a"]) == []


def _random_batch(rnd: random.Random, ids: int) -> list[tuple[str, int, Image | None]]:
    """Row changes as capture hands them over: upserts and deletes, some rows twice."""
    unique = rnd.random() < 0.5
    pool = rnd.sample(range(1, ids + 1), ids)
    coll = "c" if rnd.random() < 0.6 else None
    batch: list[tuple[str, int, Image | None]] = []
    for _ in range(rnd.randint(1, 12)):
        i = (pool.pop() if pool else 1) if unique else rnd.randint(1, ids)
        c = coll or rnd.choice(["c", "c", "e"])
        if rnd.random() < 0.2:
            batch.append((c, i, None))
            continue
        scopes = rnd.choice([("a",), ("a",), ("b",), ("a", "b"), ("b", "c"), ()])
        im = image(i, rnd.choice(["x", "y", "z"]), *scopes)
        if rnd.random() < 0.2:  # a change of columns the collection does not expose
            im = im._replace(hidden=b'{"h":1}')
        batch.append((c, i, im))
    return batch


@pytest.mark.parametrize("seed", range(40))
def test_a_batch_applies_as_its_changes_one_by_one(make_store, seed):
    """`apply` nets a batch in memory and writes it in bulk: same result as change by change."""
    rnd = random.Random(seed)
    batched, single = make_store(), make_store("single")
    cursors = [0]
    # The netting is the same code over every engine: a server engine (a round trip per
    # statement) replays shorter sequences, so that the suite stays within its time.
    steps = 25 if "sqlite" in type(batched).__module__ else 8
    for step in range(steps):
        batch = _random_batch(rnd, 8)
        changes = [
            RowChange(c, orjson.dumps({"id": i}).decode() if im is None else None, im)
            for c, i, im in batch
        ]
        touched = set()
        for change in changes:
            touched |= single.apply([change])
        assert batched.apply(changes) == touched
        if rnd.random() < 0.1:
            assert batched.truncate("e") == single.truncate("e")
        for s in (batched, single):
            s.commit(step + 1)
        cursors.append(batched.state().version)
        assert batched.state().version == single.state().version
        for scopes in (["a"], ["b"], ["c"], ["a", "b", "c"]):
            for after in cursors:
                assert batched.pull(scopes, after, 5) == single.pull(scopes, after, 5)
        for coll in ("c", "e"):
            ids = [orjson.dumps({"id": i}).decode() for i in range(1, 9)]
            assert batched.get_rows(coll, ids) == single.get_rows(coll, ids)
