"""How capture shares `limits.memory` (bytes of data held at once) among its buffers.

Every buffer is cut by bytes, whatever the row width (a row count alone let a table of
wide rows take gigabytes):

- the inbox: replication messages read and not yet taken by the router (`inbox`), and
  the list the router is applying (another as much);
- a batch of row changes, or of rows of the initial copy or of a reconcile, routed into
  images and handed to the store's writer (`batch`, by the bytes read from PostgreSQL):
  one being routed and at most two waiting for the writer, each held a few times over
  (the values read, their JSON, the statement's parameter).

Together about the budget; the process's fixed part (interpreter, SQLite's page cache,
the pull page cache, connections) comes on top.
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1 << 20
DEFAULT = 256 * MIB


@dataclass(frozen=True, slots=True)
class MemoryBudget:
    total: int = DEFAULT

    @property
    def inbox(self) -> int:
        """Bytes of replication messages the inbox holds before the reader waits."""
        return max(self.total // 8, MIB)

    @property
    def batch(self) -> int:
        """Bytes of rows (as PostgreSQL sent them) in one batch handed to the writer."""
        return max(self.total // 16, MIB)
