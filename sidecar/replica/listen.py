"""Live wake-ups across replicas: LISTEN on the shared store's channel.

The leader's store commits notify the channel in their transaction (`store/pg_lead.py`:
the store's new version and the scopes the commit touched, or none listed: all). Every
replica listens on a connection of its own; for each notification (those sent by its own
writer skipped: the leader publishes locally), it refreshes its cached store state — so
pages and cursors see the new version — then wakes the waiters of those scopes. Bursts
are coalesced: one refresh for the notifications that arrived meanwhile.

The connection is reconnected with backoff; after a reconnect every waiter is woken (it
reads the store again), so nothing committed while it was down is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import psycopg
import structlog
from psycopg import sql

from sidecar.notify import Notifier
from sidecar.store.pg import PGStore
from sidecar.store.pg_lead import channel, lead_kwargs, read_payload

log = structlog.get_logger("sidecar.replica")

RETRY_FIRST = 0.2  # seconds before the first reconnect of the listener
RETRY_CAP = 5.0


class Wakeups:
    """Scopes to wake, gathered between refreshes (None: every waiter)."""

    def __init__(
        self, store: PGStore, notifier: Notifier, refreshed: Callable[[], Awaitable[None]]
    ) -> None:
        self.store, self.notifier, self.refreshed = store, notifier, refreshed
        self._scopes: set[str] | None = set()
        self._due = asyncio.Event()

    def add(self, scopes: list[str] | None) -> None:
        if scopes is None:
            self._scopes = None
        elif self._scopes is not None:
            self._scopes.update(scopes)
        self._due.set()

    async def run(self) -> None:
        """Refresh, then wake, for what was gathered; again while more arrives."""
        while True:
            await self._due.wait()
            self._due.clear()
            scopes, self._scopes = self._scopes, set()
            try:
                await self.refreshed()
            except Exception:  # the store unreachable: wake anyway (they read again)
                log.debug("store state not refreshed", exc_info=True)
            if scopes is None:
                self.notifier.publish_all()
            elif scopes:
                self.notifier.publish(scopes)


async def listen(store: PGStore, wakeups: Wakeups, takeover: float) -> None:
    """LISTEN on the store's channel until cancelled; reconnects with backoff."""
    delay = RETRY_FIRST
    first = True
    kwargs = lead_kwargs(takeover)
    kwargs.pop("options")  # the server side: the listener holds no lock
    task = asyncio.create_task(wakeups.run())
    try:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    store.url,
                    autocommit=True,
                    connect_timeout=10,
                    application_name="sidecar-listen",
                    **kwargs,
                ) as conn:
                    await conn.execute(
                        sql.SQL("LISTEN {}").format(sql.Identifier(channel(store.schema)))
                    )
                    if not first:  # what was committed meanwhile: everyone reads again
                        wakeups.add(None)
                    first, delay = False, RETRY_FIRST
                    async for note in conn.notifies():
                        if note.pid == store.writer_pid():
                            continue  # this replica's own commit: published locally
                        wakeups.add(read_payload(note.payload)[1])
            except (psycopg.Error, OSError) as exc:
                log.warning("store notifications interrupted; reconnecting", error=str(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_CAP)
            first = False
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
