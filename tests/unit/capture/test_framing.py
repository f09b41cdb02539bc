"""Unit tests of the streaming replication framing: XLogData, keepalives, standby status."""

from __future__ import annotations

import contextlib
import struct
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.capture.framing import (
    KEEPALIVE_TAG,
    XLOG_DATA_TAG,
    XLOG_HEADER,
    Keepalive,
    XLogData,
    parse_copy_data,
    standby_status,
)
from sidecar.capture.pgoutput import Decoder
from sidecar.capture.pgoutput_messages import (
    PG_EPOCH,
    Insert,
    ProtocolError,
)
from tests.unit.capture.test_pgoutput import RELID, ROW, insert_msg


def test_parse_xlogdata() -> None:
    inner = insert_msg(ROW)
    frame = b"w" + struct.pack(">QQq", 0x100, 0x200, 12345) + inner
    for buf in (frame, bytearray(frame), memoryview(frame)):
        msg = parse_copy_data(buf)
        assert isinstance(msg, XLogData)
        assert (msg.start, msg.end, msg.clock) == (0x100, 0x200, 12345)
        assert isinstance(msg.payload, memoryview)  # zero-copy
        assert bytes(msg.payload) == inner
        assert Decoder().decode(msg.payload) == Insert(RELID, ROW)
    empty = parse_copy_data(b"w" + bytes(24))
    assert isinstance(empty, XLogData) and bytes(empty.payload) == b""


@pytest.mark.parametrize("reply", [0, 1])
def test_parse_keepalive(reply: int) -> None:
    frame = b"k" + struct.pack(">QqB", 0x16B374D848, -5, reply)
    assert parse_copy_data(frame) == Keepalive(0x16B374D848, -5, bool(reply))
    assert parse_copy_data(memoryview(frame)) == Keepalive(0x16B374D848, -5, bool(reply))


def test_bad_copy_data() -> None:
    with pytest.raises(ProtocolError, match="empty"):
        parse_copy_data(b"")
    with pytest.raises(ProtocolError, match=r"unknown CopyData message type b'x'"):
        parse_copy_data(b"x" + bytes(30))
    with pytest.raises(ProtocolError, match=r"XLogData.*24 header bytes.*offset 1, got 10"):
        parse_copy_data(b"w" + bytes(10))
    with pytest.raises(ProtocolError, match=r"keepalive.*17 bytes"):
        parse_copy_data(b"k" + bytes(16))
    with pytest.raises(ProtocolError, match=r"keepalive.*17 bytes"):
        parse_copy_data(b"k" + bytes(18))


def test_standby_status_layout() -> None:
    raw = standby_status(0x100, 0x0F0, 0x0E0, reply=True, now_us=987654321)
    assert len(raw) == 34
    tag, write, flush, apply, clock, reply = struct.unpack(">cQQQqB", raw)
    assert (tag, write, flush, apply, clock, reply) == (b"r", 0x100, 0x0F0, 0x0E0, 987654321, 1)
    assert standby_status(1, 1, 1)[-1] == 0


def test_standby_status_default_clock_is_now_since_2000() -> None:
    raw = standby_status(5, 5, 5)
    clock = struct.unpack_from(">q", raw, 25)[0]
    sent = PG_EPOCH + timedelta(microseconds=clock)
    assert abs((datetime.now(UTC) - sent).total_seconds()) < 5


def test_standby_status_rejects_bad_lsn() -> None:
    with pytest.raises(ValueError, match="flush LSN"):
        standby_status(1, -1, 1)
    with pytest.raises(ValueError, match="write LSN"):
        standby_status(2**64, 1, 1)
    with pytest.raises(ValueError, match="now_us"):
        standby_status(1, 1, 1, now_us=2**63)


@given(st.binary(max_size=64))
def test_random_bytes_only_raise_protocol_error(payload: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        parse_copy_data(payload)


def test_fast_path_constants_match_the_frames() -> None:
    """The runner's read loop tests the first byte and slices at XLOG_HEADER itself."""
    inner = insert_msg(ROW)
    frame = b"w" + struct.pack(">QQq", 1, 2, 3) + inner
    assert frame[0] == XLOG_DATA_TAG
    assert frame[XLOG_HEADER:] == inner
    xlog = parse_copy_data(frame)
    assert isinstance(xlog, XLogData) and bytes(xlog.payload) == frame[XLOG_HEADER:]
    assert (b"k" + struct.pack(">QqB", 1, 2, 0))[0] == KEEPALIVE_TAG
    with pytest.raises(ProtocolError):  # what the loop calls on a frame shorter than that
        parse_copy_data(frame[: XLOG_HEADER - 1])
