"""Values that cross module boundaries on the read path: cursors, pages, row images."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sidecar.errors import InvalidRequest

__all__ = ["Cursor", "GrantChange", "Image", "Page", "rev_of"]

_CURSOR = re.compile(
    r"^([0-9a-f]{8})-([0-9]{1,19})(?:-([0-9]{1,19})(?:-([0-9]{1,19})-([0-9]{1,19}))?)?$"
)


@dataclass(frozen=True, slots=True)
class Cursor:
    """A position in one store: its epoch (changes when the store is rebuilt) and a version.

    Rendered as `<epoch>-<version>`, e.g. `3fa9c2d1-1042`; clients treat it as opaque.
    Under a membership rule a cursor may name more (see `views.py`): the version the
    client's scopes were read at, `<epoch>-<version>-<scopes_at>` (the client holds every
    change up to `version` of the scopes it had at `scopes_at`), and, while the rows of
    scopes it gained are being sent (a move-in over several pages), the version of the
    scopes it is moving to and how far the move-in has come:
    `<epoch>-<version>-<scopes_at>-<target>-<moved>`.
    """

    epoch: str
    version: int
    scopes_at: int | None = None  # None: the scopes of `version`
    target: int | None = None  # a move-in in progress: to the scopes of this version
    moved: int = 0  # ... its rows up to this version are sent

    def __post_init__(self) -> None:
        if self.scopes_at == self.version and self.target is None:
            object.__setattr__(self, "scopes_at", None)  # one spelling of each position

    def __str__(self) -> str:
        if self.target is not None:
            return f"{self.epoch}-{self.version}-{self.scopes_version}-{self.target}-{self.moved}"
        if self.scopes_at is None:
            return f"{self.epoch}-{self.version}"
        return f"{self.epoch}-{self.version}-{self.scopes_at}"

    @property
    def scopes_version(self) -> int:
        """The version at which the client's scopes were read."""
        return self.version if self.scopes_at is None else self.scopes_at

    @classmethod
    def parse(cls, text: str) -> Cursor:
        m = _CURSOR.match(text)
        if not m:
            raise InvalidRequest(
                "cursor is malformed: pass back the `cursor` of a previous response, "
                "or omit it for an initial sync",
                parameter="cursor",
            )
        at, target, moved = m.group(3), m.group(4), m.group(5)
        if target is not None:
            return cls(m.group(1), int(m.group(2)), int(at), int(target), int(moved))
        return cls(m.group(1), int(m.group(2)), None if at is None else int(at))


@dataclass(frozen=True, slots=True)
class Page:
    """One page of changes, already serialised one JSON object per change."""

    lines: list[bytes]
    cursor: Cursor
    has_more: bool
    # Renderings of this page, kept with it: one commit waking many waiters serves them
    # all the same cached page, rendered once.
    memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)


class Image(NamedTuple):
    """A row as the store keeps it (everything pre-serialised as JSON).

    A named tuple rather than a dataclass: capture builds one per row change, and a
    tuple is built several times faster than a frozen dataclass.
    """

    ident: str  # JSON object of the identity columns: the row's key in the store
    key: bytes  # JSON object of the client key
    row: bytes  # JSON object of the exposed columns
    rev: str
    scopes: tuple[str, ...]
    hidden: bytes  # JSON object of columns the collection needs but does not expose


# A member whose value is null: `"name":null` then `,` (or, last, `,"name":null` then `}`).
_NULL_MEMBER = re.compile(rb'"(?:[^"\\]|\\.)*":null,')
_LAST_NULL_MEMBER = re.compile(rb',?"(?:[^"\\]|\\.)*":null}')


def rev_of(row_json: bytes) -> str:
    """The short hash clients use as the row's revision (read and write paths agree).

    Members whose value is null do not count: a column added to a table without a
    default (NULL in every row) changes no row's rev, so no row is sent again and a
    client's `base_rev` from before still matches."""
    if b":null" in row_json:
        row_json = _LAST_NULL_MEMBER.sub(b"}", _NULL_MEMBER.sub(b"", row_json))
    return hashlib.blake2b(row_json, digest_size=8).hexdigest()


class GrantChange(NamedTuple):
    """What one row of a membership table grants through one lookup after a change, in
    stream order (`membership.py` makes them, the store keeps their history)."""

    lookup: str  # `Lookup.id`
    ident: str  # JSON object of the membership row's identity
    pairs: tuple[tuple[str, str], ...]  # (scope, value) pairs; () after a delete
