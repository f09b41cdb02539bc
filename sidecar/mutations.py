"""Push requests as values: parse and check a body before anything touches the database.

Whole-request problems (malformed JSON, not an object, no or too many mutations, missing
or repeated ids, unknown collection or op) refuse the request (400/413) and nothing is
applied. Problems of one mutation against its collection (a column it may not write, a
value of the wrong type for the column's PostgreSQL type) reject that mutation only
(in an atomic batch: the whole batch).
"""

from __future__ import annotations

import functools
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from types import MappingProxyType
from typing import Any, Literal

from sidecar.catalog import ColumnInfo
from sidecar.errors import InvalidRequest, PayloadTooLarge, SidecarError, ValidationFailed
from sidecar.pgtypes import parse_type_name
from sidecar.values import JsonRow

Op = Literal["insert", "update", "delete"]
Status = Literal["applied", "duplicate", "conflict", "rejected"]
OPS: tuple[Op, ...] = ("insert", "update", "delete")
MAX_ID = 200


@dataclass(frozen=True, slots=True)
class Mutation:
    id: str
    collection: str
    op: Op
    key: Mapping[str, Any] = field(hash=False)
    data: Mapping[str, Any] = field(hash=False)
    base_rev: str | None = None
    base: Mapping[str, Any] | None = field(default=None, hash=False)
    client_time: str | None = None


@dataclass(frozen=True, slots=True)
class MutationResult:
    id: str
    status: Status
    rev: str | None = None
    row: Mapping[str, Any] | None = field(default=None, hash=False)
    error: Mapping[str, Any] | None = field(default=None, hash=False)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "status": self.status}
        if self.rev is not None:
            out["rev"] = self.rev
        if type(self.row) is JsonRow:  # the row's JSON as the store has it, never read
            out["row"] = self.row.fragment()
        elif self.row is not None:
            out["row"] = dict(self.row)
        if self.error is not None:
            out["error"] = dict(self.error)
        return out


def rejected(mutation_id: str, error: SidecarError) -> MutationResult:
    return MutationResult(mutation_id, "rejected", error=error.to_problem())


# -- request body -----------------------------------------------------------------------


