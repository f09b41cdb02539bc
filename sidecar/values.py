"""PostgreSQL text values → typed Python values → JSON, the same way everywhere.

Typed values come from psycopg's own loaders, chosen per column type OID (never
hand-written type parsing). A few loaders are made lenient where PostgreSQL can hold
values Python cannot (`infinity` timestamps, years beyond 9999): those degrade to their
text form instead of failing the whole stream. Intervals keep their text form (the
replication session pins `IntervalStyle = iso_8601`, so clients get ISO 8601 durations).
Types psycopg does not know (enums, domains over unknown types, extensions) load as text.

The JSON form (DESIGN.md "Values are JSON-typed"): numbers and booleans as JSON,
numeric / timestamps / dates / uuid as strings, json/jsonb as objects, arrays as lists,
bytea as PostgreSQL's hex text (`\\x…`), non-finite floats as the strings "NaN",
"Infinity", "-Infinity".

Session settings every connection that reads values must use, so that COPY and the
replication stream produce the same text for the same value: `SESSION_SETTINGS`.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Any

import orjson
import psycopg
from psycopg import abc as pg_abc
from psycopg.adapt import AdaptersMap, Loader, Transformer
from psycopg.postgres import types as pg_types
from psycopg.pq import Format
from psycopg.types.range import Range

# Pinned on the replication connection and on the snapshot (COPY) connection.
SESSION_SETTINGS: dict[str, str] = {
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "iso_8601",
    "TimeZone": "UTC",
    "extra_float_digits": "3",
    "bytea_output": "hex",
    "client_encoding": "UTF8",
}


def session_options() -> str:
    """The settings as a libpq `options` string (`-c name=value …`)."""
    return " ".join(f"-c {k}={v.replace(' ', '')}" for k, v in SESSION_SETTINGS.items())


def _lenient(base: type[pg_abc.Loader]) -> type[Loader]:
    """A loader that returns the text when psycopg cannot represent the value."""

    class Lenient(Loader):
        def __init__(self, oid: int, context: Any = None) -> None:
            super().__init__(oid, context)
            self._inner = base(oid, context)

        def load(self, data: Any) -> Any:
            try:
                return self._inner.load(data)
            except psycopg.DataError:
                return bytes(data).decode("utf-8")

    Lenient.__name__ = f"Lenient{base.__name__}"
    return Lenient


class _TextLoader(Loader):
    def load(self, data: Any) -> str:
        return bytes(data).decode("utf-8")


def _iso_timetz(base: type[pg_abc.Loader]) -> type[Loader]:
    """`timetz` as ISO 8601 text (`"10:30:00+02:00"`): JSON has no zoned time of day."""

    class IsoTimeTz(Loader):
        def __init__(self, oid: int, context: Any = None) -> None:
            super().__init__(oid, context)
            self._inner = base(oid, context)

        def load(self, data: Any) -> Any:
            value = self._inner.load(data)
            return value if isinstance(value, str) else value.isoformat()

    return IsoTimeTz


def _build_adapters() -> AdaptersMap:
    amap = AdaptersMap(psycopg.adapters)
    for name in ("date", "timestamp", "timestamptz", "time", "timetz"):
        oid = pg_types[name].oid
        base = amap.get_loader(oid, Format.TEXT)
        if base is not None:
            amap.register_loader(oid, _lenient(base))
    timetz = pg_types["timetz"].oid
    timetz_base = amap.get_loader(timetz, Format.TEXT)
    if timetz_base is not None:
        amap.register_loader(timetz, _iso_timetz(timetz_base))
    amap.register_loader(pg_types["interval"].oid, _TextLoader)
    return amap


ADAPTERS = _build_adapters()


def configure_connection(conn: psycopg.AsyncConnection | psycopg.Connection) -> None:
    """Make a connection load values exactly as capture does (same rev on both paths)."""
    for name in ("date", "timestamp", "timestamptz", "time", "timetz", "interval"):
        oid = pg_types[name].oid
        loader = ADAPTERS.get_loader(oid, Format.TEXT)
        if loader is not None:
            conn.adapters.register_loader(oid, loader)


_FLOAT_OIDS = {pg_types["float4"].oid, pg_types["float8"].oid}
_FLOAT_ARRAY_OIDS = {pg_types["float4"].array_oid, pg_types["float8"].array_oid}


def make_transformer(type_oids: Sequence[int]) -> pg_abc.Transformer:
    """A psycopg Transformer loading text values of these column types, in order."""
    tx = Transformer(ADAPTERS)
    tx.set_loader_types(list(type_oids), Format.TEXT)
    return tx


def _float_json(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    if isinstance(v, list):
        return [_float_json(x) for x in v]
    return v


def json_fixer(type_oid: int) -> Callable[[Any], Any] | None:
    """A per-column fix-up needed before orjson, or None when orjson encodes it right."""
    if type_oid in _FLOAT_OIDS or type_oid in _FLOAT_ARRAY_OIDS:
        return _float_json
    return None


def default(value: Any) -> Any:
    """orjson's fallback for types it does not encode itself."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "\\x" + bytes(value).hex()
    if isinstance(
        value,
        ipaddress.IPv4Address
        | ipaddress.IPv6Address
        | ipaddress.IPv4Network
        | ipaddress.IPv6Network
        | ipaddress.IPv4Interface
        | ipaddress.IPv6Interface,
    ):
        return str(value)
    if isinstance(value, timedelta):
        return str(value)
    if isinstance(value, Range):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


JSON_OPTIONS = orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_NON_STR_KEYS


def dumps(value: Any) -> bytes:
    """JSON bytes for typed values (see module doc for the mapping).

    Hot loops call `orjson.dumps(value, default, JSON_OPTIONS)` themselves: the same.
    """
    return orjson.dumps(value, default=default, option=JSON_OPTIONS)


def to_json_value(value: Any) -> Any:
    """The JSON value (as Python) of one typed value: `loads(dumps(v))`."""
    return orjson.loads(dumps(value))
