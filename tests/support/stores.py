"""The store implementations the contract suite runs over, and store operations that only
tests use (the service never calls them, so they are in no role of `store/base.py`).

A second store engine is one more entry in `STORES`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sidecar.changes import Image
from sidecar.store.base import ChangeStore, RowChange, StoredRow, StoreWriter
from sidecar.store.sqlite import SQLiteStore


class InspectableStore(ChangeStore, Protocol):
    """A full store the contract suite can look into: its stored rows by identity (each
    implementation has `get_rows`; no role of the service uses it)."""

    def get_rows(self, collection: str, idents: Iterable[str]) -> dict[str, StoredRow]: ...


# name → a store in the given (empty, or the same again to reopen) directory
STORES: dict[str, Callable[[Path], InspectableStore]] = {
    "sqlite": lambda d: SQLiteStore(d / "store.db"),
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
