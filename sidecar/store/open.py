"""Which store the service runs on: the one place that names a store class.

`open_store(config.store)` is what the service calls; `store_summary` is what
`sidecar status` reads without opening the store for writing. The store config chooses:
`store.url` a PostgreSQL store (`store/pg.py`: the tables in the schema `store.schema`
of that database, the pending mutation ids in a table beside them), else the embedded
SQLite file at `store.path` (`store/sqlite.py`, the pending ids in a file beside it).
Each engine implements `store/base.py`'s `ChangeStore` and `PendingMutations` and has
one entry in `tests/support/stores.py`, so the contract suite runs over it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sidecar.config.model import StoreConfig
from sidecar.store.base import ChangeStore, PendingMutations
from sidecar.store.pg import PGStore
from sidecar.store.pg_pending import PGPending
from sidecar.store.pg_read import summary as pg_summary
from sidecar.store.pg_read import where
from sidecar.store.sqlite import SQLiteStore
from sidecar.store.sqlite_pending import SQLitePending, pending_path
from sidecar.store.sqlite_read import summary


def open_store(config: StoreConfig, *, shared: bool = False) -> ChangeStore:
    """Open (creating it if need be) the store `config` names; `shared`: a PostgreSQL
    store several replicas may share (its writer writes only while it leads: `replica/`)."""
    if config.url is not None:
        return PGStore(config.url, config.schema, shared=shared, takeover=config.takeover_timeout)
    return SQLiteStore(Path(config.path), config.encryption_key)


def open_pending(config: StoreConfig) -> PendingMutations:
    """The pending mutation ids that go with the store `config` names (push writes them
    before COMMIT; see `store/sqlite_pending.py`)."""
    if config.url is not None:
        return PGPending(config.url, config.schema)
    return SQLitePending(pending_path(Path(config.path)), config.encryption_key)


def store_summary(config: StoreConfig) -> dict[str, Any] | None:
    """The store's state as `sidecar status` prints it (None when there is no store yet)."""
    if config.url is not None:
        return pg_summary(config.url, config.schema)
    return summary(Path(config.path), config.encryption_key)


def store_name(config: StoreConfig) -> str:
    """Where the store is, for messages (no credentials)."""
    if config.url is not None:
        return f"{where(config.url)} schema {config.schema}"
    return config.path
