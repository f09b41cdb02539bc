"""The PostgreSQL store's writer does work in proportion to a batch, not to the store.

Capture hands the store batches of a few thousand row changes, against a store of
millions of rows. A statement that reads a table whole for each batch (a hash join with
the batch, an index scan on the collection alone) makes a bulk UPDATE's capture
quadratic: a 500,000-row UPDATE took minutes. The store here holds 20,000 rows with no
statistics (as right after the initial copy: nothing has analysed the tables yet), and
the server's own counters of the open transaction (`pg_stat_xact_user_tables`) tell how
many stored rows a batch read.
"""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest

from sidecar.changes import Image, rev_of
from sidecar.store.base import RowChange
from sidecar.store.pg import PGStore
from tests.support.stores import load

STORED = 20_000
BATCH = 1_000


def _image(id_: int, title: str, *scopes: str) -> Image:
    row = orjson.dumps({"id": id_, "title": title})
    return Image(
        ident=orjson.dumps({"id": id_}).decode(),
        key=orjson.dumps({"id": id_}),
        row=row,
        rev=rev_of(row),
        scopes=scopes,
        hidden=b"{}",
    )


def _ident(id_: int) -> str:
    return orjson.dumps({"id": id_}).decode()


@pytest.fixture
def store(pg_url: str) -> Iterator[PGStore]:
    """A store holding STORED rows of collection `c`, one scope each (`s0`…`s99`),
    committed by the initial copy."""
    s = PGStore(pg_url)
    s.reset(slot="s", system_id="x", database="d")
    for start in range(0, STORED, 5_000):
        load(s, "c", [_image(i, "v0", f"s{i % 100}") for i in range(start, start + 5_000)])
    s.commit(1, snapshot_done=True)
    try:
        yield s
    finally:
        s.close()


def _read(store: PGStore) -> dict[str, tuple[int, int, int]]:
    """Per table of the store: rows read by sequential scans, rows fetched through
    indexes, rows updated, in the open transaction."""
    found = store._w.execute(
        "SELECT relname, coalesce(seq_tup_read, 0), coalesce(idx_tup_fetch, 0), n_tup_upd "
        "FROM pg_stat_xact_user_tables WHERE schemaname = %s",
        (store.schema,),
    )
    return {name: (seq, idx, upd) for name, seq, idx, upd in found}


def test_a_bulk_update_batch_fetches_each_row_once(store: PGStore) -> None:
    """The usual batch (stored rows changed once, staying in their scope) is written
    without looking the rows up first: each is fetched once, none read by a scan."""
    changes = [RowChange("c", None, _image(i, "v1", f"s{i % 100}")) for i in range(BATCH)]
    touched = store.apply(changes)
    seq, idx, updated = _read(store)["rows"]
    assert (seq, updated) == (0, BATCH)
    assert idx <= BATCH, f"{idx} rows fetched for a batch of {BATCH}"
    assert touched == {f"s{i}" for i in range(100)}
    store.commit(2)
    assert store.state().version == STORED + BATCH
    assert store.get_rows("c", [_ident(7)])[_ident(7)].version == STORED + 8


def test_any_batch_reads_rows_in_proportion_to_it(store: PGStore) -> None:
    """A batch that is not a bulk update (rows inserted, deleted, moved to other scopes,
    in several scopes) reads the rows it names through the indexes, a few times each
    at most, and neither table whole."""
    changes = [
        *(RowChange("c", None, _image(STORED + i, "new", "s1")) for i in range(BATCH // 4)),
        *(RowChange("c", _ident(i), None) for i in range(BATCH // 4)),
        *(RowChange("c", None, _image(i, "moved", "t")) for i in range(300, 300 + BATCH // 4)),
        *(RowChange("c", None, _image(i, "both", "a", "b")) for i in range(600, 600 + BATCH // 4)),
    ]
    store.apply(changes)
    read = _read(store)
    for table in ("rows", "entries"):
        seq, idx, _ = read.get(table, (0, 0, 0))
        assert seq == 0, f"{table}: {seq} rows read by a scan"
        assert idx <= 3 * BATCH, f"{table}: {idx} rows fetched for a batch of {BATCH}"
    store.commit(2)
    assert store.state().version == STORED + BATCH
