"""Membership tables: the tables read rules' sub-selects name, captured for their grants.

A rule `project_id IN (SELECT project_id FROM members WHERE user_id = :sub)` makes
`members` a membership table: it is published, copied and streamed like a mapped table
but served to nobody (unless a collection maps it too). What the store keeps of it is
its *grants*: per row (by identity) and per `Lookup` of the rules, the (scope, value)
pairs the row grants (`Lookup.pairs`): "callers whose `user_id` scope is alice may read
project 7". A `MembershipSource` turns the text values of a row change into
`GrantChange`s, one per lookup of its table.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import structlog
from psycopg.pq import Format

from sidecar.catalog import TableInfo
from sidecar.changes import GrantChange
from sidecar.rules.scopes import Lookup
from sidecar.unchanged import UNCHANGED
from sidecar.values import dumps, make_transformer

log = structlog.get_logger("sidecar.capture")

TEXT = Format.TEXT

__all__ = ["MembershipSource", "membership_sources", "source_name"]


def source_name(table: TableInfo) -> str:
    """How the store and the logs name a membership table (never a collection name: a
    collection name cannot contain a space)."""
    return f"membership {table.ref}"


class MembershipSource:
    """One membership table and the lookups that read it. Quacks like a collection where
    the initial copy asks (`name`, `table`, `needed`, `needed_oids`)."""

    def __init__(self, table: TableInfo, lookups: Sequence[Lookup]) -> None:
        self.table = table
        self.name = source_name(table)
        self.lookups = tuple(lookups)
        if table.replica_identity in ("d", "i") and table.identity_index:
            ident: tuple[str, ...] = table.identity_index
        else:
            ident = table.primary_key or (table.unique_keys[0] if table.unique_keys else ())
        self.ident_columns = ident
        wanted = [c for lookup in self.lookups for c in sorted(lookup.columns)]
        self.needed: tuple[str, ...] = tuple(dict.fromkeys((*ident, *wanted)))
        types = {c.name: c.type_oid for c in table.columns}
        self.needed_oids: tuple[int, ...] = tuple(types[c] for c in self.needed)
        self._tx = make_transformer(self.needed_oids)
        self._ident_pos = tuple((c, self.needed.index(c)) for c in ident)
        self._columns = {
            lookup.id: tuple(self.needed.index(c) for c in lookup.columns)
            for lookup in self.lookups
        }

    def _load(self, text: Sequence[Any]) -> list[Any]:
        plain = [None if v is UNCHANGED else v for v in text]
        try:
            return list(self._tx.load_sequence(plain))
        except Exception:  # a value psycopg cannot take: that column grants nothing
            out: list[Any] = []
            for oid, raw in zip(self.needed_oids, plain, strict=True):
                try:
                    out.append(None if raw is None else self._tx.get_loader(oid, TEXT).load(raw))
                except Exception:
                    log.warning("membership value not readable", table=str(self.table.ref))
                    out.append(None)
            return out

    def ident(self, values: Sequence[Any]) -> str:
        return dumps({c: values[i] for c, i in self._ident_pos}).decode()

    def ident_of(self, text: Sequence[Any]) -> str:
        """Identity from the text of the needed columns (a DELETE's old key)."""
        return self.ident(self._load(text))

    def deleted(self, ident: str) -> list[GrantChange]:
        return [GrantChange(lookup.id, ident, ()) for lookup in self.lookups]

    def changed(self, text: Sequence[Any], gone: str | None) -> list[GrantChange]:
        """The grants after an insert or update (text of `needed`); `gone`: the old
        identity when the key changed. A lookup whose columns were not resent (TOASTed,
        unchanged) keeps its grants: those columns did not change... unless others did,
        which cannot be told here: the row's grants are then left as they were, with a
        warning (sub-select columns are small values that PostgreSQL never TOASTs)."""
        values = self._load(text)
        ident = self.ident(values)
        out = self.deleted(gone) if gone is not None and gone != ident else []
        row = dict(zip(self.needed, values, strict=True))
        for lookup in self.lookups:
            if any(text[i] is UNCHANGED for i in self._columns[lookup.id]):
                log.warning("membership change without its values", table=str(self.table.ref))
                continue
            out.append(GrantChange(lookup.id, ident, lookup.pairs(row)))
        return out

    def copied(self, rows: Iterable[Sequence[Any]]) -> list[GrantChange]:
        """The grants of rows read by the initial copy (typed values of `needed`)."""
        out: list[GrantChange] = []
        for values in rows:
            ident = self.ident(values)
            row = dict(zip(self.needed, values, strict=True))
            out.extend(GrantChange(lookup.id, ident, lookup.pairs(row)) for lookup in self.lookups)
        return out


class _UsesLookups(Protocol):
    @property
    def lookup_tables(self) -> tuple[tuple[Lookup, TableInfo], ...]: ...


def membership_sources(routes: Iterable[_UsesLookups]) -> list[MembershipSource]:
    """One source per membership table the routes' rules read, with every lookup on it
    (each once)."""
    by_table: dict[int, tuple[TableInfo, dict[str, Lookup]]] = {}
    for lookup, table in (lt for route in routes for lt in route.lookup_tables):
        _, found = by_table.setdefault(table.oid, (table, {}))
        found.setdefault(lookup.id, lookup)
    return [MembershipSource(table, list(found.values())) for table, found in by_table.values()]
