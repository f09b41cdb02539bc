"""Values that cross module boundaries on the read path: cursors, pages, row images."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sidecar.errors import InvalidRequest

__all__ = ["Cursor", "Image", "Page", "rev_of"]

_CURSOR = re.compile(r"^([0-9a-f]{8})-([0-9]{1,19})$")


@dataclass(frozen=True, slots=True)
class Cursor:
    """A position in one store: its epoch (changes when the store is rebuilt) and a version.

    Rendered as `<epoch>-<version>`, e.g. `3fa9c2d1-1042`; clients treat it as opaque.
    """

    epoch: str
    version: int

    def __str__(self) -> str:
        return f"{self.epoch}-{self.version}"

    @classmethod
    def parse(cls, text: str) -> Cursor:
        m = _CURSOR.match(text)
        if not m:
            raise InvalidRequest(
                "cursor is malformed: pass back the `cursor` of a previous response, "
                "or omit it for an initial sync",
                parameter="cursor",
            )
        return cls(m.group(1), int(m.group(2)))


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


def rev_of(row_json: bytes) -> str:
    """The short hash clients use as the row's revision (read and write paths agree)."""
    return hashlib.blake2b(row_json, digest_size=8).hexdigest()
