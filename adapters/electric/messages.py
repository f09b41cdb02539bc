"""The core's change lines as Electric messages for one shape and caller (`Renderer`).

The first response of an initial sync (`offset=-1`) sends each row as `insert` and leaves
out tombstones; later responses send an upsert as `update` carrying the whole row (the
core does not tell inserts from updates) and a delete as `delete`. With `where`, an
upserted row the expression does not admit becomes a `delete`, so a row moving out of the
shape leaves the client.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from adapters.electric.protocol import Message
from adapters.electric.shape import ShapeSpec
from adapters.electric.values import column_info, column_type
from adapters.electric.where import where_matcher

__all__ = ["Renderer", "key_json"]


class Renderer:
    """Turns the core's change lines into Electric messages for one shape and caller."""

    def __init__(self, spec: ShapeSpec, claims: Mapping[str, Any]) -> None:
        route = spec.route
        self.spec = spec
        self.claims = claims
        self.types = {c: column_type(column_info(route, c)) for c in spec.columns}
        self.key_types = {k: column_type(column_info(route, k)) for k in route.key}
        self.relation = [route.table.ref.schema, route.table.ref.name]
        self.matches: Callable[[Mapping[str, Any]], bool] = lambda row: True
        if spec.where is not None:
            self.matches = where_matcher(spec.where, route, claims)

    def schema(self) -> dict[str, Any]:
        return {c: t.schema for c, t in self.types.items()}

    def key(self, key: Mapping[str, Any]) -> str:
        parts = [_quote(str(self.key_types[k].encode(key.get(k)))) for k in self.key_types]
        return "/".join([_quote(self.spec.table), *parts])

    def messages(
        self,
        changes: Sequence[Mapping[str, Any]],
        initial: bool,
        txids: Mapping[str, int] | None = None,
    ) -> list[Message]:
        """`changes`: a page's change lines, parsed. `initial`: the first answer to
        `offset=-1`, where the client holds nothing. `txids`: key JSON → transaction that
        last wrote the row through push."""
        out: list[Message] = []
        for change in changes:
            message = self._message(change, initial)
            if message is not None:
                if txids and (xid := txids.get(key_json(change["key"]))) is not None:
                    message["headers"]["txids"] = [xid]
                out.append(message)
        return out

    def _message(self, change: Mapping[str, Any], initial: bool) -> Message | None:
        key = change["key"]
        if change["op"] == "upsert" and self.matches(change["row"]):
            operation = "insert" if initial else "update"
            return self._change(operation, key, self._value(change["row"]))
        if initial:
            return None  # a tombstone, or a row outside `where`: the client has neither
        value = {k: t.encode(key.get(k)) for k, t in self.key_types.items()}
        return self._change("delete", key, value)

    def _change(self, operation: str, key: Mapping[str, Any], value: Message) -> Message:
        headers = {"operation": operation, "relation": self.relation}
        return {"headers": headers, "key": self.key(key), "value": value}

    def _value(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return {
            c: None if (v := row.get(c)) is None else t.encode(v) for c, t in self.types.items()
        }


def _quote(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def key_json(key: Mapping[str, Any]) -> str:
    """A row key as the JSON text the core's push records look it up by."""
    return orjson.dumps(key).decode()
