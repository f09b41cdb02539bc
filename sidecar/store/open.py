"""Which store the service runs on: the one place that names a store class.

`open_store(config.store)` is what the service calls; `store_summary` is what
`sidecar status` reads without opening the store for writing. Today both mean the
embedded SQLite file at `store.path`. A shared store (PostgreSQL, for several sidecar
processes) plugs in here: a class implementing `store/base.py`'s `ChangeStore`, chosen
from the store config, and one entry in `tests/support/stores.py` so the contract suite
runs over it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sidecar.config.model import StoreConfig
from sidecar.store.base import ChangeStore, PendingMutations
from sidecar.store.sqlite import SQLiteStore
from sidecar.store.sqlite_pending import SQLitePending, pending_path
from sidecar.store.sqlite_read import summary


def open_store(config: StoreConfig) -> ChangeStore:
    """Open (creating it if need be) the store `config` names."""
    return SQLiteStore(Path(config.path))


def open_pending(config: StoreConfig) -> PendingMutations:
    """The pending mutation ids that go with the store `config` names (push writes them
    before COMMIT; see `store/sqlite_pending.py`)."""
    return SQLitePending(pending_path(Path(config.path)))


def store_summary(config: StoreConfig) -> dict[str, Any] | None:
    """The store's state as `sidecar status` prints it (None when there is no store yet)."""
    return summary(Path(config.path))
