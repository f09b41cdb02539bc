"""Route: one collection's mapping from a table's text values to what the store keeps.

For each row it computes, from the text values of the columns the collection needs
(`Route.needed`: the exposed columns first, then key, identity and rule columns):
- `ident`: the row's identity in the store (the replica identity columns, which is what
  a DELETE's old key carries), so deletes never need the full old row;
- `key` and `row`: JSON objects of the client key and of the exposed columns;
- `rev`: a short hash of `row` (the write path computes it the same way);
- `scopes`: the read rule's partitions the row belongs to, prefixed by the collection;
- `hidden`: JSON of the needed columns that are not exposed.

A TOASTed value that an UPDATE did not change arrives as "unchanged": its JSON value is
taken from the stored image instead (for the read rule too, which then sees the JSON
form of that value — exact for text, json and arrays of them, the types that TOAST).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from sidecar.capture.pgoutput import UNCHANGED
from sidecar.catalog import TableInfo
from sidecar.changes import Image, rev_of
from sidecar.config.model import CollectionConfig
from sidecar.rules import ReadRule, compile_read_rule
from sidecar.values import dumps, json_fixer, make_transformer

Text = bytes | None
_EMPTY = b"{}"


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
        self._n = len(self.needed)
        self._n_exposed = len(self.exposed)
        self._key_pos = tuple((c, pos[c]) for c in self.key)
        self._ident_pos = tuple((c, pos[c]) for c in self.ident_columns)
        self._ident_is_key = self.ident_columns == self.key
        self._hidden = self.needed[self._n_exposed :]
        self._fixers = tuple(
            (i, f) for i, oid in enumerate(self.needed_oids) if (f := json_fixer(oid)) is not None
        )
        self._prefix = scope_prefix(self.name)
        self._rule_uses_columns = bool(self.read.columns)
        self._static_scopes = (
            None
            if self._rule_uses_columns
            else tuple(self._prefix + s for s in self.read.row_scopes({}))
        )

    # -- identity -----------------------------------------------------------------------

    def ident_of(self, text: Sequence[Any]) -> str:
        """Identity from the text of the needed columns (only ident positions are read)."""
        loaded = self._tx.load_sequence(
            [None if v is UNCHANGED else v for v in text] if UNCHANGED in text else text
        )
        return dumps({c: loaded[i] for c, i in self._ident_pos}).decode()

    # -- images -------------------------------------------------------------------------

    def image(
        self, text: Sequence[Any], old_row: bytes | None = None, old_hidden: bytes | None = None
    ) -> Image:
        """The store image of a row given the text of every needed column, in order.

        `old_row`/`old_hidden` (the stored JSON) fill in values sent as UNCHANGED.
        """
        if UNCHANGED in text:
            return self._image_merging(text, old_row, old_hidden)
        return self._image(list(self._tx.load_sequence(text)))

    def _image_merging(
        self, text: Sequence[Any], old_row: bytes | None, old_hidden: bytes | None
    ) -> Image:
        values = list(self._tx.load_sequence([None if v is UNCHANGED else v for v in text]))
        old: dict[str, Any] = {}
        if old_row:
            old.update(orjson.loads(old_row))
        if old_hidden:
            old.update(orjson.loads(old_hidden))
        for i, v in enumerate(text):
            if v is UNCHANGED:
                values[i] = old.get(self.needed[i])
        return self._image(values)

    def _image(self, values: list[Any]) -> Image:
        for i, fix in self._fixers:
            values[i] = fix(values[i])
        needed = self.needed
        n = self._n_exposed
        if n == self._n:
            row = dict(zip(needed, values, strict=True))
            hidden = _EMPTY
        else:
            row = dict(zip(needed[:n], values[:n], strict=True))
            hidden = dumps(dict(zip(self._hidden, values[n:], strict=True)))
        row_json = dumps(row)
        key = dumps({c: values[i] for c, i in self._key_pos})
        ident = key if self._ident_is_key else dumps({c: values[i] for c, i in self._ident_pos})
        if self._static_scopes is not None:
            scopes = self._static_scopes
        else:
            full = row if n == self._n else dict(zip(needed, values, strict=True))
            p = self._prefix
            scopes = tuple(p + s for s in self.read.row_scopes(full))
        return Image(ident.decode(), key, row_json, rev_of(row_json), scopes, hidden)

    def image_of_values(self, values: Mapping[str, Any]) -> Image:
        """The image of a row given typed values by column name (e.g. from a SELECT)."""
        return self._image([values.get(c) for c in self.needed])

    def request_scopes(self, claims: Mapping[str, Any]) -> tuple[str, ...]:
        return tuple(self._prefix + s for s in self.read.request_scopes(claims))
