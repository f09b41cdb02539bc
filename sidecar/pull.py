"""Pull: deltas since a cursor, filtered to the caller's scopes, paged. No HTTP here.

Pages are in version order; the client's state is consistent when `has_more` is false.
A cursor from another store epoch (the store was rebuilt) or older than the tombstone
retention is refused with `cursor_expired` (410): the client must resync from scratch.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import orjson
import structlog
from cachetools import LRUCache

from sidecar.auth import Principal, seconds_left
from sidecar.changes import Cursor, Page
from sidecar.collection import Collection
from sidecar.errors import CursorExpired, Forbidden, InvalidRequest, Unauthorized, Unavailable
from sidecar.notify import Notifier, wait_event
from sidecar.pagecache import PageCache
from sidecar.permissions import Permissions
from sidecar.rules.scopes import Grants
from sidecar.store.base import StoreReader
from sidecar.tracing import Tracing
from sidecar.views import History, Known, read_view, rule_at, rules_changed

log = structlog.get_logger("sidecar.pull")

# (collection, read rule text) of the collections pulled, and the claims their rules use
_Memo = tuple[tuple[tuple[str, str], ...], bytes]

# Scopes remembered per caller under membership rules (counted in scopes and grant keys).
KNOWN_SCOPES = 1_000_000

# Room kept in limits.max_page_bytes for what surrounds the change lines: the page's JSON
# envelope (cursor, has_more, schema_version) and an SSE event's `id:`/`event:` lines.
ENVELOPE = 256


class CaptureState(Protocol):
    """What pull needs to know of capture (the runner provides it)."""

    @property
    def ready(self) -> bool: ...

    def progress(self) -> dict[str, object]: ...

    async def wait_for_lsn(self, lsn: int, timeout: float) -> bool: ...


@dataclass(frozen=True, slots=True)
class PullRequest:
    cursor: Cursor | None = None
    collections: tuple[str, ...] | None = None
    limit: int = 1000
    live: bool = False
    timeout: float = 20.0
    after_lsn: int | None = None
    max_bytes: int | None = None  # a tighter byte bound than limits.max_page_bytes


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One thing a stream tells its client.

    `changes`: a page (sent when it has changes, and once at the start); `heartbeat`:
    nothing changed for a while; `reauth`: the token expired, the stream ends;
    `resync`: the store was rebuilt, the stream ends and the client starts afresh.
    """

    kind: Literal["changes", "heartbeat", "reauth", "resync"]
    page: Page | None = None
    detail: str = ""


def schema_version(routes: Sequence[Collection]) -> str:
    """A short hash of every collection's exposed shape; changes when a shape changes."""
    shape = [
        (
            r.name,
            list(r.key),
            [(c, r.table.column(c).type_name) for c in r.exposed],  # type: ignore[union-attr]
        )
        for r in routes
    ]
    return hashlib.blake2b(orjson.dumps(shape), digest_size=6).hexdigest()


def collection_schema(route: Collection) -> dict[str, object]:
    cols = {}
    for name in route.exposed:
        info = route.table.column(name)
        assert info is not None
        cols[name] = {"type": info.type_name, "nullable": info.nullable}
    return {"key": list(route.key), "columns": cols, "write": list(route.config.write.ops)}


