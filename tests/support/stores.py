"""The store implementations the contract suite runs over, and store operations that only
tests use (the service never calls them, so they are in no role of `store/base.py`).

A store engine is one entry in `STORES` (and one in `PENDING`): a function of a
`Place`, where a test keeps its stores — a directory for SQLite, a fresh database for
PostgreSQL (one schema per store name).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sidecar.changes import Image
from sidecar.store.base import (
    ChangeStore,
    PendingMutations,
    RowChange,
    StoredRow,
    StoreWriter,
)
from sidecar.store.pg import PGStore
from sidecar.store.pg_pending import PGPending
from sidecar.store.sqlite import SQLiteStore
from sidecar.store.sqlite_pending import SQLitePending, pending_path


class InspectableStore(ChangeStore, Protocol):
    """A full store the contract suite can look into: its stored rows by identity (each
    implementation has `get_rows`; no role of the service uses it)."""

    def get_rows(self, collection: str, idents: Iterable[str]) -> dict[str, StoredRow]: ...


@dataclass(frozen=True, slots=True)
class Place:
    """Where a test's store lives: `directory` (empty, or the same again to reopen), and
    for the engines that need a server `url` (a fresh database of the test's own) and
    `schema` (one per store name)."""

    directory: Path
    url: str | None = None
    schema: str = "sidecar_store"

    def pg(self) -> str:
        assert self.url is not None, "this engine needs a PostgreSQL database (pg_url)"
        return self.url


# the passphrase of the encrypted SQLite engine's stores
CONTRACT_KEY = "contract key, with a ' quote"

# engines that keep their store in PostgreSQL (their tests need a database)
NEEDS_POSTGRES = frozenset({"postgresql"})

# name → a store at the given place
STORES: dict[str, Callable[[Place], InspectableStore]] = {
    "sqlite": lambda p: SQLiteStore(p.directory / "store.db"),
    # the SQLite store through SQLCipher (store.encryption_key)
    "sqlite-encrypted": lambda p: SQLiteStore(p.directory / "store.db", CONTRACT_KEY),
    "postgresql": lambda p: PGStore(p.pg(), p.schema),
}

# name → the pending mutation ids that go with that engine's store at the place
PENDING: dict[str, Callable[[Place], PendingMutations]] = {
    "sqlite": lambda p: SQLitePending(pending_path(p.directory / "store.db")),
    "sqlite-encrypted": lambda p: SQLitePending(
        pending_path(p.directory / "store.db"), CONTRACT_KEY
    ),
    "postgresql": lambda p: PGPending(p.pg(), p.schema),
}


@dataclass(frozen=True, slots=True)
class RowWrite:
    """One row change with the caller's view of the row's current image: `new` None means
    the row is gone."""

    collection: str
    old: StoredRow | None
    new: Image | None


def write(store: StoreWriter, writes: Sequence[RowWrite]) -> set[str]:
    """Apply row changes given with the caller's view of each row's current image."""
    changes = [
        RowChange(w.collection, w.old.ident if w.new is None and w.old else None, w.new)
        for w in writes
        if w.old is not None or w.new is not None
    ]
    return store.apply(changes)


def load(store: StoreWriter, collection: str, images: Sequence[Image]) -> None:
    """Bulk insert for the initial copy of a collection the store does not hold yet, as
    capture does it in two steps."""
    store.load_prepared(store.prepare_load(collection, images))
