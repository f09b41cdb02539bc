"""The capture runner of a replica of a shared store (`ReplicaCapture`).

A replica follows until its store writer becomes the leader (`PGStore.lead()`: the
advisory lock on the writer's session, then a new term), trying every `poll` seconds
(derived from `store.takeover_timeout`) and refreshing its view of the store meanwhile
(`follow`: the positions read-your-writes and the push's duplicate checks wait for).
Leading, it creates the publication if need be and captures as a single sidecar does; a
watchdog checks every `poll` seconds that the store still knows it as the leader (its term
and its writer session). A lost leadership — seen by the watchdog, or by a write the
store refused (`Fenced`) — ends the replication session (the slot is free for the next
leader) with nothing of the open batch committed, and the replica follows again.

A new leader's `START_REPLICATION` is refused while the last leader's walsender still
holds the slot; capture retries it (the reconnect backoff is capped by the takeover
bound) until that walsender is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

import structlog

from sidecar.capture.claim import SlotClaim
from sidecar.capture.runner import CaptureRunner
from sidecar.capture.source import ReplicationError
from sidecar.capture.weather import Backoff
from sidecar.collection import Collection
from sidecar.config.model import Config
from sidecar.notify import Notifier
from sidecar.store.base import Fenced, StoreState, StoreUnavailable
from sidecar.store.pg import PGStore
from sidecar.tracing import Tracing

log = structlog.get_logger("sidecar.replica")


def poll_interval(takeover: float) -> float:
    """How often a follower tries the leadership (and a leader checks it still has it)."""
    return min(1.0, takeover / 10)


class ReplicaCapture(CaptureRunner):
    """Capture while this replica leads the shared store; follow otherwise."""

    def __init__(
        self,
        config: Config,
        store: PGStore,
        routes: Sequence[Collection],
        notifier: Notifier,
        *,
        on_lead: Callable[[], Awaitable[None]] | None = None,
        claim: SlotClaim | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        super().__init__(config, store, routes, notifier, claim=claim, tracing=tracing)
        self.pg = store
        takeover = config.store.takeover_timeout
        self.poll = poll_interval(takeover)
        self.backoff = Backoff(first=min(0.5, self.poll), cap=max(1.0, takeover / 4))
        self.on_lead = on_lead
        self.leading = False
        self._lost: str | None = None
        if store.state().snapshot_done:  # a complete store is served while following
            self._ready.set()

    def follow(self, state: StoreState) -> None:
        """The shared store's committed state, as a follower reads it: the positions
        waited for (read-your-writes, duplicate checks) and readiness."""
        if self.leading:
            return
        position = max(state.lsn, state.acked_lsn)
        self.status.acked_lsn = max(self.status.acked_lsn, position)
        self._advance(position)
        if state.snapshot_done:
            self._ready.set()

    def lose(self, why: str) -> None:
        """The leadership is gone (seen from outside the writer): stop capturing."""
        if self.leading and self._lost is None:
            self._lost = why
            if self._source is not None:
                self._source.abort(ReplicationError(why))

    async def run(self) -> None:
        """Follow until leading, capture until the leadership is lost, and again; returns
        as `CaptureRunner.run` does (stopped, a changed table, a failure for good)."""
        while not self._stopping:
            if await self._run_task(self._until_leader()):
                return
            watchdog = asyncio.create_task(self._watch())
            try:
                await super().run()
                return
            except Fenced as exc:
                log.warning("lost the leadership of the store; following", reason=str(exc))
            finally:
                watchdog.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await watchdog
                self.leading = False
            with contextlib.suppress(Exception):
                await self._in_writer(self.pg.resign)
            await self.claim.release()  # the next leader takes the slot's lock
            self.status.phase, self.status.error = "following", None
            # the others (polling every `poll` s) go first: a replica that lost its
            # session is the likeliest to lose the next one
            if await self._run_task(asyncio.sleep(3 * self.poll)):
                return

    async def _session(self) -> None:
        if self._lost is not None:
            raise Fenced(self._lost)
        await super()._session()

    async def _until_leader(self) -> None:
        if self.pg.term is None:
            self.status.phase = "following"
        while True:
            try:
                if await self._in_writer(self.pg.lead):
                    break
            except StoreUnavailable as exc:
                log.debug("leadership not tried", error=str(exc))
            with contextlib.suppress(Exception):  # the listener refreshes too
                self.follow(await asyncio.to_thread(self.pg.refresh))
            await asyncio.sleep(self.poll)
        self.leading, self._lost = True, None
        log.info("leading the store: capturing", term=self.pg.term)
        if self.on_lead is not None:
            try:
                await self.on_lead()
            except Exception as exc:  # capture says what is missing when it starts
                log.error("could not prepare the database", error=str(exc))

    async def _watch(self) -> None:
        """While leading: the store still knows this replica as its leader."""
        while True:
            await asyncio.sleep(self.poll)
            try:
                leads = await asyncio.to_thread(self.pg.still_leads)
            except Exception:  # the store unreachable: its writes will say
                continue
            if not leads:
                self.lose("another replica leads the store, or this one's session ended")
                return
