"""The store contract's fixtures and row helpers.

`store` is a fresh store of each implementation in `tests/support/stores.py` (every
contract test runs once per engine); `make_store` opens more of them, or the same one
again (a reopen). `place` is where the test keeps them: a temporary directory, and for
PostgreSQL a fresh database of the test cluster (`pg_url`), one schema per store name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from sidecar.changes import Image, rev_of
from sidecar.store.base import StoredRow, StoreReader
from tests.support.stores import (
    NEEDS_POSTGRES,
    STORES,
    InspectableStore,
    Place,
    RowWrite,
    write,
)


@pytest.fixture(params=sorted(STORES))
def engine(request: pytest.FixtureRequest) -> str:
    """Each store engine in turn."""
    return str(request.param)


@pytest.fixture
def place(request: pytest.FixtureRequest, engine: str, tmp_path: Path) -> Callable[[str], Place]:
    """Where the test's store named `name` lives ("": the test's store)."""
    url = request.getfixturevalue("pg_url") if engine in NEEDS_POSTGRES else None

    def at(name: str = "") -> Place:
        directory = tmp_path / name
        directory.mkdir(exist_ok=True)
        return Place(directory, url, f"store_{name}" if name else "sidecar_store")

    return at


@pytest.fixture
def make_store(
    engine: str, place: Callable[[str], Place]
) -> Iterator[Callable[..., InspectableStore]]:
    opened: list[InspectableStore] = []

    def make(name: str = "") -> InspectableStore:
        """The test's store (again, if opened before); `name`: another one."""
        s = STORES[engine](place(name))
        opened.append(s)
        return s

    yield make
    for s in opened:
        with contextlib.suppress(Exception):
            s.close()


@pytest.fixture
def store(make_store: Callable[..., InspectableStore]) -> InspectableStore:
    """A fresh store, once per implementation."""
    return make_store()


def image(id_: int, title: str, *scopes: str) -> Image:
    row = orjson.dumps({"id": id_, "title": title})
    return Image(
        ident=orjson.dumps({"id": id_}).decode(),
        key=orjson.dumps({"id": id_}),
        row=row,
        rev=rev_of(row),
        scopes=tuple(scopes),
        hidden=b"{}",
    )


def current(store: InspectableStore, id_: int, coll: str = "c") -> StoredRow | None:
    ident = orjson.dumps({"id": id_}).decode()
    return store.get_rows(coll, [ident]).get(ident)


def put(store: InspectableStore, id_: int, title: str, *scopes: str, coll: str = "c") -> set[str]:
    return write(store, [RowWrite(coll, current(store, id_, coll), image(id_, title, *scopes))])


def delete(store: InspectableStore, id_: int, coll: str = "c") -> set[str]:
    return write(store, [RowWrite(coll, current(store, id_, coll), None)])


def lines(store: StoreReader, scopes: list[str], after: int = 0, limit: int = 100) -> list[dict]:
    return [orjson.loads(x) for x in store.pull(scopes, after, limit).lines]
