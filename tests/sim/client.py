"""A reference client of the sidecar's `/v1` protocol: the loop docs/protocol.md describes
("A client loop") for app developers, small enough to read in one sitting.

- **Replica**: the rows the server last said each collection holds in this caller's
  scopes (`key → row`, with each row's `rev`), and the pull cursor. It holds only what the
  server confirmed; an app shows the replica with its pending outbox laid over it.
- **Outbox**: mutations with client-made ids, kept until the server gave each a final
  answer (`applied`, `duplicate`, `conflict`, `rejected`). A request without an answer
  (dropped connection, timeout, 5xx) is sent again with the *same* ids: the server answers
  `duplicate` for those it applied, so nothing is applied twice.
- **Backoff**: exponential with full jitter, reset after a success; a `Retry-After` from
  the server is a minimum.
- **410 `cursor_expired`**: drop the replica, pull from scratch (the outbox stays).
- **Conflicts**: the result carries the server's row; the replica takes it (the user's edit
  is dropped; an app would offer to redo it on the new row).

`Client.sync()` is one round: push the outbox, then pull until `has_more` is false. It
raises `Retry` (with the delay to wait) when the round must be tried again later. One
device runs its requests one at a time, so a push result (the row at its commit) is never
older than a page pulled before it.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

# Whole-request statuses after which the same request may simply be sent again later.
RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})
BATCH = 50  # mutations per push (the server takes up to limits.max_push, 500 by default)
PAGE = 500  # changes per pull page


class Retry(Exception):
    """The round did not finish; try again after `delay` seconds (from `Backoff`)."""

    def __init__(self, why: str, delay: float) -> None:
        super().__init__(f"{why}; retry in {delay:.2f} s")
        self.why, self.delay = why, delay


class Refused(Exception):
    """The server refused the request itself (400, 401, 403, 413…): a client bug or a
    configuration problem, not weather. Retrying the same request would not help (an app
    gets a new token on 401 and then retries; the simulation's tokens do not expire)."""

    def __init__(self, status: int, problem: Any) -> None:
        super().__init__(f"{status}: {problem}")
        self.status, self.problem = status, problem


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds: delta-seconds or an HTTP date (RFC 9110); None if absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass
class Backoff:
    """Exponential backoff with full jitter: the n-th consecutive failure waits a uniform
    random time in [0, min(cap, base·2ⁿ)], but never less than the server's `Retry-After`."""

    rng: random.Random
    base: float = 0.5
    cap: float = 30.0
    failures: int = 0

    def delay(self, retry_after: float | None = None) -> float:
        ceiling = min(self.cap, self.base * 2**self.failures)
        self.failures += 1
        wait = self.rng.uniform(0.0, ceiling)
        return wait if retry_after is None else max(wait, retry_after)

    def reset(self) -> None:
        self.failures = 0


def row_key(key: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A key object (`{"id": 7}`) as a hashable value."""
    return tuple(sorted(key.items()))


@dataclass
class Mutation:
    id: str
    collection: str
    op: str
    key: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    base_rev: str | None = None
    base: dict[str, Any] | None = None

    def body(self) -> dict[str, Any]:
        fields = ("key", "data", "base_rev", "base")
        out = {"id": self.id, "collection": self.collection, "op": self.op}
        out.update({f: getattr(self, f) for f in fields if getattr(self, f) is not None})
        return out


@dataclass
class Replica:
    """What the server said: collection → key → (row, rev), and the cursor to pull from."""

    rows: dict[str, dict[tuple[tuple[str, Any], ...], tuple[dict[str, Any], str]]] = field(
        default_factory=dict
    )
    cursor: str | None = None

    def put(self, collection: str, key: Mapping[str, Any], row: dict[str, Any], rev: str) -> None:
        self.rows.setdefault(collection, {})[row_key(key)] = (row, rev)

    def remove(self, collection: str, key: Mapping[str, Any]) -> None:
        self.rows.get(collection, {}).pop(row_key(key), None)

    def get(self, collection: str, key: Mapping[str, Any]) -> tuple[dict[str, Any], str] | None:
        return self.rows.get(collection, {}).get(row_key(key))

    def apply(self, change: Mapping[str, Any]) -> None:
        """One pulled change: `upsert` replaces the row, `delete` removes it."""
        if change["op"] == "upsert":
            self.put(change["collection"], change["key"], change["row"], change["rev"])
        else:
            self.remove(change["collection"], change["key"])

    def drop(self) -> None:
        self.rows.clear()
        self.cursor = None

    def table(self, collection: str) -> dict[tuple[tuple[str, Any], ...], dict[str, Any]]:
        return {k: row for k, (row, _) in self.rows.get(collection, {}).items()}


class Client:
    """One device: a replica, an outbox and the loop that syncs them over HTTP."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        rng: random.Random,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        timeout: float = 15.0,
    ) -> None:
        self.base_url, self.token, self.rng = base_url.rstrip("/"), token, rng
        self.replica = Replica()
        self.outbox: list[Mutation] = []
        self.backoff = Backoff(rng, backoff_base, backoff_cap)
        self.answers: dict[str, dict[str, Any]] = {}  # mutation id → its final result
        self.counts: dict[str, int] = {}  # what happened, for logs and tests
        self.slowest_push = 0.0  # seconds, answered pushes only
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._ids = 0

    # -- local edits: queued in the outbox, sent by the next sync --------------------------

    def new_id(self) -> str:
        """A unique mutation id (made by the client, kept across retries)."""
        self._ids += 1
        return f"{self.rng.getrandbits(64):016x}-{self._ids}"

    def insert(
        self,
        collection: str,
        data: dict[str, Any],
        key: dict[str, Any] | None = None,
        mutation_id: str | None = None,
    ) -> Mutation:
        """A new row; `key` when the client chooses it, else the database makes it (the
        row comes with the next pull)."""
        return self._queue(Mutation(mutation_id or self.new_id(), collection, "insert", key, data))

    def update(self, collection: str, key: dict[str, Any], data: dict[str, Any]) -> Mutation:
        """Change some columns of a row of the replica; `base_rev` and `base` (for
        `conflict: merge`) are the replica's row as the user saw it."""
        row, rev = self._known(collection, key)
        base = {c: row.get(c) for c in data}
        return self._queue(Mutation(self.new_id(), collection, "update", key, data, rev, base))

    def delete(self, collection: str, key: dict[str, Any]) -> Mutation:
        _, rev = self._known(collection, key)
        return self._queue(Mutation(self.new_id(), collection, "delete", key, None, rev))

    def _known(self, collection: str, key: dict[str, Any]) -> tuple[dict[str, Any], str]:
        known = self.replica.get(collection, key)
        if known is None:
            raise KeyError(f"{collection} {key} is not in the replica")
        return known

    def _queue(self, m: Mutation) -> Mutation:
        self.outbox.append(m)
        return m

    # -- the loop -----------------------------------------------------------------------

    async def sync(self, after_lsn: str | None = None) -> None:
        """Push the outbox, then pull until consistent. Raises `Retry` when the round must
        be tried again after a delay; `Refused` when retrying cannot help."""
        headers = {"Authorization": f"Bearer {self.token}"}
        # One TCP connection per request: no stale keep-alive connection after a restart.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(
            headers=headers, timeout=self._timeout, connector=connector
        ) as http:
            try:
                while self.outbox:
                    await self._push(http)
                await self._pull(http, after_lsn)
            except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                # no answer or a cut one: it may or may not have been applied; resend as is
                self._count("network_error")
                raise Retry(type(exc).__name__, self.backoff.delay()) from None
        self.backoff.reset()

    async def _push(self, http: aiohttp.ClientSession) -> None:
        batch = self.outbox[:BATCH]
        body = {"mutations": [m.body() for m in batch]}
        sent = time.monotonic()
        async with http.post(f"{self.base_url}/v1/push", json=body) as resp:
            answer = await self._answer(resp)
        self.slowest_push = max(self.slowest_push, time.monotonic() - sent)
        self._count("push")
        results = answer["results"]
        if [r["id"] for r in results] != [m.id for m in batch]:
            raise AssertionError(f"results do not match the batch: {answer}")
        for m, r in zip(batch, results, strict=True):
            self._settle(m, r)
        done = {m.id for m in batch}
        self.outbox = [m for m in self.outbox if m.id not in done]

    def _settle(self, m: Mutation, r: dict[str, Any]) -> None:
        """A final answer for one mutation: update the replica and the rest of the outbox."""
        status = r["status"]
        self._count(status)
        if "error" in r:
            self._count(f"{status}:{r['error'].get('code')}")
        self.answers[m.id] = r
        key = m.key  # an insert without one: the next pull brings the row and its key
        if status == "applied" and key is not None:
            if "row" in r:
                self.replica.put(m.collection, key, r["row"], r["rev"])
            elif m.op == "delete":
                self.replica.remove(m.collection, key)
        elif status == "conflict" and key is not None:
            if "row" in r:  # the server's row wins on this device: rebase on it
                self.replica.put(m.collection, key, r["row"], r["rev"])
            elif m.op != "insert":  # the row is gone
                self.replica.remove(m.collection, key)
        if status in ("applied", "duplicate") and key is not None and r.get("rev"):
            # later edits of this row were made on top of this one: they are now based on
            # the rev it produced, not on the rev it replaced
            for later in self.outbox:
                same = later.collection == m.collection and later.key == key
                if same and later.base_rev == m.base_rev and later is not m:
                    later.base_rev = r["rev"]

    async def _pull(self, http: aiohttp.ClientSession, after_lsn: str | None) -> None:
        while True:
            params = {"limit": str(PAGE)}
            if self.replica.cursor:
                params["cursor"] = self.replica.cursor
            if after_lsn:
                params["after_lsn"] = after_lsn
            async with http.get(f"{self.base_url}/v1/pull", params=params) as resp:
                if resp.status == 410:  # the store was rebuilt: start over
                    await resp.read()
                    self._count("resync")
                    self.replica.drop()
                    continue
                page = await self._answer(resp)
            self._count("pull")
            for change in page["changes"]:
                self.replica.apply(change)
            self.replica.cursor = page["cursor"]
            after_lsn = None  # waited for once
            if not page["has_more"]:
                return

    async def _answer(self, resp: aiohttp.ClientResponse) -> Any:
        """The JSON body of a 200, or `Retry` / `Refused` for anything else."""
        if resp.status == 200:
            return await resp.json(content_type=None)
        body = await resp.read()
        self._count(str(resp.status))
        if resp.status in RETRYABLE:
            wait = retry_after_seconds(resp.headers.get("Retry-After"))
            raise Retry(f"HTTP {resp.status}", self.backoff.delay(wait))
        raise Refused(resp.status, body.decode(errors="replace"))

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1
