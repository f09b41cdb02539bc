"""The replication slot as PostgreSQL reports it (``pg_replication_slots``), read by one query.

The capture runner (does the store agree with the slot? is it in use?), ``admin.py``
(``sidecar init | drop | status``) and the service's retained-WAL metric all read the
slot through :func:`read_slot` / :func:`read_slot_async`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import psycopg

from sidecar.lsn import str_to_lsn

__all__ = ["SLOT_QUERY", "SlotState", "read_slot", "read_slot_async"]

SLOT_QUERY = (
    "SELECT plugin, database, active, active_pid, wal_status, "
    "restart_lsn::text, confirmed_flush_lsn::text, "
    "pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint AS retained_bytes, "
    "pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint AS lag_bytes "
    "FROM pg_replication_slots WHERE slot_name = %s"
)
"""One row of ``pg_replication_slots`` in the order of :class:`SlotState`'s fields."""


@dataclass(frozen=True, slots=True)
class SlotState:
    """One replication slot's row (``sidecar status`` prints these fields as they are).

    LSNs are PostgreSQL's ``pg_lsn`` text (None where the slot has none yet); sizes are
    bytes of WAL behind the server's current position.
    """

    plugin: str | None
    database: str | None
    active: bool
    active_pid: int | None
    wal_status: str | None  # reserved | extended | unreserved | lost
    restart_lsn: str | None
    confirmed_flush_lsn: str | None
    retained_bytes: int | None  # WAL the slot keeps on the server
    lag_bytes: int | None  # WAL written since the slot's confirmed position

    @property
    def confirmed_flush(self) -> int:
        """The confirmed flush position as an LSN (0 when the slot has none)."""
        return str_to_lsn(self.confirmed_flush_lsn) if self.confirmed_flush_lsn else 0

    def as_dict(self) -> dict[str, Any]:
        """The fields by name, in the query's order (for ``sidecar status``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _state(row: tuple[Any, ...] | None) -> SlotState | None:
    return None if row is None else SlotState(*row)


def read_slot(conn: psycopg.Connection[Any], name: str) -> SlotState | None:
    """The slot `name` (None when there is no such slot)."""
    return _state(conn.execute(SLOT_QUERY, (name,)).fetchone())


async def read_slot_async(conn: psycopg.AsyncConnection[Any], name: str) -> SlotState | None:
    """The slot `name` (None when there is no such slot), on an async connection."""
    cur = await conn.execute(SLOT_QUERY, (name,))
    return _state(await cur.fetchone())
