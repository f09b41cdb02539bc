"""Unit tests of the pgoutput decoder on hand-built protocol messages.

Run ``python tests/unit/capture/test_pgoutput.py`` for the micro-benchmark (200k Update messages).
"""

from __future__ import annotations

import contextlib
import copy
import pickle
import struct
import time
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.capture.framing import XLogData, parse_copy_data
from sidecar.capture.pgoutput import Decoder, decode
from sidecar.capture.pgoutput_messages import (
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Origin,
    ProtocolError,
    Relation,
    RelationColumn,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    TypeMsg,
    Update,
    Value,
    pg_time_to_datetime,
)
from sidecar.unchanged import UNCHANGED

# --------------------------------------------------------------------------------------
# Message builders (written from the PostgreSQL 15 protocol documentation)
# --------------------------------------------------------------------------------------

XID = 7777
RELID = 16384


def cstr(s: str) -> bytes:
    return s.encode() + b"\0"


def tuple_data(values: tuple[Value, ...], binary: bool = False) -> bytes:
    out = struct.pack(">H", len(values))
    for v in values:
        if v is None:
            out += b"n"
        elif v is UNCHANGED:
            out += b"u"
        else:
            assert isinstance(v, bytes)
            out += (b"b" if binary else b"t") + struct.pack(">I", len(v)) + v
    return out


def with_xid(tag: bytes, body: bytes, xid: int | None) -> bytes:
    return tag + (b"" if xid is None else struct.pack(">I", xid)) + body


def begin_msg(final_lsn: int, ts: int, xid: int) -> bytes:
    return b"B" + struct.pack(">QqI", final_lsn, ts, xid)


def commit_msg(flags: int, commit_lsn: int, end_lsn: int, ts: int) -> bytes:
    return b"C" + struct.pack(">BQQq", flags, commit_lsn, end_lsn, ts)


def origin_msg(lsn: int, name: str) -> bytes:
    return b"O" + struct.pack(">Q", lsn) + cstr(name)


def relation_msg(xid: int | None = None) -> bytes:
    cols = [(1, "id", 23, -1), (0, "title", 25, -1), (0, "price", 1700, 655366)]
    body = struct.pack(">I", RELID) + cstr("public") + cstr("todo") + b"d"
    body += struct.pack(">H", len(cols))
    for flags, name, oid, typmod in cols:
        body += bytes([flags]) + cstr(name) + struct.pack(">Ii", oid, typmod)
    return with_xid(b"R", body, xid)


def type_msg(xid: int | None = None) -> bytes:
    return with_xid(b"Y", struct.pack(">I", 90001) + cstr("public") + cstr("mood"), xid)


def insert_msg(values: tuple[Value, ...], xid: int | None = None, binary: bool = False) -> bytes:
    return with_xid(b"I", struct.pack(">I", RELID) + b"N" + tuple_data(values, binary), xid)


def update_msg(
    new: tuple[Value, ...],
    old: tuple[Value, ...] | None = None,
    old_kind: bytes = b"K",
    xid: int | None = None,
) -> bytes:
    body = struct.pack(">I", RELID)
    if old is not None:
        body += old_kind + tuple_data(old)
    body += b"N" + tuple_data(new)
    return with_xid(b"U", body, xid)


def delete_msg(old: tuple[Value, ...], old_kind: bytes = b"K", xid: int | None = None) -> bytes:
    return with_xid(b"D", struct.pack(">I", RELID) + old_kind + tuple_data(old), xid)


def truncate_msg(relids: tuple[int, ...], options: int, xid: int | None = None) -> bytes:
    body = struct.pack(">IB", len(relids), options) + b"".join(struct.pack(">I", r) for r in relids)
    return with_xid(b"T", body, xid)


def logical_msg(
    transactional: bool, lsn: int, prefix: str, content: bytes, xid: int | None = None
) -> bytes:
    body = struct.pack(">BQ", int(transactional), lsn) + cstr(prefix)
    body += struct.pack(">I", len(content)) + content
    return with_xid(b"M", body, xid)


def stream_start_msg(xid: int, first: bool) -> bytes:
    return b"S" + struct.pack(">IB", xid, int(first))


def stream_commit_msg(xid: int, commit_lsn: int, end_lsn: int, ts: int) -> bytes:
    return b"c" + struct.pack(">IBQQq", xid, 0, commit_lsn, end_lsn, ts)


def stream_abort_msg(xid: int, subxid: int) -> bytes:
    return b"A" + struct.pack(">II", xid, subxid)


