"""The store contract, reader side: what the read and write paths read (`StoreReader`):
pages in version order, several scopes at once, reads from other threads, mutation
records and the audit trail. Every store implementation runs it (`tests/support/stores.py`).
"""

from __future__ import annotations

import threading

import orjson

from sidecar.store.base import MutationRecord
from tests.contract.conftest import delete, lines, put


def test_paging_and_has_more(store):
    for i in range(1, 8):
        put(store, i, f"r{i}", "a")
    store.commit(1)
    page = store.pull(["a"], 0, 3)
    assert page.has_more and page.last_version == 3 and len(page.lines) == 3
    page = store.pull(["a"], 3, 3)
    assert page.has_more and page.last_version == 6
    page = store.pull(["a"], 6, 3)
    assert not page.has_more and page.last_version == 7 and len(page.lines) == 1
    page = store.pull(["a"], 7, 3)
    assert not page.has_more and page.lines == [] and page.last_version == 7


def test_multi_scope_pull_gives_each_row_once(store):
    put(store, 1, "both", "a", "b")
    put(store, 2, "only-b", "b")
    store.commit(1)
    got = lines(store, ["a", "b"])
    assert [c["row"]["title"] for c in got] == ["both", "only-b"]
    # leaving scope a while staying in b: a caller holding both scopes sees an upsert
    put(store, 1, "both2", "b")
    store.commit(2)
    got = lines(store, ["a", "b"], after=2)
    assert [(c["op"], c["row"]["title"]) for c in got] == [("upsert", "both2")]


def test_multi_scope_paging_is_consistent(store):
    for i in range(1, 21):
        put(store, i, f"r{i}", "a" if i % 2 else "b", *(["c"] if i % 3 == 0 else []))
    store.commit(1)
    seen, after = [], 0
    while True:
        page = store.pull(["a", "b", "c"], after, 4)
        seen += [orjson.loads(x)["key"]["id"] for x in page.lines]
        after = page.last_version
        if not page.has_more:
            break
    assert seen == list(range(1, 21))


def test_reader_on_another_thread_sees_commits_only(store):
    put(store, 1, "committed", "a")
    store.commit(1)
    put(store, 2, "pending", "a")
    out: list[int] = []
    t = threading.Thread(target=lambda: out.append(len(store.pull(["a"], 0, 10).lines)))
    t.start()
    t.join()
    assert out == [1]
    store.commit(2)


def test_mutations_are_recorded_once_per_subject(store):
    store.record_mutations([MutationRecord("m1", "u1", "d1", 7, b'{"status":"applied"}')])
    store.commit(7)
    store.record_mutations([MutationRecord("m1", "u1", "d2", 8, b'{"status":"other"}')])
    store.commit(8)
    rec = store.mutation("u1", "m1")
    assert rec is not None and rec.subject == "u1" and rec.outcome == b'{"status":"applied"}'
    assert store.mutation("u1", "nope") is None


def test_the_same_id_from_two_subjects_is_two_mutations(store):
    theirs = MutationRecord("m1", "u2", "d2", 7, b'{"status":"applied"}')
    store.record_mutations([theirs])
    store.commit(7)
    assert store.mutation("u1", "m1") is None  # nothing of u2's mutation is found by u1
    store.record_mutations([MutationRecord("m1", "u1", "d1", 8, b'{"rev":"mine"}')])
    store.commit(8)
    assert store.mutation("u1", "m1") == MutationRecord("m1", "u1", "d1", 8, b'{"rev":"mine"}')
    assert store.mutation("u2", "m1") == theirs


def test_many_ids_are_looked_up_in_one_read_per_subject(store):
    mine = [MutationRecord(f"m{i}", "u1", "d1", 7, b'{"rev":"r"}') for i in range(600)]
    theirs = MutationRecord("x", "u2", "d2", 7, b'{"rev":"t"}')
    store.record_mutations([*mine, theirs])
    store.commit(7)
    ids = [f"m{i}" for i in range(0, 1200, 2)] + ["x"]  # past one chunk; half recorded
    found = store.mutations("u1", ids)
    assert found == {r.id: r for r in mine[::2]}  # another subject's `x` is not u1's
    assert store.mutations("u2", ["x", "m0"]) == {"x": theirs}
    assert store.mutations("u1", []) == {}


def _record(
    id_: str, lsn: int, key: dict, xid: int | None, op: str = "update", sub: str = "u1"
) -> MutationRecord:
    outcome: dict[str, object] = {
        "status": "applied",
        "rev": "r",
        "collection": "c",
        "op": op,
        "key": key,
    }
    if xid is not None:
        outcome["xid"] = xid
    return MutationRecord(id_, sub, "d1", lsn, orjson.dumps(outcome))