def _obj(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequest(f"{where} must be a JSON object", pointer=where)
    return MappingProxyType(value)


def parse_push(
    body: Any, *, collections: Mapping[str, Any], max_push: int
) -> tuple[list[Mutation], bool]:
    """The mutations of a push body and its `atomic` flag; InvalidRequest if malformed."""
    if not isinstance(body, dict):
        raise InvalidRequest('the body must be a JSON object {"mutations": [...]}')
    # Fields this version does not know are ignored (a newer client keeps working).
    raw = body.get("mutations")
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest("`mutations` must be a non-empty list", pointer="/mutations")
    if len(raw) > max_push:
        raise PayloadTooLarge(
            f"{len(raw)} mutations in one push; the limit is {max_push} (limits.max_push)"
        )
    atomic = body.get("atomic", False)
    if not isinstance(atomic, bool):
        raise InvalidRequest("`atomic` must be true or false", pointer="/atomic")
    seen: set[str] = set()
    out = []
    for i, item in enumerate(raw):
        m = _parse_one(item, f"/mutations/{i}", collections)
        if m.id in seen:
            raise InvalidRequest(
                f"mutation id {m.id!r} appears twice", pointer=f"/mutations/{i}/id"
            )
        seen.add(m.id)
        out.append(m)
    return out, atomic


def _parse_one(item: Any, where: str, collections: Mapping[str, Any]) -> Mutation:
    if not isinstance(item, dict):
        raise InvalidRequest(f"{where} must be a JSON object", pointer=where)
    # Fields this version does not know are ignored (forward compatibility); unknown
    # columns in `data` are still refused, per mutation (plan.py).
    mid = item.get("id")
    if not isinstance(mid, str) or not mid or len(mid) > MAX_ID or "\x00" in mid:
        raise InvalidRequest(
            f"{where}/id must be a non-empty string (client-made, unique) of at most "
            f"{MAX_ID} characters, without NUL",
            pointer=f"{where}/id",
        )
    coll = item.get("collection")
    if not isinstance(coll, str) or coll not in collections:
        raise InvalidRequest(
            f"{where}/collection: unknown collection {coll!r}; known: {', '.join(collections)}",
            pointer=f"{where}/collection",
        )
    op = item.get("op")
    if op not in OPS:
        raise InvalidRequest(
            f"{where}/op must be one of insert, update, delete", pointer=f"{where}/op"
        )
    key = _obj(item.get("key", {}), f"{where}/key")
    data = _obj(item.get("data", {}), f"{where}/data")
    base_rev = item.get("base_rev")
    if base_rev is not None and not isinstance(base_rev, str):
        raise InvalidRequest(f"{where}/base_rev must be a string", pointer=f"{where}/base_rev")
    if op in ("update", "delete") and base_rev is None:
        raise InvalidRequest(
            f"{where}: an {op} needs `base_rev` (the `rev` the client last saw)",
            pointer=f"{where}/base_rev",
        )
    if op in ("update", "delete") and not key:
        raise InvalidRequest(f"{where}: an {op} needs `key`", pointer=f"{where}/key")
    base = item.get("base")
    client_time = item.get("client_time")
    if client_time is not None and not isinstance(client_time, str):
        raise InvalidRequest(
            f"{where}/client_time must be a string", pointer=f"{where}/client_time"
        )
    return Mutation(
        id=mid,
        collection=coll,
        op=op,
        key=key,
        data=data,
        base_rev=base_rev,
        base=None if base is None else _obj(base, f"{where}/base"),
        client_time=client_time,
    )


# -- values against column types --------------------------------------------------------

_INT_BITS = {"smallint": 16, "integer": 32, "bigint": 64}
_NUMERIC = re.compile(r"^\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*$")


@functools.lru_cache(maxsize=512)
def _base_type(type_name: str) -> str:
    """The type name without modifiers, `[]` kept: `numeric(10,2)[]` → `numeric[]`."""
    parsed = parse_type_name(type_name)
    return parsed.base + "[]" * parsed.dims


def check_value(column: ColumnInfo, value: Any, pointer: str | None = None) -> None:
    """ValidationFailed unless `value` (JSON) can be a value of the column's type;
    `pointer`: where the value is in the mutation (e.g. `data/title`)."""
    where = {"column": column.name} | ({"pointer": pointer} if pointer else {})
    if value is None:
        if not column.nullable:
            raise ValidationFailed(f"column {column.name} cannot be null", **where)
        return
    t = _base_type(column.type_name)
    problem = _type_problem(t, value) or _nul_problem(value)
    if problem:
        raise ValidationFailed(f"column {column.name} ({column.type_name}): {problem}", **where)


def _nul_problem(value: Any) -> str | None:
    """PostgreSQL text cannot hold NUL (U+0000), in any type's text form. Iterative: a
    value may be nested as deep as the body parser allows."""
    todo = [value]
    while todo:
        v = todo.pop()
        if isinstance(v, str):
            if "\x00" in v:
                return "text cannot contain NUL (\\u0000)"
        elif isinstance(v, list):
            todo.extend(v)
        elif isinstance(v, dict):
            todo.extend(v.keys())
            todo.extend(v.values())
    return None


def _type_problem(t: str, value: Any) -> str | None:
    if t.endswith("[]"):
        if not isinstance(value, list):
            return "expects a JSON array"
        for v in value:
            if v is not None and (p := _type_problem(t[:-2], v)):
                return f"array element: {p}"
        return None
    if t in _INT_BITS:
        if isinstance(value, bool) or not isinstance(value, int):
            return "expects an integer"
        limit = 1 << (_INT_BITS[t] - 1)
        return None if -limit <= value < limit else "integer out of range"
    if t in ("numeric", "real", "double precision"):
        if isinstance(value, bool):
            return "expects a number"
        if isinstance(value, int | float):
            return None if t != "numeric" or math.isfinite(value) else "expects a finite number"
        if isinstance(value, str) and (
            _NUMERIC.match(value) or value in ("NaN", "Infinity", "-Infinity")
        ):
            return None
        return "expects a number (or a numeric string)"
    if t == "boolean":
        return None if isinstance(value, bool) else "expects true or false"
    if t in ("json", "jsonb"):
        return None
    if not isinstance(value, str):
        return "expects a string"
    return _string_problem(t, value)


def _string_problem(t: str, value: str) -> str | None:
    if "\x00" in value:
        return "text cannot contain NUL characters"
    try:
        if t == "uuid":
            uuid.UUID(value)
        elif t == "date":
            if value not in ("infinity", "-infinity"):
                date.fromisoformat(value)
        elif t.startswith("timestamp"):
            if value not in ("infinity", "-infinity"):
                datetime.fromisoformat(value.replace("Z", "+00:00"))
        elif t == "bytea":
            if not value.startswith("\\x"):
                return "expects PostgreSQL hex text (\\x…)"
            bytes.fromhex(value[2:])
    except ValueError:
        return f"{value[:40]!r} is not a valid {t}"
    return None
