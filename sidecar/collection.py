"""Collection: one collection's mapping from a table's text values to what the store keeps.

For each row it computes, from the text values of the columns the collection needs
(`Collection.needed`: the exposed columns first, then key, identity and rule columns):
- `ident`: the row's identity in the store (the replica identity columns, which is what
  a DELETE's old key carries), so deletes never need the full old row;
- `key` and `row`: JSON objects of the client key and of the exposed columns;
- `rev`: a short hash of `row` (the write path computes it the same way);
- `scopes`: the read rule's partitions the row belongs to, prefixed by the collection;
- `hidden`: JSON of the needed columns that are not exposed.

A TOASTed value that an UPDATE did not change arrives as "unchanged": its JSON value is
taken from the stored image instead, as the exact text stored (for the read rule too,
which then sees the JSON form of that value — exact for text, json and arrays of them,
the types that TOAST).

No value stops capture: a value that cannot be loaded or encoded (none is known since
json/jsonb are kept as PostgreSQL's text, see values.py) is kept as PostgreSQL's text of
it, with a warning (`value kept as text`) and the `sidecar_capture_values_as_text` count —
the row is never dropped.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson
import structlog
from psycopg.pq import Format

from sidecar.catalog import TableInfo
from sidecar.changes import Image, rev_of
from sidecar.config.expressions import ExpressionError, parse_expression
from sidecar.config.model import CollectionConfig
from sidecar.rules.scopes import Grants, Lookup, ReadRule, compile_read_rule
from sidecar.unchanged import UNCHANGED
from sidecar.values import (
    JSON_OIDS,
    JSON_OPTIONS,
    JsonText,
    dumps,
    exact_leaf,
    json_fixer,
    json_value,
    make_transformer,
    raw_members,
)
from sidecar.values import default as values_default

log = structlog.get_logger("sidecar.capture")

_EMPTY = b"{}"


def scope_prefix(collection: str) -> str:
    return f"{collection}/"


def _json_of(columns: tuple[tuple[str, int], ...]) -> Callable[[Sequence[Any]], bytes]:
    """JSON object of some columns of a row given as values (name, index in the values)."""
    encode, default, opts = orjson.dumps, values_default, JSON_OPTIONS
    if len(columns) == 1:
        ((name, index),) = columns
        return lambda values: bytes(memoryview(encode({name: values[index]}, default, opts)))
    return lambda values: bytes(
        memoryview(encode({c: values[i] for c, i in columns}, default, opts))
    )


class PendingImage:
    """A row change with values sent as UNCHANGED (TOAST): completed by the store with
    the row's stored JSON when the change is applied (see `StoreWriter.apply`)."""

    __slots__ = ("ident", "route", "text")

    def __init__(self, route: Collection, text: Sequence[Any], ident: str) -> None:
        self.route, self.text, self.ident = route, text, ident

    def complete(self, row: bytes | None, hidden: bytes | None) -> Image:
        if row is None:
            log.warning(
                "unchanged TOAST value for a row the store lacks", collection=self.route.name
            )
        return self.route.image(self.text, row, hidden)


