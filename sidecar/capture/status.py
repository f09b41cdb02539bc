"""What the capture runner reports: phase, WAL positions, counters and lag.

One :class:`CaptureStatus` per runner, written by the runner on the event loop and read
by the service and the HTTP edge (readiness, metrics, the initial copy's progress).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from sidecar.capture.snapshot import CopyProgress

# libpq's "connection to server at "host" (addr), port 5432 failed" / "on socket "/path"",
# and its "Is the server running on that host…" hint.
_WHERE = re.compile(r'to server (?:at "[^"]*"(?: \([^)]*\))?, port \d+|on socket "[^"]*")')
_HINT = re.compile(r"\s*Is the server running[^\n]*")

STORE_REASONS = {
    "locked": "store locked by another process",
    "disk_full": "store disk full",
    "io": "store I/O error",
}


# Phases in which a complete store is still served (its last consistent state): a start
# over a store already made, capture reconnecting or paused, a store being reconciled, a
# table that changed being looked at, a config that no longer fits the database (capture
# waits for a fix; /readyz says why).
# A replica following the leader of a shared store serves it too (`replica/leader.py`).
SERVING = frozenset(
    {
        "starting",
        "paused",
        "reconnecting",
        "reconciling",
        "schema_changed",
        "failed",
        "slot_in_use",
        "following",
    }
)


@dataclass
class CaptureStatus:
    """The runner's state as others see it (positions are LSNs)."""

    # starting | copying | streaming | reconnecting | paused (store trouble) |
    # schema_changed | failed
    phase: str = "starting"
    error: str | None = None
    copy: CopyProgress = field(default_factory=CopyProgress)
    received_lsn: int = 0
    flushed_lsn: int = 0  # everything of ours up to here is in the store
    acked_lsn: int = 0  # acknowledged to the server (≤ what the store has recorded)
    server_lsn: int = 0  # last position the server reported
    rows_applied: int = 0
    commits_applied: int = 0
    last_commit_at: float | None = None
    rebuilds: int = 0
    resyncs: int = 0  # the store reconciled with a new slot (cursors kept)
    batches: int = 0
    writer_seconds: float = 0.0
    behind_since: float | None = None  # monotonic time the store fell behind the server
    # The kind of store trouble (`StoreUnavailable.kind`) capture is waiting out, until the
    # store commits again; and every failed store write, by kind.
    store_trouble: str | None = None
    store_errors: dict[str, int] = field(default_factory=dict)
    # The limit (s) past which the last stream went silent (watchdog.py), until capture
    # streams again.
    silent: float | None = None

    def public_error(self) -> str | None:
        """`error` as clients may see it (`/readyz`, a pull's 503): without the database's
        host, port or socket path, which only the logs show."""
        if self.error is None:
            return None
        if self.phase == "reconnecting" and self.silent is not None:
            return (
                f"the replication stream went silent (nothing from the database for "
                f"{self.silent:g}s, wal_sender_timeout); reconnecting (see the logs)"
            )
        if self.phase == "reconnecting":
            return "the replication connection to the database failed; retrying (see the logs)"
        text = _WHERE.sub("to the database", self.error)
        return _HINT.sub("", text)

    def note_server(self, lsn: int) -> None:
        """The server reported WAL up to `lsn`."""
        if lsn > self.server_lsn:
            self.server_lsn = lsn
            if lsn > self.flushed_lsn and self.behind_since is None:
                self.behind_since = time.monotonic()

    def restart_at(self, lsn: int) -> None:
        """A new slot (a resync or a rebuild) streams from `lsn`: the positions of the old
        one, perhaps on another timeline and ahead of this server, no longer compare."""
        self.received_lsn = self.flushed_lsn = self.acked_lsn = self.server_lsn = lsn
        self.behind_since = None

    def note_flushed(self, lsn: int) -> None:
        """The store has everything up to `lsn`."""
        self.flushed_lsn = lsn
        if lsn >= self.server_lsn:
            self.behind_since = None

    def note_store_trouble(self, kind: str, detail: str) -> None:
        """A store write failed for a reason that may pass: capture is paused."""
        self.store_errors[kind] = self.store_errors.get(kind, 0) + 1
        self.store_trouble = kind
        self.phase, self.error = "paused", f"{self.store_reason()}: {detail}"

    def note_store_ok(self) -> None:
        """The store committed again."""
        self.store_trouble = None

    def store_reason(self) -> str | None:
        """What keeps capture paused, in words (None: nothing)."""
        if self.store_trouble is None:
            return None
        return STORE_REASONS.get(self.store_trouble, f"store {self.store_trouble}")

    def lag_seconds(self) -> float:
        """How long the store has been behind what the server reported (0 when caught up)."""
        return 0.0 if self.behind_since is None else time.monotonic() - self.behind_since
