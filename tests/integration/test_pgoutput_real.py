"""The pgoutput decoder against real bytes from PostgreSQL 15.

The changes are read with ``pg_logical_slot_get_binary_changes`` (one pgoutput message per
row): fine for a test, while the product streams them with START_REPLICATION.
"""

from __future__ import annotations

import itertools
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from sidecar.capture.pgoutput import Decoder
from sidecar.capture.pgoutput_messages import (
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Relation,
    RelationColumn,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    Update,
    pg_time_to_datetime,
)
from sidecar.lsn import str_to_lsn
from sidecar.unchanged import UNCHANGED

pytestmark = pytest.mark.pg

INT4, TEXT, JSONB, NUMERIC = 23, 25, 3802, 1700
NUMERIC_10_2 = ((10 << 16) | 2) + 4  # typmod of numeric(10,2)

# The SQL interface decodes only up to the WAL *flush* position, and the test server runs with
# synchronous_commit=off: make this session's commits flush, so all changes are visible.
_FLUSH_ON_COMMIT = "SET synchronous_commit = on"


def _changes(conn: psycopg.Connection, slot: str, *options: str) -> list[tuple[int, int, Message]]:
    """Consume the slot; decode every message; return (row lsn, row xid, message)."""
    decoder = Decoder()
    rows = conn.execute(
        "SELECT lsn::text, xid::text::bigint, data"
        " FROM pg_logical_slot_get_binary_changes(%s, NULL, NULL, VARIADIC %s::text[])",
        (slot, list(options)),
    ).fetchall()
    return [(str_to_lsn(lsn), xid, decoder.decode(data)) for lsn, xid, data in rows]


def _transactions(changes: list[tuple[int, int, Message]]) -> list[list[Message]]:
    """Split a non-streamed change list into [Begin, …, Commit] groups; check the framing."""
    txns: list[list[Message]] = []
    current: list[Message] | None = None
    for lsn, xid, msg in changes:
        if isinstance(msg, Begin):
            assert current is None
            assert msg.xid == xid
            current = [msg]
        elif isinstance(msg, Commit):
            assert current is not None
            begin = current[0]
            assert isinstance(begin, Begin)
            assert msg.commit_lsn == begin.final_lsn
            assert msg.commit_time_us == begin.commit_time_us
            assert msg.end_lsn > msg.commit_lsn
            assert lsn == msg.end_lsn  # the SQL interface reports a commit at its end
            current.append(msg)
            txns.append(current)
            current = None
        elif current is None:
            txns.append([msg])  # a non-transactional message stands alone
        else:
            current.append(msg)
    assert current is None
    return txns


