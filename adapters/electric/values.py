"""Values as Electric's client reads them: the core's JSON → PostgreSQL's text form.

Numbers as decimal text (float4/float8 as PostgreSQL prints them), booleans `t`/`f`, json
as JSON text, arrays as array literals, timestamps and times as PostgreSQL prints them;
NULL stays `null`. `column_type` gives a column's `electric-schema` entry (type, dims,
not_null, typmod facts) and its encoder.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from psycopg.postgres import types as pg_types

from sidecar.catalog import ColumnInfo
from sidecar.collection import Collection
from sidecar.pgtypes import float_text, parse_type_name

__all__ = ["ColumnType", "Encoder", "column_info", "column_type"]

Encoder = Callable[[Any], Any]

_TIMESTAMP = re.compile(
    r"^(-?[0-9]{4,}-[0-9]{2}-[0-9]{2})[T ]([0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]+))?"
    r"(Z|[+-][0-9]{2}:[0-9]{2}(?::[0-9]{2})?)?$"
)
_TIME = re.compile(r"^([0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]+))?([+-][0-9]{2}:[0-9]{2})?$")
_ARRAY_SPECIAL = frozenset('{}",\\')


def _zone(zone: str | None) -> str:
    if not zone:
        return ""
    if zone == "Z":
        return "+00"
    return zone[:3] if zone[3:] in (":00", ":00:00") else zone


def _fraction(frac: str | None) -> str:
    frac = (frac or "").rstrip("0")
    return "." + frac if frac else ""


def _timestamp_text(value: Any) -> Any:
    """ISO 8601 (`2024-03-10T07:00:00.500000+00:00`) → PostgreSQL's `2024-03-10
    07:00:00.5+00`; PostgreSQL's own text (infinity, BC dates) is kept."""
    m = _TIMESTAMP.match(value) if isinstance(value, str) else None
    if m is None:
        return _plain_text(value)
    day, clock, frac, zone = m.groups()
    return f"{day} {clock}{_fraction(frac)}{_zone(zone)}"


def _time_text(value: Any) -> Any:
    m = _TIME.match(value) if isinstance(value, str) else None
    if m is None:
        return _plain_text(value)
    clock, frac, zone = m.groups()
    return f"{clock}{_fraction(frac)}{_zone(zone)}"


def _float_text(value: Any, kind: Literal["float8", "float4"] = "float8") -> Any:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return _plain_text(value)  # "NaN", "Infinity", "-Infinity" already
    return float_text(float(value), kind)


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def _plain_text(value: Any) -> Any:
    if value is True:
        return "t"
    if value is False:
        return "f"
    if isinstance(value, int | float):
        return _float_text(value) if isinstance(value, float) else str(value)
    if isinstance(value, dict | list):
        return _json_text(value)
    return value


_SCALAR_TEXT: dict[str, Encoder] = {
    "float4": lambda value: _float_text(value, "float4"),
    "float8": _float_text,
    "json": _json_text,
    "jsonb": _json_text,
    "timestamptz": _timestamp_text,
    "timestamp": _timestamp_text,
    "time": _time_text,
    "timetz": _time_text,
}


def _array_element(value: Any, element: Encoder) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, list):
        return _array_text(value, element)
    text = str(element(value))
    if (
        text
        and text.upper() != "NULL"
        and not any(c in _ARRAY_SPECIAL or c.isspace() for c in text)
    ):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _array_text(value: Any, element: Encoder) -> Any:
    """A JSON list → PostgreSQL's array literal (`{1,NULL,"a b"}`); text kept as it is."""
    if not isinstance(value, list):
        return value
    return "{" + ",".join(_array_element(v, element) for v in value) + "}"


@dataclass(frozen=True, slots=True)
class ColumnType:
    """A column as `electric-schema` describes it and as its values are written."""

    name: str  # PostgreSQL's internal name: int4, text, timestamptz, an enum's name
    dims: int
    schema: dict[str, Any]
    encode: Encoder


def column_type(info: ColumnInfo) -> ColumnType:
    known = pg_types.get(info.type_oid)
    parsed = parse_type_name(info.type_name)
    base, dims = parsed.base, parsed.dims
    if known is not None:
        base = known.name
        dims = 1 if known.array_oid == info.type_oid and known.oid != info.type_oid else 0
    schema: dict[str, Any] = {"type": base}
    if dims:
        schema["dims"] = dims
    if not info.nullable:
        schema["not_null"] = True
    schema.update(_typmod_schema(base, info.type_name))
    element = _SCALAR_TEXT.get(base, _plain_text)
    encode = (lambda v: _array_text(v, element)) if dims else element
    return ColumnType(base, dims, schema, encode)


def _typmod_schema(base: str, type_name: str) -> dict[str, int]:
    numbers = [int(x) for x in parse_type_name(type_name).typmods if x.isdigit()]
    if base == "varchar" and numbers:
        return {"max_length": numbers[0]}
    if base == "bpchar" and numbers:
        return {"length": numbers[0]}
    if base == "numeric" and numbers:
        return dict(zip(("precision", "scale"), numbers, strict=False))
    if base in ("timestamp", "timestamptz", "time", "timetz", "interval") and numbers:
        return {"precision": numbers[0]}
    return {}


def column_info(route: Collection, name: str) -> ColumnInfo:
    """The catalog's facts of an exposed column of `route`."""
    info = route.table.column(name)
    assert info is not None, name
    return info
