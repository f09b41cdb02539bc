"""pgoutput's logical replication messages as frozen values (the decoder's output).

One frozen dataclass per message of protocol versions 1 and 2 (:class:`Begin`,
:class:`Relation`, :class:`Insert`, …; see
https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html), the
:data:`Message` union of them, and :class:`ProtocolError` for bytes that do not follow the
protocol. ``capture/pgoutput.py`` decodes bytes into these values. The classes are
``@final``: the hot paths dispatch on ``type(msg) is …``, which type checkers then narrow.

Column values are left as the server sent them: ``None`` for SQL NULL, the singleton
:data:`sidecar.unchanged.UNCHANGED` for an unchanged out-of-line (TOASTed) value, and
otherwise ``bytes`` (text format, as the sidecar asks for it).

LSNs and xids are plain ``int``; timestamps are ``int`` microseconds since
2000-01-01 00:00:00 UTC (PostgreSQL's epoch) — :func:`pg_time_to_datetime` converts one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, TypeAlias, final

from sidecar.unchanged import Unchanged

__all__ = [
    "PG_EPOCH",
    "Begin",
    "Commit",
    "Delete",
    "Insert",
    "LogicalMessage",
    "Message",
    "Origin",
    "ProtocolError",
    "Relation",
    "RelationColumn",
    "Row",
    "StreamAbort",
    "StreamCommit",
    "StreamStart",
    "StreamStop",
    "Truncate",
    "TypeMsg",
    "Update",
    "Value",
    "pg_time_to_datetime",
]


class ProtocolError(Exception):
    """The bytes do not follow the replication protocol (malformed, truncated, unknown)."""


Value: TypeAlias = bytes | Unchanged | None
"""One column of a tuple: text-format bytes, :data:`UNCHANGED`, or ``None`` for NULL."""

Row: TypeAlias = tuple[Value, ...]
"""The columns of one tuple, in the order of the :class:`Relation`'s columns."""

PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)
"""Origin of PostgreSQL timestamps (``TimestampTz`` is microseconds since this instant)."""


def pg_time_to_datetime(us: int) -> datetime:
    """Convert microseconds since 2000-01-01 UTC (a pgoutput timestamp) to an aware datetime."""
    return PG_EPOCH + timedelta(microseconds=us)


@final
@dataclass(frozen=True, slots=True)
class Begin:
    """Start of a (non-streamed) transaction; its changes follow, then a :class:`Commit`.

    ``final_lsn`` is the LSN of the commit record, ``commit_time_us`` its timestamp.
    """

    final_lsn: int
    commit_time_us: int
    xid: int


@final
@dataclass(frozen=True, slots=True)
class Commit:
    """End of the transaction opened by the last :class:`Begin`.

    ``end_lsn`` (the end of the commit record) is the position to acknowledge as flushed
    once everything up to this commit is stored.
    """

    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time_us: int


@final
@dataclass(frozen=True, slots=True)
class Origin:
    """The transaction was replayed from replication origin ``name`` (commit ``lsn`` there)."""

    lsn: int
    name: str


@final
@dataclass(frozen=True, slots=True)
class RelationColumn:
    """One column of a :class:`Relation`: ``is_key`` if part of the replica identity."""

    name: str
    type_oid: int
    type_modifier: int
    is_key: bool


@final
@dataclass(frozen=True, slots=True)
class Relation:
    """Schema of a table, sent before its first change and after every schema change.

    Later Insert/Update/Delete for ``relid`` have one value per column, in this order.
    ``replica_identity`` is ``'d'`` (default: primary key), ``'n'`` (nothing), ``'f'``
    (full) or ``'i'`` (index).
    """

    relid: int
    namespace: str
    name: str
    replica_identity: str
    columns: tuple[RelationColumn, ...]
    xid: int | None = None


@final
@dataclass(frozen=True, slots=True)
class TypeMsg:
    """Name of a non-built-in data type used by a following :class:`Relation`."""

    type_oid: int
    namespace: str
    name: str
    xid: int | None = None


@final
@dataclass(frozen=True, slots=True)
class Insert:
    """A row inserted into ``relid``: ``new`` holds every column."""

    relid: int
    new: Row
    xid: int | None = None


@final
@dataclass(frozen=True, slots=True)
class Update:
    """A row of ``relid`` updated.

    ``old`` is sent only when the replica identity changed (``old_kind`` ``'K'``: the old
    key columns, others ``None``) or with REPLICA IDENTITY FULL (``'O'``: the whole old
    row); otherwise ``old`` and ``old_kind`` are ``None``.  ``new`` may contain
    :data:`UNCHANGED` for TOASTed columns the update did not touch.
    """

    relid: int
    old: Row | None
    old_kind: str | None
    new: Row
    xid: int | None = None


@final
@dataclass(frozen=True, slots=True)
class Delete:
    """A row of ``relid`` deleted: ``old`` is its key (``'K'``) or whole row (``'O'``)."""

    relid: int
    old: Row
    old_kind: str
    xid: int | None = None


@final
@dataclass(frozen=True, slots=True)
class Truncate:
    """The tables ``relids`` were truncated (with ``CASCADE`` / ``RESTART IDENTITY``)."""

    relids: tuple[int, ...]
    cascade: bool
    restart_identity: bool
    xid: int | None = None


@final
@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """A ``pg_logical_emit_message`` (needs the ``messages`` option).

    A ``transactional`` message arrives inside its transaction, between Begin and Commit;
    the sidecar's push path uses one (prefix ``'sidecar'``) as the mutation record.
    """

    transactional: bool
    lsn: int
    prefix: str
    content: bytes
    xid: int | None = None


@final
@dataclass(frozen=True, slots=True)
class StreamStart:
    """Opens a block of changes of the in-progress transaction ``xid`` (protocol 2).

    ``first`` is true for the transaction's first block.  Until :class:`StreamStop`, every
    change, Relation, Type, Truncate and Message carries this ``xid`` (or a subxact's).
    """

    xid: int
    first: bool


@final
@dataclass(frozen=True, slots=True)
class StreamStop:
    """Closes the current streamed block; other transactions' messages may follow."""


@final
@dataclass(frozen=True, slots=True)
class StreamCommit:
    """The streamed transaction ``xid`` committed: apply all its blocks (protocol 2).

    Like :class:`Commit`, ``end_lsn`` is the position to acknowledge.
    """

    xid: int
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time_us: int


@final
@dataclass(frozen=True, slots=True)
class StreamAbort:
    """The streamed (sub)transaction ``subxid`` of ``xid`` aborted: discard its changes.

    ``subxid == xid`` means the whole transaction aborted.  ``abort_lsn`` and
    ``abort_time_us`` are only sent by protocol 4 (parallel apply); otherwise ``None``.
    """

    xid: int
    subxid: int
    abort_lsn: int | None = None
    abort_time_us: int | None = None


Message: TypeAlias = (
    Begin
    | Commit
    | Origin
    | Relation
    | TypeMsg
    | Insert
    | Update
    | Delete
    | Truncate
    | LogicalMessage
    | StreamStart
    | StreamStop
    | StreamCommit
    | StreamAbort
)