def test_decode_real_pgoutput_v1(pg_dsn: str) -> None:
    big = _incompressible(40_000)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(_FLUSH_ON_COMMIT)
        conn.execute(
            "CREATE TABLE items (id int PRIMARY KEY, title text, big text, doc jsonb,"
            " price numeric(10,2))"
        )
        relid = _scalar(conn, "SELECT 'items'::regclass::oid::bigint")
        conn.execute("CREATE PUBLICATION pub FOR TABLE items")
        conn.execute("SELECT pg_create_logical_replication_slot('t_slot', 'pgoutput')")
        conn.execute("INSERT INTO items VALUES (1, 'first', %s, '{\"a\": 1}', 12.5)", (big,))
        toast = _scalar(conn, "SELECT reltoastrelid::regclass FROM pg_class WHERE oid = %s", relid)
        chunks = _scalar(conn, f"SELECT count(*) FROM {toast}")
        assert chunks > 0, "the big value was not stored out of line"
        conn.execute("UPDATE items SET title = 'second' WHERE id = 1")  # big untouched
        conn.execute("UPDATE items SET id = 2 WHERE id = 1")  # the key changes
        conn.execute("DELETE FROM items WHERE id = 2")
        with conn.transaction():
            conn.execute("INSERT INTO items VALUES (3, 'third', 'small', NULL, NULL)")
            conn.execute("SELECT pg_logical_emit_message(true, 'sidecar', 'hello')")
        conn.execute("SELECT pg_logical_emit_message(false, 'sidecar', 'not in a txn')")
        conn.execute("TRUNCATE items RESTART IDENTITY")

        changes = _changes(
            conn,
            "t_slot",
            *("proto_version", "1", "publication_names", "pub", "messages", "true"),
        )

    txns = _transactions(changes)
    body = [[m for m in t if not isinstance(m, Begin | Commit)] for t in txns]
    assert [[type(m) for m in b] for b in body] == [
        [Relation, Insert],
        [Update],
        [Update],
        [Delete],
        [Insert, LogicalMessage],
        [LogicalMessage],
        [Relation, Truncate],  # TRUNCATE gives the table a new relfilenode: schema resent
    ]

    # commits come in order, each transaction after the previous one
    commits = [t[-1] for t in txns if isinstance(t[-1], Commit)]
    assert [c.end_lsn for c in commits] == sorted(c.end_lsn for c in commits)
    assert all(a.end_lsn <= b.commit_lsn for a, b in itertools.pairwise(commits))
    first_begin = txns[0][0]
    assert isinstance(first_begin, Begin)
    now = datetime.now(UTC)
    assert abs(pg_time_to_datetime(first_begin.commit_time_us) - now) < timedelta(minutes=5)

    rel = body[0][0]
    assert rel == Relation(
        relid,
        "public",
        "items",
        "d",
        (
            RelationColumn("id", INT4, -1, True),
            RelationColumn("title", TEXT, -1, False),
            RelationColumn("big", TEXT, -1, False),
            RelationColumn("doc", JSONB, -1, False),
            RelationColumn("price", NUMERIC, NUMERIC_10_2, False),
        ),
    )
    big_b = big.encode()
    assert body[0][1] == Insert(relid, (b"1", b"first", big_b, b'{"a": 1}', b"12.50"))
    # the TOASTed column the update did not touch arrives as 'u'
    assert body[1][0] == Update(
        relid, None, None, (b"1", b"second", UNCHANGED, b'{"a": 1}', b"12.50")
    )
    # a key change sends the old key ('K'): key columns set, the others NULL
    assert body[2][0] == Update(
        relid,
        (b"1", None, None, None, None),
        "K",
        (b"2", b"second", UNCHANGED, b'{"a": 1}', b"12.50"),
    )
    assert body[3][0] == Delete(relid, (b"2", None, None, None, None), "K")
    assert body[4][0] == Insert(relid, (b"3", b"third", b"small", None, None))
    msg = body[4][1]
    assert isinstance(msg, LogicalMessage)
    assert (msg.transactional, msg.prefix, msg.content, msg.xid) == (
        True,
        "sidecar",
        b"hello",
        None,
    )
    begin4, commit4 = txns[4][0], txns[4][-1]
    assert isinstance(begin4, Begin) and isinstance(commit4, Commit)
    # a message's LSN is the end of its WAL record: here, the start of the commit record
    prev_commit = txns[3][-1]
    assert isinstance(prev_commit, Commit)
    assert prev_commit.end_lsn < msg.lsn <= commit4.commit_lsn
    nontx = body[5][0]
    assert isinstance(nontx, LogicalMessage)
    assert (nontx.transactional, nontx.prefix, nontx.content) == (
        False,
        "sidecar",
        b"not in a txn",
    )
    assert body[6][0] == rel
    assert body[6][1] == Truncate((relid,), cascade=False, restart_identity=True)


