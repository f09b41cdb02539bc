"""The store's interfaces by role: what capture writes (`StoreWriter`), what the read and
write paths read (`StoreReader`), and a whole store (`ChangeStore`, both).

A store keeps, for every synced row, its latest image (compacted), its scopes and its
version; a tombstone per scope a row left (kept for the retention period); the last
applied commit LSN; and the store's epoch (a new one whenever the store is rebuilt, so
cursors from an older store are refused). Each batch of transactions and its LSN is
committed atomically.

Writing happens on one thread (the capture writer); reading on any thread. `apply` is
what capture uses: the store looks up the rows' previous images itself, so that a batch of
changes costs a few set-based statements rather than a round of lookups per row.

Each consumer is typed with the narrowest role it needs: capture (runner, ingest) a
`StoreWriter`; pull, the page cache, push's duplicate lookup and the audit trail a
`StoreReader`; only the service, which owns and closes the store, a `ChangeStore`.
A second store engine implements `ChangeStore`, is opened by `store/open.py`
(`open_store`), and runs the contract suite in `tests/contract/` (one entry in
`tests/support/stores.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, TypeVar

from sidecar.changes import GrantChange, Image

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StoreState:
    epoch: str
    lsn: int  # end LSN of the last applied commit (or the snapshot's consistent point)
    version: int  # highest version assigned
    snapshot_done: bool
    purged_version: int  # tombstones at or below this version may be gone
    slot: str | None
    system_id: str | None
    database: str | None
    shape: str | None = None  # fingerprint of what the routes put in the store
    acked_lsn: int = 0  # highest position acknowledged to the server (≥ lsn when idle)
    backfill: str | None = None  # JSON {collection: LSN of the snapshot it was copied at}
    # The database as the store was made from it: "<timeline>:<database OID>" ("": not
    # recorded). Mutation ids recorded under another lineage may not hold any more.
    lineage: str = ""
    # JSON {collection: [[since version, read rule text], ...]}: which rule decided a
    # cursor's scopes (a rule changed by a reload is reconciled, not rebuilt; views.py)
    rules: str | None = None
    # The last version at which a grant (membership tables) began or ended: a caller's
    # scopes at any version from it to `version` are the same.
    grants_version: int = 0

    @classmethod
    def from_meta(cls, m: Mapping[str, str]) -> StoreState:
        """The state as a store's `meta` table (key → text value) records it."""
        return cls(
            epoch=m["epoch"],
            lsn=int(m.get("lsn", 0)),
            version=int(m.get("version", 0)),
            snapshot_done=m.get("snapshot_done") == "1",
            purged_version=int(m.get("purged_version", 0)),
            slot=m.get("slot"),
            system_id=m.get("system_id"),
            database=m.get("database"),
            shape=m.get("shape"),
            acked_lsn=int(m.get("acked_lsn", 0)),
            backfill=m.get("backfill"),
            rules=m.get("rules"),
            lineage=m.get("lineage", ""),
            # not recorded (an older store): its grants may have changed at its version
            grants_version=int(m.get("grants_version") or m.get("version") or 0),
        )


@dataclass(frozen=True, slots=True)
class StoredRow:
    """A row's last image as kept by the store. No role reads it: the contract suite
    compares implementations by it (each store's `get_rows`)."""

    ident: str
    version: int
    rev: str
    key: bytes
    scopes: tuple[str, ...]
    row: bytes  # JSON of the exposed columns
    hidden: bytes  # JSON of the needed columns that are not exposed


class PendingImage(Protocol):
    """A row image that needs the row's stored JSON to be complete.

    An UPDATE does not resend TOASTed values it left alone; their JSON comes from the
    image the store holds for the row when the change is applied.
    """

    @property
    def ident(self) -> str: ...

    def complete(self, row: bytes | None, hidden: bytes | None) -> Image:
        """The full image, given the stored `row`/`hidden` JSON (None: the store lacks it)."""
        ...


class RowChange(NamedTuple):
    """One row change, in stream order, for `StoreWriter.apply`."""

    collection: str
    gone: str | None  # identity that stops existing: a delete, or the old one of a key change
    new: Image | PendingImage | None  # the row's image after the change (None: deleted)


@dataclass(frozen=True, slots=True)
class PageData:
    lines: list[bytes]
    last_version: int  # version of the last change in `lines` (or the cursor's if none)
    has_more: bool