ROW = (b"1", b"buy milk", b"12.50")

# (payload, in_stream, expected) for every message type, in and out of a stream block.
CASES: list[tuple[bytes, bool, Message]] = [
    (begin_msg(0x16B374D848, 789_000_000, 42), False, Begin(0x16B374D848, 789_000_000, 42)),
    (commit_msg(0, 10, 20, 30), False, Commit(0, 10, 20, 30)),
    (origin_msg(99, "node_a"), False, Origin(99, "node_a")),
    (origin_msg(99, "node_a"), True, Origin(99, "node_a")),
    (type_msg(), False, TypeMsg(90001, "public", "mood")),
    (type_msg(XID), True, TypeMsg(90001, "public", "mood", XID)),
    (insert_msg(ROW), False, Insert(RELID, ROW)),
    (insert_msg(ROW, XID), True, Insert(RELID, ROW, XID)),
    (update_msg(ROW), False, Update(RELID, None, None, ROW)),
    (update_msg(ROW, xid=XID), True, Update(RELID, None, None, ROW, XID)),
    (
        update_msg(ROW, (b"0", None, None), b"K"),
        False,
        Update(RELID, (b"0", None, None), "K", ROW),
    ),
    (
        update_msg(ROW, (b"1", b"old", None), b"O", XID),
        True,
        Update(RELID, (b"1", b"old", None), "O", ROW, XID),
    ),
    (delete_msg((b"1", None, None)), False, Delete(RELID, (b"1", None, None), "K")),
    (delete_msg(ROW, b"O", XID), True, Delete(RELID, ROW, "O", XID)),
    (truncate_msg((1, 2, 3), 0), False, Truncate((1, 2, 3), False, False)),
    (truncate_msg((5,), 1), False, Truncate((5,), True, False)),
    (truncate_msg((5, 6), 3, XID), True, Truncate((5, 6), True, True, XID)),
    (
        logical_msg(True, 555, "sidecar", b"hello"),
        False,
        LogicalMessage(True, 555, "sidecar", b"hello"),
    ),
    (
        logical_msg(False, 556, "p", b""),
        False,
        LogicalMessage(False, 556, "p", b""),
    ),
    (
        logical_msg(True, 557, "sidecar", b"\x00\xff", XID),
        True,
        LogicalMessage(True, 557, "sidecar", b"\x00\xff", XID),
    ),
    (stream_start_msg(XID, True), False, StreamStart(XID, True)),
    (stream_start_msg(XID, False), False, StreamStart(XID, False)),
    (b"E", True, StreamStop()),
    (stream_commit_msg(XID, 100, 200, 300), False, StreamCommit(XID, 0, 100, 200, 300)),
    (stream_abort_msg(XID, XID + 1), False, StreamAbort(XID, XID + 1)),
    (
        b"A" + struct.pack(">IIQq", XID, XID, 1234, 5678),
        False,
        StreamAbort(XID, XID, 1234, 5678),
    ),
]


@pytest.mark.parametrize(("payload", "in_stream", "expected"), CASES)
def test_decode_every_message_type(payload: bytes, in_stream: bool, expected: Message) -> None:
    assert decode(payload, in_stream) == expected
    assert decode(memoryview(payload), in_stream) == expected
    assert decode(bytearray(payload), in_stream) == expected


def test_relation_columns() -> None:
    for xid, payload in ((None, relation_msg()), (XID, relation_msg(XID))):
        rel = decode(payload, in_stream=xid is not None)
        assert rel == Relation(
            RELID,
            "public",
            "todo",
            "d",
            (
                RelationColumn("id", 23, -1, True),
                RelationColumn("title", 25, -1, False),
                RelationColumn("price", 1700, 655366, False),
            ),
            xid,
        )


def test_tuple_values_null_unchanged_text_binary() -> None:
    values = (None, UNCHANGED, b"", b"text \xc3\xa9", b"x" * 70_000)
    msg = decode(insert_msg(values))
    assert isinstance(msg, Insert)
    assert msg.new == values
    assert msg.new[1] is UNCHANGED
    assert all(type(v) is bytes for v in msg.new[2:])
    binary = decode(insert_msg((b"\x00\x00\x00\x2a", None), binary=True))
    assert isinstance(binary, Insert)
    assert binary.new == (b"\x00\x00\x00\x2a", None)


def test_zero_column_tuple() -> None:
    assert decode(insert_msg(())) == Insert(RELID, ())


