"""The SQLite store's failures that may pass (`StoreUnavailable`), and the guard of its
writer methods (`writes`).

A failure that may pass is one of SQLite's BUSY or LOCKED (another process holds the
file's write lock past the busy timeout), FULL (the disk), IOERR, CANTOPEN or PROTOCOL.
Any other error (CORRUPT, a constraint, …) is damage or a bug and stays fatal.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, cast

from sidecar.store.base import StoreUnavailable
from sidecar.store.sqlite_files import ERRORS

# SQLite primary result codes (sqlite3.h) → StoreUnavailable.kind
_TROUBLE = {5: "locked", 6: "locked", 13: "disk_full", 10: "io", 14: "io", 15: "io"}

F = TypeVar("F", bound=Callable[..., Any])


class _Writer(Protocol):
    _broken: StoreUnavailable | None

    def _discard(self) -> bool: ...


def as_unavailable(exc: Exception) -> StoreUnavailable | None:
    """The error as `StoreUnavailable` if it may pass (None: it may not)."""
    code = getattr(exc, "sqlite_errorcode", None)
    kind = None if code is None else _TROUBLE.get(code & 0xFF)
    return None if kind is None else StoreUnavailable(kind, str(exc))


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
            except ERRORS as exc:
                trouble = as_unavailable(exc)
                if trouble is None:
                    raise
                if batch or not self._discard():
                    self._broken = trouble
                raise trouble from exc

        return cast(F, method)

    return wrap
