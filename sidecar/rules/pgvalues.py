"""PostgreSQL values in Python: the types, text input and output, comparison, kinds.

Values are what psycopg's loaders return (int, float, Decimal, str, bool, date, datetime,
UUID, dict/list, None), plus `Unknown`: a string of PostgreSQL's *unknown* type (a string
literal or a string claim). The semantics are PostgreSQL's:

- met with a typed value (an int column, a date column, ...) an unknown string is first
  converted to its type with that type's input syntax (`'42'` → 42, `' 42 '` → 42,
  `'2024-01-01'` → a date); two unknowns compare as text;
- text compares by code point, which is PostgreSQL's C collation; `ASCII_LOWER` and
  `ASCII_UPPER` fold ASCII letters only (the C ctype); the sidecar's databases are expected
  to use C (the tests do);
- text output is PostgreSQL's with DateStyle ISO and TimeZone UTC (floats through
  `sidecar.pgtypes.float_text`);
- NaN equals NaN and sorts after every other number;
- numeric values are bounded as PostgreSQL bounds them (`check_numeric`): at most
  131072 digits before the decimal point and 16383 after, else "value overflows numeric
  format"; the `NUMERIC` context is bounded accordingly (exact for any two such values),
  so no operation on a client's value can grow without bound.

A value PostgreSQL would refuse (bad input syntax for a type, comparing text with an
integer, ...) raises `EvaluationError`.

Known differences from a PostgreSQL session (deliberate): a timestamp without a zone
meeting a timestamptz (or a date meeting one) is taken as UTC, not the session time zone;
date/time input is ISO 8601 only; an exact number (integer, numeric) compared with a double
compares with the double's shortest decimal representation (PostgreSQL converts the exact
one to double; they differ only beyond 15-17 significant digits).

**Kinds** name the types the rules reason about statically: `int2`, `int4`, `int8`,
`numeric`, `float`, `text`, `bool`, `date`, `timestamp`, `timestamptz`, `uuid`.
`column_kind` maps a column's `format_type()` name to one; `parse_kind` reads text as one.
"""

from __future__ import annotations

import decimal
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import orjson

from sidecar.pgtypes import float_text, parse_type_name

__all__ = [
    "ASCII_LOWER",
    "ASCII_UPPER",
    "EXACT_NUMBERS",
    "INT_NAMES",
    "INT_RANGES",
    "NUMBERS",
    "NUMERIC",
    "NUMERIC_MAX_DIGITS",
    "NUMERIC_MAX_SCALE",
    "EvaluationError",
    "Unknown",
    "as_bool",
    "check_int8",
    "check_numeric",
    "check_range",
    "column_kind",
    "compare",
    "equal",
    "exact",
    "from_text",
    "parse_bool",
    "parse_date",
    "parse_datetime",
    "parse_float",
    "parse_int",
    "parse_kind",
    "parse_numeric",
    "parse_uuid",
    "to_text",
    "type_name_of",
]

#: PostgreSQL's numeric: up to 131072 digits before the decimal point (weight 32767 in
#: base 10000) and 16383 after (NUMERIC_DSCALE_MAX)
NUMERIC_MAX_DIGITS = 131072
NUMERIC_MAX_SCALE = 16383
_NUMERIC_MAX_ADJUSTED = NUMERIC_MAX_DIGITS - 1
_NUMERIC_OVERFLOW = "value overflows numeric format"
#: exact for the sum, difference and product of any two values within those bounds
#: (at most 2 * 147455 digits); results are then checked (`check_numeric`)
NUMERIC = decimal.Context(
    prec=2 * (NUMERIC_MAX_DIGITS + NUMERIC_MAX_SCALE) + 8,
    Emax=4 * NUMERIC_MAX_DIGITS,
    Emin=-4 * (NUMERIC_MAX_DIGITS + NUMERIC_MAX_SCALE),
    traps=[decimal.Overflow],
)
INT_RANGES = {"int2": 1 << 15, "int4": 1 << 31, "int8": 1 << 63}
INT_NAMES = {"int2": "smallint", "int4": "integer", "int8": "bigint"}
ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


