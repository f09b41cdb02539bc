"""Framing of the streaming replication protocol: the CopyData messages after
``START_REPLICATION``.

Pure (no sockets, no psycopg). :func:`parse_copy_data` splits what the server sends into
:class:`XLogData` (a WAL chunk carrying one logical decoding message, for
``capture/pgoutput.py``) and :class:`Keepalive`; :func:`standby_status` builds the ``'r'``
reply that reports how far the client has written, flushed and applied. See
https://www.postgresql.org/docs/15/protocol-replication.html.

The runner's read loop does not call :func:`parse_copy_data` for every message: it tests
the first byte against :data:`XLOG_DATA_TAG` / :data:`KEEPALIVE_TAG` and slices the
payload at :data:`XLOG_HEADER` itself, and only parses whole frames where it needs their
fields (or to raise the :class:`ProtocolError` of a malformed one).

LSNs are plain ``int``; clocks are ``int`` microseconds since 2000-01-01 UTC.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from typing import Final

from sidecar.capture.pgoutput_messages import PG_EPOCH, ProtocolError
from sidecar.lsn import MAX_LSN

__all__ = [
    "KEEPALIVE_TAG",
    "XLOG_DATA_TAG",
    "XLOG_HEADER",
    "Keepalive",
    "XLogData",
    "parse_copy_data",
    "standby_status",
]

XLOG_DATA_TAG: Final = 0x77  # 'w'
"""First byte of an XLogData frame."""

KEEPALIVE_TAG: Final = 0x6B  # 'k'
"""First byte of a primary keepalive frame."""

XLOG_HEADER: Final = 25  # tag, start, end, clock
"""Bytes before an XLogData frame's payload: ``frame[XLOG_HEADER:]`` is the message."""

_PG_EPOCH_UNIX_US: Final = int(PG_EPOCH.timestamp()) * 1_000_000


@dataclass(frozen=True, slots=True)
class XLogData:
    """A chunk of WAL sent by the server (``'w'``); with pgoutput, one logical message.

    ``start`` is the WAL position of the data (0 for messages not tied to a record, such
    as Relation), ``end`` the server's current end of WAL, ``clock`` the server's time of
    sending, ``payload`` the pgoutput message for ``pgoutput.Decoder.decode``.
    """

    start: int
    end: int
    clock: int
    payload: memoryview | bytes


@dataclass(frozen=True, slots=True)
class Keepalive:
    """Primary keepalive (``'k'``): the server's end of WAL and clock.

    ``reply`` means the server wants a standby status update now, or it may disconnect
    the client after ``wal_sender_timeout``.
    """

    wal_end: int
    clock: int
    reply: bool


_XLOG_HEAD: Final = struct.Struct(">QQq")  # start, end, clock
_KEEPALIVE: Final = struct.Struct(">QqB")  # wal_end, clock, reply
_STANDBY_STATUS: Final = struct.Struct(">cQQQqB")  # 'r', write, flush, apply, clock, reply


def parse_copy_data(buf: bytes | bytearray | memoryview) -> XLogData | Keepalive:
    """Parse one CopyData payload received in COPY_BOTH mode after ``START_REPLICATION``.

    The XLogData payload is a zero-copy ``memoryview`` slice of ``buf``.
    """
    n = len(buf)
    if n == 0:
        raise ProtocolError("empty CopyData: expected a message type byte at offset 0")
    tag = buf[0]
    if tag == XLOG_DATA_TAG:
        if n < XLOG_HEADER:
            raise ProtocolError(
                f"truncated XLogData: expected 24 header bytes (start, end, clock) at offset 1,"
                f" got {n - 1}"
            )
        start, end, clock = _XLOG_HEAD.unpack_from(buf, 1)
        view = buf if isinstance(buf, memoryview) else memoryview(buf)
        return XLogData(start, end, clock, view[XLOG_HEADER:])
    if tag == KEEPALIVE_TAG:
        if n != 18:
            raise ProtocolError(
                f"malformed primary keepalive: expected 17 bytes (wal_end, clock, reply) at"
                f" offset 1, got {n - 1}"
            )
        wal_end, clock, reply = _KEEPALIVE.unpack_from(buf, 1)
        return Keepalive(wal_end, clock, reply != 0)
    raise ProtocolError(
        f"unknown CopyData message type {bytes([tag])!r} at offset 0 (expected b'w' or b'k')"
    )


def standby_status(
    write: int, flush: int, apply: int, reply: bool = False, now_us: int | None = None
) -> bytes:
    """Build a standby status update (``'r'``) to send as CopyData.

    ``write``/``flush``/``apply`` are the LSNs received, durably stored and applied by the
    client (the slot's ``confirmed_flush_lsn`` follows ``flush``). ``now_us`` is the client's
    clock in microseconds since 2000-01-01 UTC (default: now); ``reply`` asks the server to
    answer with a keepalive at once.
    """
    if now_us is None:
        now_us = time.time_ns() // 1000 - _PG_EPOCH_UNIX_US
    for name, lsn in (("write", write), ("flush", flush), ("apply", apply)):
        if type(lsn) is not int or not 0 <= lsn <= MAX_LSN:
            raise ValueError(f"{name} LSN must be an int in [0, 2**64): got {lsn!r}")
    try:
        return _STANDBY_STATUS.pack(b"r", write, flush, apply, now_us, 1 if reply else 0)
    except struct.error as exc:
        raise ValueError(f"now_us out of range for a signed 64-bit clock: {now_us!r}") from exc
