"""Between the replication stream's reader and the writer: the bounded inbox of payloads
read and not yet written (`Inbox`), and the garbage collector tuned for capture
(`tune_gc`). Both live on the event loop's side of the capture runner."""

from __future__ import annotations

import asyncio
import gc

from sidecar.capture.pgoutput import BEGIN_TAG, COMMIT_TAG

GC_YOUNG_THRESHOLD = 50_000  # allocations between young-generation collections


def tune_gc() -> None:
    """Make the cyclic garbage collector run less often (process-wide).

    Capture allocates several container objects per row change, millions per second while
    catching up. With CPython's default threshold (700 allocations) a young collection
    runs every hundred rows or so, and older ones keep walking the batches in flight:
    measured, a fifth of the capture time. Nearly everything here is freed by reference
    counting the moment it is dropped, so collecting less often costs no memory to speak
    of.
    """
    young, older, oldest = gc.get_threshold()
    if young < GC_YOUNG_THRESHOLD:
        gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


class Inbox:
    """Payloads read from the stream and not yet handed to the writer, bounded by their
    bytes (`limit`, see `budget.py`) and by their count (`LIMIT`): the reader waits for
    room once either is reached (a single message larger than `limit` is still taken)."""

    LIMIT = 100_000

    def __init__(self, limit: int = 32 << 20) -> None:
        self.limit = limit
        self.size = 0  # bytes of `payloads`
        self.payloads: list[bytes] = []
        self.keepalive_pos = 0
        self.wire_in_txn = False  # a Begin was read whose Commit was not
        self.ready = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()

    def extend(self, payloads: list[bytes], size: int) -> None:
        """Add payloads read (`size`: their bytes)."""
        self.payloads.extend(payloads)
        self.size += size
        for payload in reversed(payloads):  # the last Begin or Commit tells
            tag = payload[0]
            if tag in (BEGIN_TAG, COMMIT_TAG):
                self.wire_in_txn = tag == BEGIN_TAG
                break
        if len(self.payloads) >= self.LIMIT or self.size >= self.limit:
            self.room.clear()

    @property
    def room_left(self) -> int:
        """Bytes the reader may still add (at least one message is always taken)."""
        return max(self.limit - self.size, 1)

    def keepalive(self, pos: int) -> None:
        self.keepalive_pos = max(self.keepalive_pos, pos)

    async def wait(self) -> None:
        await self.ready.wait()

    async def wait_for_room(self) -> None:
        await self.room.wait()

    def take(self) -> tuple[list[bytes], int, bool]:
        out = (self.payloads, self.keepalive_pos, self.wire_in_txn)
        self.payloads, self.keepalive_pos, self.size = [], 0, 0
        self.ready.clear()
        self.room.set()
        return out
