"""Capture runner: slot → (initial copy) → stream → store → acknowledge.

- First start (or a store that cannot continue from the slot, as `bootstrap.py` decides
  from the store's state and the slot's row): create the slot with an exported snapshot,
  copy every mapped table under it, commit the store at the slot's consistent point, then
  stream from there.
- Restart: stream from the LSN recorded in the store; commits at or before it are skipped
  (delivery is at-least-once after a reconnect).
- The flush position sent to the server is only ever an LSN the store has committed; while
  nothing of ours is in flight, the server's keepalive position is acknowledged too, so an
  idle publication never pins WAL. Status updates run on a timer that keeps going while
  the store is busy (the store writes on its own thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import orjson
import psycopg
import structlog

from sidecar.capture.bootstrap import Target, backfilled, plan
from sidecar.capture.budget import MemoryBudget
from sidecar.capture.claim import SlotClaim
from sidecar.capture.framing import (
    KEEPALIVE_TAG,
    XLOG_DATA_TAG,
    XLOG_HEADER,
    Keepalive,
    XLogData,
    parse_copy_data,
)
from sidecar.capture.inbox import Inbox, tune_gc
from sidecar.capture.ingest import Ingest, SchemaChanged, TableChanged
from sidecar.capture.reconcile import record_rules, refresh, resync
from sidecar.capture.slots import SlotState, read_slot_async
from sidecar.capture.snapshot import CopyCancelled, CopyProgress, copy_tables
from sidecar.capture.source import ReplicationError, ReplicationStream, SystemInfo
from sidecar.capture.status import SERVING, CaptureStatus
from sidecar.capture.watchdog import ReplicationSilent, Silence, reply_every, sender_timeout, watch
from sidecar.capture.weather import Backoff, wait_out
from sidecar.collection import Collection, collection_shapes
from sidecar.config.model import Config
from sidecar.errors import SlotInUse
from sidecar.lsn import covers, lsn_to_str
from sidecar.notify import Notifier
from sidecar.store.base import StoreUnavailable, StoreWriter
from sidecar.tracing import Tracing
from sidecar.values import NETWORK_KWARGS

log = structlog.get_logger("sidecar.capture")

T = TypeVar("T")

STATUS_INTERVAL = 1.0
IDLE_REPLY_INTERVAL = 10.0  # when idle, ask the server for its position this often
ACK_PERSIST_INTERVAL = 1.0  # seconds between store writes of an idle acknowledged position
STEP_TIMEOUT = 30.0  # a session's set-up queries (identify, slot, start) give up after this
SLOT_WAIT = 2.0  # seconds between tries while another sidecar holds the slot (claim.py)


def _cancelling() -> bool:
    """The current task itself is being cancelled (not just something it awaited)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class CaptureRunner:
    """Owns the slot and the store's writer thread."""

    def __init__(
        self,
        config: Config,
        store: StoreWriter,
        routes: Sequence[Collection],
        notifier: Notifier,
        *,
        on_commit: Callable[[set[str]], None] | None = None,
        claim: SlotClaim | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.tracing = tracing or Tracing()  # spans of the pushes' transactions stored
        self.config = config
        # The slot's lock (claim.py): kept by the runner that replaces this one (a reload,
        # a change of shape); let go by `release_slot()` when the service closes.
        self.claim = claim or SlotClaim(config.database.url, config.database.slot)
        self.slot_wait = SLOT_WAIT
        self.store = store
        self.routes = list(routes)
        self._shapes = collection_shapes(self.routes)
        self._acked_at = 0.0
        self._session_task: asyncio.Task[None] | None = None
        self.notifier = notifier
        self.on_commit = on_commit
        self.status = CaptureStatus()
        self.budget = MemoryBudget(config.limits.memory)  # what capture holds at once
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="sidecar-writer")
        # Decodes and routes while the writer writes the previous batch (see Ingest).
        self.router = ThreadPoolExecutor(1, thread_name_prefix="sidecar-router")
        self._source: ReplicationStream | None = None
        self._lsn_changed = asyncio.Event()
        self._want_reply = False
        self._ready = asyncio.Event()
        self._stopping = False
        self._stopped: asyncio.Future[None] | None = None
        self.idle_reply_interval = IDLE_REPLY_INTERVAL
        self.backoff = Backoff()  # between replication connections

    # -- helpers -------------------------------------------------------------------------

    async def _in_writer(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.writer, fn, *args)

    async def _in_router(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.router, fn, *args)

    @property
    def ready(self) -> bool:
        """Pulls may be served: streaming, or a complete store in a `SERVING` phase (status.py)."""
        phase, complete = self.status.phase, self.store.state().snapshot_done
        return phase == "streaming" or (phase in SERVING and complete)

    def progress(self) -> dict[str, object]:
        return {
            "phase": self.status.phase,
            "error": self.status.public_error(),
            **self.status.copy.as_dict(),
        }

    async def wait_ready(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._ready.wait(), timeout)

    # -- read-your-writes ----------------------------------------------------------------

    async def wait_for_lsn(self, lsn: int, timeout: float) -> bool:
        """True once everything up to `lsn` is in the store (asks the server to report)."""
        deadline = time.monotonic() + timeout
        while not covers(self.status.flushed_lsn, lsn):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._want_reply = True
            self._lsn_changed.clear()
            source = self._source
            if source is not None and self.status.phase == "streaming":
                with contextlib.suppress(ReplicationError, OSError):
                    await source.send_status(
                        max(self.status.received_lsn, self.status.acked_lsn),
                        self.status.acked_lsn,
                        self.status.acked_lsn,
                        reply=True,
                    )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lsn_changed.wait(), min(left, 0.05))
        return True

    def _advance(self, lsn: int) -> None:
        if lsn > self.status.flushed_lsn:
            self.status.note_flushed(lsn)
            self._lsn_changed.set()

    # -- main loop -----------------------------------------------------------------------

    async def run(self) -> None:
        """Capture until cancelled; reconnects with backoff after connection errors."""
        tune_gc()
        try:
            while not self._stopping:
                try:
                    if await self._run_task(self._session()):
                        return  # stop() ended the session; the caller goes on
                except (SchemaChanged, TableChanged) as exc:
                    # The service re-reads the catalog and starts a new runner (see
                    # Service._run_capture); this one stops here, nothing acknowledged.
                    self.status.phase, self.status.error = "schema_changed", exc.detail
                    log.warning("a synced table changed shape", detail=exc.detail)
                    with contextlib.suppress(StoreUnavailable):  # the next runner's probe
                        await self._in_writer(self.store.rollback)
                    return
                except SlotInUse as exc:  # another sidecar captures: wait, touch nothing
                    if self._stopping:
                        return
                    if (self.status.phase, self.status.error) != ("slot_in_use", exc.detail):
                        log.warning("replication slot in use; waiting", reason=exc.detail)
                    self.status.phase, self.status.error = "slot_in_use", exc.detail
                    await self.claim.release()  # a waiting instance holds nothing
                    with contextlib.suppress(StoreUnavailable):
                        await self._in_writer(self.store.rollback)
                    await asyncio.sleep(self.slot_wait)
                    continue
                except StoreUnavailable as exc:  # weather: wait until the store writes again
                    if self._stopping or await self._run_task(
                        wait_out(exc, self.status, self.store, self._in_writer)
                    ):
                        return
                except (ReplicationError, psycopg.OperationalError, OSError) as exc:
                    if self._stopping:  # stop() closed the stream under us
                        return
                    delay = self.backoff.next_delay(time.monotonic())
                    self.status.phase, self.status.error = "reconnecting", str(exc)
                    if isinstance(exc, ReplicationSilent):  # until it streams again
                        self.status.silent = exc.limit
                    log.warning(
                        "replication interrupted; reconnecting", error=str(exc), retry_in=delay
                    )
                    with contextlib.suppress(StoreUnavailable):  # seen at the next write
                        await self._in_writer(self.store.rollback)
                    await asyncio.sleep(delay)
                    continue
                except Exception:
                    if self._stopping:  # e.g. an executor shut down by stop() mid-batch
                        return
                    raise
        finally:
            await self._close_source()

    def table_changed(self, detail: str) -> None:
        """A synced table was dropped or created again (the service saw it in the
        catalog): the session ends as for a change of shape."""
        if self._source is not None:
            self._source.abort(TableChanged(detail))

    async def _run_task(self, work: Coroutine[Any, Any, None]) -> bool:
        """Run a session (or a pause) as the task `stop()` cancels: True if it did."""
        self._session_task = asyncio.create_task(work)
        try:
            await self._session_task
        except asyncio.CancelledError:
            if self._stopping and not _cancelling():
                return True
            raise
        return False

    async def stop(self) -> None:
        """Stop capture; on return its threads have finished (the store is free). Every
        caller waits for the one stop."""
        if self._stopped is None:
            self._stopped = asyncio.ensure_future(self._stop())
        await asyncio.shield(self._stopped)

    async def _stop(self) -> None:
        self._stopping = True
        if self.status.phase == "streaming":  # not ready while no runner streams
            self.status.phase = "starting"
        if self._session_task is not None and not self._session_task.done():
            self._session_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._session_task
        await self._close_source()
        await asyncio.to_thread(self.router.shutdown)
        await asyncio.to_thread(self.writer.shutdown)

    async def release_slot(self) -> None:
        """Let the slot's lock go (after `stop()`): another sidecar may capture now."""
        await self.claim.release()

    async def _close_source(self) -> None:
        if self._source is not None:
            await self._source.close()
            self._source = None

    async def _session(self) -> None:
        async with asyncio.timeout(STEP_TIMEOUT):
            await self.claim.acquire()  # SlotInUse: another sidecar captures from the slot
        source = ReplicationStream(
            self.config.database.url, self.config.database.slot, self.config.database.publication
        )
        self._source = source
        await source.connect()
        async with asyncio.timeout(STEP_TIMEOUT):  # a server that stops answering
            system = await source.identify_system()
            silence = Silence(await sender_timeout(source.conn))
            slot = await self._slot()
        db = self.config.database
        target = Target(
            db.slot, system.system_id, system.dbname, self._shapes, system.timeline, system.xlogpos
        )
        state = self.store.state()
        start = plan(state, slot, target)
        if start.rebuild is not None:
            await self._rebuild(source, start.rebuild, system)
        elif start.resync is not None:
            await resync(self, source, start.resync, system)
        elif start.backfill or start.reconcile or start.drop or state.rules is None:
            await refresh(self, start)  # (a store without the rules' history: records it)
        state = self.store.state()
        ingest = Ingest(
            self.store,
            self.routes,
            skip_through=state.lsn,
            writer=self.writer,
            backfilled=backfilled(state),
            flush_bytes=self.budget.batch,
        )
        ingest.commit_log = [] if self.tracing.recording else None
        async with asyncio.timeout(STEP_TIMEOUT):
            await source.start(state.lsn)
        self.status.phase, self.status.error, self.status.silent = "streaming", None, None
        self.backoff.connected(time.monotonic())
        if start.rebuild is not None or start.resync is not None:
            self.status.restart_at(state.lsn)
        self.status.flushed_lsn = max(self.status.flushed_lsn, state.lsn)
        self.status.acked_lsn = max(self.status.acked_lsn, state.lsn, state.acked_lsn)
        self._lsn_changed.set()
        self._ready.set()
        log.info("streaming", slot=self.config.database.slot, from_lsn=lsn_to_str(state.lsn))
        every = reply_every(silence.limit, self.idle_reply_interval)
        helpers = [
            asyncio.create_task(self._feedback(source, every)),
            asyncio.create_task(watch(silence, source)),
            asyncio.create_task(self.claim.keep()),
        ]
        try:
            await self._stream(source, ingest, silence)
        finally:
            for task in helpers:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await source.close()
            self._source = None

    async def _stream(self, source: ReplicationStream, ingest: Ingest, silence: Silence) -> None:
        """Read on the loop while the writer thread applies the previous batch.

        The reader keeps filling the inbox while a batch is being written, so batches grow
        with the load (group commit) and stay small when idle (low latency).
        """
        inbox = Inbox(self.budget.inbox)
        reader = asyncio.create_task(self._read(source, inbox, silence))
        st = self.status
        try:
            while True:
                await inbox.wait()
                if reader.done():
                    reader.result()  # re-raise the reader's error
                payloads, keepalive_pos, wire_in_txn = inbox.take()
                if payloads:
                    started = time.perf_counter()
                    result = await self._in_router(ingest.process, payloads)
                    st.batches += 1
                    st.writer_seconds += time.perf_counter() - started
                    st.rows_applied += result.rows
                    if result.committed_lsn is not None:
                        st.commits_applied += result.commits
                        st.last_commit_at = time.time()
                        self._advance(result.committed_lsn)
                        st.acked_lsn = max(st.acked_lsn, result.committed_lsn)
                        st.note_store_ok()
                        self.backoff.worked()
                        stored, woken = time.time_ns(), 0
                        if result.touched:
                            woken = self.notifier.publish(result.touched)
                            if self.on_commit:
                                self.on_commit(result.touched)
                        if result.committed:
                            self.tracing.captured(result.committed, stored, time.time_ns(), woken)
                # Nothing of ours in flight: the server's position is safe to acknowledge,
                # once the store remembers it (a store restored from an older backup is
                # then recognised at start: the slot is ahead of it).
                if keepalive_pos and not wire_in_txn and not ingest.in_transaction:
                    self._advance(keepalive_pos)  # waiters may go on at once
                    if (
                        keepalive_pos > st.acked_lsn
                        and time.monotonic() - self._acked_at >= ACK_PERSIST_INTERVAL
                        and await self._in_writer(self.store.note_acked, keepalive_pos)
                    ):
                        self._acked_at = time.monotonic()
                        st.acked_lsn = keepalive_pos
                        st.note_store_ok()
                if self._want_reply:
                    self._want_reply = False
                    await self._send_status(source)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _read(self, source: ReplicationStream, inbox: Inbox, silence: Silence) -> None:
        st = self.status
        try:
            while True:
                await inbox.wait_for_room()
                payloads: list[bytes] = []
                last_xlog = None
                silence.waiting()  # the watchdog counts from here (not while out of room)
                batch = await source.read_batch(20_000, inbox.room_left)
                silence.heard()
                size = 0
                for buf in batch:
                    first = buf[0]
                    if first == XLOG_DATA_TAG:  # a 24-byte header, then one pgoutput message
                        if len(buf) < XLOG_HEADER:
                            parse_copy_data(buf)  # raises the ProtocolError
                        payloads.append(buf[XLOG_HEADER:])
                        size += len(buf)
                        last_xlog = buf
                    elif first == KEEPALIVE_TAG:
                        ka = parse_copy_data(buf)
                        assert isinstance(ka, Keepalive)
                        inbox.keepalive(ka.wal_end)
                        st.note_server(ka.wal_end)
                        if ka.reply:
                            self._want_reply = True
                if last_xlog is not None:  # positions only grow: the last one is the highest
                    xl = parse_copy_data(last_xlog)
                    assert isinstance(xl, XLogData)
                    st.received_lsn = max(st.received_lsn, xl.start)
                    st.note_server(xl.end)
                    inbox.extend(payloads, size)
                inbox.ready.set()
        finally:
            inbox.ready.set()  # wake the writer loop so it sees the reader ended

    async def _send_status(self, source: ReplicationStream, reply: bool = False) -> None:
        st = self.status
        await source.send_status(
            max(st.received_lsn, st.acked_lsn), st.acked_lsn, st.acked_lsn, reply
        )

    async def _feedback(self, source: ReplicationStream, reply_every: float) -> None:
        """Status on a timer; ask for a keepalive every `reply_every` seconds, so idle
        slots advance and a healthy server is heard from (watchdog.py)."""
        last_reply = time.monotonic()
        while True:
            await asyncio.sleep(min(STATUS_INTERVAL, reply_every))
            now = time.monotonic()
            reply = now - last_reply >= reply_every
            if reply:
                last_reply = now
            with contextlib.suppress(ReplicationError, OSError):
                await self._send_status(source, reply=reply)

    # -- slot and store agreement --------------------------------------------------------

    async def _slot(self) -> SlotState | None:
        async with await psycopg.AsyncConnection.connect(
            self.config.database.url, autocommit=True, **NETWORK_KWARGS
        ) as conn:
            return await read_slot_async(conn, self.config.database.slot)

    def _shape_json(self) -> str:
        """The collections' shapes as the store records them."""
        return orjson.dumps(self._shapes, option=orjson.OPT_SORT_KEYS).decode()

    async def _rebuild(self, source: ReplicationStream, reason: str, system: SystemInfo) -> None:
        state = self.store.state()
        if state.snapshot_done:
            log.warning("rebuilding the store; clients will resync (410)", reason=reason)
            self.status.rebuilds += 1
        lineage = await self._drop_slot(system)
        await self._in_writer(
            lambda: self.store.reset(
                slot=self.config.database.slot,
                system_id=system.system_id,
                database=system.dbname,
                shape=self._shape_json(),
                lineage=lineage,
            )
        )
        info = await source.create_slot(export_snapshot=True)
        log.info(
            "created replication slot",
            slot=info.name,
            consistent_point=lsn_to_str(info.consistent_point),
        )
        self.status.phase = "copying"
        self.status.copy = CopyProgress()
        try:
            self.status.rows_applied += await self._copy(info.snapshot_name, self.routes)
            await self._in_writer(lambda: record_rules(self))
            await self._in_writer(
                lambda: self.store.commit(info.consistent_point, snapshot_done=True)
            )
        except BaseException:
            await self._in_writer(self.store.rollback)
            await self._drop_unused_slot()
            raise

    async def _drop_slot(self, system: SystemInfo) -> str:
        """Drop the configured slot (refused while another process streams from it);
        returns the database's lineage, `<timeline>:<database OID>`."""
        slot = await self._slot()
        if slot is not None and slot.active:
            raise SlotInUse(
                f"replication slot {self.config.database.slot!r} is streamed by PostgreSQL "
                f"backend {slot.active_pid} (another sidecar, or another program on the same "
                "slot): this one waits until it is free and never drops it",
                retry_after=5,
            )
        async with await psycopg.AsyncConnection.connect(
            self.config.database.url, autocommit=True, **NETWORK_KWARGS
        ) as conn:
            if slot is not None:
                await conn.execute(
                    "SELECT pg_drop_replication_slot(%s)", (self.config.database.slot,)
                )
                log.info("dropped replication slot", slot=self.config.database.slot)
            cur = await conn.execute(
                "SELECT oid FROM pg_database WHERE datname = %s", (system.dbname,)
            )
            row = await cur.fetchone()
        return f"{system.timeline}:{row[0]}" if row else ""

    async def _copy(
        self,
        snapshot_name: str | None,
        routes: Sequence[Collection],
        reconciling: frozenset[str] = frozenset(),
        touched: set[str] | None = None,
    ) -> int:
        """Copy the routes' tables into the store's open batch (uncommitted); those named
        in `reconciling` are compared with what the store holds (`capture/reconcile.py`),
        the scopes they change added to `touched`.

        The router thread reads COPY and builds the rows' images while the writer thread
        inserts the previous batch: two cores, as when streaming."""
        ingest = Ingest(
            self.store,
            self.routes,
            skip_through=0,
            writer=self.writer,
            flush_bytes=self.budget.batch,
        )
        ingest.reconciling = reconciling
        cancelled = threading.Event()

        def stop_if_cancelled() -> None:
            if cancelled.is_set():
                raise CopyCancelled("the initial copy was cancelled")

        def copy() -> int:
            try:
                rows = copy_tables(
                    self.config.database.url,
                    snapshot_name,
                    routes,
                    ingest,
                    self.status.copy,
                    on_batch=stop_if_cancelled,
                    batch_bytes=self.budget.batch,
                )
                if touched is not None:
                    touched.update(ingest.take_touched())
                return rows
            except BaseException:
                with contextlib.suppress(Exception):
                    ingest.drain()  # nothing of it may reach the writer after a rollback
                raise

        # The copy runs on its own thread: a cancelled task must still wait for it to
        # stop (at its next batch), or the caller's rollback would run while batches of
        # the copy are still being written.
        done = asyncio.ensure_future(self._in_router(copy))
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            cancelled.set()
            while not done.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([done])
            if not done.cancelled():
                done.exception()  # CopyCancelled, as asked: retrieved, not raised
            raise

    async def _drop_unused_slot(self) -> None:
        """After a failed first copy: the new slot serves no store, so it must not pin WAL
        until the next start (which makes a new one anyway)."""
        slot = self.config.database.slot
        try:
            async with await psycopg.AsyncConnection.connect(
                self.config.database.url, autocommit=True, **NETWORK_KWARGS
            ) as conn:
                await conn.execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                    "WHERE slot_name = %s AND NOT active",
                    (slot,),
                )
            log.warning("dropped the slot of a failed initial copy", slot=slot)
        except psycopg.Error as exc:
            log.error("could not drop the slot of a failed initial copy", slot=slot, error=str(exc))

    # -- maintenance ---------------------------------------------------------------------

    async def purge_tombstones(self) -> int:
        return await self._in_writer(
            self.store.purge_tombstones, self.config.store.tombstone_retention
        )
