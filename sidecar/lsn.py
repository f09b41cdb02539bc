"""WAL positions (LSNs): parsing, formatting and comparison.

An LSN is a plain ``int`` in ``[0, 2**64)``; PostgreSQL prints it as ``pg_lsn`` text
(``"16/B374D848"``: the high and low 32 bits in hex). Every module that reads, prints or
compares a WAL position uses these helpers; this module imports nothing of the sidecar.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["MAX_LSN", "WAL_PAGE", "covers", "lsn_to_str", "str_to_lsn"]

MAX_LSN: Final = 0xFFFF_FFFF_FFFF_FFFF
"""The highest LSN (``pg_lsn`` is an unsigned 64-bit integer)."""

WAL_PAGE: Final = 8192  # XLOG_BLCKSZ of every stock build
_PAGE_HEADERS: Final = (24, 40)  # SizeOfXLogShortPHD, SizeOfXLogLongPHD (segment start)

_LSN_RE: Final = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


def lsn_to_str(n: int) -> str:
    """Format an LSN the way PostgreSQL prints ``pg_lsn`` (``"16/B374D848"``)."""
    if type(n) is not int or not 0 <= n <= MAX_LSN:
        raise ValueError(f"an LSN is an int in [0, 2**64): got {n!r}")
    return f"{n >> 32:X}/{n & 0xFFFFFFFF:X}"


def str_to_lsn(s: str) -> int:
    """Parse a ``pg_lsn`` text (``"16/B374D848"``: 1-8 hex digits, slash, 1-8 hex digits)."""
    m = _LSN_RE.fullmatch(s) if isinstance(s, str) else None
    if m is None:
        raise ValueError(f"malformed LSN {s!r}: expected 'XXXXXXXX/XXXXXXXX' (hex)")
    return (int(m.group(1), 16) << 32) | int(m.group(2), 16)


def covers(done: int, target: int) -> bool:
    """True when WAL processed up to `done` includes everything before `target`.

    ``pg_current_wal_insert_lsn()`` reports a position that falls on a page boundary as
    *after* that page's header, while the walsender reports the end of the last record,
    i.e. the boundary itself. Both mean the same point of the WAL; without this an idle
    server would leave a waiter stuck until some unrelated WAL is written.
    """
    if done >= target:
        return True
    offset = target % WAL_PAGE
    return offset in _PAGE_HEADERS and done == target - offset
