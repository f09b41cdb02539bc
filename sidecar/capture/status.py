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


@dataclass
class CaptureStatus:
    """The runner's state as others see it (positions are LSNs)."""

    phase: str = (
        "starting"  # starting | copying | streaming | reconnecting | schema_changed | failed
    )
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
    batches: int = 0
    writer_seconds: float = 0.0
    behind_since: float | None = None  # monotonic time the store fell behind the server

    def public_error(self) -> str | None:
        """`error` as clients may see it (`/readyz`, a pull's 503): without the database's
        host, port or socket path, which only the logs show."""
        if self.error is None:
            return None
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

    def note_flushed(self, lsn: int) -> None:
        """The store has everything up to `lsn`."""
        self.flushed_lsn = lsn
        if lsn >= self.server_lsn:
            self.behind_since = None

    def lag_seconds(self) -> float:
        """How long the store has been behind what the server reported (0 when caught up)."""
        return 0.0 if self.behind_since is None else time.monotonic() - self.behind_since
