"""In-process wake-ups keyed by scope, for live pulls and streams.

The capture runner publishes the set of scopes each store commit touched; a waiter
registered on any of its scopes is woken (all waiters of a scope at once, one event per
waiter). A waiter whose scopes did not change stays asleep.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable


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

    def waiter_count(self) -> int:
        return len({ev for evs in self._waiters.values() for ev in evs} | self._any)

    async def wait(self, scopes: Iterable[str] | None, timeout: float) -> bool:
        """Sleep until one of `scopes` changes (None: any commit) or `timeout`; True if woken."""
        ev = asyncio.Event()
        keys = list(dict.fromkeys(scopes)) if scopes is not None else None
        if keys is None:
            self._any.add(ev)
        else:
            for s in keys:
                self._waiters[s].add(ev)
        try:
            await asyncio.wait_for(ev.wait(), timeout)
            return True
        except TimeoutError:
            return False
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