class Collection:
    """The compiled mapping of one collection onto one table."""

    def __init__(
        self,
        config: CollectionConfig,
        table: TableInfo,
        tables: Mapping[str, TableInfo] | None = None,
    ) -> None:
        """`tables`: the tables the read rule's sub-selects name, by name as written."""
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
        found: dict[str, TableInfo] = {}

        def table_types(name: str) -> tuple[str, Mapping[str, str]]:
            info = (tables or {}).get(name)
            if info is None:
                raise config.read.error(
                    f"table {name} does not exist (or the sidecar's role cannot see it)",
                    config.read.node,
                )
            found[str(info.ref)] = info
            return str(info.ref), {c.name: c.type_name for c in info.columns}

        self.read: ReadRule = compile_read_rule(config.read, types, table_types)
        self._types, self._table_types = types, table_types
        self._rules: dict[str, ReadRule | None] = {config.read.text: self.read}
        # each lookup of the rule (nested ones too) with the table it reads
        self.lookup_tables: tuple[tuple[Lookup, TableInfo], ...] = tuple(
            (lookup, found[lookup.table]) for lookup in self.read.lookups
        )
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
        self._hidden = self.needed[self._n_exposed :]
        self._ident_pos = tuple((c, pos[c]) for c in self.ident_columns)
        self._key_json = _json_of(tuple((c, pos[c]) for c in self.key))
        self._ident_json = None if self.ident_columns == self.key else _json_of(self._ident_pos)
        self._fixers = tuple(
            (i, f) for i, oid in enumerate(self.needed_oids) if (f := json_fixer(oid)) is not None
        )
        self._prefix = scope_prefix(self.name)
        self._static_scopes = (
            None if self.read.columns else tuple(self._prefix + s for s in self.read.row_scopes({}))
        )
        self._scopes = self._scoper()
        self.values_as_text = 0  # values kept as their text (see the module doc)
        # The image of a row given the typed values of every needed column, in order.
        self.image_of_typed: Callable[[Sequence[Any]], Image] = self._image_builder()

    # -- identity -----------------------------------------------------------------------

    def ident_of(self, text: Sequence[Any]) -> str:
        """Identity from the text of the needed columns (only ident positions are read)."""
        plain = [None if v is UNCHANGED else v for v in text] if UNCHANGED in text else text
        try:
            loaded: Sequence[Any] = self._tx.load_sequence(plain)
        except Exception:  # a value psycopg cannot take: never stop capture
            loaded = self._salvage(plain)
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
        try:
            return self.image_of_typed(self._tx.load_sequence(text))
        except Exception:  # a value psycopg or orjson cannot take: never stop capture
            return self.image_of_typed(self._salvage(text))

    def change_image(self, text: Sequence[Any]) -> Image | PendingImage:
        """The image of a row change: pending when values were sent as UNCHANGED, to be
        completed by the store with the row's stored JSON."""
        if UNCHANGED in text:
            return PendingImage(self, text, self.ident_of(text))
        try:
            return self.image_of_typed(self._tx.load_sequence(text))
        except Exception:  # a value psycopg or orjson cannot take: never stop capture
            return self.image_of_typed(self._salvage(text))

    def copied_images(self, rows: Sequence[Sequence[Any]]) -> list[Image]:
        """Images of rows read by the initial copy (typed values of `needed`)."""
        image = self.image_of_typed
        try:
            return [image(r) for r in rows]
        except Exception:  # a value orjson cannot take: never stop the copy
            return [self._safe_typed_image(r) for r in rows]

    def _safe_typed_image(self, values: Sequence[Any]) -> Image:
        try:
            return self.image_of_typed(values)
        except Exception:
            return self.image_of_typed(self._salvage([None] * len(values), values))

    def _salvage(self, text: Sequence[Any], typed: Sequence[Any] | None = None) -> list[Any]:
        """Values of a row one by one: each one that cannot be loaded (from `text`) or
        encoded is replaced by its text (PostgreSQL's, or `str()` of a copied value)."""
        loaders = [self._tx.get_loader(oid, Format.TEXT) for oid in self.needed_oids]
        fixers = dict(self._fixers)
        out: list[Any] = []
        for i, name in enumerate(self.needed):
            raw = text[i]
            try:
                if typed is not None:
                    value = typed[i]
                else:
                    value = None if raw is None else loaders[i].load(raw)
                fix = fixers.get(i)
                dumps(fix(value) if fix else value)
            except Exception as exc:
                fallback = raw if typed is None else str(typed[i])
                value = (
                    bytes(fallback).decode()
                    if isinstance(fallback, bytes | memoryview)
                    else fallback
                )
                self.values_as_text += 1
                log.warning(
                    "value kept as text",
                    collection=self.name,
                    column=name,
                    type=self.table.column(name).type_name,  # type: ignore[union-attr]
                    error=f"{type(exc).__name__}: {exc}"[:200],
                )
            out.append(value)
        return out

    def _image_merging(
        self, text: Sequence[Any], old_row: bytes | None, old_hidden: bytes | None
    ) -> Image:
        plain = [None if v is UNCHANGED else v for v in text]
        try:
            values = list(self._tx.load_sequence(plain))
        except Exception:  # a value psycopg cannot take: never stop capture
            values = self._salvage(plain)
        # The stored JSON, split without parsing the values: each unchanged value is
        # taken as the exact text stored (its rev stays the one push computes).
        old: dict[str, str] = {}
        if old_row:
            old.update(raw_members(bytes(old_row).decode()))
        if old_hidden:
            old.update(raw_members(bytes(old_hidden).decode()))
        for i, v in enumerate(text):
            if v is UNCHANGED:
                raw = old.get(self.needed[i])
                if raw is None or raw == "null":
                    values[i] = None
                elif self.needed_oids[i] in JSON_OIDS:
                    values[i] = JsonText(raw)
                else:
                    values[i] = exact_leaf(raw)
        return self._safe_typed_image(values)

    def _image_builder(self) -> Callable[[Sequence[Any]], Image]:
        """`image_of_typed` for this route. Capture and the initial copy call it once per
        row, so it is a closure over locals."""
        needed, exposed, hidden_names = self.needed, self.exposed, self._hidden
        n = self._n_exposed
        fixers = self._fixers
        key_json, ident_json = self._key_json, self._ident_json
        static, scopes_of = self._static_scopes, self._scopes
        encode, default, opts = orjson.dumps, values_default, JSON_OPTIONS

        def image(values: Sequence[Any]) -> Image:
            if fixers:
                values = list(values)
                for i, fix in fixers:
                    values[i] = fix(values[i])
            # zip() without strict=: the lengths match by construction, and the keyword
            # argument alone costs a sixth of this function.
            # bytes(memoryview(…)): a copy the size of the JSON. orjson returns its output
            # in the buffer it wrote it in, of 4 KiB or more; kept in a batch, those
            # cost 4 KiB of fresh heap (and its page faults) per value.
            if hidden_names:
                row = bytes(memoryview(encode(dict(zip(exposed, values)), default, opts)))  # noqa: B905
                hidden = bytes(
                    memoryview(encode(dict(zip(hidden_names, values[n:])), default, opts))  # noqa: B905
                )
            else:
                row = bytes(memoryview(encode(dict(zip(needed, values)), default, opts)))  # noqa: B905
                hidden = _EMPTY
            key = key_json(values)
            ident = key if ident_json is None else ident_json(values)
            scopes = scopes_of(values) if static is None else static
            return Image(ident.decode(), key, row, rev_of(row), scopes, hidden)

        return image

    def _scoper(self) -> Callable[[Sequence[Any]], tuple[str, ...]]:
        """The read rule's scopes of a row given as values of `needed`; json/jsonb values
        the rule reads are parsed for it (kept as text in the row, see values.py)."""
        scopes = self.read.scoper(self._prefix, self.needed)
        json_read = tuple(
            i
            for i, (c, oid) in enumerate(zip(self.needed, self.needed_oids, strict=True))
            if oid in JSON_OIDS and c in self.read.columns
        )
        if not json_read:
            return scopes

        def parsed(values: Sequence[Any]) -> tuple[str, ...]:
            values = list(values)
            for i in json_read:
                # too deep to evaluate: the rule sees the text (not TRUE)
                with contextlib.suppress(ValueError):
                    values[i] = json_value(values[i])
            return scopes(values)

        return parsed

    def image_of_values(self, values: Mapping[str, Any]) -> Image:
        """The image of a row given typed values by column name (e.g. from a SELECT)."""
        return self.image_of_typed([values.get(c) for c in self.needed])

    def request_scopes(
        self,
        claims: Mapping[str, Any],
        grants: Grants | None = None,
        watch: set[str] | None = None,
    ) -> tuple[str, ...]:
        """The caller's scopes (prefixed); see `ReadRule.request_scopes`."""
        return tuple(self._prefix + s for s in self.read.request_scopes(claims, grants, watch))

    def rule_for(self, text: str | None) -> ReadRule:
        """The read rule `text` compiled over this table (a rule this collection had
        before a reload); the current rule when it no longer compiles (a column gone)."""
        if text is None:
            return self.read
        if text not in self._rules:
            try:
                self._rules[text] = compile_read_rule(
                    parse_expression(text), self._types, self._table_types
                )
            except ExpressionError:
                log.warning("an earlier read rule no longer compiles", collection=self.name)
                self._rules[text] = None
        return self._rules[text] or self.read

    def scopes_under(
        self,
        rule: ReadRule,
        claims: Mapping[str, Any],
        grants: Grants | None = None,
        watch: set[str] | None = None,
    ) -> tuple[str, ...]:
        """The caller's scopes under `rule` (this collection's, or one it had)."""
        return tuple(self._prefix + s for s in rule.request_scopes(claims, grants, watch))

    @property
    def dynamic(self) -> bool:
        """Whether a caller's scopes depend on captured rows (a membership rule)."""
        return bool(self.lookup_tables)


def collection_shapes(routes: Sequence[Collection]) -> dict[str, str]:
    """Per collection, a fingerprint of everything that decides what the store holds for
    it: table, key, columns and their types, read rule. A collection stored with another
    shape must be copied again (its rows, images and scopes would be stale)."""
    return {
        r.name: hashlib.blake2b(
            orjson.dumps(
                [
                    str(r.table.ref),
                    r.table.oid,  # a table dropped and created again is another table
                    list(r.key),
                    list(r.ident_columns),
                    [(c, r.table.column(c).type_name) for c in r.needed],  # type: ignore[union-attr]
                    list(r.exposed),
                    r.config.read.text,
                    # membership tables' shapes (only when there are: others keep theirs)
                    *(
                        [[(lk.id, [(c.name, c.type_name) for c in t.columns]) for lk, t in lookups]]
                        if (lookups := r.lookup_tables)
                        else []
                    ),
                ]
            ),
            digest_size=8,
        ).hexdigest()
        for r in routes
    }
