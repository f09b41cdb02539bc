"""The PostgreSQL store's connections, its failures that may pass (`StoreUnavailable`)
and the guard of its writer methods (`writes`).

Every store connection puts the store's schema first on its `search_path` (the store's
SQL names its tables unqualified; temporary tables still come first). The writer is one
autocommit connection that opens and commits its transactions itself; readers and the
pending mutation ids share a small pool (`psycopg_pool`).

A failure that may pass is a lost or refused connection (the server restarting, failing
over, unreachable), a full disk, or a lock or serialization conflict; any other error (a
constraint, a bug) stays fatal.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, cast

import psycopg
import psycopg_pool
from psycopg import errors, sql
from psycopg_pool import ConnectionPool

from sidecar.store.base import StoreUnavailable
from sidecar.store.pg_sql import DDL_LOCK

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_SCHEMA = "sidecar_store"
_CONNECT_TIMEOUT = 10  # seconds
_APPLICATION = "sidecar-store"
# A reader whose server stops answering (down, frozen, cut off) fails in bounded time:
# TCP keepalives while idle, the kernel's limit on unacknowledged data while a query is
# out, and a statement timeout; the pull then answers 503, never hangs.
READER_WAIT = 5.0  # seconds a read waits for a connection (the server down: 503 then)
READER_KWARGS: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 20_000,  # ms
    "options": "-c statement_timeout=30000",
}


def _set_path(conn: psycopg.Connection[Any], schema: str) -> None:
    conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))


def connect(url: str, schema: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """An autocommit connection to the store (the writer's, or a short-lived one);
    `kwargs`: more connection parameters (a shared store's writer: keepalives)."""
    conn = psycopg.connect(
        url,
        autocommit=True,
        connect_timeout=_CONNECT_TIMEOUT,
        application_name=_APPLICATION,
        **kwargs,
    )
    try:
        _set_path(conn, schema)
    except BaseException:
        conn.close()
        raise
    return conn


def reader_pool(url: str, schema: str, size: int = 4) -> ConnectionPool:
    """A pool of autocommit connections for reads from any thread."""

    def configure(conn: psycopg.Connection[Any]) -> None:
        _set_path(conn, schema)

    return ConnectionPool(
        url,
        min_size=1,
        max_size=size,
        kwargs={
            "autocommit": True,
            "connect_timeout": _CONNECT_TIMEOUT,
            "application_name": _APPLICATION,
            **READER_KWARGS,
        },
        configure=configure,
        open=True,
        name=f"sidecar-store-{schema}",
        timeout=READER_WAIT,
    )


def create(conn: psycopg.Connection[Any], schema: str, script: str) -> None:
    """Create the schema and the tables of `script` if need be, in one transaction."""
    with conn.transaction():
        conn.execute(DDL_LOCK, (schema,))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        for stmt in script.split(";"):
            if stmt.strip():
                conn.execute(stmt.encode())


_LOCKED = (
    errors.LockNotAvailable,
    errors.DeadlockDetected,
    errors.SerializationFailure,
    errors.QueryCanceled,
)
_IO = (
    psycopg.OperationalError,  # connection lost or refused, server shutting down
    errors.InsufficientResources,
    errors.ReadOnlySqlTransaction,  # the server became a standby (a failover)
)


def as_unavailable(exc: psycopg.Error) -> StoreUnavailable | None:
    """The error as `StoreUnavailable` if it may pass (None: it may not)."""
    if isinstance(exc, errors.DiskFull):
        return StoreUnavailable("disk_full", str(exc))
    if isinstance(exc, _LOCKED):
        return StoreUnavailable("locked", str(exc))
    if isinstance(exc, _IO):
        return StoreUnavailable("io", str(exc))
    return None


class _Writer(Protocol):
    _broken: StoreUnavailable | None

    def _discard(self) -> bool: ...


def reads(fn: F) -> F:
    """A reader method: a failure that may pass (the server down, restarting, failing
    over, unreachable) raised as `StoreUnavailable` — the HTTP layer answers 503 with
    `Retry-After`, never 500."""

    @functools.wraps(fn)
    def method(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except psycopg_pool.PoolTimeout as exc:
            raise StoreUnavailable("io", str(exc)) from exc
        except psycopg.Error as exc:
            trouble = as_unavailable(exc)
            if trouble is None:
                raise
            raise trouble from exc

    return cast(F, method)


def writes(batch: bool) -> Callable[[F], F]:
    """A writer method: refused while a failed batch is not rolled back (`_broken`); a
    failure that may pass raised as `StoreUnavailable`. A method of the open `batch`
    leaves the store refusing writes until `rollback()`; another one (its own short
    transaction) rolls itself back (`_discard`)."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def method(self: _Writer, *args: Any, **kwargs: Any) -> Any:
            if self._broken is not None:
                raise self._broken
            try:
                return fn(self, *args, **kwargs)
            except psycopg.Error as exc:
                trouble = as_unavailable(exc)
                if trouble is None:
                    raise
                if batch or not self._discard():
                    self._broken = trouble
                raise trouble from exc

        return cast(F, method)

    return wrap
