"""Hot pull pages, shared between callers who ask the same question at the same time.

A page is keyed by (scopes, after, limit, byte bound) *and* the store's epoch and version
when it was read, so any store commit makes every older entry unreachable: nothing is ever served
stale and nothing needs explicit invalidation. Concurrent misses on one key wait for a
single store read (one read per distinct cursor when a commit wakes many waiters).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from cachetools import LRUCache

from sidecar.changes import Cursor, Page
from sidecar.store.base import StoreReader

DEFAULT_BYTES = 64 * 1024 * 1024

_Key = tuple[tuple[str, ...], int, int, int | None, str, int]


def _size(page: Page) -> int:
    return 64 + sum(len(line) for line in page.lines)


class PageCache:
    def __init__(self, store: StoreReader, max_bytes: int = DEFAULT_BYTES) -> None:
        self.store = store
        self._pages: LRUCache[_Key, Page] = LRUCache(maxsize=max_bytes, getsizeof=_size)
        self._reading: dict[_Key, asyncio.Future[Page]] = {}
        self.hits = 0
        self.misses = 0

    async def page(
        self, scopes: Sequence[str], after: int, limit: int, max_bytes: int | None = None
    ) -> Page:
        """The changes after version `after` in `scopes`, at most `limit` and at most
        `max_bytes` of change lines (at least one change), with the cursor."""
        state = self.store.state()  # read before the query: its version is a safe floor
        if not scopes:
            return Page([], Cursor(state.epoch, max(after, state.version)), False)
        key: _Key = (tuple(sorted(scopes)), after, limit, max_bytes, state.epoch, state.version)
        page = self._pages.get(key)
        if page is not None:
            self.hits += 1
            return page
        reading = self._reading.get(key)
        if reading is not None:
            self.hits += 1
        else:
            self.misses += 1
            # A task of its own: a caller that goes away does not cancel the others' read.
            reading = asyncio.ensure_future(self._read(key, state.version))
            self._reading[key] = reading
            reading.add_done_callback(lambda _: self._reading.pop(key, None))
        return await asyncio.shield(reading)

    async def _read(self, key: _Key, floor: int) -> Page:
        scopes, after, limit, max_bytes, epoch, _ = key
        # a client at version 0 holds nothing: it needs no tombstones (an initial sync)
        data = await asyncio.to_thread(self.store.pull, scopes, after, limit, max_bytes, after == 0)
        version = data.last_version if data.has_more else max(data.last_version, floor)
        page = Page(data.lines, Cursor(epoch, version), data.has_more)
        if _size(page) <= self._pages.maxsize // 8:  # one huge page must not evict the rest
            self._pages[key] = page
        return page

    def clear(self) -> None:
        self._pages.clear()