@dataclass(frozen=True, slots=True)
class MutationRecord:
    """A mutation the write path applied, as its WAL message reported it. Recorded once
    per (subject, id): a store keeps a record without subject under ""."""

    id: str
    subject: str | None
    device: str | None
    lsn: int
    outcome: bytes  # JSON of the first result given for this id


@dataclass(frozen=True, slots=True)
class PreparedLoad:
    """A batch of the initial copy, ready for the store's writer (`StoreWriter.prepare_load`):
    what is in it is the store's business."""

    collection: str
    chunks: tuple[tuple[int, bytes, bytes | None], ...]  # (rows, their JSON, entries' JSON)


class StoreView(Protocol):
    """One consistent snapshot of a store, as a pull under membership rules reads it
    (`views.read_view`): grants at any version since the purge, changes, move-ins and
    what a client may hold of a scope."""

    @property
    def version(self) -> int:
        """The store's version in this snapshot."""
        ...

    @property
    def grants_version(self) -> int:
        """The last version ≤ `version` at which any grant began or ended (or a version
        no older than that)."""
        ...

    def grants(self, lookup: str, scopes: Sequence[str], at: int) -> list[str]:
        """The values granted to `scopes` of `lookup` at version `at`."""
        ...

    def grants_changed(self, keys: Sequence[str], after: int, upto: int) -> bool:
        """Whether a grant of any `<lookup>|<scope>` key began or ended in (after, upto]."""
        ...

    def changes(
        self, scopes: Sequence[str], after: int, limit: int, max_bytes: int | None
    ) -> PageData:
        """As `StoreReader.pull`."""
        ...

    def live(
        self, scopes: Sequence[str], after: int, upto: int, limit: int, max_bytes: int | None
    ) -> PageData:
        """The live rows of `scopes` whose version is in (after, upto], in version order."""
        ...

    def held(self, scope: str, after: int) -> Iterable[tuple[int, str, str, bytes, str, Any]]:
        """(version, collection, ident, key, rev, the row's scopes now as JSON or None
        when it is deleted) of each row a client may hold of `scope` at `after`."""
        ...

    def delete_line(self, version: int, collection: str, key: bytes, rev: str) -> bytes:
        """The change line of a delete."""
        ...


class StoreReader(Protocol):
    """What the read path (pull, page cache), push (duplicate ids), the audit trail and
    the service's metrics read. Any thread; each read sees committed data only."""

    def state(self) -> StoreState:
        """The committed state (epoch, version, LSN, …)."""
        ...

    def pull(
        self,
        scopes: Sequence[str],
        after: int,
        limit: int,
        max_bytes: int | None = None,
        live_only: bool = False,
    ) -> PageData:
        """Changes after version `after` in any of `scopes` (without tombstones when
        `live_only`: a client that holds nothing needs none), in version order, at most
        `limit` (each row once, in its latest state) and, when `max_bytes` is given, no
        more change lines than fit in it, each counted with one separator byte — but
        always at least one. `has_more` is true when the page was cut, by either bound;
        `last_version` is then the last included change's, so the next page goes on
        exactly after it. A store reads rows in order and stops at the bound: it never
        holds more than the page and the one row that did not fit."""
        ...

    def view(self, read: Callable[[StoreView], T]) -> T:
        """`read` run over one consistent snapshot of the store."""
        ...

    def mutation(self, subject: str, mutation_id: str) -> MutationRecord | None:
        """The recorded outcome of `subject`'s applied mutation id (None: not applied by
        that subject; mutation ids are unique per subject only)."""
        ...

    def mutations(self, subject: str, ids: Sequence[str]) -> dict[str, MutationRecord]:
        """`mutation` of many ids in one read: the recorded ones, by id."""
        ...

    def audit(self, collection: str, key: bytes, limit: int) -> list[MutationRecord]:
        """The recorded mutations of one row (key: JSON object), newest first."""
        ...

    def row_xids(self, collection: str, keys: Sequence[str], subject: str) -> dict[str, int]:
        """For row keys (JSON objects as change lines carry them), the transaction id of
        the last mutation `subject` applied to each through the write path (keys without
        one are absent): nothing of another subject's mutations."""
        ...

    def counts(self) -> dict[str, int]:
        """`rows`, `tombstones` and `bytes` of the store, for metrics."""
        ...