class EvaluationError(ValueError):
    """A value PostgreSQL would refuse while evaluating (bad input, division by zero, ...)."""


class Unknown(str):
    """A string of PostgreSQL's *unknown* type: a string literal or a string claim."""

    __slots__ = ()


# -- text input ---------------------------------------------------------------------------

_WS = "[ \t\n\r\v\f]*"
_INT_RE = re.compile(rf"{_WS}([+-]?[0-9]+){_WS}")
_NUM_RE = re.compile(rf"{_WS}([+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?){_WS}")
_NUM_SPECIAL = {"nan": "NaN", "infinity": "Infinity", "+infinity": "Infinity"}
_NUM_SPECIAL |= {"-infinity": "-Infinity", "inf": "Infinity", "+inf": "Infinity"}
_NUM_SPECIAL |= {"-inf": "-Infinity"}
_TS_RE = re.compile(
    rf"{_WS}([0-9]{{4}})-([0-9]{{1,2}})-([0-9]{{1,2}})"
    r"(?:[T ]([0-9]{1,2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]+))?)?)?"
    rf"{_WS}(Z|[+-][0-9]{{1,2}}(?::?[0-9]{{2}})?)?{_WS}",
    re.IGNORECASE,
)
_UUID_RE = re.compile(r"(\{)?[0-9a-fA-F]{4}(?:-?[0-9a-fA-F]{4}){7}(?(1)\})")
_BOOL_WORDS: tuple[tuple[str, bool, int], ...] = (
    ("true", True, 1),
    ("false", False, 1),
    ("yes", True, 1),
    ("no", False, 1),
)
_BOOL_WORDS += (("on", True, 2), ("off", False, 2))


def type_name_of(value: Any) -> str:
    """PostgreSQL's name for the type of a Python value (for messages)."""
    names = {
        bool: "boolean",
        int: "integer",
        float: "double precision",
        Decimal: "numeric",
        str: "text",
        Unknown: "unknown",
        date: "date",
        UUID: "uuid",
        dict: "json",
        list: "array",
    }
    if isinstance(value, datetime):
        return "timestamp with time zone" if value.tzinfo else "timestamp"
    return names.get(type(value), type(value).__name__)


def _invalid(type_name: str, text: str) -> EvaluationError:
    return EvaluationError(f'invalid input syntax for type {type_name}: "{text}"')


def parse_int(text: str, width: str = "int8") -> int:
    match = _INT_RE.fullmatch(text)
    if match is None:
        raise _invalid("integer", text)
    digits = match.group(1)
    if len(digits.lstrip("+-").lstrip("0")) > 19:  # never expanded (nor past str → int limits)
        raise EvaluationError(f'value "{text}" is out of range for type {INT_NAMES[width]}')
    return check_range(int(digits), width)


def check_range(value: int, width: str) -> int:
    limit = INT_RANGES[width]
    if not -limit <= value < limit:
        raise EvaluationError(f"value {value} is out of range for type {width}")
    return value


def check_int8(value: int) -> int:
    """An integer result PostgreSQL could hold (in bigint), else its "out of range" error."""
    if not -(1 << 63) <= value < 1 << 63:
        raise EvaluationError("bigint out of range")
    return value


def check_numeric(value: Decimal) -> Decimal:
    """A numeric PostgreSQL could hold, else its "value overflows numeric format" error.

    Cheap for any value (the exponent and the number of digits, never the digits' value).
    """
    if not value.is_finite():
        return value
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    if -exponent > NUMERIC_MAX_SCALE or (
        value.adjusted() > _NUMERIC_MAX_ADJUSTED and not value.is_zero()
    ):
        raise EvaluationError(_NUMERIC_OVERFLOW)
    return value


def parse_numeric(text: str) -> Decimal:
    match = _NUM_RE.fullmatch(text)
    if match is not None:
        return check_numeric(Decimal(match.group(1)))
    special = _NUM_SPECIAL.get(text.strip(" \t\n\r\v\f").lower())
    if special is None:
        raise _invalid("numeric", text)
    return Decimal(special)


