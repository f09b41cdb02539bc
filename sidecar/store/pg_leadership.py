"""The leadership of a shared PostgreSQL store, as `PGStore` takes it (`PGLeadership`, a
part of the store's class): the lock and term taken by the writer (`lead`), given up
(`resign`), checked (`still_leads`, `_fence` in each write transaction), and a follower's
reading of the committed state (`refresh`). The statements and settings are in
`pg_lead.py`.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from sidecar.store.base import Fenced, StoreState, StoreUnavailable
from sidecar.store.pg_conn import as_unavailable, connect
from sidecar.store.pg_lead import CHECK_TERM, NEXT_TERM, STILL_LEADS, TRY_LOCK


class PGLeadership:
    """Leadership methods of `PGStore` (its attributes, declared here for the checker)."""

    url: str
    schema: str
    _w: psycopg.Connection[Any]
    _pool: ConnectionPool
    _term: int | None
    _kwargs: dict[str, Any]
    _takeover: float
    _version: int
    _state: StoreState
    _broken: StoreUnavailable | None
    _touched: set[str] | None

    def _meta(self, key: str) -> str | None:
        raise NotImplementedError

    def _load_state(self) -> StoreState:
        raise NotImplementedError

    @property
    def _in_txn(self) -> bool:
        raise NotImplementedError

    @property
    def term(self) -> int | None:
        """The term this writer leads in (None: it does not lead)."""
        return self._term

    def writer_pid(self) -> int | None:
        """The writer session's backend pid while it leads (its own notifications)."""
        return None if self._term is None or self._w.closed else self._w.info.backend_pid

    def lead(self) -> bool:
        """Try to become the leader (writer thread): the advisory lock on the writer's
        session, then the next term. True if this writer leads (now or already)."""
        if self._term is not None:
            return True
        try:
            if self._w.closed or self._w.broken:
                self._w = connect(self.url, self.schema, **self._kwargs)
            elif self._in_txn:
                self._w.execute("ROLLBACK")
            row = self._w.execute(TRY_LOCK, (self.schema,)).fetchone()
            if row is None or not row[0]:
                return False
            with self._w.transaction():  # waits for a transaction of the last leader
                self._w.execute(f"SET LOCAL lock_timeout = {int(self._takeover * 1000)}")
                found = self._w.execute(NEXT_TERM).fetchone()
            assert found is not None
            self._version = int(self._meta("version") or 0)
            self._state = self._load_state()
        except psycopg.Error as exc:
            trouble = as_unavailable(exc)
            if trouble is None:
                raise
            self._w.close()  # the lock, if taken, goes with the session
            raise trouble from exc
        self._term, self._broken, self._touched = int(found[0]), None, set()
        return True

    def resign(self) -> None:
        """Lead no more (writer thread): the session, and its lock, end here."""
        self._term, self._touched = None, set()
        self._w.close()

    def still_leads(self) -> bool:
        """Whether the store still knows this writer as its leader (any thread): its term
        is the store's and its session is alive."""
        term, pid = self._term, self.writer_pid()
        if term is None or pid is None:
            return False
        with self._pool.connection() as conn:
            row = conn.execute(STILL_LEADS, (pid,)).fetchone()
        return row is not None and row[0] == str(term) and bool(row[1])

    def refresh(self) -> StoreState:
        """The committed state read again (any thread): a follower's view of what the
        leader committed. The leader's own state is always current."""
        if self._term is None:
            with self._pool.connection() as conn:
                m: dict[str, str] = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            state, now = StoreState.from_meta(m), self._state
            # not older than what is cached (two refreshes may race)
            if state.epoch != now.epoch or (state.version, state.lsn, state.acked_lsn) >= (
                now.version,
                now.lsn,
                now.acked_lsn,
            ):
                self._state = state
        return self._state

    def _fence(self) -> None:
        """In the writer's new transaction: still the leader's term, or `Fenced`."""
        if self._term is not None:
            cur = self._w.execute(CHECK_TERM, (str(self._term),))
            if cur.rowcount == 1:
                return
        was, self._term = self._term, None
        self._w.execute("ROLLBACK")
        raise Fenced(
            "this replica does not lead the store"
            if was is None
            else f"another replica leads the store (this one's term {was} ended)"
        )