def test_hot_path_objects_behave_like_dataclasses() -> None:
    msg = decode(update_msg(ROW, (b"0", None, None)))
    ref = Update(RELID, (b"0", None, None), "K", ROW)
    assert msg == ref
    assert hash(msg) == hash(ref)
    assert repr(msg) == repr(ref)
    with pytest.raises(AttributeError):
        msg.relid = 1  # type: ignore[misc]


def test_unchanged_is_a_singleton() -> None:
    assert repr(UNCHANGED) == "UNCHANGED"
    assert type(UNCHANGED)() is UNCHANGED
    assert copy.copy(UNCHANGED) is UNCHANGED
    assert copy.deepcopy(UNCHANGED) is UNCHANGED
    assert pickle.loads(pickle.dumps(UNCHANGED)) is UNCHANGED


# --------------------------------------------------------------------------------------
# Decoder: stream block state
# --------------------------------------------------------------------------------------


def test_decoder_tracks_stream_blocks() -> None:
    d = Decoder()
    assert not d.in_stream
    assert d.decode(insert_msg(ROW)) == Insert(RELID, ROW)
    assert d.decode(stream_start_msg(XID, True)) == StreamStart(XID, True)
    assert d.in_stream and d.stream_xid == XID
    assert d.decode(relation_msg(XID)).xid == XID  # type: ignore[union-attr]
    assert d.decode(insert_msg(ROW, XID)) == Insert(RELID, ROW, XID)
    # a subtransaction's change carries its own xid
    assert d.decode(delete_msg(ROW, b"O", XID + 1)) == Delete(RELID, ROW, "O", XID + 1)
    assert d.decode(logical_msg(True, 1, "s", b"m", XID)) == LogicalMessage(True, 1, "s", b"m", XID)
    assert d.decode(b"E") == StreamStop()
    assert not d.in_stream and d.stream_xid is None
    # between blocks: another, non-streamed transaction
    assert d.decode(begin_msg(1, 2, 3)) == Begin(1, 2, 3)
    assert d.decode(update_msg(ROW)) == Update(RELID, None, None, ROW)
    assert d.decode(commit_msg(0, 1, 2, 3)) == Commit(0, 1, 2, 3)
    assert d.decode(stream_start_msg(XID, False)) == StreamStart(XID, False)
    assert d.decode(truncate_msg((RELID,), 0, XID)) == Truncate((RELID,), False, False, XID)
    d.decode(b"E")
    assert d.decode(stream_commit_msg(XID, 10, 20, 30)) == StreamCommit(XID, 0, 10, 20, 30)


def test_decoder_rejects_bad_stream_nesting() -> None:
    d = Decoder()
    with pytest.raises(ProtocolError, match="Stream Stop outside"):
        d.decode(b"E")
    d.decode(stream_start_msg(1, True))
    with pytest.raises(ProtocolError, match="inside the open stream block of xid 1"):
        d.decode(stream_start_msg(2, True))
    d.reset()
    assert not d.in_stream
    d.decode(stream_start_msg(2, True))
    assert d.stream_xid == 2


def test_message_without_xid_in_stream_is_misread_as_error() -> None:
    # Decoding a streamed insert as if outside a block (or vice versa) must not pass silently.
    with pytest.raises(ProtocolError):
        decode(insert_msg(ROW, XID), in_stream=False)
    with pytest.raises(ProtocolError):
        decode(insert_msg(ROW), in_stream=True)


# --------------------------------------------------------------------------------------
# Malformed input
# --------------------------------------------------------------------------------------


def _all_valid_payloads() -> list[tuple[bytes, bool]]:
    payloads = [(p, s) for p, s, _ in CASES]
    payloads += [(relation_msg(), False), (relation_msg(XID), True)]
    payloads += [(insert_msg((None, UNCHANGED, b"abc")), False)]
    return payloads


@pytest.mark.parametrize(("payload", "in_stream"), _all_valid_payloads())
def test_every_truncation_raises_protocol_error(payload: bytes, in_stream: bool) -> None:
    for cut in range(len(payload)):
        if payload[:1] == b"A" and cut == 9:
            continue  # a protocol-4 Stream Abort cut to 8 bytes is a valid protocol-2 one
        with pytest.raises(ProtocolError):
            decode(payload[:cut], in_stream)


@pytest.mark.parametrize(("payload", "in_stream"), _all_valid_payloads())
def test_trailing_bytes_raise_protocol_error(payload: bytes, in_stream: bool) -> None:
    with pytest.raises(ProtocolError):
        decode(payload + b"\x00", in_stream)


