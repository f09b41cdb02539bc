"""The v1 change line: one JSON object per change, as every store renders it for pulls.

::

    {"collection":"todos","op":"upsert","key":{…},"row":{…},"rev":"…","version":"42"}
    {"collection":"todos","op":"delete","key":{…},"rev":"…","version":"43"}

Keys, rows and revisions arrive already serialised (the store keeps them as JSON), so a
line is joined from bytes, never re-encoded. The version is a string (it may exceed the
integers JavaScript holds exactly).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

__all__ = ["ChangeLines", "delete_line", "upsert_line"]


def upsert_line(collection_json: bytes, key: bytes, row: bytes, rev: str, version: int) -> bytes:
    """The line of a row that exists (`collection_json`: the collection name as JSON)."""
    return b"".join(
        (
            b'{"collection":',
            collection_json,
            b',"op":"upsert","key":',
            key,
            b',"row":',
            row,
            b',"rev":"',
            rev.encode(),
            b'","version":"',
            str(version).encode(),
            b'"}',
        )
    )


def delete_line(collection_json: bytes, key: bytes, rev: str, version: int) -> bytes:
    """The line of a row gone from the caller's scope (deleted, or moved out of it)."""
    return b"".join(
        (
            b'{"collection":',
            collection_json,
            b',"op":"delete","key":',
            key,
            b',"rev":"',
            rev.encode(),
            b'","version":"',
            str(version).encode(),
            b'"}',
        )
    )


class ChangeLines:
    """Renders a store's entries as change lines, with each collection's name encoded once.

    Safe to share between reader threads (the cache only ever gains equal values).
    """

    __slots__ = ("_collection_json",)

    def __init__(self) -> None:
        self._collection_json: dict[str, bytes] = {}

    def collection_json(self, collection: str) -> bytes:
        """The collection's name as JSON (cached)."""
        cj = self._collection_json.get(collection)
        if cj is None:
            cj = self._collection_json[collection] = orjson.dumps(collection)
        return cj

    def line(
        self, version: int, deleted: int, collection: str, key: bytes, rev: str, row: bytes
    ) -> bytes:
        """The change line of one entry (an upsert shows its row's current image; `row` is
        not read for a deleted entry)."""
        if deleted:
            return delete_line(self.collection_json(collection), key, rev, version)
        return upsert_line(self.collection_json(collection), key, row, rev, version)

    def page(
        self, rows: Iterable[tuple[Any, ...]], after: int, limit: int, max_bytes: int | None
    ) -> tuple[list[bytes], int, bool]:
        """Change lines of `rows` (version, deleted, collection, key, rev, row — in
        version order) after `after`: at most `limit`, and at most `max_bytes` of lines
        (each counted with one separator byte) unless the first alone is larger; with the
        last version included and whether the page was cut."""
        lines: list[bytes] = []
        size = 0
        last = after
        for r in rows:
            if len(lines) == limit:
                return lines, last, True
            line = self.line(*r)
            size += len(line) + 1
            if lines and max_bytes is not None and size > max_bytes:
                return lines, last, True
            lines.append(line)
            last = r[0]
        return lines, last, False


def merged(scopes: Iterable[Iterable[tuple[Any, ...]]]) -> Iterator[tuple[Any, ...]]:
    """Rows of several scopes, each in version order, merged: a version shared by several
    scopes (a row in several of them) comes once, its upsert before a tombstone."""
    previous = None
    for r in heapq.merge(*scopes, key=_version_then_upsert):
        if r[0] != previous:
            previous = r[0]
            yield r


def _version_then_upsert(row: tuple[Any, ...]) -> tuple[int, int]:
    return row[0], row[1]
