"""Trouble capture waits out rather than dies of: the reconnect backoff (`Backoff`) and a
store that cannot take writes for a while (`wait_out`).

A store write that fails for a reason that may pass (`StoreUnavailable`: the file locked
by another process, the disk full, an I/O error) ends the replication session with
nothing of its batch committed and nothing acknowledged (the flush position sent to the
server only moves after a store commit). Capture then pauses: it rolls the store back and
tries one real write (`probe`) with backoff until the store takes it, and streams again
from the store's last commit; PostgreSQL resends what was not acknowledged, ingest skips
what the store already has, so each change lands once. Pulls keep being served from the
store meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from sidecar.capture.status import CaptureStatus
from sidecar.store.base import StoreUnavailable, StoreWriter

log = structlog.get_logger("sidecar.capture")

STORE_RETRY_FIRST = 0.5  # seconds before the first retry of a store that failed a write
STORE_RETRY_CAP = 10.0  # the longest wait between retries: how soon a freed disk is seen


@dataclass
class Backoff:
    """Delays between attempts: `first`, doubled after each failure up to `cap`, and back
    to `first` after an attempt that worked.

    A connection worked if it streamed and the store committed a transaction from it
    (`worked()`), or stayed connected `stable_after` seconds (`connected(now)` when it
    started streaming): a database restarted now and then does not leave capture waiting
    the longest delay after each restart.
    """

    first: float = 1.0
    cap: float = 30.0
    stable_after: float = 10.0
    _next: float = field(default=0.0, init=False)
    _up_since: float | None = field(default=None, init=False)
    _worked: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self._next = self.first

    def connected(self, now: float) -> None:
        """The connection is up (streaming) since `now`."""
        self._up_since = now

    def worked(self) -> None:
        """The connection did what it is for (the store committed from it)."""
        self._worked = True

    def next_delay(self, now: float) -> float:
        """How long to wait after the attempt that failed at `now`."""
        up = self._up_since
        if self._worked or (up is not None and now - up >= self.stable_after):
            self._next = self.first
        self._worked, self._up_since = False, None
        delay = self._next
        self._next = min(self._next * 2, self.cap)
        return delay


def probe(store: StoreWriter) -> None:
    """On the writer thread: back to the last commit, then one real write (the
    acknowledged position, again): raises `StoreUnavailable` while the store cannot."""
    store.rollback()
    store.note_acked(store.state().acked_lsn)


async def wait_out(
    trouble: StoreUnavailable,
    status: CaptureStatus,
    store: StoreWriter,
    on_writer: Callable[[Callable[[StoreWriter], None], StoreWriter], Awaitable[None]],
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Pause capture until the store takes a write again (`probe`, run by `on_writer` on
    the writer thread, stops raising `StoreUnavailable`), retrying with backoff. Logs when
    the trouble starts or changes kind, and when it ends; every failed write is counted in
    `status`."""
    backoff = Backoff(STORE_RETRY_FIRST, STORE_RETRY_CAP)
    logged: str | None = None
    while True:
        status.note_store_trouble(trouble.kind, trouble.detail)
        delay = backoff.next_delay(0.0)
        if trouble.kind != logged:
            log.warning(
                "store unavailable; capture paused, pulls are still served",
                kind=trouble.kind,
                reason=status.store_reason(),
                error=trouble.detail,
                retry_in=delay,
            )
            logged = trouble.kind
        await sleep(delay)
        try:
            await on_writer(probe, store)
        except StoreUnavailable as again:
            trouble = again
            continue
        log.info("store writable again; capture resumes", kind=trouble.kind)
        return