def test_errors_say_what_and_where() -> None:
    msg = insert_msg((b"1", b"hello"))
    with pytest.raises(ProtocolError, match=r"Insert.*5 bytes of column 2/2 value at offset 19"):
        decode(msg[:-1])
    with pytest.raises(ProtocolError, match=r"Int32 length of column 2/2 at offset 15"):
        decode(msg[:17])
    with pytest.raises(ProtocolError, match=r"column 2/2 kind byte at offset 14"):
        decode(msg[:14])
    bad_kind = insert_msg((b"1",))[:-6] + b"x"
    with pytest.raises(ProtocolError, match=r"column 1/1 kind .* got b'x' at offset 8"):
        decode(bad_kind)
    with pytest.raises(ProtocolError, match=r"Begin.*20 bytes.*offset 1"):
        decode(b"B\x00")
    with pytest.raises(ProtocolError, match=r"Relation.*NUL-terminated namespace at offset 5"):
        decode(b"R" + struct.pack(">I", 1) + b"publ")


def test_unknown_and_empty_messages() -> None:
    with pytest.raises(ProtocolError, match="empty"):
        decode(b"")
    with pytest.raises(ProtocolError, match="empty"):
        Decoder().decode(b"")
    with pytest.raises(ProtocolError, match=r"unknown pgoutput message type b'Z'"):
        Decoder().decode(b"Z123")
    with pytest.raises(ProtocolError, match="two-phase"):
        decode(b"P" + bytes(20))


def test_bad_tuple_markers() -> None:
    with pytest.raises(ProtocolError, match=r"b'K', b'O' or b'N', got b'X'"):
        decode(b"U" + struct.pack(">I", RELID) + b"X" + tuple_data(ROW))
    with pytest.raises(ProtocolError, match=r"b'N' before the new tuple"):
        decode(b"U" + struct.pack(">I", RELID) + b"K" + tuple_data(ROW) + b"X" + tuple_data(ROW))
    with pytest.raises(ProtocolError, match=r"b'K' or b'O', got b'N'"):
        decode(b"D" + struct.pack(">I", RELID) + b"N" + tuple_data(ROW))
    with pytest.raises(ProtocolError, match=r"b'N'"):
        decode(b"I" + struct.pack(">I", RELID) + b"K" + tuple_data(ROW))


def test_non_utf8_name() -> None:
    payload = b"Y" + struct.pack(">I", 1) + b"\xff\xfe\0" + cstr("t")
    with pytest.raises(ProtocolError, match="not UTF-8"):
        decode(payload)


@given(st.sampled_from(_all_valid_payloads()), st.data())
def test_corrupted_messages_only_raise_protocol_error(
    case: tuple[bytes, bool], data: st.DataObject
) -> None:
    payload, in_stream = case
    buf = bytearray(payload)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] = data.draw(st.integers(0, 255))
    with contextlib.suppress(ProtocolError):
        decode(bytes(buf), in_stream)


@given(st.binary(max_size=64), st.booleans())
def test_random_bytes_only_raise_protocol_error(payload: bytes, in_stream: bool) -> None:
    with contextlib.suppress(ProtocolError):
        decode(payload, in_stream)


def test_pg_time_to_datetime() -> None:
    assert pg_time_to_datetime(0) == datetime(2000, 1, 1, tzinfo=UTC)
    assert pg_time_to_datetime(86_400_000_001) == datetime(2000, 1, 2, 0, 0, 0, 1, tzinfo=UTC)
    assert pg_time_to_datetime(-1_000_000) == datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC)


# --------------------------------------------------------------------------------------
# Micro-benchmark (not a test: run this file as a script)
# --------------------------------------------------------------------------------------


def benchmark(n: int = 200_000) -> float:
    """Decode ``n`` Update messages of 5 text columns; print and return messages/s."""
    row = (b"123456", b"buy milk and bread", b"2024-05-01 12:34:56.789+00", b"12.50", b"t")
    frames = [
        b"w" + struct.pack(">QQq", i, i, 0) + update_msg(row) for i in range(1000)
    ]  # realistic input: the memoryview payload of an XLogData frame
    xlogs = [parse_copy_data(f) for f in frames]
    payloads = [x.payload for x in xlogs if isinstance(x, XLogData)] * (n // 1000)
    decoder = Decoder()
    decode_one = decoder.decode
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        for p in payloads:
            decode_one(p)
        rate = len(payloads) / (time.perf_counter() - t0)
        best = max(best, rate)
    print(f"pgoutput: decoded {len(payloads)} Update messages (5 columns): {best:,.0f} msgs/s")
    return best


if __name__ == "__main__":
    benchmark()
