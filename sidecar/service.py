"""The running sidecar: preflight, store, routes, capture, pull — wired, started, stopped.

`Service.start(config)` is what `sidecar run` and the tests call; the HTTP layer and the
adapters get the started service and only translate requests onto its parts (every push
goes through `Service.push`, which counts the outcomes).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool

from sidecar.auth import Authenticator, Principal
from sidecar.capture.claim import SlotClaim
from sidecar.capture.runner import CaptureRunner
from sidecar.capture.slots import read_slot_async
from sidecar.collection import Collection, collection_shapes
from sidecar.config.model import Config, Rate, ServerConfig
from sidecar.errors import ConfigError, ConfigProblem, PreflightError
from sidecar.lsn import str_to_lsn
from sidecar.mutations import Mutation
from sidecar.notify import Notifier
from sidecar.observability import Metrics, StoreWeather
from sidecar.permissions import Permissions
from sidecar.preflight import (
    PreflightReport,
    add_to_publication,
    create_publication,
    run_preflight,
)
from sidecar.pull import Puller, schema_version
from sidecar.push import Pusher, PushResult
from sidecar.push.breaker import (
    Breaker,
    connect_probe,
)
from sidecar.push.pool import push_pool, push_timeouts
from sidecar.ratelimit import RateLimiter
from sidecar.replica.leader import ReplicaCapture
from sidecar.replica.tasks import Follower
from sidecar.store.base import ChangeStore, Fenced, PendingMutations
from sidecar.store.open import open_pending, open_store
from sidecar.store.pg import PGStore
from sidecar.tracing import Tracing
from sidecar.values import NETWORK_KWARGS

log = structlog.get_logger("sidecar")

PURGE_INTERVAL = 3600.0
STORE_METRICS_EVERY = 2.0  # seconds between checks of the store gauges (counted on change)
SLOT_METRICS_EVERY = 15.0  # seconds between reads of the slot's retained WAL (and checks
# that the synced tables are still the ones the routes were made for)
RETRY_FIT = 10.0  # seconds between reads of the catalog while the config does not fit it


def preflight(config: Config) -> PreflightReport:
    with psycopg.connect(config.database.url, autocommit=True) as conn:
        return run_preflight(conn, config)


def prepare_database(config: Config, create: bool = True) -> PreflightReport:
    """Preflight; create the publication when allowed and missing (`create`: a replica
    that follows leaves it to the leader). Raises PreflightError."""
    with psycopg.connect(config.database.url, autocommit=True) as conn:
        report = run_preflight(conn, config)
        if not report.ok:
            raise PreflightError(list(report.problems))
        if create and not report.publication_exists:
            stmt = create_publication(conn, config, list(report.tables.values()))
            log.info("created publication", statement=stmt)
        elif create and report.publication_adds:
            stmt = add_to_publication(conn, config, list(report.publication_adds))
            log.info("added tables to the publication", statement=stmt)
    for w in report.warnings:
        log.warning(w)
    return report


def routes_for(config: Config, report: PreflightReport) -> dict[str, Collection]:
    """Each collection's route over its table as the preflight found it."""
    return {name: report.collection(coll) for name, coll in config.collections.items()}


def _listeners(server: ServerConfig) -> tuple[object, ...]:
    """What else the listeners were opened with (a change needs a restart; the TLS files'
    contents are re-read by the listener itself)."""
    return (server.tls, server.admin_port, server.admin_host)


def _limiter(rate: Rate | None) -> RateLimiter | None:
    return RateLimiter(rate) if rate else None


async def _cover_pending(pool: AsyncConnectionPool, pending: PendingMutations) -> None:
    """A new pending file covers the pushes from now on: a retry of an earlier commit (a
    previous version, a lost pending file) waits for capture to pass this position."""
    if pending.covered_from() is not None:
        return
    try:
        async with pool.connection(timeout=10) as conn:
            cur = await conn.execute("SELECT pg_current_wal_lsn()::text")
            row = await cur.fetchone()
    except psycopg.Error:
        return  # not now: the first push's duplicate check waits for capture meanwhile
    if row is not None:
        pending.cover_from(str_to_lsn(row[0]))


