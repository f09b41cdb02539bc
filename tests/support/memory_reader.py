"""`MemoryReader`: a tiny in-memory `StoreReader` for tests of what reads a store (the
page cache, pull), counting its reads and able to hold them until released."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import orjson

from sidecar.store.base import MutationRecord, PageData, StoreState


class MemoryReader:
    """Changes as (version, scope, line) in memory; `commit` adds some and moves the
    version on. `pull` counts its calls (`pulls`) and, while `hold` is set, waits for
    `release()` (to make reads overlap)."""

    def __init__(self, epoch: str = "0a0b0c0d") -> None:
        self.epoch = epoch
        self.version = 0
        self.changes: list[tuple[int, str, bytes]] = []
        self.pulls: list[tuple[tuple[str, ...], int, int]] = []
        self.hold = False
        self._released = threading.Event()
        self.records: dict[str, MutationRecord] = {}

    def commit(self, *scoped: tuple[str, str]) -> int:
        """One change per (scope, title), each a version of its own; returns the version."""
        for scope, title in scoped:
            self.version += 1
            line = orjson.dumps({"scope": scope, "title": title, "version": str(self.version)})
            self.changes.append((self.version, scope, line))
        return self.version

    def release(self) -> None:
        self._released.set()

    # -- StoreReader ---------------------------------------------------------------------

    def state(self) -> StoreState:
        return StoreState(
            epoch=self.epoch,
            lsn=0,
            version=self.version,
            snapshot_done=True,
            purged_version=0,
            slot=None,
            system_id=None,
            database=None,
        )

    def pull(
        self,
        scopes: Sequence[str],
        after: int,
        limit: int,
        max_bytes: int | None = None,
        live_only: bool = False,
    ) -> PageData:
        self.pulls.append((tuple(scopes), after, limit))
        if self.hold:
            self._released.wait(10)
        found = [(v, line) for v, s, line in self.changes if s in scopes and v > after]
        page = found[:limit]
        if max_bytes is not None:
            size = 0
            for n, (_, line) in enumerate(page):
                size += len(line) + 1
                if n and size > max_bytes:
                    page = page[:n]
                    break
        last = page[-1][0] if page else after
        return PageData([line for _, line in page], last, len(found) > len(page))

    def mutation(self, subject: str, mutation_id: str) -> MutationRecord | None:
        found = self.records.get(mutation_id)
        return found if found is not None and (found.subject or "") == subject else None

    def mutations(self, subject: str, ids: Sequence[str]) -> dict[str, MutationRecord]:
        found = {i: self.mutation(subject, i) for i in ids}
        return {i: r for i, r in found.items() if r is not None}

    def audit(self, collection: str, key: bytes, limit: int) -> list[MutationRecord]:
        return []

    def row_xids(self, collection: str, keys: Sequence[str], subject: str) -> dict[str, int]:
        return {}

    def counts(self) -> dict[str, int]:
        return {"rows": len(self.changes), "tombstones": 0, "bytes": 0}