def parse_float(text: str) -> float:
    match = _NUM_RE.fullmatch(text)
    if match is not None:
        return float(match.group(1))
    special = _NUM_SPECIAL.get(text.strip(" \t\n\r\v\f").lower())
    if special is None:
        raise _invalid("double precision", text)
    return float(special)


def parse_bool(text: str) -> bool:
    word = text.strip(" \t\n\r\v\f").lower()
    if word in ("1", "0"):
        return word == "1"
    for full, value, minimum in _BOOL_WORDS:
        if len(word) >= minimum and full.startswith(word):
            return value
    raise _invalid("boolean", text)


def parse_datetime(text: str, aware: bool) -> datetime:
    """ISO 8601 input; a zone is kept for timestamptz (UTC if absent), ignored otherwise."""
    match = _TS_RE.fullmatch(text)
    if match is None:
        raise _invalid("timestamp" + (" with time zone" if aware else ""), text)
    year, month, day, hour, minute, second, frac, zone = match.groups()
    micro = round(float("0." + frac) * 1e6) if frac else 0
    try:
        value = datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0))
        value += timedelta(seconds=int(second or 0), microseconds=micro)
    except ValueError:
        raise _invalid("timestamp", text) from None
    if not aware:
        return value
    return value.replace(tzinfo=UTC) - _zone_offset(zone)


def _zone_offset(zone: str | None) -> timedelta:
    if not zone or zone.upper() == "Z":
        return timedelta(0)
    sign = -1 if zone[0] == "-" else 1
    digits = zone[1:].replace(":", "")
    hours, minutes = (digits[:-2], digits[-2:]) if len(digits) > 2 else (digits, "0")
    return sign * timedelta(hours=int(hours), minutes=int(minutes))


def parse_date(text: str) -> date:
    return parse_datetime(text, aware=False).date()


def parse_uuid(text: str) -> UUID:
    if _UUID_RE.fullmatch(text) is None:
        raise _invalid("uuid", text)
    return UUID(text)


