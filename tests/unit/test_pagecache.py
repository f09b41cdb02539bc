"""The page cache (`sidecar.pagecache`) over an in-memory store reader: what a page is
keyed by, its cursor, its byte bound, and identical reads at the same time sharing one
store read."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.changes import Cursor
from sidecar.pagecache import PageCache
from sidecar.store.base import StoreReader
from tests.support.memory_reader import MemoryReader


def test_the_fake_is_a_store_reader() -> None:
    reader: StoreReader = MemoryReader()  # mypy checks the protocol here
    assert reader.state().version == 0


async def test_no_scopes_is_an_empty_page_at_the_store_version() -> None:
    store = MemoryReader()
    store.commit(("a", "x"), ("a", "y"))
    cache = PageCache(store)
    page = await cache.page([], 0, 10)
    assert page.lines == [] and not page.has_more and page.cursor == Cursor(store.epoch, 2)
    assert (await cache.page([], 5, 10)).cursor == Cursor(store.epoch, 5)
    assert store.pulls == [] and (cache.hits, cache.misses) == (0, 0)


async def test_a_page_is_read_once_per_scopes_cursor_and_limit() -> None:
    store = MemoryReader()
    store.commit(("a", "x"), ("b", "y"), ("a", "z"))
    cache = PageCache(store)
    first = await cache.page(["a", "b"], 0, 10)
    assert len(first.lines) == 3 and first.cursor == Cursor(store.epoch, 3)
    assert await cache.page(["b", "a"], 0, 10) is first  # the scopes in any order
    assert (cache.hits, cache.misses, len(store.pulls)) == (1, 1, 1)
    await cache.page(["a", "b"], 1, 10)  # another cursor
    await cache.page(["a", "b"], 0, 2)  # another limit
    await cache.page(["a"], 0, 10)  # other scopes
    assert (cache.hits, cache.misses, len(store.pulls)) == (1, 4, 4)


async def test_a_commit_makes_older_pages_unreachable() -> None:
    store = MemoryReader()
    store.commit(("a", "x"))
    cache = PageCache(store)
    before = await cache.page(["a"], 0, 10)
    store.commit(("b", "elsewhere"))  # the version moves on, whatever it touched
    after = await cache.page(["a"], 0, 10)
    assert after is not before and len(store.pulls) == 2
    assert after.lines == before.lines and after.cursor == Cursor(store.epoch, 2)
    store.epoch = "ffffffff"  # a rebuilt store at the same version: read again
    rebuilt = await cache.page(["a"], 0, 10)
    assert len(store.pulls) == 3 and rebuilt.cursor.epoch == "ffffffff"


async def test_the_cursor_of_a_complete_page_is_the_store_version() -> None:
    store = MemoryReader()
    store.commit(("a", "1"), ("a", "2"), ("b", "3"), ("a", "4"), ("b", "5"))
    cache = PageCache(store)
    partial = await cache.page(["a"], 0, 2)
    assert partial.has_more and partial.cursor.version == 2  # its last change
    rest = await cache.page(["a"], 2, 2)
    assert not rest.has_more and rest.cursor.version == 5  # past the others' changes


async def test_pages_are_bounded_in_bytes() -> None:
    store = MemoryReader()
    for n in range(20):
        store.commit((f"s{n}", "x" * 100))
    size = 64 + max(len(line) for _, _, line in store.changes)  # a one-line page, at most
    cache = PageCache(store, max_bytes=8 * size)
    for n in range(20):
        await cache.page([f"s{n}"], 0, 10)
    cached = [key[0] for key in cache._pages]
    assert 0 < len(cached) < 20 and cache._pages.currsize <= cache._pages.maxsize
    assert ("s19",) in cached and ("s0",) not in cached  # the least recently used went
    small = PageCache(store, max_bytes=8 * size - 1)  # a page over an eighth: not kept
    await small.page(["s19"], 0, 10)
    await small.page(["s19"], 0, 10)
    assert len(small._pages) == 0 and len(store.pulls) == 22


async def test_identical_reads_at_the_same_time_share_one_store_read() -> None:
    store = MemoryReader()
    store.commit(("a", "x"))
    store.hold = True
    cache = PageCache(store)
    readers = [asyncio.create_task(cache.page(["a"], 0, 10)) for _ in range(5)]
    other = asyncio.create_task(cache.page(["a"], 0, 5))
    while len(store.pulls) < 2:
        await asyncio.sleep(0.001)
    readers[0].cancel()  # a caller that goes away does not cancel the others' read
    store.release()
    pages = await asyncio.gather(*readers[1:])
    assert all(p is pages[0] for p in pages) and len(pages[0].lines) == 1
    await other
    assert sorted(store.pulls) == [(("a",), 0, 5), (("a",), 0, 10)]
    assert (cache.misses, cache.hits) == (2, 4)
    with pytest.raises(asyncio.CancelledError):
        await readers[0]


async def test_clear_forgets_every_page() -> None:
    store = MemoryReader()
    store.commit(("a", "x"))
    cache = PageCache(store)
    await cache.page(["a"], 0, 10)
    cache.clear()
    await cache.page(["a"], 0, 10)
    assert len(store.pulls) == 2


async def test_the_byte_bound_is_part_of_the_key_and_cuts_the_page() -> None:
    store = MemoryReader()
    store.commit(("a", "x" * 100), ("a", "y" * 100), ("a", "z" * 100))
    cache = PageCache(store)
    whole = await cache.page(["a"], 0, 10, None)
    cut = await cache.page(["a"], 0, 10, 300)
    assert len(whole.lines) == 3 and not whole.has_more
    assert len(cut.lines) == 2 and cut.has_more and cut.cursor == Cursor(store.epoch, 2)
    one = await cache.page(["a"], 0, 10, 1)  # at least one change, however small the bound
    assert len(one.lines) == 1 and one.cursor == Cursor(store.epoch, 1)
    assert len(store.pulls) == 3