class Puller:
    def __init__(
        self,
        store: StoreReader,
        routes: Mapping[str, Collection],
        notifier: Notifier,
        capture: CaptureState,
        *,
        max_page: int,
        max_wait: float,
        max_page_bytes: int = 1024 * 1024,
        permissions: Permissions,
        live_per_subject: int = 16,
        live_total: int = 20_000,
        cache_bytes: int = 64 * 1024 * 1024,
        tracing: Tracing | None = None,
    ) -> None:
        self.tracing = tracing or Tracing()
        self.permissions = permissions
        self.live_per_subject = live_per_subject
        self.live_total = live_total
        self.cache = PageCache(store, cache_bytes)
        # (collections, claims) → the caller's scopes under membership rules, while the
        # store's grants stay as they were when they were read
        self._known: LRUCache[_Memo, Known] = LRUCache(
            KNOWN_SCOPES, getsizeof=lambda k: 1 + len(k.scopes) + len(k.keys)
        )
        # the same for rules without membership (their scopes never change)
        self._static: LRUCache[_Memo, tuple[str, ...]] = LRUCache(
            KNOWN_SCOPES, getsizeof=lambda s: 1 + len(s)
        )
        self._rule_claims: dict[tuple[tuple[str, str], ...], tuple[str, ...]] = {}
        self._missing: set[tuple[str, str]] = set()
        self._history_text: str | None = None
        self._history_value: History = {}
        self._live: dict[str, int] = {}
        self._live_total = 0
        self.store = store
        self.routes = dict(routes)
        self.notifier = notifier
        self.capture = capture
        self.max_page = max_page
        self.max_page_bytes = max_page_bytes
        self.max_wait = max_wait
        self.schema_version = schema_version(list(self.routes.values()))
        # a replica of a shared store: read its cached store state again
        self.refresh: Callable[[], Awaitable[None]] | None = None

    # -- scopes --------------------------------------------------------------------------

    def select_routes(
        self, principal: Principal, collections: Sequence[str] | None
    ) -> list[Collection]:
        """The requested collections (default: all) the caller's scopes and roles allow."""
        if collections is None:
            return [
                r for r in self.routes.values() if self.permissions.can_read(principal, r.config)
            ]
        unknown = [c for c in collections if c not in self.routes]
        if unknown:
            raise InvalidRequest(
                f"unknown collection(s): {', '.join(unknown)}; known: {', '.join(self.routes)}",
                parameter="collections",
            )
        routes = [self.routes[c] for c in dict.fromkeys(collections)]
        denied = [r.name for r in routes if not self.permissions.can_read(principal, r.config)]
        if denied:
            raise Forbidden(
                f"your token does not allow reading {', '.join(denied)} (scope or roles)"
            )
        return routes

    def scopes_for(self, principal: Principal, routes: Sequence[Collection]) -> list[str]:
        scopes: list[str] = []
        for route in routes:
            self._note_missing_claims(principal, route)
            scopes.extend(route.request_scopes(principal.claims))
        return list(dict.fromkeys(scopes))

    def _note_missing_claims(self, principal: Principal, route: Collection) -> None:
        """A claim the read rule needs but the token lacks makes its conditions false;
        say so once per collection and claim, so a misconfigured issuer is noticed."""
        for claim in route.config.read.claims:
            if claim not in principal.claims and (route.name, claim) not in self._missing:
                self._missing.add((route.name, claim))
                log.warning(
                    "token without a claim the read rule uses: its conditions are false",
                    collection=route.name,
                    claim=claim,
                )

    def schema_for(self, principal: Principal) -> dict[str, object]:
        """The collections this caller can read (it has a scope in) or write."""
        return {
            "schema_version": self.schema_version,
            "collections": {
                name: collection_schema(r)
                for name, r in self.routes.items()
                if (
                    self.permissions.can_read(principal, r.config)
                    and (r.dynamic or r.request_scopes(principal.claims))
                )
                or (self.permissions.can_write(principal, r.config) and r.config.write.ops)
            },
        }

    def _claims_key(
        self,
        claims: Mapping[str, object],
        names: tuple[tuple[str, str], ...],
        routes: Sequence[Collection],
    ) -> bytes:
        """The claims the read rules of `routes` use, as one byte string (JWT claims are
        JSON): the same for tokens that give the same scopes (other claims, `exp`, differ)."""
        used = self._rule_claims.get(names)
        if used is None:
            if len(self._rule_claims) >= 1024:  # callers choose the collections: bounded
                self._rule_claims.clear()
            found = {c for r in routes for c in r.config.read.claims}
            used = self._rule_claims[names] = tuple(sorted(found))
        values = {c: claims[c] for c in used if c in claims}
        return orjson.dumps(values, default=_json_default)

    # -- pull ----------------------------------------------------------------------------

    def _check_ready(self) -> None:
        if not self.capture.ready:
            waiting = self.capture.progress().get("phase") == "slot_in_use"
            raise Unavailable(
                "another sidecar captures from this replication slot and this one has no "
                "store to serve yet (see /readyz); retry shortly"
                if waiting
                else "the initial copy is in progress; retry shortly",
                retry_after=5,
                progress=self.capture.progress(),
            )

    async def _checked_start(self, cursor: Cursor | None) -> int:
        """`_start_version`; a replica's cached state read again first when the cursor
        seems expired (it may come from a replica that saw a newer state)."""
        try:
            return self._start_version(cursor)
        except CursorExpired:
            if self.refresh is None:
                raise
        await self.refresh()
        return self._start_version(cursor)

    def _start_version(self, cursor: Cursor | None) -> int:
        state = self.store.state()
        if cursor is None:
            return 0
        if cursor.epoch != state.epoch:
            raise CursorExpired(
                "this cursor is from an earlier store (it was rebuilt); resync from scratch "
                "by pulling without a cursor"
            )
        oldest = min(cursor.version, cursor.scopes_version)
        if oldest < state.purged_version:
            raise CursorExpired(
                "this cursor is older than the tombstone retention; resync from scratch by "
                "pulling without a cursor"
            )
        newest = max(cursor.version, cursor.scopes_version, cursor.target or 0)
        if newest > state.version or cursor.moved > cursor.version:
            raise CursorExpired("this cursor is ahead of the store; resync from scratch")
        return cursor.version

    def byte_budget(self, req: PullRequest) -> int:
        """The bytes of change lines a page may hold (it always holds at least one)."""
        bound = self.max_page_bytes
        if req.max_bytes is not None:
            bound = min(bound, req.max_bytes)
        return max(1, bound - ENVELOPE)

    async def _read(
        self,
        principal: Principal,
        routes: Sequence[Collection],
        cursor: Cursor | None,
        limit: int,
        budget: int,
    ) -> tuple[Page, tuple[str, ...]]:
        """`_read_page` in a `store read` span (its page's size as attributes)."""
        with self.tracing.span("store read", **{"sidecar.limit": limit}) as span:
            page, watch = await self._read_page(principal, routes, cursor, limit, budget)
            span.set_attribute("sidecar.changes", len(page.lines))
            span.set_attribute("sidecar.has_more", page.has_more)
            return page, watch

    async def _read_page(
        self,
        principal: Principal,
        routes: Sequence[Collection],
        cursor: Cursor | None,
        limit: int,
        budget: int,
    ) -> tuple[Page, tuple[str, ...]]:
        """A page after `cursor` (checked) and what a live wait for the next one watches:
        the caller's scopes, and the grants they come from under a membership rule. A
        caller whose scopes may differ between its cursor and now — a membership rule, or
        a read rule changed (by a reload) since the cursor — goes through `views.py`."""
        state = self.store.state()
        history = self._history(state.rules)
        names = tuple(r.name for r in routes)
        rules = tuple((r.name, r.config.read.text) for r in routes)
        memo = (rules, self._claims_key(principal.claims, rules, routes))
        since = None if cursor is None else cursor.scopes_version
        moved = since is not None and (
            (cursor is not None and (cursor.target is not None or cursor.scopes_at is not None))
            or rules_changed(history, names, since, state.version)
        )
        if not moved and not any(r.dynamic for r in routes):
            static = self._static.get(memo)
            if static is None:
                static = self._static[memo] = tuple(self.scopes_for(principal, routes))
            after = 0 if cursor is None else cursor.version
            return await self.cache.page(static, after, limit, budget), static
        for route in routes:
            self._note_missing_claims(principal, route)
        claims = principal.claims
        known = self._known.get(memo)
        if known is not None and _unmoved(known, state.grants_version, cursor):
            # No grant began or ended since the cursor's scopes were read: they are the
            # caller's scopes now, and the page an ordinary one (shared with other callers).
            after = 0 if cursor is None else cursor.version
            page = await self.cache.page(known.scopes, after, limit, budget)
            last = page.cursor.version
            # the caller's scopes are the same from `grants_version` on: a cursor at or
            # after it needs no scopes version (one spelling, which adapters carry)
            at = None if last >= known.grants_version else state.version
            plain = Cursor(state.epoch, last, at)
            if plain != page.cursor:
                page = Page(page.lines, plain, page.has_more)
            return page, known.watch

        def scopes_of(grants: Grants, watch: set[str] | None, at: int) -> list[str]:
            found = [
                s
                for r in routes
                for s in r.scopes_under(
                    r.rule_for(rule_at(history, r.name, at)), claims, grants, watch
                )
            ]
            return list(dict.fromkeys(found))

        read = functools.partial(
            read_view,
            scopes_of=scopes_of,
            epoch=state.epoch,
            cursor=cursor,
            limit=limit,
            max_bytes=budget,
            known=known,
            rules_changed=functools.partial(rules_changed, history, names),
        )
        view = await asyncio.to_thread(self.store.view, read)
        self._known[memo] = view.known
        return Page(view.lines, view.cursor, view.has_more), view.watch

    def _history(self, text: str | None) -> History:
        """The read rules' history the store records (parsed once per change)."""
        if text != self._history_text:
            self._history_text = text
            self._history_value = orjson.loads(text) if text else {}
        return self._history_value

    async def pull(self, principal: Principal, req: PullRequest) -> Page:
        self._check_ready()
        limit = max(1, min(req.limit, self.max_page))
        budget = self.byte_budget(req)
        if req.after_lsn is not None:
            wait = min(max(req.timeout, 1.0), self.max_wait)
            if not await self.capture.wait_for_lsn(req.after_lsn, wait):
                raise Unavailable(
                    "the store has not caught up with after_lsn yet; retry", retry_after=1
                )
        await self._checked_start(req.cursor)
        routes = self.select_routes(principal, req.collections)
        page, watch = await self._read(principal, routes, req.cursor, limit, budget)
        if not req.live or not watch or page.lines or page.has_more:
            return page
        timeout = max(0.0, min(req.timeout, self.max_wait))
        left = seconds_left(principal)
        if left is not None:  # a live wait ends when the token does
            if left <= 0:
                raise Unauthorized("token expired: get a new one")
            timeout = min(timeout, left)
        with self._live_slot(principal.subject):
            while True:
                with self.notifier.watch(watch) as changed:
                    # read again once watching: a commit since the first read is not missed
                    page, now = await self._read(principal, routes, req.cursor, limit, budget)
                    if page.lines or page.has_more:
                        return page
                    if set(now) != set(watch):  # a membership changed the scopes: watch those
                        watch = now
                        continue
                    if await wait_event(changed, timeout):
                        page, _ = await self._read(principal, routes, page.cursor, limit, budget)
                    return page

    async def batch(self, principal: Principal, req: PullRequest, most: int) -> Page:
        """Core pages from `req.cursor` joined into one of at most `most` changes (which may
        exceed `max_page`) and `limits.max_page_bytes` (at least one change): for adapters
        whose clients take a batch in one answer. `has_more` as for a page."""
        lines: list[bytes] = []
        budget = self.max_page_bytes
        cursor = req.cursor
        while True:
            want = most - len(lines)
            step = dataclasses.replace(req, cursor=cursor, limit=want, max_bytes=budget)
            page = await self.pull(principal, step)
            size = sum(len(line) + 1 for line in page.lines)
            if lines and size > budget - ENVELOPE:
                # the one change a page always carries does not fit: the next batch has it
                assert cursor is not None
                return Page(lines, cursor, True)
            lines.extend(page.lines)
            cursor, budget = page.cursor, budget - size
            cut = page.has_more and len(page.lines) < min(want, self.max_page)
            if not page.has_more or cut or len(lines) >= most or budget <= ENVELOPE:
                return Page(lines, page.cursor, page.has_more)

    async def stream(
        self, principal: Principal, req: PullRequest, *, heartbeat: float
    ) -> AsyncGenerator[StreamEvent, None]:
        """Pages as changes land in the caller's scopes, until the token expires.

        Holds one live slot for its whole life. The first page is always sent (it tells
        the client where it stands); later ones only when they carry changes.
        """
        self._check_ready()
        limit = max(1, min(req.limit, self.max_page))
        budget = self.byte_budget(req)
        epoch = self.store.state().epoch
        await self._checked_start(req.cursor)
        routes = self.select_routes(principal, req.collections)
        cursor = req.cursor
        expires = principal.claims.get("exp")
        first = True
        with self._live_slot(principal.subject):
            while True:
                page, watch = await self._read(principal, routes, cursor, limit, budget)
                with self.notifier.watch(watch) as changed:
                    if self.store.state().epoch != epoch:
                        yield StreamEvent("resync", detail="the store was rebuilt; resync")
                        return
                    stale = False
                    if self.store.state().version != page.cursor.version and not page.has_more:
                        # a commit since the read: read again, now that it is watched
                        page, now = await self._read(principal, routes, cursor, limit, budget)
                        stale = set(now) != set(watch)  # the scopes moved: watch those
                    if page.lines or first:
                        yield StreamEvent("changes", page)
                        first = False
                    cursor = page.cursor
                    if page.has_more or stale:
                        continue
                    left = heartbeat
                    if isinstance(expires, int | float):
                        left = min(left, float(expires) - time.time())
                        if left <= 0:
                            yield StreamEvent("reauth", detail="the token expired")
                            return
                    if not await wait_event(changed, left):
                        yield StreamEvent("heartbeat")

    async def txids(self, collection: str, keys: Sequence[str], subject: str) -> dict[str, int]:
        """Key JSON → id of the transaction in which `subject` last wrote the row through
        push (for clients that match their optimistic writes by transaction id; another
        subject's pushes are not shown)."""
        if not keys:
            return {}
        return await asyncio.to_thread(self.store.row_xids, collection, keys, subject)

    @contextlib.contextmanager
    def _live_slot(self, subject: str) -> Iterator[None]:
        """Bound the live waits of one subject and of the whole process (503 past it)."""
        mine = self._live.get(subject, 0)
        if mine >= self.live_per_subject or self._live_total >= self.live_total:
            raise Unavailable("too many live requests waiting; retry shortly", retry_after=2)
        self._live[subject] = mine + 1
        self._live_total += 1
        try:
            yield
        finally:
            self._live_total -= 1
            left = self._live[subject] - 1
            if left:
                self._live[subject] = left
            else:
                del self._live[subject]

    def live_count(self) -> int:
        return self._live_total


def _json_default(value: object) -> object:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError


def _unmoved(known: Known, grants_version: int, cursor: Cursor | None) -> bool:
    """Whether `known` scopes are the caller's now and at `cursor` (no move under way)."""
    if known.grants_version != grants_version:
        return False
    return cursor is None or (
        cursor.target is None and cursor.scopes_version >= known.grants_version
    )


def render_page(page: Page, schema_version: str) -> bytes:
    """The JSON body of a pull response, assembled from pre-serialised change lines."""
    return b"".join(
        (
            b'{"changes":[',
            b",".join(page.lines),
            b'],"cursor":"',
            str(page.cursor).encode(),
            b'","has_more":',
            b"true" if page.has_more else b"false",
            b',"schema_version":"',
            schema_version.encode(),
            b'"}',
        )
    )