def _parse_json(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        raise _invalid("json", text) from None


_PARSERS: dict[type, Callable[[str], Any]] = {
    int: parse_int,
    Decimal: parse_numeric,
    float: parse_float,
    bool: parse_bool,
    date: parse_date,
    UUID: parse_uuid,
    dict: _parse_json,
}


def from_text(text: str, like: Any) -> Any:
    """An unknown-typed string converted to the type of `like` (PostgreSQL's resolution)."""
    kind = type(like)
    if kind is datetime:
        return parse_datetime(text, aware=like.tzinfo is not None)
    parser = _PARSERS.get(kind)
    if parser is None:
        raise EvaluationError(f"cannot convert unknown {text!r} to {type_name_of(like)}")
    return parser(text)


# -- text output --------------------------------------------------------------------------


def _numeric_text(value: Decimal) -> str:
    if value.is_nan():
        return "NaN"
    if value.is_infinite():
        return "-Infinity" if value < 0 else "Infinity"
    if value == 0:
        value = value.copy_abs()
    return format(value, "f")


def _datetime_text(value: datetime) -> str:
    zone = ""
    if value.tzinfo is not None:
        value, zone = value.astimezone(UTC), "+00"
    text = value.strftime("%Y-%m-%d %H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond:06d}".rstrip("0")
    return text + zone


def to_text(value: Any) -> str:
    """PostgreSQL's text output of a value (DateStyle ISO, TimeZone UTC)."""
    kind = type(value)
    if kind is str or kind is Unknown:
        return str.__str__(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is int or kind is UUID:
        return str(value)
    if kind is Decimal:
        return _numeric_text(value)
    if kind is float:
        return float_text(value)
    if kind is datetime:
        return _datetime_text(value)
    if kind is date:
        return value.isoformat()
    if kind is dict or kind is list:
        return orjson.dumps(value).decode()
    raise EvaluationError(f"cannot convert {type_name_of(value)} to text")


# -- comparing ----------------------------------------------------------------------------

EXACT_NUMBERS = (int, Decimal)
NUMBERS = (int, Decimal, float)
_SIMPLE_EQ = frozenset({int, str, Unknown, bool, UUID, date, list, dict})


def exact(value: Any) -> Decimal:
    """An int, Decimal or float as a Decimal (a float by its shortest representation)."""
    if type(value) is float:
        return Decimal(repr(value))
    return Decimal(value)


def _same_zone(x: datetime | date, y: datetime | date) -> tuple[datetime, datetime]:
    """Date/timestamp/timestamptz made comparable (dates at midnight, no zone = UTC)."""
    if type(x) is date:
        x = datetime.combine(x, time())
    if type(y) is date:
        y = datetime.combine(y, time())
    assert isinstance(x, datetime) and isinstance(y, datetime)
    if (x.tzinfo is None) is not (y.tzinfo is None):
        x, y = (
            (x.replace(tzinfo=UTC) if x.tzinfo is None else x),
            (y.replace(tzinfo=UTC) if y.tzinfo is None else y),
        )
    return x, y


def _unify(x: Any, y: Any) -> tuple[Any, Any]:
    """Two non-NULL values of different types made comparable, as PostgreSQL resolves them."""
    tx, ty = type(x), type(y)
    if tx is Unknown:
        return (x, y) if ty is str else (from_text(x, y), y)
    if ty is Unknown:
        return (x, y) if tx is str else (x, from_text(y, x))
    if tx in NUMBERS and ty in NUMBERS:
        return exact(x), exact(y)
    if tx in (date, datetime) and ty in (date, datetime):
        return _same_zone(x, y)
    raise EvaluationError(f"operator does not exist: {type_name_of(x)} = {type_name_of(y)}")


def compare(x: Any, y: Any) -> int:
    """-1, 0 or 1 for two non-NULL values (NaN equals NaN and sorts last, as in PostgreSQL)."""
    tx = type(x)
    if tx is not type(y):
        x, y = _unify(x, y)
        tx = type(x)
    if tx is float or tx is Decimal:
        xn, yn = x != x, y != y
        if xn or yn:
            return (xn > yn) - (xn < yn)
    elif tx is datetime and (x.tzinfo is None) is not (y.tzinfo is None):
        x, y = _same_zone(x, y)
    elif tx is dict:
        raise EvaluationError("json values cannot be ordered")
    try:
        return (x > y) - (x < y)
    except TypeError:
        raise EvaluationError(f"cannot compare {type_name_of(x)} with {type_name_of(y)}") from None


def equal(x: Any, y: Any) -> bool:
    tx = type(x)
    if tx is type(y) and tx in _SIMPLE_EQ:
        return bool(x == y)
    return compare(x, y) == 0


def as_bool(value: Any) -> bool | None:
    """A value in a boolean position (unknown strings take boolean input syntax)."""
    if value is None or value is True or value is False:
        return value
    if type(value) is Unknown:
        return parse_bool(value)
    raise EvaluationError(f"argument must be type boolean, not type {type_name_of(value)}")


# -- kinds --------------------------------------------------------------------------------

# format_type() base names → kinds
_COLUMN_KINDS = {
    "smallint": "int2",
    "integer": "int4",
    "bigint": "int8",
    "numeric": "numeric",
    "real": "float",
    "double precision": "float",
    "text": "text",
    "character varying": "text",
    "boolean": "bool",
    "date": "date",
    "timestamp without time zone": "timestamp",
    "timestamp with time zone": "timestamptz",
    "uuid": "uuid",
}


def column_kind(type_name: str) -> str | None:
    """The kind of a column type as format_type() prints it (None: not one of the kinds)."""
    parsed = parse_type_name(type_name)
    return None if parsed.dims else _COLUMN_KINDS.get(parsed.base.lower())


def parse_kind(text: str, kind: str) -> Any:
    """`text` read with the input syntax of `kind` (raises where PostgreSQL would)."""
    if kind in INT_RANGES:
        return parse_int(text, kind)
    parsers: dict[str, Callable[[str], Any]] = {
        "numeric": parse_numeric,
        "float": parse_float,
        "text": str,
        "bool": parse_bool,
        "date": parse_date,
        "timestamp": lambda t: parse_datetime(t, aware=False),
        "timestamptz": lambda t: parse_datetime(t, aware=True),
        "uuid": parse_uuid,
    }
    return parsers[kind](text)
