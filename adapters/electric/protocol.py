"""Electric's shape protocol on the wire: handles, offsets, the live cursor, constants.

- **handle** `<epoch>-<shape>-<generation>` (`Handle`): the store epoch, the shape hash
  (`shape.shape_hash`) and the time it was minted (ms); handles are never reused.
- **offset** `-1` = the initial sync; `<version>_0` = after core version `<version>` of the
  handle's epoch; under a membership rule the rest of the core cursor follows when the
  position needs it: `<version>_0_<scopes_at>` or `<version>_0_<scopes_at>_<target>_<moved>`
  (`offset_of`, `parse_offset`).
- **electric-cursor** (`live_cursor`): a cache buster of live answers that moves every 20 s.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from sidecar.changes import Cursor
from sidecar.errors import InvalidRequest

__all__ = [
    "CURSOR_EPOCH",
    "EXPOSED",
    "LIVE_TIMEOUT",
    "MUST_REFETCH",
    "PATH",
    "PREFIX",
    "SSE_SECONDS",
    "UP_TO_DATE",
    "Handle",
    "Message",
    "live_cursor",
    "offset_of",
    "parse_offset",
]

PREFIX = "/electric/"
PATH = "/electric/v1/shape"
LIVE_TIMEOUT = 20.0  # seconds a long-poll waits, as Electric's server does
SSE_SECONDS = 60.0  # an SSE response ends after this; the client reconnects at once
CURSOR_EPOCH = 1728432000  # 2024-10-09T00:00:00Z: the live cursor counts 20 s from it
EXPOSED = (
    "electric-handle, electric-offset, electric-schema, electric-cursor, "
    "electric-up-to-date, retry-after, x-request-id, traceresponse, "
    "ratelimit-limit, ratelimit-remaining, ratelimit-reset, ratelimit-policy"
)
UP_TO_DATE: dict[str, Any] = {"headers": {"control": "up-to-date"}}
MUST_REFETCH = b'[{"headers":{"control":"must-refetch"}}]'

Message = dict[str, Any]

_HANDLE = re.compile(r"^([0-9a-f]{8})-([0-9a-f]{12})-([0-9]{1,20})$")
_OFFSET = re.compile(
    r"^([0-9]{1,19})_([0-9]{1,19}|inf)(?:_([0-9]{1,19})(?:_([0-9]{1,19})_([0-9]{1,19}))?)?$"
)


@dataclass(frozen=True, slots=True)
class Handle:
    """A shape log's handle: store epoch, shape hash, generation (ms when minted)."""

    epoch: str
    shape: str
    generation: str

    def __str__(self) -> str:
        return f"{self.epoch}-{self.shape}-{self.generation}"

    @classmethod
    def parse(cls, text: str | None) -> Handle | None:
        m = _HANDLE.match(text or "")
        return cls(*m.groups()) if m else None

    @classmethod
    def mint(cls, epoch: str, shape: str, not_like: Handle | None = None) -> Handle:
        generation = time.time_ns() // 1_000_000
        if not_like is not None and not_like.generation == str(generation):
            generation += 1
        return cls(epoch, shape, str(generation))


def offset_of(cursor: Cursor) -> str:
    """The offset of a core cursor: `<version>_0`, then what else the cursor names (the
    scopes' version, a move-in's target and progress) after further underscores. The
    client sends the `electric-offset` header back as it is."""
    rest = str(cursor).split("-")[2:]
    return "_".join([str(cursor.version), "0", *rest])


def parse_offset(raw: str | None, epoch: str) -> Cursor | None:
    """The core cursor an offset stands for in the handle's `epoch`; None for `-1`."""
    if raw is None or raw == "-1":
        return None
    m = _OFFSET.match(raw)
    if m is None:
        raise InvalidRequest("offset must be -1 or <version>_<op>", parameter="offset")
    version, _, at, target, moved = m.groups()
    if target is not None:
        return Cursor(epoch, int(version), int(at), int(target), int(moved))
    return Cursor(epoch, int(version), None if at is None else int(at))


def live_cursor(client: str | None) -> str:
    """`electric-cursor`: a cache buster that moves every 20 s and never repeats the
    client's (as Electric's server computes it)."""
    now = int((time.time() - CURSOR_EPOCH) // 20)
    if client and client.isdigit() and int(client) >= now:
        now = int(client) + 1
    return str(now)
