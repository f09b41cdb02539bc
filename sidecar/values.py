"""PostgreSQL text values → typed Python values → JSON, the same way everywhere.

Typed values come from psycopg's own loaders, chosen per column type OID (never
hand-written type parsing). A few loaders are made lenient where PostgreSQL can hold
values Python cannot (`infinity` timestamps, years beyond 9999): those degrade to their
text form instead of failing the whole stream. Intervals keep their text form (the
replication session pins `IntervalStyle = iso_8601`, so clients get ISO 8601 durations).
Types psycopg does not know (enums, domains over unknown types, extensions) load as text.

The JSON form (DESIGN.md "Values are JSON-typed"): numbers and booleans as JSON,
numeric / timestamps / dates / uuid as strings, json/jsonb as PostgreSQL's own text of the
value embedded as JSON (`orjson.Fragment`: never parsed, so numbers of any size and
precision and nesting of any depth PostgreSQL stores come out exactly), arrays as lists,
bytea as PostgreSQL's hex text (`\\x…`), non-finite floats as the strings "NaN",
"Infinity", "-Infinity".

Session settings every connection that reads values must use, so that COPY and the
replication stream produce the same text for the same value: `SESSION_SETTINGS`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import os
import re
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
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


def session_options(**extra: str) -> str:
    """The settings (and `extra` ones) as a libpq `options` string (`-c name=value …`)."""
    settings = {**SESSION_SETTINGS, **extra}
    return " ".join(f"-c {k}={v.replace(' ', '')}" for k, v in settings.items())


# Every connection to PostgreSQL gives up connecting after CONNECT_TIMEOUT seconds and
# probes an idle socket with TCP keepalives, so a vanished peer (a frozen host, a network
# partition) is noticed in about idle + interval × count seconds, not hours later.
CONNECT_TIMEOUT = 5
NETWORK_KWARGS: dict[str, Any] = {
    "connect_timeout": CONNECT_TIMEOUT,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


def shut_down(conn: psycopg.AsyncConnection[Any]) -> None:
    """Cut a connection whose server stopped answering: its socket is shut down (the
    descriptor stays valid), so whatever waits on it sees the connection lost at once —
    no query cancellation, which would need an answer from that same server."""
    with contextlib.suppress(Exception), socket.socket(fileno=os.dup(conn.pgconn.socket)) as s:
        s.shutdown(socket.SHUT_RDWR)


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


class JsonText(str):
    """A json / jsonb value as PostgreSQL's text of it, emitted verbatim by `default`
    (as an `orjson.Fragment`): a number beyond 64 bits or 17 digits stays exactly what
    PostgreSQL holds, and nesting deeper than a JSON library recurses (PostgreSQL stores
    thousands of levels) costs no parsing at all. PostgreSQL only stores valid JSON, so
    the text is valid JSON. Rules read it through `json_value`."""

    __slots__ = ()


class _JsonTextLoader(Loader):
    def load(self, data: Any) -> JsonText:
        return JsonText(bytes(data).decode("utf-8"))


JSON_TYPE_NAMES = ("json", "jsonb")
JSON_OIDS = frozenset(pg_types[n].oid for n in JSON_TYPE_NAMES)


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
    for oid in JSON_OIDS:
        amap.register_loader(oid, _JsonTextLoader)
    return amap


ADAPTERS = _build_adapters()


def configure_connection(conn: psycopg.AsyncConnection | psycopg.Connection) -> None:
    """Make a connection load values exactly as capture does (same rev on both paths)."""
    for name in (
        "date",
        "timestamp",
        "timestamptz",
        "time",
        "timetz",
        "interval",
        *JSON_TYPE_NAMES,
    ):
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
    if type(value) is JsonText:
        return orjson.Fragment(str.__str__(value))
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


# -- exact JSON in Python: numbers of any size, any depth ----------------------------------

_WS = re.compile(r"[ \t\n\r]*")
_STRUCTURAL = re.compile(r'["\[\]{}]')
_SCALAR_END = re.compile(r"[,}\] \t\n\r]")
_scanstring = json.decoder.scanstring  # type: ignore[attr-defined]


def raw_members(text: str) -> dict[str, str]:
    """The members of a JSON object, each value as its raw JSON text (not parsed, so a
    value of any depth or number of any size is kept as it is). Only strings are decoded
    (the standard library's scanner); raises ValueError on text that is not an object."""
    pos = _WS.match(text).end()  # type: ignore[union-attr]
    if text[pos : pos + 1] != "{":
        raise ValueError("not a JSON object")
    pos = _WS.match(text, pos + 1).end()  # type: ignore[union-attr]
    out: dict[str, str] = {}
    if text[pos : pos + 1] == "}":
        return out
    while True:
        if text[pos : pos + 1] != '"':
            raise ValueError(f"expected a member name at {pos}")
        name, pos = _scanstring(text, pos + 1, False)
        pos = _WS.match(text, pos).end()  # type: ignore[union-attr]
        if text[pos : pos + 1] != ":":
            raise ValueError(f"expected ':' at {pos}")
        start = _WS.match(text, pos + 1).end()  # type: ignore[union-attr]
        end = _value_end(text, start)
        out[name] = text[start:end]
        pos = _WS.match(text, end).end()  # type: ignore[union-attr]
        sep = text[pos : pos + 1]
        if sep == "}":
            return out
        if sep != ",":
            raise ValueError(f"expected ',' or '}}' at {pos}")
        pos = _WS.match(text, pos + 1).end()  # type: ignore[union-attr]


def _value_end(text: str, pos: int) -> int:
    """Where the JSON value starting at `pos` ends (brackets counted, strings skipped)."""
    first = text[pos : pos + 1]
    if first == '"':
        return int(_scanstring(text, pos + 1, False)[1])
    if first not in ("[", "{"):
        m = _SCALAR_END.search(text, pos)
        end = m.start() if m else len(text)
        if end == pos:
            raise ValueError(f"expected a value at {pos}")
        return end
    depth = 0
    while True:
        m = _STRUCTURAL.search(text, pos)
        if m is None:
            raise ValueError("unterminated JSON value")
        pos = m.end()
        c = m.group()
        if c == '"':
            pos = _scanstring(text, pos, False)[1]
        elif c in "[{":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return pos


def exact_leaf(raw: str) -> Any:
    """A JSON value as Python when orjson reads it back to the same text, else kept as
    its text (`orjson.Fragment`): big or long numbers, deep nesting, PostgreSQL's json
    text with its own spacing."""
    try:
        value = orjson.loads(raw)
        if orjson.dumps(value) == raw.encode():
            return value
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):  # deeper than orjson goes
        pass
    return orjson.Fragment(raw)