class Fenced(Exception):
    """A shared store's writer that is not (or no longer) the leader: another replica
    holds the store's leadership (a higher term), or this one's lock session ended. The
    open batch is rolled back; capture stops and the replica follows (`replica/`)."""


class StoreUnavailable(Exception):
    """A write the store could not do now, for a reason that may pass: `kind` is `locked`
    (another process holds the store's write lock), `disk_full` or `io`. The open batch is
    lost: the writer must `rollback()` (which is then safe to call) and write it again
    from the last commit. Capture pauses and retries; it is weather, not death."""

    KINDS = ("locked", "disk_full", "io")

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


class StoreWriter(Protocol):
    """What capture writes, from its one writer thread: row changes, the initial copy,
    mutation records, each batch committed with the LSN it reaches. `state` is here too:
    the writer decides where to go on from what it committed."""

    def state(self) -> StoreState: ...
    def reset(
        self, *, slot: str, system_id: str, database: str, shape: str = "", lineage: str = ""
    ) -> StoreState: ...
    def apply(self, changes: Sequence[RowChange]) -> set[str]: ...
    def prepare_load(self, collection: str, images: Sequence[Image]) -> PreparedLoad: ...
    def load_prepared(self, batch: PreparedLoad) -> None: ...
    def truncate(self, collection: str) -> set[str]: ...
    def apply_grants(self, changes: Sequence[GrantChange]) -> set[str]: ...
    def truncate_grants(self, lookups: Sequence[str]) -> set[str]: ...
    def reconcile_rows(self, collection: str, images: Sequence[Image]) -> set[str]: ...
    def reconcile_grants(self, source: str, changes: Sequence[GrantChange]) -> set[str]: ...
    def reconcile_finish(
        self, collections: Sequence[str], sources: Mapping[str, Sequence[str]]
    ) -> set[str]: ...
    def drop_collections(self, collections: Sequence[str]) -> None: ...
    def record_rules(self, rules: Callable[[int], str]) -> None: ...
    def adopt(
        self, *, slot: str, system_id: str, database: str, shape: str, lineage: str, lsn: int
    ) -> None: ...
    def record_mutations(self, records: Sequence[MutationRecord]) -> None: ...
    def commit(self, lsn: int | None = None, *, snapshot_done: bool | None = None) -> None: ...
    def note_acked(self, lsn: int) -> bool: ...
    def set_layout(self, shape: str, backfill: str) -> None: ...
    def rollback(self) -> None: ...
    def purge_tombstones(self, older_than: float) -> int: ...


class ChangeStore(StoreReader, StoreWriter, Protocol):
    """A full store: both roles, and `close` for its owner (the service)."""

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class PendingRecord:
    """A mutation a push wrote in a transaction not yet known to have committed: the
    transaction's 64-bit id (`pg_current_xact_id()`), the `rev` the client was told, and
    the database it was written on (`origin`: system id, database and lineage)."""

    subject: str
    id: str
    xid: int
    rev: str | None
    origin: str


class PendingMutations(Protocol):
    """Mutation ids recorded durably by the push path just before COMMIT, so a retry is
    recognised without waiting for capture: PostgreSQL's `pg_xact_status(xid)` then says
    whether the first attempt committed. Written and read from any thread (each call is
    its own transaction); a second store engine implements it beside `ChangeStore`."""

    def record(self, records: Sequence[PendingRecord]) -> None:
        """Durably (fsynced) before the caller commits its PostgreSQL transaction."""
        ...

    def lookup(self, subject: str, ids: Sequence[str]) -> dict[str, PendingRecord]: ...

    def forget(self, subject: str, ids: Sequence[str]) -> None: ...

    def covered_from(self) -> int | None:
        """The WAL position from which every push recorded its ids here (None: not yet
        set). A commit before it may have no record: only the store can tell."""
        ...

    def cover_from(self, lsn: int) -> None:
        """Set `covered_from` once (a later call keeps the first position)."""
        ...

    def prune(self, captured: Callable[[str, str], bool], older_than: float) -> int:
        """Drop records capture has stored (`captured(subject, id)`) and any older than
        `older_than` (a Unix time); how many were dropped."""
        ...

    def close(self) -> None: ...