def test_decode_real_streamed_transactions_v2(pg_dsn: str) -> None:
    n_rows = 3000
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(_FLUSH_ON_COMMIT)
        conn.execute("CREATE TABLE big_txn (id int PRIMARY KEY, payload text)")
        relid = _scalar(conn, "SELECT 'big_txn'::regclass::oid::bigint")
        conn.execute("CREATE PUBLICATION pub FOR TABLE big_txn")
        conn.execute("SELECT pg_create_logical_replication_slot('t_stream', 'pgoutput')")
        with conn.transaction():
            conn.execute(
                "INSERT INTO big_txn SELECT g, repeat('x', 200) FROM generate_series(1, %s::int) g",
                (n_rows,),
            )
            conn.execute("SELECT pg_logical_emit_message(true, 'sidecar', 'in stream')")
            conn.execute("UPDATE big_txn SET payload = 'y' WHERE id <= %s", (n_rows // 2,))
            committed_xid = _scalar(conn, "SELECT txid_current()")
        with pytest.raises(psycopg.errors.RaiseException), conn.transaction():
            conn.execute(
                "INSERT INTO big_txn SELECT g, repeat('z', 200)"
                " FROM generate_series(%s::int, %s::int) g",
                (n_rows + 1, 2 * n_rows),
            )
            conn.execute("DO $$ BEGIN RAISE EXCEPTION 'roll back'; END $$")
        # the abort record is never flushed by itself: this commit flushes it
        conn.execute("INSERT INTO big_txn VALUES (0, 'small, not streamed')")

        conn.execute("SET logical_decoding_work_mem = '64kB'")
        changes = _changes(
            conn,
            "t_stream",
            *("proto_version", "2", "publication_names", "pub", "messages", "true"),
            *("streaming", "on"),
        )

    msgs = [m for _, _, m in changes]
    starts = [m for m in msgs if isinstance(m, StreamStart)]
    assert starts, "the large transaction was not streamed"
    assert starts[0].xid == committed_xid and starts[0].first
    # every block of a transaction after its first is flagged not-first
    seen: set[int] = set()
    for s in starts:
        assert s.first == (s.xid not in seen)
        seen.add(s.xid)
    assert len(seen) == 2  # the committed and the rolled-back large transactions

    # inside a block, every message carries the block's xid; outside, none does
    in_block: int | None = None
    inserted: dict[int, bytes] = {}
    updated: set[bytes] = set()
    stream_msgs: list[LogicalMessage] = []
    for row_xid, msg in ((x, m) for _, x, m in changes):
        if isinstance(msg, StreamStart):
            assert in_block is None
            in_block = msg.xid
            assert row_xid == msg.xid
        elif isinstance(msg, StreamStop):
            assert in_block is not None
            in_block = None
        elif isinstance(msg, Relation | Insert | Update | Delete | LogicalMessage):
            assert msg.xid == in_block
            if in_block is None:
                continue
            assert row_xid == in_block
            if isinstance(msg, Relation):
                assert msg.relid == relid and msg.name == "big_txn"
                assert [c.name for c in msg.columns] == ["id", "payload"]
            elif in_block == committed_xid and isinstance(msg, Insert):
                assert msg.relid == relid
                key, payload = msg.new
                assert isinstance(key, bytes) and isinstance(payload, bytes)
                inserted[int(key)] = payload
            elif in_block == committed_xid and isinstance(msg, Update):
                assert msg.old is None and msg.new[1] == b"y"
                key = msg.new[0]
                assert isinstance(key, bytes)
                updated.add(key)
            elif isinstance(msg, LogicalMessage):
                stream_msgs.append(msg)
    assert in_block is None
    assert inserted == {i: b"x" * 200 for i in range(1, n_rows + 1)}
    assert updated == {str(i).encode() for i in range(1, n_rows // 2 + 1)}
    assert [(m.prefix, m.content, m.xid) for m in stream_msgs] == [
        ("sidecar", b"in stream", committed_xid)
    ]

    stream_commits = [m for m in msgs if isinstance(m, StreamCommit)]
    assert [c.xid for c in stream_commits] == [committed_xid]
    sc = stream_commits[0]
    assert sc.end_lsn > sc.commit_lsn > 0
    assert abs(pg_time_to_datetime(sc.commit_time_us) - datetime.now(UTC)) < timedelta(minutes=5)

    aborted_xid = (seen - {committed_xid}).pop()
    assert StreamAbort(aborted_xid, aborted_xid) in msgs

    # the small transaction was sent whole, with Begin/Commit and no xids on its changes
    small = [m for m in msgs if isinstance(m, Insert) and m.new[0] == b"0"]
    assert small == [Insert(relid, (b"0", b"small, not streamed"), None)]
    commits = [m for m in msgs if isinstance(m, Commit)]
    assert len(commits) == 1 and commits[0].commit_lsn > sc.commit_lsn


def _scalar(conn: psycopg.Connection, sql: str, *params: object) -> Any:
    """The first column of the first row of ``sql``."""
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


def _incompressible(n: int) -> str:
    """``n`` characters that pglz cannot shrink below the TOAST threshold (random hex)."""
    return os.urandom(n // 2 + 1).hex()[:n]
