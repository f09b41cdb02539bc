"""In-process wake-ups keyed by scope, for live pulls and streams.

The capture runner publishes the set of scopes each store commit touched; a waiter
registered on any of its scopes is woken (all waiters of a scope at once, one event per
waiter). A waiter whose scopes did not change stays asleep.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Iterable, Iterator


class Notifier:
    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._any: set[asyncio.Event] = set()

    def publish(self, scopes: Iterable[str]) -> int:
        """Wake every waiter on any of `scopes`; returns how many were woken."""
        woken: set[asyncio.Event] = set()
        for s in scopes:
            waiters = self._waiters.get(s)
            if waiters:
                woken.update(waiters)
        woken.update(self._any)
        for ev in woken:
            ev.set()
        return len(woken)

    def publish_all(self) -> int:
        """Wake every waiter (a change whose scopes are not known); returns how many."""
        woken = {ev for evs in self._waiters.values() for ev in evs} | self._any
        for ev in woken:
            ev.set()
        return len(woken)

    def waiter_count(self) -> int:
        return len({ev for evs in self._waiters.values() for ev in evs} | self._any)

    @contextlib.contextmanager
    def watch(self, scopes: Iterable[str] | None) -> Iterator[asyncio.Event]:
        """An event set by the next commit touching `scopes` (None: any commit).

        Register *before* reading the store, then wait on the event: a commit that lands
        between the read and the wait still wakes the caller.
        """
        ev = asyncio.Event()
        keys = list(dict.fromkeys(scopes)) if scopes is not None else None
        if keys is None:
            self._any.add(ev)
        else:
            for s in keys:
                self._waiters[s].add(ev)
        try:
            yield ev
        finally:
            if keys is None:
                self._any.discard(ev)
            else:
                for s in keys:
                    waiters = self._waiters.get(s)
                    if waiters is not None:
                        waiters.discard(ev)
                        if not waiters:
                            del self._waiters[s]


async def wait_event(ev: asyncio.Event, timeout: float) -> bool:
    """True if `ev` is set within `timeout` seconds."""
    if ev.is_set():
        return True
    try:
        async with asyncio.timeout(timeout):  # no extra task per waiter, unlike wait_for
            await ev.wait()
        return True
    except TimeoutError:
        return False