_ORJSON_DEPTH = 254  # orjson writes no deeper


def _not_plain(value: Any) -> bool:
    """Whether a parsed value has a float (maybe rounded by orjson) or nesting deeper than
    orjson writes."""
    stack = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        kind = type(v)
        if kind is float or depth > _ORJSON_DEPTH:
            return True
        if kind is dict:
            stack.extend((x, depth + 1) for x in v.values())
        elif kind is list:
            stack.extend((x, depth + 1) for x in v)
    return False


def loads_exact(data: bytes | str, levels: int = 2) -> Any:
    """A JSON object (a change line, a stored row) as Python, exactly: when orjson would
    round a number (it reads integers beyond 64 bits and long decimals as doubles) or
    cannot read the nesting, the object is split `levels` deep and each value that does
    not read back to its own text stays a `orjson.Fragment` of it (emitted as is)."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    else:
        if not _not_plain(value):
            return value
    text = data if isinstance(data, str) else bytes(data).decode()
    return _split(text, levels)


class JsonRow(Mapping[str, Any]):
    """A JSON object (a row as the store keeps it) held as its text, read (`loads_exact`)
    only when looked into: a push answers with rows it never looks into, and `as_json`
    hands the text to orjson as it is (`fragment`)."""

    __slots__ = ("_value", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._value: dict[str, Any] | None = None

    def _dict(self) -> dict[str, Any]:
        if self._value is None:
            self._value = loads_exact(self.raw)
        return self._value

    def __getitem__(self, name: str) -> Any:
        return self._dict()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._dict())

    def __repr__(self) -> str:
        return f"JsonRow({self.raw!r})"

    def fragment(self) -> orjson.Fragment:
        """The object for orjson: its text, as it is."""
        return orjson.Fragment(self.raw)


def _split(text: str, levels: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, raw in raw_members(text).items():
        if levels > 1 and raw.startswith("{"):
            out[name] = _split(raw, levels - 1)
        else:
            out[name] = exact_leaf(raw)
    return out


def json_value(value: Any) -> Any:
    """A json/jsonb value as Python objects (for rules): `JsonText` is parsed, integers
    exactly (long numbers as `Decimal`); ValueError when it is nested deeper than Python
    parses. Other values are returned as they are."""
    if type(value) is not JsonText:
        return value
    text = str.__str__(value)
    try:
        return orjson.loads(text) if not _long_number(text) else _exact_json(text)
    except orjson.JSONDecodeError:
        return _exact_json(text)


_LONG_NUMBER = re.compile(r"[0-9]{16}")


def _long_number(text: str) -> bool:
    return _LONG_NUMBER.search(text) is not None


def _exact_json(text: str) -> Any:
    try:
        return json.loads(text, parse_float=Decimal)
    except RecursionError:
        raise ValueError("json value nested too deep to evaluate") from None
