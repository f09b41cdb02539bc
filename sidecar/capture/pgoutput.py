"""Pure decoder of PostgreSQL's ``pgoutput`` logical decoding messages.

Free of I/O (no sockets, no psycopg): :class:`Decoder` turns the payload of each XLogData
(protocol versions 1 and 2) into one frozen dataclass of ``capture/pgoutput_messages.py``
(:class:`Begin`, :class:`Relation`, :class:`Insert`, …). See
https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html. The
replication framing around those payloads (XLogData, keepalives, standby status) is
``capture/framing.py``.

Column values are left as the server sent them: ``None`` for SQL NULL, the singleton
:data:`sidecar.unchanged.UNCHANGED` for an unchanged out-of-line (TOASTed) value, and
otherwise ``bytes``.
The sidecar asks for the text format (it never passes the ``binary`` option), so those
bytes are the text representation that psycopg's type loaders understand; a binary value
(``'b'``) is returned as ``bytes`` as well, and it is up to the caller, who chose the format,
to load it accordingly.

Names (schemas, tables, columns, types, origins, message prefixes) are decoded as UTF-8:
the server converts them to the connection's ``client_encoding``, so the replication
connection must use ``client_encoding=UTF8`` (psycopg's default for a UTF-8 database).

Every malformed or truncated input raises :class:`ProtocolError` naming what was expected
and at which offset; no ``IndexError`` or ``struct.error`` escapes.

LSNs and xids are plain ``int``; timestamps are ``int`` microseconds since
2000-01-01 00:00:00 UTC (PostgreSQL's epoch).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final, TypeAlias

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
    Row,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    TypeMsg,
    Update,
    Value,
)
from sidecar.unchanged import UNCHANGED

__all__ = ["BEGIN_TAG", "COMMIT_TAG", "Decoder", "decode"]


# Hot-path constructors for Insert/Update/Delete.  A frozen dataclass's generated __init__
# calls object.__setattr__(self, "name", value) per field; filling the slots through their
# descriptors builds an identical (equal, hashable, immutable) object in ~60% of the time.
_new_object: Final = object.__new__


def _slot_setters(cls: type, *names: str) -> tuple[Callable[[object, object], None], ...]:
    return tuple(cls.__dict__[name].__set__ for name in names)


_ins_relid, _ins_new, _ins_xid = _slot_setters(Insert, "relid", "new", "xid")
_upd_relid, _upd_old, _upd_old_kind, _upd_new, _upd_xid = _slot_setters(
    Update, "relid", "old", "old_kind", "new", "xid"
)
_del_relid, _del_old, _del_old_kind, _del_xid = _slot_setters(
    Delete, "relid", "old", "old_kind", "xid"
)


def _make_insert(relid: int, new: Row, xid: int | None) -> Insert:
    obj = _new_object(Insert)
    _ins_relid(obj, relid)
    _ins_new(obj, new)
    _ins_xid(obj, xid)
    return obj


def _make_update(
    relid: int, old: Row | None, old_kind: str | None, new: Row, xid: int | None
) -> Update:
    obj = _new_object(Update)
    _upd_relid(obj, relid)
    _upd_old(obj, old)
    _upd_old_kind(obj, old_kind)
    _upd_new(obj, new)
    _upd_xid(obj, xid)
    return obj


def _make_delete(relid: int, old: Row, old_kind: str, xid: int | None) -> Delete:
    obj = _new_object(Delete)
    _del_relid(obj, relid)
    _del_old(obj, old)
    _del_old_kind(obj, old_kind)
    _del_xid(obj, xid)
    return obj


_U16: Final = struct.Struct(">H")
_U32: Final = struct.Struct(">I")
_BEGIN: Final = struct.Struct(">QqI")  # final_lsn, commit_time, xid
_COMMIT: Final = struct.Struct(">BQQq")  # flags, commit_lsn, end_lsn, commit_time
_U64: Final = struct.Struct(">Q")
_REL_TAIL: Final = struct.Struct(">BH")  # replica identity, ncols
_COL_TAIL: Final = struct.Struct(">Ii")  # type oid, typmod
_TRUNC_HEAD: Final = struct.Struct(">IB")  # nrelations, options
_MSG_HEAD: Final = struct.Struct(">BQ")  # flags, lsn
_STREAM_START: Final = struct.Struct(">IB")  # xid, first
_STREAM_COMMIT: Final = struct.Struct(">IBQQq")  # xid, flags, commit_lsn, end_lsn, time
_STREAM_ABORT: Final = struct.Struct(">II")  # xid, subxid
_STREAM_ABORT_V4: Final = struct.Struct(">IIQq")  # + abort_lsn, abort_time

_Parser: TypeAlias = Callable[[bytes, bool], Message]

_TUPLE_NEW: Final = 0x4E  # 'N': the new tuple of Insert/Update follows


def _fail(what: str, expected: str, off: int, buf: bytes) -> ProtocolError:
    """Build the ProtocolError for a field of message ``what`` that could not be read."""
    return ProtocolError(
        f"malformed {what} message: expected {expected} at offset {off}"
        f" (message is {len(buf)} bytes)"
    )


def _need(buf: bytes, off: int, size: int, what: str, expected: str) -> None:
    """Raise unless ``size`` bytes are available at ``off``."""
    if len(buf) - off < size:
        raise _fail(what, f"{size} bytes ({expected})", off, buf)


def _end(buf: bytes, off: int, what: str) -> None:
    """Raise if bytes remain after the last field of a message (a framing error)."""
    if off != len(buf):
        raise ProtocolError(
            f"malformed {what} message: {len(buf) - off} unexpected trailing bytes at offset {off}"
        )


def _cstring(buf: bytes, off: int, what: str, field: str) -> tuple[str, int]:
    """Read a NUL-terminated UTF-8 string at ``off``; return it and the offset after it."""
    nul = buf.find(b"\0", off)
    if nul < 0:
        raise _fail(what, f"NUL-terminated {field}", off, buf)
    try:
        return buf[off:nul].decode(), nul + 1
    except UnicodeDecodeError as exc:
        raise ProtocolError(
            f"malformed {what} message: {field} at offset {off} is not UTF-8"
            f" (use client_encoding=UTF8): {exc.reason}"
        ) from None


def _xid(buf: bytes, streamed: bool, what: str) -> tuple[int | None, int]:
    """Read the leading xid of a message inside a stream block; return (xid, offset)."""
    if not streamed:
        return None, 1
    if len(buf) < 5:
        raise _fail(what, "Int32 xid (inside a stream block)", 1, buf)
    return _U32.unpack_from(buf, 1)[0], 5


def _tuple(buf: bytes, off: int, what: str) -> tuple[Row, int]:
    """Read TupleData at ``off``: Int16 count, then per column a kind byte and maybe a value.

    Hot path: one ``bytes`` slice per non-null value and nothing else per column.
    """
    n = len(buf)
    if n - off < 2:
        raise _fail(what, "Int16 number of columns of TupleData", off, buf)
    (ncols,) = _U16.unpack_from(buf, off)
    off += 2
    values: list[Value] = [None] * ncols
    unpack_len = _U32.unpack_from
    i = 0
    try:
        for i in range(ncols):
            kind = buf[off]
            if kind in b"tb":  # text or binary value
                start = off + 5
                off = start + unpack_len(buf, off + 1)[0]
                if off > n:
                    raise _fail(
                        what,
                        f"{off - start} bytes of column {i + 1}/{ncols} value",
                        start,
                        buf,
                    )
                values[i] = buf[start:off]
            elif kind == 0x6E:  # 'n': NULL
                off += 1
            elif kind == 0x75:  # 'u': unchanged TOASTed value
                values[i] = UNCHANGED
                off += 1
            else:
                raise _fail(
                    what,
                    f"column {i + 1}/{ncols} kind b't', b'b', b'n' or b'u', got {bytes([kind])!r}",
                    off,
                    buf,
                )
    except IndexError:
        raise _fail(what, f"column {i + 1}/{ncols} kind byte", off, buf) from None
    except struct.error:
        raise _fail(what, f"Int32 length of column {i + 1}/{ncols}", off + 1, buf) from None
    return tuple(values), off


def _parse_begin(buf: bytes, streamed: bool) -> Begin:
    if len(buf) != 21:
        raise _fail("Begin", "20 bytes (final_lsn, commit_time, xid)", 1, buf)
    return Begin(*_BEGIN.unpack_from(buf, 1))


def _parse_commit(buf: bytes, streamed: bool) -> Commit:
    if len(buf) != 26:
        raise _fail("Commit", "25 bytes (flags, commit_lsn, end_lsn, commit_time)", 1, buf)
    return Commit(*_COMMIT.unpack_from(buf, 1))


def _parse_origin(buf: bytes, streamed: bool) -> Origin:
    _need(buf, 1, 8, "Origin", "Int64 commit LSN on the origin")
    (lsn,) = _U64.unpack_from(buf, 1)
    name, off = _cstring(buf, 9, "Origin", "origin name")
    _end(buf, off, "Origin")
    return Origin(lsn, name)


def _parse_relation(buf: bytes, streamed: bool) -> Relation:
    what = "Relation"
    xid, off = _xid(buf, streamed, what)
    _need(buf, off, 4, what, "Int32 relation OID")
    (relid,) = _U32.unpack_from(buf, off)
    namespace, off = _cstring(buf, off + 4, what, "namespace")
    name, off = _cstring(buf, off, what, "relation name")
    _need(buf, off, 3, what, "Int8 replica identity, Int16 number of columns")
    ident, ncols = _REL_TAIL.unpack_from(buf, off)
    off += 3
    columns = []
    for i in range(ncols):
        _need(buf, off, 1, what, f"Int8 flags of column {i + 1}/{ncols}")
        flags = buf[off]
        col_name, off = _cstring(buf, off + 1, what, f"name of column {i + 1}/{ncols}")
        _need(buf, off, 8, what, f"type OID and modifier of column {i + 1}/{ncols}")
        type_oid, typmod = _COL_TAIL.unpack_from(buf, off)
        off += 8
        columns.append(RelationColumn(col_name, type_oid, typmod, bool(flags & 1)))
    _end(buf, off, what)
    return Relation(relid, namespace, name, chr(ident), tuple(columns), xid)


def _parse_type(buf: bytes, streamed: bool) -> TypeMsg:
    what = "Type"
    xid, off = _xid(buf, streamed, what)
    _need(buf, off, 4, what, "Int32 type OID")
    (type_oid,) = _U32.unpack_from(buf, off)
    namespace, off = _cstring(buf, off + 4, what, "namespace")
    name, off = _cstring(buf, off, what, "type name")
    _end(buf, off, what)
    return TypeMsg(type_oid, namespace, name, xid)


def _parse_insert(buf: bytes, streamed: bool) -> Insert:
    if streamed:
        xid, off = _xid(buf, streamed, "Insert")
    else:
        xid, off = None, 1
    if len(buf) - off < 5 or buf[off + 4] != _TUPLE_NEW:
        raise _fail("Insert", "Int32 relation OID and b'N'", off, buf)
    (relid,) = _U32.unpack_from(buf, off)
    new, off = _tuple(buf, off + 5, "Insert")
    if off != len(buf):
        _end(buf, off, "Insert")
    return _make_insert(relid, new, xid)


def _parse_update(buf: bytes, streamed: bool) -> Update:
    if streamed:
        xid, off = _xid(buf, streamed, "Update")
    else:
        xid, off = None, 1
    if len(buf) - off < 5:
        raise _fail("Update", "Int32 relation OID and b'K', b'O' or b'N'", off, buf)
    (relid,) = _U32.unpack_from(buf, off)
    off += 4
    kind = buf[off]
    if kind == _TUPLE_NEW:
        old = old_kind = None
    elif kind in b"KO":
        old, off = _tuple(buf, off + 1, "Update")
        old_kind = chr(kind)
        if off >= len(buf) or buf[off] != _TUPLE_NEW:
            raise _fail("Update", "b'N' before the new tuple", off, buf)
    else:
        raise _fail("Update", f"b'K', b'O' or b'N', got {bytes([kind])!r}", off, buf)
    new, off = _tuple(buf, off + 1, "Update")
    if off != len(buf):
        _end(buf, off, "Update")
    return _make_update(relid, old, old_kind, new, xid)


def _parse_delete(buf: bytes, streamed: bool) -> Delete:
    if streamed:
        xid, off = _xid(buf, streamed, "Delete")
    else:
        xid, off = None, 1
    if len(buf) - off < 5:
        raise _fail("Delete", "Int32 relation OID and b'K' or b'O'", off, buf)
    (relid,) = _U32.unpack_from(buf, off)
    kind = buf[off + 4]
    if kind not in b"KO":
        raise _fail("Delete", f"b'K' or b'O', got {bytes([kind])!r}", off + 4, buf)
    old, off = _tuple(buf, off + 5, "Delete")
    if off != len(buf):
        _end(buf, off, "Delete")
    return _make_delete(relid, old, chr(kind), xid)


def _parse_truncate(buf: bytes, streamed: bool) -> Truncate:
    what = "Truncate"
    xid, off = _xid(buf, streamed, what)
    _need(buf, off, 5, what, "Int32 number of relations, Int8 options")
    nrels, options = _TRUNC_HEAD.unpack_from(buf, off)
    off += 5
    _need(buf, off, 4 * nrels, what, f"{nrels} Int32 relation OIDs")
    relids = struct.unpack_from(f">{nrels}I", buf, off)
    _end(buf, off + 4 * nrels, what)
    return Truncate(relids, bool(options & 1), bool(options & 2), xid)


def _parse_message(buf: bytes, streamed: bool) -> LogicalMessage:
    what = "Message"
    xid, off = _xid(buf, streamed, what)
    _need(buf, off, 9, what, "Int8 flags, Int64 LSN")
    flags, lsn = _MSG_HEAD.unpack_from(buf, off)
    prefix, off = _cstring(buf, off + 9, what, "prefix")
    _need(buf, off, 4, what, "Int32 content length")
    (length,) = _U32.unpack_from(buf, off)
    off += 4
    _need(buf, off, length, what, "message content")
    _end(buf, off + length, what)
    return LogicalMessage(bool(flags & 1), lsn, prefix, buf[off : off + length], xid)


def _parse_stream_start(buf: bytes, streamed: bool) -> StreamStart:
    if len(buf) != 6:
        raise _fail("Stream Start", "5 bytes (xid, first segment flag)", 1, buf)
    xid, first = _STREAM_START.unpack_from(buf, 1)
    return StreamStart(xid, first == 1)


def _parse_stream_stop(buf: bytes, streamed: bool) -> StreamStop:
    _end(buf, 1, "Stream Stop")
    return StreamStop()


def _parse_stream_commit(buf: bytes, streamed: bool) -> StreamCommit:
    if len(buf) != 30:
        raise _fail(
            "Stream Commit", "29 bytes (xid, flags, commit_lsn, end_lsn, commit_time)", 1, buf
        )
    return StreamCommit(*_STREAM_COMMIT.unpack_from(buf, 1))


def _parse_stream_abort(buf: bytes, streamed: bool) -> StreamAbort:
    if len(buf) == 9:
        return StreamAbort(*_STREAM_ABORT.unpack_from(buf, 1))
    if len(buf) == 25:
        return StreamAbort(*_STREAM_ABORT_V4.unpack_from(buf, 1))
    raise _fail("Stream Abort", "8 bytes (xid, subxid) or 24 with abort LSN and time", 1, buf)


BEGIN_TAG: Final = ord("B")
"""First byte of a :class:`Begin` message (the runner tells open transactions by it)."""

COMMIT_TAG: Final = ord("C")
"""First byte of a :class:`Commit` message."""

_PARSERS: Final[dict[int, _Parser]] = {
    BEGIN_TAG: _parse_begin,
    COMMIT_TAG: _parse_commit,
    ord("O"): _parse_origin,
    ord("R"): _parse_relation,
    ord("Y"): _parse_type,
    ord("I"): _parse_insert,
    ord("U"): _parse_update,
    ord("D"): _parse_delete,
    ord("T"): _parse_truncate,
    ord("M"): _parse_message,
    ord("S"): _parse_stream_start,
    ord("E"): _parse_stream_stop,
    ord("c"): _parse_stream_commit,
    ord("A"): _parse_stream_abort,
}

_TWO_PHASE: Final = frozenset(b"bPKrp")
_STREAM_START_TAG: Final = ord("S")
_STREAM_STOP_TAG: Final = ord("E")


def _unknown(buf: bytes) -> ProtocolError:
    if not buf:
        return ProtocolError("empty pgoutput message: expected a message type byte at offset 0")
    tag = buf[0]
    hint = " (two-phase messages need protocol 3, not supported)" if tag in _TWO_PHASE else ""
    return ProtocolError(f"unknown pgoutput message type {bytes([tag])!r} at offset 0{hint}")


def decode(payload: bytes | bytearray | memoryview, in_stream: bool = False) -> Message:
    """Decode one pgoutput message.

    ``in_stream`` says whether the message is inside a StreamStart/StreamStop block, where
    changes, Relation, Type, Truncate and Message carry a leading xid. Prefer
    :class:`Decoder`, which tracks that state itself.
    """
    buf = payload if type(payload) is bytes else bytes(payload)
    try:
        parse = _PARSERS[buf[0]]
    except (IndexError, KeyError):
        raise _unknown(buf) from None
    return parse(buf, in_stream)


class Decoder:
    """Stateful pgoutput decoder for one replication connection.

    Tracks whether the current message is inside a streamed block (between
    :class:`StreamStart` and :class:`StreamStop`, protocol 2), so that the leading xid of
    the messages in it is read. Use a new Decoder (or :meth:`reset`) after reconnecting.
    """

    __slots__ = ("_stream_xid",)

    def __init__(self) -> None:
        self._stream_xid: int | None = None

    @property
    def in_stream(self) -> bool:
        """True between a StreamStart and its StreamStop."""
        return self._stream_xid is not None

    @property
    def stream_xid(self) -> int | None:
        """The xid of the open stream block, or None outside one."""
        return self._stream_xid

    def reset(self) -> None:
        """Forget any open stream block (e.g. after the connection was lost mid-block)."""
        self._stream_xid = None

    def decode(self, payload: bytes | bytearray | memoryview) -> Message:
        """Decode one pgoutput message (the payload of an :class:`XLogData`)."""
        buf = payload if type(payload) is bytes else bytes(payload)
        try:
            tag = buf[0]
            parse = _PARSERS[tag]
        except (IndexError, KeyError):
            raise _unknown(buf) from None
        msg = parse(buf, self._stream_xid is not None)
        if tag == _STREAM_START_TAG:
            assert isinstance(msg, StreamStart)
            if self._stream_xid is not None:
                raise ProtocolError(
                    f"Stream Start of xid {msg.xid} inside the open stream block of xid"
                    f" {self._stream_xid}"
                )
            self._stream_xid = msg.xid
        elif tag == _STREAM_STOP_TAG:
            if self._stream_xid is None:
                raise ProtocolError("Stream Stop outside a stream block")
            self._stream_xid = None
        return msg
