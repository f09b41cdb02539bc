"""What a replica runs beside the service (`Service.start` with a shared store): the
listener of the store's notifications (`listen.py`) and the heartbeat (`registry.py`),
and the refresh of its view of the store both use (`Follower`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sidecar.capture.runner import CaptureRunner
from sidecar.notify import Notifier
from sidecar.observability import Metrics
from sidecar.replica.leader import ReplicaCapture
from sidecar.replica.listen import Wakeups, listen
from sidecar.replica.registry import heartbeat, replica_id
from sidecar.store.pg import PGStore


class Follower:
    """A replica's view of the shared store, refreshed on demand (a notification, a
    cursor ahead of the cached state)."""

    def __init__(self, store: PGStore, capture: Callable[[], CaptureRunner]) -> None:
        self.store, self.capture = store, capture
        self.ident = replica_id()

    async def refresh(self) -> None:
        state = await asyncio.to_thread(self.store.refresh)
        runner = self.capture()
        if isinstance(runner, ReplicaCapture):
            runner.follow(state)

    def position(self) -> tuple[int, float]:
        """(the store position this replica sees, its capture lag in seconds)."""
        status = self.capture().status
        return status.flushed_lsn, status.lag_seconds() if self.store.term else 0.0

    def role(self) -> str:
        return "leader" if self.store.term is not None else "follower"

    def start(
        self, notifier: Notifier, metrics: Metrics, takeover: float
    ) -> list[asyncio.Task[None]]:
        wakeups = Wakeups(self.store, notifier, self.refresh)
        return [
            asyncio.create_task(listen(self.store, wakeups, takeover), name="listen"),
            asyncio.create_task(
                heartbeat(self.store, self.ident, metrics, self.position), name="heartbeat"
            ),
        ]
