"""Route: one collection's mapping from a table's text values to what the store keeps.

For each row it computes, from the text values of the columns the collection needs:
- `ident`: the row's identity in the store (the replica identity columns' text, which is
  what a DELETE's old key carries), so deletes never need the full old row;
- `key` and `row`: JSON objects of the client key and of the exposed columns;
- `rev`: a short hash of `row` (the write path computes it the same way);
- `scopes`: the read rule's partitions the row belongs to, prefixed by the collection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from sidecar.catalog import TableInfo
from sidecar.changes import Image, rev_of
from sidecar.config.model import CollectionConfig
from sidecar.rules import ReadRule, compile_read_rule
from sidecar.values import dumps, json_fixer, make_transformer

Text = bytes | None


def scope_prefix(collection: str) -> str:
    return f"{collection}/"


class Route:
    """The compiled mapping of one collection onto one table."""

    def __init__(self, config: CollectionConfig, table: TableInfo) -> None:
        self.name = config.name
        self.config = config
        self.table = table
        self.exposed: tuple[str, ...] = config.columns or table.column_names
        self.key: tuple[str, ...] = (
            config.key or table.primary_key or (table.unique_keys[0] if table.unique_keys else ())
        )
        if table.replica_identity in ("d", "i") and table.identity_index:
            self.ident_columns: tuple[str, ...] = table.identity_index
        else:
            self.ident_columns = self.key
        types = {c.name: c.type_name for c in table.columns}
        self.read: ReadRule = compile_read_rule(config.read, types)
        extra = [
            c
            for c in (*self.key, *self.ident_columns, *sorted(self.read.columns))
            if c not in self.exposed
        ]
        self.needed: tuple[str, ...] = tuple(dict.fromkeys((*self.exposed, *extra)))
        cols = {c.name: c for c in table.columns}
        self.needed_oids: tuple[int, ...] = tuple(cols[c].type_oid for c in self.needed)
        self._tx = make_transformer(self.needed_oids)
        pos = {c: i for i, c in enumerate(self.needed)}
        self._n_exposed = len(self.exposed)
        self._key_pos = tuple(pos[c] for c in self.key)
        self._ident_pos = tuple(pos[c] for c in self.ident_columns)
        self._fixers = tuple(
            (i, f) for i, oid in enumerate(self.needed_oids) if (f := json_fixer(oid)) is not None
        )
        self._prefix = scope_prefix(self.name)
        self._rule_uses_columns = bool(self.read.columns)

    # -- identity -----------------------------------------------------------------------

    def ident_of(self, text: Sequence[Text]) -> str:
        """Identity from the text of the needed columns (only ident positions are read)."""
        return orjson.dumps([_s(text[i]) for i in self._ident_pos]).decode()

    # -- typed values -------------------------------------------------------------------

    def typed(self, text: Sequence[Text]) -> list[Any]:
        return list(self._tx.load_sequence(text))

    def image(self, text: Sequence[Text]) -> Image:
        """The store image of a row given the text of every needed column."""
        values = self.typed(text)
        for i, fix in self._fixers:
            values[i] = fix(values[i])
        names = self.needed
        n = self._n_exposed
        row_json = dumps(dict(zip(names[:n], values[:n], strict=True)))
        key_json = dumps({names[i]: values[i] for i in self._key_pos})
        if self._rule_uses_columns:
            scopes = self.read.row_scopes(dict(zip(names, values, strict=True)))
        else:
            scopes = self.read.row_scopes({})
        return Image(
            ident=orjson.dumps([_s(text[i]) for i in self._ident_pos]).decode(),
            key=key_json,
            row=row_json,
            rev=rev_of(row_json),
            scopes=tuple(self._prefix + s for s in scopes),
            mirror=tuple(_s(v) for v in text),
        )

    def request_scopes(self, claims: Mapping[str, Any]) -> tuple[str, ...]:
        return tuple(self._prefix + s for s in self.read.request_scopes(claims))

    def json_row(self, values: Mapping[str, Any]) -> bytes:
        """JSON of the exposed columns from typed values (as a SELECT returns them)."""
        row = {c: values[c] for c in self.exposed}
        for i, fix in self._fixers:
            name = self.needed[i]
            if name in row:
                row[name] = fix(row[name])
        return dumps(row)


def _s(v: Text) -> str | None:
    return None if v is None else v.decode("utf-8")