def test_audit_lists_a_rows_mutations_newest_first(store):
    store.record_mutations(
        [
            _record("m1", 10, {"id": 1}, 100, "insert"),
            _record("m2", 20, {"id": 2}, 101),
            _record("m3", 30, {"id": 1}, 102),
        ]
    )
    store.commit(30)
    assert [r.id for r in store.audit("c", b'{"id": 1}', 10)] == ["m3", "m1"]
    assert [r.id for r in store.audit("c", b'{"id":1}', 1)] == ["m3"]
    assert store.audit("other", b'{"id":1}', 10) == []
    assert store.audit("c", b'{"id":3}', 10) == []
    (newest,) = store.audit("c", b'{"id":2}', 10)
    assert newest == _record("m2", 20, {"id": 2}, 101)
    # a key no stored row can have (a NUL in a string) is simply not found
    assert store.audit("c", b'{"id":"a\\u0000b"}', 10) == []


def test_row_xids_give_each_rows_last_write_by_the_subject(store):
    store.record_mutations(
        [
            _record("m1", 10, {"id": 1}, 100),
            _record("m2", 20, {"id": 1}, 105),
            _record("m3", 30, {"id": 2}, None),  # recorded without a transaction id
            _record("m4", 40, {"id": 1}, 110, sub="u2"),  # another subject's write
        ]
    )
    store.commit(40)
    keys = [orjson.dumps({"id": i}).decode() for i in (1, 2, 3)]
    assert store.row_xids("c", keys, "u1") == {keys[0]: 105}
    assert store.row_xids("c", keys, "u2") == {keys[0]: 110}
    assert store.row_xids("c", keys, "u3") == {}
    assert store.row_xids("other", keys, "u1") == {}
    assert store.row_xids("c", [], "u1") == {}


def test_counts_rows_and_tombstones(store):
    assert store.counts()["rows"] == 0
    put(store, 1, "x", "a", "b")
    put(store, 2, "y", "a")
    store.commit(1)
    put(store, 1, "x", "a")  # leaves b: a tombstone there
    store.commit(2)
    counts = store.counts()
    assert (counts["rows"], counts["tombstones"]) == (2, 1) and counts["bytes"] > 0


def test_state_follows_commits(store):
    before = store.state()
    put(store, 1, "x", "a")
    assert store.state() == before  # nothing committed yet
    store.commit(77)
    after = store.state()
    assert (after.epoch, after.version, after.lsn) == (before.epoch, 1, 77)


def _page_through(store, scopes, max_bytes, limit=100):
    pages, after = [], 0
    while True:
        page = store.pull(scopes, after, limit, max_bytes)
        pages.append(page)
        after = page.last_version
        if not page.has_more:
            return pages


def test_pages_are_bounded_in_bytes_and_lose_nothing(store):
    """`max_bytes` stops a page before the change that would overflow it (a page still
    carries at least one); the next page goes on exactly after the last change given."""
    sizes = [300, 5000, 1200, 9000, 40, 2500, 2500, 2500, 7000, 100, 12000, 600]
    for i, size in enumerate(sizes, 1):
        put(store, i, "x" * size, "a" if i % 2 else "b", *(["c"] if i % 3 == 0 else []))
    store.commit(1)
    delete(store, 4)
    put(store, 5, "y" * 3000, "b")  # leaves a for b
    store.commit(2)
    for scopes in (["a"], ["b"], ["a", "b", "c"]):
        unbounded = store.pull(scopes, 0, 100)
        assert not unbounded.has_more
        pages = _page_through(store, scopes, 6000)
        assert [x for p in pages for x in p.lines] == unbounded.lines, scopes
        assert pages[-1].last_version == unbounded.last_version
        for p in pages:
            size = sum(len(x) + 1 for x in p.lines)
            assert size <= 6000 or len(p.lines) == 1, (scopes, size)
            assert p.lines or p is pages[-1]
        big = [x for x in unbounded.lines if len(x) > 6000]
        assert [p.lines[0] for p in pages if len(p.lines[0]) > 6000] == big
        assert all(len(p.lines) == 1 for p in pages if len(p.lines[0]) > 6000)
        assert len(pages) > 2


def test_a_change_larger_than_the_bound_comes_alone(store):
    put(store, 1, "x" * 5000, "a")
    put(store, 2, "small", "a")
    store.commit(1)
    page = store.pull(["a"], 0, 10, 100)
    assert len(page.lines) == 1 and page.has_more and page.last_version == 1
    page = store.pull(["a"], 1, 10, 100)
    assert len(page.lines) == 1 and not page.has_more and page.last_version == 2