def _runner(
    config: Config,
    store: ChangeStore,
    routes: list[Collection],
    notifier: Notifier,
    *,
    claim: SlotClaim | None = None,
    tracing: Tracing | None = None,
) -> CaptureRunner:
    """The capture runner: a replica's (captures while it leads) over a shared store."""
    if not isinstance(store, PGStore) or not store.shared:
        return CaptureRunner(config, store, routes, notifier, claim=claim, tracing=tracing)

    async def on_lead() -> None:  # the publication, created by the leader
        await asyncio.to_thread(prepare_database, config)

    return ReplicaCapture(
        config, store, routes, notifier, on_lead=on_lead, claim=claim, tracing=tracing
    )


@dataclass
class Service:
    config: Config
    store: ChangeStore
    routes: dict[str, Collection]
    notifier: Notifier
    capture: CaptureRunner
    puller: Puller
    pusher: Pusher
    pool: AsyncConnectionPool
    auth: Authenticator
    metrics: Metrics
    limiter: RateLimiter | None
    ip_limiter: RateLimiter | None
    tracing: Tracing = field(default_factory=Tracing)  # spans, and their export (OTLP)
    push_timeouts: dict[str, str] = field(default_factory=dict)  # the push pool's settings
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _counted: tuple[int, int] = (0, 0)  # page cache hits and misses already in metrics
    _next_routes: dict[str, Collection] | None = None  # set by a reload that adds collections
    _reloaded: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    replica: Follower | None = None  # a replica of a shared (PostgreSQL) store

    @classmethod
    async def start(cls, config: Config) -> Service:
        shared = config.store.url is not None  # replicas: the leader creates the publication
        report = await asyncio.to_thread(prepare_database, config, not shared)
        routes = routes_for(config, report)
        store = open_store(config.store, shared=shared)
        try:
            pending = open_pending(config.store)
        except BaseException:
            store.close()
            raise
        notifier = Notifier()
        permissions = Permissions(config.auth)
        tracing = Tracing(config.observability.otlp_endpoint)
        capture = _runner(config, store, list(routes.values()), notifier, tracing=tracing)
        puller = Puller(
            store,
            routes,
            notifier,
            capture,
            max_page=config.limits.max_page,
            max_page_bytes=config.limits.max_page_bytes,
            max_wait=config.limits.pull_wait,
            permissions=permissions,
            live_per_subject=config.limits.live_per_subject,
            live_total=config.limits.live_total,
            cache_bytes=config.limits.page_cache,
            tracing=tracing,
        )
        breaker = Breaker(connect_probe(config.database.url, **NETWORK_KWARGS))
        timeouts = push_timeouts(config)
        pool = push_pool(config, breaker, timeouts)
        await pool.open()
        await _cover_pending(pool, pending)
        pusher = Pusher(
            routes,
            store,
            capture,
            pool,
            user_claim=config.auth.claims.user,
            permissions=permissions,
            breaker=breaker,
            statement_timeout=config.limits.push_statement_timeout,
            pending=pending,
            tracing=tracing,
        )
        service = cls(
            config=config,
            store=store,
            routes=routes,
            notifier=notifier,
            capture=capture,
            puller=puller,
            pusher=pusher,
            pool=pool,
            auth=Authenticator(config.auth),
            metrics=Metrics(),
            limiter=_limiter(config.limits.rate),
            ip_limiter=_limiter(config.limits.unauthenticated_rate),
            push_timeouts=timeouts,
            tracing=tracing,
        )
        service.metrics.registry.register(StoreWeather(service._store_weather))
        if isinstance(store, PGStore) and store.shared:
            service.replica = Follower(store, lambda: service.capture)
            puller.refresh = service.replica.refresh  # a cursor from a replica ahead
            service.tasks.extend(
                service.replica.start(notifier, service.metrics, config.store.takeover_timeout)
            )
        service.tasks.append(asyncio.create_task(service._run_capture(), name="capture"))
        service.tasks.append(asyncio.create_task(service._purge_loop(), name="purge"))
        service.tasks.append(asyncio.create_task(service._metrics_loop(), name="metrics"))
        return service

    async def reload(self, new: Config) -> list[str]:
        """Apply a new config without touching the replication stream: write rules and
        conflict strategies, permissions, limits, auth, log level. Returns the top-level
        sections that changed. Raises ConfigError, keeping the running config, when the
        change needs a restart (database, store, server, page cache, body size, memory
        budget, observability, or anything that changes what the store holds: collections,
        tables, keys, columns, read rules).
        """
        old = self.config
        fixed = [
            name
            for name, a, b in (
                ("database", old.database, new.database),
                ("store", old.store, new.store),
                (
                    "server.host/port",
                    (old.server.host, old.server.port),
                    (new.server.host, new.server.port),
                ),
                (
                    "server.tls/admin_port/admin_host",
                    _listeners(old.server),
                    _listeners(new.server),
                ),
                ("limits.max_body", old.limits.max_body, new.limits.max_body),
                ("limits.page_cache", old.limits.page_cache, new.limits.page_cache),
                ("limits.memory", old.limits.memory, new.limits.memory),
                ("observability", old.observability, new.observability),
            )
            if a != b
        ]
        reshaped: list[str] = []
        if not fixed:
            report = await asyncio.to_thread(preflight, new)
            if not report.ok:
                raise PreflightError(list(report.problems))
            routes = routes_for(new, report)
            now, before = (
                collection_shapes(list(routes.values())),
                collection_shapes(list(self.routes.values())),
            )
            # added, removed or changed (table, key, columns, read rule): the store is
            # reconciled with them by a new capture runner (capture/reconcile.py)
            reshaped = sorted(c for c in {*now, *before} if now.get(c) != before.get(c))
        if fixed:
            raise ConfigError(
                [
                    ConfigProblem(
                        new.file,
                        "",
                        None,
                        f"{', '.join(fixed)} changed: that needs a restart (the running "
                        "config stays in force)",
                    )
                ]
            )
        permissions = Permissions(new.auth)
        limits = new.limits
        if not reshaped:  # else the new routes serve once the store is reconciled
            self.routes = routes
            self.puller.routes = dict(routes)
            self.pusher.routes = dict(routes)
            self.puller.schema_version = schema_version(list(routes.values()))
        self.puller.permissions = permissions
        self.puller.max_page, self.puller.max_wait = limits.max_page, limits.pull_wait
        self.puller.max_page_bytes = limits.max_page_bytes
        self.puller.live_per_subject, self.puller.live_total = (
            limits.live_per_subject,
            limits.live_total,
        )
        self.pusher.permissions = permissions
        self.pusher.user_claim = new.auth.claims.user
        self.pusher.statement_timeout = limits.push_statement_timeout
        if push_timeouts(new) != self.push_timeouts:  # new sessions get them
            self.push_timeouts.update(push_timeouts(new))
            await self.pool.drain()
        self.auth = Authenticator(new.auth)
        if limits.rate != old.limits.rate:
            self.limiter = _limiter(limits.rate)
        if limits.unauthenticated_rate != old.limits.unauthenticated_rate:
            self.ip_limiter = _limiter(limits.unauthenticated_rate)
        self.config = new
        changed = [
            f.name
            for f in dataclasses.fields(new)
            if f.name != "file" and getattr(old, f.name) != getattr(new, f.name)
        ]
        self._reloaded.set()
        if reshaped:  # capture starts again with the new routes and reconciles these
            await asyncio.to_thread(prepare_database, new)  # adds tables to the publication
            self._next_routes = routes
            await self.capture.stop()
        log.info("config reloaded", changed=changed, collections_reconciled=reshaped)
        return changed

    async def _run_capture(self) -> None:
        """Run capture; when a synced table changes shape, re-read the catalog and start
        over with new routes: the store no longer matches them, so the new runner rebuilds
        it (new epoch: clients resync and get the new schema_version). Ends when capture
        fails for good, or the new shape no longer fits the config (preflight problems)."""
        while True:
            await self.capture.run()
            if self._next_routes is not None:  # a reload added collections
                routes, self._next_routes = self._next_routes, None
                await self.capture.stop()  # its threads are done with the store
                await self._swap_capture(routes)
                continue
            if self.capture.status.phase != "schema_changed":
                return
            detail = self.capture.status.error
            report = await self._until_it_fits(detail)
            routes = routes_for(self.config, report)
            await self.capture.stop()
            await self._swap_capture(routes)
            log.warning("re-initialising capture for the new table shape", detail=detail)

    async def _until_it_fits(self, detail: str | None) -> PreflightReport:
        """The catalog as it is now (tables re-created are added to the publication); while
        the config does not fit it, capture says why and the last good state keeps being
        served, and it is read again every RETRY_FIT seconds (a reload or a fix in the
        database lets capture go on by itself)."""
        while True:
            try:
                report = await asyncio.to_thread(prepare_database, self.config)
                self._next_routes = None  # made from this config, as a reload would
                return report
            except PreflightError as exc:
                why = "the config no longer fits: " + "; ".join(exc.problems)
            except psycopg.Error as exc:
                why = f"the catalog cannot be read: {exc}"
            self.capture.status.phase = "failed"
            self.capture.status.error = f"{detail}; {why}"
            log.error("capture stopped; retrying", error=self.capture.status.error)
            self._reloaded.clear()
            with contextlib.suppress(TimeoutError):  # a reload tries again at once
                await asyncio.wait_for(self._reloaded.wait(), RETRY_FIT)

    async def _swap_capture(self, routes: dict[str, Collection]) -> None:
        """A new capture runner for `routes` (the old one is stopped), wired everywhere.
        Pulls and pushes go on with the old routes over the store's last committed state
        until the new runner has reconciled the store with the new ones and streams."""
        self.store.rollback()  # whatever the old runner left half-written
        self.capture = _runner(
            self.config,
            self.store,
            list(routes.values()),
            self.notifier,
            claim=self.capture.claim,  # the slot's lock goes on with the new runner
            tracing=self.tracing,
        )
        self.puller.capture = self.capture
        self.pusher.capture = self.capture
        runner = self.capture

        async def serve_when_ready() -> None:
            await runner.wait_ready()
            if self.capture is runner:
                self.routes = routes
                self.puller.routes = dict(routes)
                self.puller.schema_version = schema_version(list(routes.values()))
                self.pusher.routes = dict(routes)

        self.tasks.append(asyncio.create_task(serve_when_ready(), name="routes"))

    async def _purge_loop(self) -> None:
        await self.capture.wait_ready()
        while True:
            try:
                leads = self.replica is None or self.replica.role() == "leader"
                purged = await self.capture.purge_tombstones() if leads else 0
                if purged:
                    log.info("purged tombstones", count=purged)
            except Fenced:  # a replica that follows: the leader purges
                pass
            except Exception:  # a failed purge must never stop the service
                log.exception("tombstone purge failed")
            await self._prune_pending()
            await asyncio.sleep(PURGE_INTERVAL)

    async def _prune_pending(self) -> None:
        """Drop the pending mutation ids capture has stored (the store answers for them)
        and those older than the store keeps mutation ids (`store.tombstone_retention`)."""
        pending = self.pusher.pending
        if pending is None:
            return
        store = self.store

        def captured(subject: str, mutation_id: str) -> bool:
            return store.mutation(subject, mutation_id) is not None

        cutoff = time.time() - self.config.store.tombstone_retention
        try:
            await asyncio.to_thread(pending.prune, captured, cutoff)
        except Exception:  # pruning is housekeeping: never stops the service
            log.exception("pending mutation ids: prune failed")

    def update_metrics(self) -> None:
        """The gauges read from memory, at each scrape (no database, no store query: the
        store and slot gauges are kept by `_metrics_loop`)."""
        st = self.capture.status
        m = self.metrics
        m.rows_applied.set(st.rows_applied)
        m.commits_applied.set(st.commits_applied)
        for name, route in self.routes.items():
            m.values_as_text.labels(collection=name).set(route.values_as_text)
        m.flushed_lsn.set(st.acked_lsn)
        m.lag_bytes.set(max(0, st.server_lsn - st.flushed_lsn))
        m.lag_seconds.set(st.lag_seconds())
        m.live_waiters.set(self.notifier.waiter_count())
        m.live_requests.set(self.puller.live_count())
        cache = self.puller.cache
        m.page_cache_hits.inc(cache.hits - self._counted[0])
        m.page_cache_misses.inc(cache.misses - self._counted[1])
        self._counted = (cache.hits, cache.misses)

    async def _metrics_loop(self) -> None:
        """The gauges that cost a query, kept here so that a scrape of /metrics only reads
        memory: the store's counts (on a reader thread, once the store's version moved,
        at most every STORE_METRICS_EVERY seconds) and the slot's retained WAL (every
        SLOT_METRICS_EVERY seconds, on a connection of its own, never the push pool's)."""
        conn: psycopg.AsyncConnection | None = None
        counted: tuple[str, int] | None = None
        slot_at = 0.0
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    state = self.store.state()
                    if (state.epoch, state.version) != counted:
                        counted = (state.epoch, state.version)
                        counts = await asyncio.to_thread(self.store.counts)
                        self.metrics.store_rows.set(counts["rows"])
                        self.metrics.store_bytes.set(counts["bytes"])
                except Exception:  # a failed refresh must never stop the service
                    log.debug("store metrics not refreshed", exc_info=True)
                if loop.time() >= slot_at:
                    slot_at = loop.time() + SLOT_METRICS_EVERY
                    conn = await self._refresh_retained_wal(conn)
                await asyncio.sleep(STORE_METRICS_EVERY)
        finally:
            if conn is not None:
                await conn.close()

    async def _refresh_retained_wal(
        self, conn: psycopg.AsyncConnection | None
    ) -> psycopg.AsyncConnection | None:
        """`sidecar_slot_retained_wal_bytes` from the slot's row; the connection to use
        next time (None after a failure: the next refresh connects again)."""
        try:
            if conn is None or conn.closed:
                conn = await psycopg.AsyncConnection.connect(
                    self.config.database.url,
                    autocommit=True,
                    application_name="sidecar-metrics",
                    **NETWORK_KWARGS,
                )
            async with asyncio.timeout(SLOT_METRICS_EVERY):  # a database that went silent
                slot = await read_slot_async(conn, self.config.database.slot)
        except (psycopg.Error, OSError):
            if conn is not None:
                await conn.close()
            return None
        if slot is not None and slot.retained_bytes is not None:
            self.metrics.retained_wal.set(int(slot.retained_bytes))
        try:
            async with asyncio.timeout(SLOT_METRICS_EVERY):
                await self._check_tables(conn)
        except (psycopg.Error, OSError, TimeoutError):
            log.debug("synced tables not checked", exc_info=True)
        return conn

    async def _check_tables(self, conn: psycopg.AsyncConnection) -> None:
        """A synced table dropped (or dropped and created again) leaves the publication
        without a word on the stream: seen here, in the catalog, it ends the capture
        session as a change of shape does (the store is then reconciled)."""
        if self.capture.status.phase != "streaming":
            return
        tables = {
            info.ref.qualified: info
            for route in self.capture.routes  # what the running capture was made for
            for info in (route.table, *(t for _, t in route.lookup_tables))
        }
        cur = await conn.execute(
            "SELECT x, to_regclass(x)::oid, (SELECT array_agg(array[a.attname::text, "
            "format_type(a.atttypid, a.atttypmod)] ORDER BY a.attnum) FROM pg_attribute a "
            "WHERE a.attrelid = to_regclass(x) AND a.attnum > 0 AND NOT a.attisdropped) "
            "FROM unnest(%s::text[]) x",
            (list(tables),),
        )
        for name, oid, columns in await cur.fetchall():
            info = tables[name]
            if oid != info.oid:
                what = "dropped" if oid is None else "dropped and created again"
                self.capture.table_changed(f"table {info.ref} was {what}")
                return
            if [tuple(c) for c in columns or ()] != [(c.name, c.type_name) for c in info.columns]:
                # a column added, dropped or retyped: no change of the table's rows says so
                # until the next one, which may be long
                self.capture.table_changed(f"the columns of table {info.ref} changed")
                return

    def _store_weather(self) -> tuple[dict[str, int], str | None]:
        """Failed store writes of capture by kind, and what keeps it paused (metrics)."""
        st = self.capture.status
        return dict(st.store_errors), st.store_trouble

    async def push(
        self, principal: Principal, mutations: Sequence[Mutation], atomic: bool
    ) -> PushResult:
        """Apply a push through the core and count each mutation's outcome
        (`sidecar_push_mutations`): `POST /v1/push` and every adapter push through here."""
        result = await self.pusher.push(principal, mutations, atomic)
        counts = collections.Counter(
            (m.collection, r.status) for m, r in zip(mutations, result.results, strict=True)
        )
        for (collection, status), n in counts.items():
            strategy = self.routes[collection].config.conflict.kind
            self.metrics.push_outcomes.labels(collection, strategy, status).inc(n)
        return result

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.pusher.breaker.close()
        await self.pool.close()
        await self.capture.stop()
        await self.capture.release_slot()
        self.store.close()
        if self.pusher.pending is not None:
            self.pusher.pending.close()
        await self.tracing.close()
