"""ChangeSource: a logical replication stream from PostgreSQL, driven from asyncio.

psycopg 3.3 has no replication API, but `START_REPLICATION` on a `replication="database"`
connection leaves it in COPY_BOTH mode; from there we drive libpq's copy-data calls on
`conn.pgconn` directly: `get_copy_data(1)` (non-blocking) when the socket is readable,
`put_copy_data` + `flush` (waiting for writable) for standby status updates.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Protocol

import psycopg
from psycopg import sql

from sidecar.capture.framing import standby_status
from sidecar.errors import SidecarError
from sidecar.lsn import lsn_to_str, str_to_lsn
from sidecar.values import NETWORK_KWARGS, session_options, shut_down


class ReplicationError(SidecarError):
    code, status, title = "replication_failed", 500, "Replication stream failed"


@dataclass(frozen=True, slots=True)
class SlotInfo:
    name: str
    consistent_point: int
    snapshot_name: str | None


@dataclass(frozen=True, slots=True)
class SystemInfo:
    system_id: str
    timeline: int
    xlogpos: int
    dbname: str


class ChangeSource(Protocol):
    """What the capture runner needs from a replication stream."""

    async def create_slot(self, *, export_snapshot: bool, temporary: bool = False) -> SlotInfo: ...
    async def start(self, start_lsn: int) -> None: ...
    async def read_batch(self, max_messages: int, max_bytes: int = ...) -> list[bytes]: ...
    async def send_status(
        self, write: int, flush: int, apply: int, reply: bool = False
    ) -> None: ...
    async def close(self) -> None: ...


class ReplicationStream:
    """One replication connection: create a slot, stream pgoutput, acknowledge positions."""

    def __init__(self, dsn: str, slot: str, publication: str) -> None:
        self.dsn = dsn
        self.slot = slot
        self.publication = publication
        self._conn: psycopg.AsyncConnection | None = None
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._reader_fd: int | None = None
        self._aborted: ReplicationError | None = None

    async def connect(self) -> None:
        self._conn = await psycopg.AsyncConnection.connect(
            self.dsn,
            replication="database",
            autocommit=True,
            options=session_options(),
            application_name="sidecar-capture",
            **NETWORK_KWARGS,  # a silent peer is noticed (see also watchdog.py)
        )

    @property
    def conn(self) -> psycopg.AsyncConnection:
        if self._conn is None:
            raise ReplicationError("replication connection is not open")
        return self._conn

    async def identify_system(self) -> SystemInfo:
        cur = await self.conn.execute("IDENTIFY_SYSTEM")
        row = await cur.fetchone()
        assert row is not None
        return SystemInfo(str(row[0]), int(row[1]), str_to_lsn(row[2]), str(row[3]))

    async def create_slot(self, *, export_snapshot: bool, temporary: bool = False) -> SlotInfo:
        mode = "EXPORT_SNAPSHOT" if export_snapshot else "NOEXPORT_SNAPSHOT"
        query = sql.SQL("CREATE_REPLICATION_SLOT {} {}LOGICAL pgoutput {}").format(
            sql.Identifier(self.slot), sql.SQL("TEMPORARY " if temporary else ""), sql.SQL(mode)
        )
        cur = await self.conn.execute(query)
        row = await cur.fetchone()
        assert row is not None
        return SlotInfo(str(row[0]), str_to_lsn(row[1]), row[2])

    async def start(self, start_lsn: int) -> None:
        query = sql.SQL(
            "START_REPLICATION SLOT {} LOGICAL {} "
            "(proto_version '1', publication_names {}, messages 'true')"
        ).format(
            sql.Identifier(self.slot),
            sql.SQL(lsn_to_str(start_lsn)),
            sql.Literal(self.publication),
        )
        await self.conn.execute(query)
        pgconn = self.conn.pgconn
        if pgconn.nonblocking != 1:
            pgconn.nonblocking = 1
        loop = asyncio.get_running_loop()
        self._reader_fd = pgconn.socket
        loop.add_reader(self._reader_fd, self._readable.set)

    def _check_copy_end(self, nbytes: int) -> None:
        pgconn = self.conn.pgconn
        if nbytes == -2:
            raise ReplicationError(
                f"replication stream error: {pgconn.error_message.decode(errors='replace')}"
            )
        # -1: the server ended the COPY; its result says why.
        res = pgconn.get_result()
        message = ""
        if res is not None and res.error_message:
            message = res.error_message.decode(errors="replace")
        raise ReplicationError(f"replication stream ended by the server: {message or 'no reason'}")

    def abort(self, error: ReplicationError) -> None:
        """End the stream from the outside (a silent server): the socket is shut down, so
        nothing waits on it any more, and the reader raises `error`."""
        self._aborted = error
        if self._conn is not None:
            shut_down(self._conn)
        self._readable.set()

    async def read_batch(self, max_messages: int = 10_000, max_bytes: int = 1 << 62) -> list[bytes]:
        """Every message available now, up to `max_messages` or until they reach
        `max_bytes` (at least one); waits while there is none."""
        if self._aborted is not None:
            raise self._aborted
        pgconn = self.conn.pgconn
        out: list[bytes] = []
        size = 0
        while True:
            nbytes, data = pgconn.get_copy_data(1)
            if nbytes > 0:
                out.append(bytes(data))
                size += nbytes
                if len(out) >= max_messages or size >= max_bytes:
                    return out
                continue
            if nbytes < 0:
                self._check_copy_end(nbytes)
            if out:
                return out
            self._readable.clear()
            try:
                pgconn.consume_input()
            except psycopg.OperationalError as exc:
                raise ReplicationError(f"replication connection lost: {exc}") from exc
            nbytes, data = pgconn.get_copy_data(1)
            if nbytes > 0:
                out.append(bytes(data))
                size += nbytes
                continue
            if nbytes < 0:
                self._check_copy_end(nbytes)
            await self._readable.wait()
            if self._aborted is not None:
                raise self._aborted
            try:
                pgconn.consume_input()
            except psycopg.OperationalError as exc:
                raise ReplicationError(f"replication connection lost: {exc}") from exc

    async def send_status(self, write: int, flush: int, apply: int, reply: bool = False) -> None:
        pgconn = self.conn.pgconn
        payload = standby_status(write, flush, apply, reply)
        while True:
            rc = pgconn.put_copy_data(payload)
            if rc == 1:
                break
            if rc < 0:
                raise ReplicationError(pgconn.error_message.decode(errors="replace"))
            await self._wait_writable()
        while pgconn.flush() == 1:
            await self._wait_writable()

    async def _wait_writable(self) -> None:
        loop = asyncio.get_running_loop()
        fd = self.conn.pgconn.socket
        self._writable.clear()
        loop.add_writer(fd, self._writable.set)
        try:
            await asyncio.wait_for(self._writable.wait(), timeout=30)
        finally:
            loop.remove_writer(fd)

    async def close(self) -> None:
        if self._reader_fd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._reader_fd)
            self._reader_fd = None
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None
