"""Rules: a Python evaluator of rule expressions, and the read scopes compiled from them.

**Evaluator.** `compile_evaluator(expr, column_types)` turns a parsed `Expression` into
nested closures once; `evaluate(expr, row, claims, column_types)` runs the (cached)
closures on one row. Values are what psycopg's loaders return (int, float, Decimal, str,
bool, date, datetime, UUID, dict/list, None) and the semantics are PostgreSQL's:

- three-valued logic: NULL propagates through comparisons, arithmetic and functions;
  AND/OR are Kleene's; `x IN (..., NULL)` is NULL when nothing matches; `= ANY(array)` is
  FALSE for an empty array even for a NULL left side; `IS [NOT] DISTINCT FROM` never yields
  NULL; `coalesce` is lazy and takes the common type of its arguments;
- string literals and string claims are PostgreSQL's *unknown* type: met with a typed value
  (an int column, a date column, ...) they are first converted to its type with that type's
  input syntax (`'42'` → 42, `' 42 '` → 42, `'2024-01-01'` → a date); two unknowns compare
  as text; a string claim is bound the same way on the write side (psycopg sends `str`
  parameters as unknown);
- text compares by code point, which is PostgreSQL's C collation, and `lower`, `upper` and
  `ILIKE` fold ASCII letters only (the C ctype); the sidecar's databases are expected to
  use C (the tests do);
- integer division truncates toward zero; numeric literals (`1.5`) are Decimal; numeric
  results keep PostgreSQL's scales, division included (select_div_scale); division by zero
  is an error;
- LIKE: `%` any run, `_` one character, backslash escapes the next character; a pattern
  ending with a lone backslash fails only when matching reaches it, as in PostgreSQL.

A value PostgreSQL would refuse at run time (bad input syntax for a type, division by zero,
comparing text with an integer, ...) raises `EvaluationError`.

Known differences from a PostgreSQL session (deliberate): a timestamp without a zone
meeting a timestamptz (or a date meeting one) is taken as UTC, not the session time zone;
date/time input is ISO 8601 only; integer overflow is not detected; an exact number
(integer, numeric) compared with a double compares with the double's shortest decimal
representation (PostgreSQL converts the exact one to double; they differ only beyond 15-17
significant digits); string elements of a claim array are unknown-typed like string claims;
a scalar claim used as `= ANY(:claim)` is a one-element array (`bind_claims` wraps it the
same way for the write side); without `column_types`, `coalesce(a, b)` of two columns of
different numeric types whose first is NULL takes the type of the value it returns.

**Scopes.** `compile_read_rule(expr, column_types)` puts the rule in disjunctive normal form
over atoms (NOT pushed down, which De Morgan allows in Kleene logic; a boolean combination
of columns only, or of claims only, stays one atom) and classifies the atoms of each branch:
partition atoms (`column = <claims>`, `column IN (<claims and literals>)`,
`column = ANY(:claim)`), row atoms (columns and literals only) and claim atoms (claims and
literals only). A row's scope in branch `i` is `'i:' + JSON list of the partition values`
(e.g. `0:["42"]`, canonical per column type) when its row atoms are TRUE and no partition
value is NULL; a request's scopes are the same strings built from its claim values coerced
to the columns' types, when its claim atoms are TRUE; a branch without partition atoms
gives `'i:'`. Visible ⇔ the two sets intersect ⇔ `evaluate(...) is True` (with the same
column types).
"""

from __future__ import annotations

import decimal
import functools
import itertools
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any
from uuid import UUID

import orjson
from pglast import ast, enums

from sidecar.config.expressions import Expression, ExpressionError, cast_target, render_sql

__all__ = [
    "MAX_BRANCHES",
    "EvaluationError",
    "ReadRule",
    "bind_claims",
    "compile_evaluator",
    "compile_read_rule",
    "evaluate",
    "render_sql",
]

MAX_BRANCHES = 32

Row = Mapping[str, Any]
Claims = Mapping[str, Any]
Fn = Callable[[Row, Claims], Any]

_EMPTY: Mapping[str, Any] = {}
_NUMERIC = decimal.Context(
    prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN, traps=[]
)
_INT_RANGES = {"int2": 1 << 15, "int4": 1 << 31, "int8": 1 << 63}


class EvaluationError(ValueError):
    """A value PostgreSQL would refuse while evaluating (bad input, division by zero, ...)."""


class _Unknown(str):
    """A string of PostgreSQL's *unknown* type: a string literal or a string claim."""

    __slots__ = ()


# == values: input syntax, output syntax, coercions ========================================

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
_BOOL_WORDS = (("true", True, 1), ("false", False, 1), ("yes", True, 1), ("no", False, 1))
_BOOL_WORDS += (("on", True, 2), ("off", False, 2))


def _type_name(value: Any) -> str:
    """PostgreSQL's name for the type of a Python value (for messages)."""
    names = {
        bool: "boolean",
        int: "integer",
        float: "double precision",
        Decimal: "numeric",
        str: "text",
        _Unknown: "unknown",
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


def _parse_int(text: str, width: str = "int8") -> int:
    match = _INT_RE.fullmatch(text)
    if match is None:
        raise _invalid("integer", text)
    return _check_range(int(match.group(1)), width)


def _check_range(value: int, width: str) -> int:
    limit = _INT_RANGES[width]
    if not -limit <= value < limit:
        raise EvaluationError(f"value {value} is out of range for type {width}")
    return value


def _parse_numeric(text: str) -> Decimal:
    match = _NUM_RE.fullmatch(text)
    if match is not None:
        return Decimal(match.group(1))
    special = _NUM_SPECIAL.get(text.strip(" \t\n\r\v\f").lower())
    if special is None:
        raise _invalid("numeric", text)
    return Decimal(special)


def _parse_float(text: str) -> float:
    match = _NUM_RE.fullmatch(text)
    if match is not None:
        return float(match.group(1))
    special = _NUM_SPECIAL.get(text.strip(" \t\n\r\v\f").lower())
    if special is None:
        raise _invalid("double precision", text)
    return float(special)


def _parse_bool(text: str) -> bool:
    word = text.strip(" \t\n\r\v\f").lower()
    if word in ("1", "0"):
        return word == "1"
    for full, value, minimum in _BOOL_WORDS:
        if len(word) >= minimum and full.startswith(word):
            return value
    raise _invalid("boolean", text)


def _parse_datetime(text: str, aware: bool) -> datetime:
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


def _parse_date(text: str) -> date:
    return _parse_datetime(text, aware=False).date()


def _parse_uuid(text: str) -> UUID:
    if _UUID_RE.fullmatch(text) is None:
        raise _invalid("uuid", text)
    return UUID(text)


def _parse_json(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        raise _invalid("json", text) from None


_PARSERS: dict[type, Callable[[str], Any]] = {
    int: _parse_int,
    Decimal: _parse_numeric,
    float: _parse_float,
    bool: _parse_bool,
    date: _parse_date,
    UUID: _parse_uuid,
    dict: _parse_json,
}


def _from_text(text: str, like: Any) -> Any:
    """An unknown-typed string converted to the type of `like` (PostgreSQL's resolution)."""
    kind = type(like)
    if kind is datetime:
        return _parse_datetime(text, aware=like.tzinfo is not None)
    parser = _PARSERS.get(kind)
    if parser is None:
        raise EvaluationError(f"cannot convert unknown {text!r} to {_type_name(like)}")
    return parser(text)


def _float_text(value: float) -> str:
    """PostgreSQL's float8 output: shortest digits, exponent outside [-4, 15)."""
    if value != value:
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    sign, digits, exponent = _shortest_decimal(value).normalize(_NUMERIC).as_tuple()
    assert isinstance(exponent, int)
    e10 = len(digits) - 1 + exponent
    if -4 <= e10 < 15:
        return format(Decimal((sign, digits, exponent)), "f")
    text = "".join(map(str, digits))
    mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
    return f"{'-' if sign else ''}{mantissa}e{'+' if e10 >= 0 else '-'}{abs(e10):02d}"


def _shortest_decimal(value: float) -> Decimal:
    """The shortest decimal strictly inside `value`'s rounding interval, closest to it.

    PostgreSQL's Ryu (d2s.c) never accepts a decimal on the interval's bounds, where
    Python's repr() does when the tie would round back to `value`.
    """
    exact = Decimal(value)
    down = _half_gap(exact, math.nextafter(value, -math.inf))
    up = _half_gap(exact, math.nextafter(value, math.inf))
    low = _NUMERIC.subtract(exact, down if down is not None else up)
    high = _NUMERIC.add(exact, up if up is not None else down)
    for digits in range(1, 18):
        rounded = Decimal(format(value, f".{digits - 1}e"))
        step = Decimal((0, (1,), rounded.adjusted() - digits + 1))
        candidates = [
            c
            for c in (rounded, _NUMERIC.subtract(rounded, step), _NUMERIC.add(rounded, step))
            if low < c < high
        ]
        if candidates:
            return min(candidates, key=lambda c: abs(_NUMERIC.subtract(c, exact)))
    return Decimal(repr(value))


def _half_gap(exact: Decimal, neighbour: float) -> Decimal | None:
    """Half the distance to a neighbouring double (None past ±max: the other side's)."""
    if math.isinf(neighbour):
        return None
    return _NUMERIC.divide(abs(_NUMERIC.subtract(Decimal(neighbour), exact)), 2)


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


def _to_text(value: Any) -> str:
    """PostgreSQL's text output of a value (DateStyle ISO, TimeZone UTC)."""
    kind = type(value)
    if kind is str or kind is _Unknown:
        return str.__str__(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is int or kind is UUID:
        return str(value)
    if kind is Decimal:
        return _numeric_text(value)
    if kind is float:
        return _float_text(value)
    if kind is datetime:
        return _datetime_text(value)
    if kind is date:
        return value.isoformat()
    if kind is dict or kind is list:
        return orjson.dumps(value).decode()
    raise EvaluationError(f"cannot convert {_type_name(value)} to text")


# -- comparing ----------------------------------------------------------------------------

_EXACT = (int, Decimal)
_NUMBERS = (int, Decimal, float)
_SIMPLE_EQ = frozenset({int, str, _Unknown, bool, UUID, date, list, dict})


def _exact(value: Any) -> Decimal:
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
    if tx is _Unknown:
        return (x, y) if ty is str else (_from_text(x, y), y)
    if ty is _Unknown:
        return (x, y) if tx is str else (x, _from_text(y, x))
    if tx in _NUMBERS and ty in _NUMBERS:
        return _exact(x), _exact(y)
    if tx in (date, datetime) and ty in (date, datetime):
        return _same_zone(x, y)
    raise EvaluationError(f"operator does not exist: {_type_name(x)} = {_type_name(y)}")


def _cmp(x: Any, y: Any) -> int:
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
        raise EvaluationError(f"cannot compare {_type_name(x)} with {_type_name(y)}") from None


def _eq(x: Any, y: Any) -> bool:
    tx = type(x)
    if tx is type(y) and tx in _SIMPLE_EQ:
        return bool(x == y)
    return _cmp(x, y) == 0


def _as_bool(value: Any) -> bool | None:
    """A value in a boolean position (unknown strings take boolean input syntax)."""
    if value is None or value is True or value is False:
        return value
    if type(value) is _Unknown:
        return _parse_bool(value)
    raise EvaluationError(f"argument must be type boolean, not type {_type_name(value)}")


# -- arithmetic ---------------------------------------------------------------------------


def _numbers(x: Any, y: Any, op: str) -> tuple[Any, Any]:
    tx, ty = type(x), type(y)
    if tx is _Unknown and ty in _NUMBERS:
        x, tx = _from_text(x, y), ty
    elif ty is _Unknown and tx in _NUMBERS:
        y, ty = _from_text(y, x), tx
    if tx in _NUMBERS and ty in _NUMBERS:
        if tx is ty:
            return x, y
        if tx is float or ty is float:
            return float(x), float(y)
        return Decimal(x), Decimal(y)
    raise EvaluationError(f"operator does not exist: {_type_name(x)} {op} {_type_name(y)}")


def _int_div(x: int, y: int) -> int:
    if y == 0:
        raise EvaluationError("division by zero")
    quotient = abs(x) // abs(y)
    return -quotient if (x < 0) != (y < 0) else quotient


def _pg_weight(value: Decimal) -> tuple[int, int]:
    """(weight, first digit) of a value in PostgreSQL's base-10000 numeric representation."""
    if value == 0:
        return 0, 0
    weight = value.adjusted() // 4
    return weight, int(_NUMERIC.scaleb(abs(value), -4 * weight))


def _dscale(value: Decimal) -> int:
    exponent = value.as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def _numeric_div(x: Decimal, y: Decimal) -> Decimal:
    """x / y with PostgreSQL's result scale (select_div_scale), rounded half away from 0."""
    if y == 0:
        raise EvaluationError("division by zero")
    if not (x.is_finite() and y.is_finite()):
        return _NUMERIC.divide(x, y)
    weight1, first1 = _pg_weight(x)
    weight2, first2 = _pg_weight(y)
    qweight = weight1 - weight2 - (1 if first1 <= first2 else 0)
    scale = min(max(16 - qweight * 4, _dscale(x), _dscale(y), 0), 1000)
    scaled = Fraction(x) / Fraction(y) * 10**scale
    rounded = math.floor(abs(scaled) + Fraction(1, 2))
    return Decimal(f"{'-' if scaled < 0 else ''}{rounded}E-{scale}")


def _arith(op: str, x: Any, y: Any) -> Any:
    """`x op y` for two non-NULL numbers (+ - * /)."""
    if type(x) is not type(y) or type(x) not in _NUMBERS:
        x, y = _numbers(x, y, op)
    kind = type(x)
    if kind is Decimal:
        if op == "/":
            return _numeric_div(x, y)
        return {"+": _NUMERIC.add, "-": _NUMERIC.subtract, "*": _NUMERIC.multiply}[op](x, y)
    if op == "+":
        return x + y
    if op == "-":
        return x - y
    if op == "*":
        return x * y
    if kind is int:
        return _int_div(x, y)
    if y == 0:
        raise EvaluationError("division by zero")
    return x / y


def _negate(value: Any) -> Any:
    kind = type(value)
    if kind is int or kind is float:
        return -value
    if kind is Decimal:
        return value.copy_negate()
    raise EvaluationError(f"operator does not exist: - {_type_name(value)}")


def _concat(x: Any, y: Any) -> str:
    if not (isinstance(x, str) or isinstance(y, str)) or type(x) is list or type(y) is list:
        raise EvaluationError(f"operator does not exist: {_type_name(x)} || {_type_name(y)}")
    return _to_text(x) + _to_text(y)


# -- casts --------------------------------------------------------------------------------


def _round_half_away(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=decimal.ROUND_HALF_UP))


def _cast_int(value: Any, width: str) -> int:
    kind = type(value)
    if kind is int:
        return _check_range(value, width)
    if kind is bool and width == "int4":
        return int(value)
    if isinstance(value, str):
        return _parse_int(value, width)
    if kind is Decimal and value.is_finite():
        return _check_range(_round_half_away(value), width)
    if kind is float and math.isfinite(value):
        return _check_range(round(value), width)
    raise EvaluationError(f"cannot cast {_type_name(value)} to {width}")


def _cast_numeric(value: Any) -> Decimal:
    kind = type(value)
    if kind is Decimal:
        return value
    if kind is int:
        return Decimal(value)
    if kind is float:
        return Decimal(format(value, ".15g")) if math.isfinite(value) else Decimal(repr(value))
    if isinstance(value, str):
        return _parse_numeric(value)
    raise EvaluationError(f"cannot cast {_type_name(value)} to numeric")


def _cast_bool(value: Any) -> bool:
    kind = type(value)
    if kind is bool:
        return value
    if kind is int:
        return value != 0
    if isinstance(value, str):
        return _parse_bool(value)
    raise EvaluationError(f"cannot cast {_type_name(value)} to boolean")


def _cast_datetime(value: Any, aware: bool) -> datetime:
    if isinstance(value, str):
        return _parse_datetime(value, aware)
    if type(value) is date:
        value = datetime.combine(value, time())
    if type(value) is not datetime:
        raise EvaluationError(f"cannot cast {_type_name(value)} to timestamp")
    if aware and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    if not aware and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


def _cast_date(value: Any) -> date:
    if isinstance(value, str):
        return _parse_date(value)
    if type(value) is date:
        return value
    return _cast_datetime(value, aware=False).date()


def _cast_uuid(value: Any) -> UUID:
    if type(value) is UUID:
        return value
    if isinstance(value, str):
        return _parse_uuid(value)
    raise EvaluationError(f"cannot cast {_type_name(value)} to uuid")


_CASTS: dict[str, Callable[[Any], Any]] = {
    "int2": lambda v: _cast_int(v, "int2"),
    "int4": lambda v: _cast_int(v, "int4"),
    "int8": lambda v: _cast_int(v, "int8"),
    "numeric": _cast_numeric,
    "text": _to_text,
    "bool": _cast_bool,
    "date": _cast_date,
    "timestamp": lambda v: _cast_datetime(v, aware=False),
    "timestamptz": lambda v: _cast_datetime(v, aware=True),
    "uuid": _cast_uuid,
}


# -- functions ----------------------------------------------------------------------------

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _text_arg(value: Any, function: str) -> str:
    if isinstance(value, str):
        return value
    raise EvaluationError(f"function {function}({_type_name(value)}) does not exist")


def _fn_abs(value: Any) -> Any:
    kind = type(value)
    if kind is int or kind is float:
        return abs(value)
    if kind is Decimal:
        return value.copy_abs()
    raise EvaluationError(f"function abs({_type_name(value)}) does not exist")


def _trim(method: str) -> Callable[..., str]:
    def trim(value: Any, chars: Any = " ") -> str:
        text = _text_arg(value, "trim")
        return str(getattr(str, method)(text, _text_arg(chars, "trim")))

    return trim


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "lower": lambda v: _text_arg(v, "lower").translate(_ASCII_LOWER),
    "upper": lambda v: _text_arg(v, "upper").translate(_ASCII_UPPER),
    "length": lambda v: len(_text_arg(v, "length")),
    "char_length": lambda v: len(_text_arg(v, "char_length")),
    "abs": _fn_abs,
    "btrim": _trim("strip"),
    "ltrim": _trim("lstrip"),
    "rtrim": _trim("rstrip"),
}


_LIKE_ESCAPE_ERROR = "LIKE pattern must not end with escape character"


def _like_matcher(pattern: str) -> Callable[[str], bool]:
    """A LIKE matcher: % any run, _ one character, backslash escapes the next character.

    A regex, except for a pattern ending with a lone backslash: PostgreSQL raises for it
    only when matching reaches that backslash, so its own algorithm is followed there.
    """
    out: list[str] = []
    chars = iter(pattern)
    for char in chars:
        if char == "\\":
            escaped = next(chars, None)
            if escaped is None:
                return lambda text: _match_text(text, 0, pattern, 0) is True
            out.append(re.escape(escaped))
        elif char == "%":
            out.append(".*")
        elif char == "_":
            out.append(".")
        else:
            out.append(re.escape(char))
    regex = re.compile("".join(out), re.DOTALL)
    return lambda text: regex.fullmatch(text) is not None


def _match_text(t: str, ti: int, p: str, pi: int) -> bool | None:
    """PostgreSQL's MatchText (like_match.c): True, False, or None for "abort" (no match)."""
    while ti < len(t) and pi < len(p):
        char = p[pi]
        if char == "\\":
            pi += 1
            if pi >= len(p):
                raise EvaluationError(_LIKE_ESCAPE_ERROR)
            if p[pi] != t[ti]:
                return False
        elif char == "%":
            return _match_percent(t, ti, p, pi + 1)
        elif char != "_" and char != t[ti]:
            return False
        ti, pi = ti + 1, pi + 1
    if ti < len(t):
        return False
    while pi < len(p) and p[pi] == "%":
        pi += 1
    return True if pi >= len(p) else None


def _match_percent(t: str, ti: int, p: str, pi: int) -> bool | None:
    """MatchText after a `%`: skip wildcards, then try each text position."""
    while pi < len(p) and p[pi] in "%_":
        if p[pi] == "_":
            if ti >= len(t):
                return None
            ti += 1
        pi += 1
    if pi >= len(p):
        return True
    if p[pi] == "\\":
        if len(p) - pi < 2:
            raise EvaluationError(_LIKE_ESCAPE_ERROR)
        first = p[pi + 1]
    else:
        first = p[pi]
    while ti < len(t):
        if t[ti] == first:
            matched = _match_text(t, ti, p, pi)
            if matched is not False:
                return matched
        ti += 1
    return None


# == the compiler: AST → closures ==========================================================

_A = enums.A_Expr_Kind
_BOOL_NODES = (ast.BoolExpr, ast.NullTest, ast.BooleanTest)
_CMP_TESTS: dict[str, Callable[[int], bool]] = {
    "<": lambda c: c < 0,
    "<=": lambda c: c <= 0,
    ">": lambda c: c > 0,
    ">=": lambda c: c >= 0,
}


def _walk(node: Any) -> Iterator[Any]:
    """`node` and every pglast node under it."""
    yield node
    for name in getattr(type(node), "__slots__", ()):
        value = getattr(node, name, None)
        for item in value if isinstance(value, tuple | list) else (value,):
            if isinstance(item, ast.Node):
                yield from _walk(item)


def _is_now(node: Any) -> bool:
    if not isinstance(node, ast.FuncCall):
        return False
    return [s.sval for s in node.funcname][-1] == "now"


def _is_constant(node: Any) -> bool:
    """No column, claim or now() under `node`: it can be evaluated once."""
    return not any(isinstance(n, ast.ColumnRef | ast.ParamRef) or _is_now(n) for n in _walk(node))


def _op(node: ast.A_Expr) -> str:
    return str(node.name[-1].sval)


def _constant(value: Any) -> Fn:
    return lambda row, claims: value


class _Compiler:
    """Compiles the nodes of one (already checked) expression into closures.

    `column_types` (format_type() names), when known, give columns a static type: it
    decides the type of `coalesce(...)` when its typed arguments are NULL, as PostgreSQL's
    parse-time type resolution does.
    """

    def __init__(self, params: Sequence[str], column_types: Mapping[str, str] | None) -> None:
        self.params = params
        self.column_kinds = {
            name: _static_kind_of_type(type_name)
            for name, type_name in (column_types or {}).items()
        }

    def kind(self, node: Any) -> str | None:
        """The static type of `node` ("int", "numeric", "text", ..., "unknown"; None: only
        known at run time)."""
        return _StaticKinds(self).of(node)

    def compile(self, node: Any) -> Fn:
        """A closure computing `node`; constant sub-trees are computed once, here."""
        fn = self._dispatch(node)
        if not isinstance(node, ast.A_Const) and _is_constant(node):
            try:
                return _constant(fn(_EMPTY, _EMPTY))
            except EvaluationError:
                return fn  # PostgreSQL raises too; keep raising, per evaluation
        return fn

    def compile_bool(self, node: Any) -> Fn:
        """A closure for a boolean position (non-boolean values are converted or refused)."""
        fn = self.compile(node)
        if isinstance(node, _BOOL_NODES) or (
            isinstance(node, ast.A_Expr) and _op(node) not in ("+", "-", "*", "/", "||")
        ):
            return fn
        return lambda row, claims: _as_bool(fn(row, claims))

    def _dispatch(self, node: Any) -> Fn:
        handler = getattr(self, "_" + type(node).__name__, None)
        if handler is None:  # pragma: no cover - parse_expression refused it already
            raise ExpressionError(f"{type(node).__name__} cannot be evaluated")
        return handler(node)  # type: ignore[no-any-return]

    # -- leaves

    def _ColumnRef(self, node: ast.ColumnRef) -> Fn:
        name = node.fields[0].sval
        return lambda row, claims: row.get(name)

    def _ParamRef(self, node: ast.ParamRef) -> Fn:
        name = self.params[node.number - 1]

        def claim(row: Row, claims: Claims) -> Any:
            value = claims.get(name)
            kind = type(value)
            if kind is str:
                return _Unknown(value)
            if kind is list:
                return [_Unknown(v) if type(v) is str else v for v in value]
            return value

        return claim

    def _A_Const(self, node: ast.A_Const) -> Fn:
        return _constant(_literal(node))

    # -- boolean structure

    def _BoolExpr(self, node: ast.BoolExpr) -> Fn:
        args = tuple(self.compile_bool(a) for a in node.args)
        if node.boolop == enums.BoolExprType.NOT_EXPR:
            (arg,) = args
            return lambda row, claims: _not(arg(row, claims))
        if node.boolop == enums.BoolExprType.AND_EXPR:
            return _and(args)
        return _or(args)

    def _NullTest(self, node: ast.NullTest) -> Fn:
        arg = self.compile(node.arg)
        if node.nulltesttype == enums.NullTestType.IS_NULL:
            return lambda row, claims: arg(row, claims) is None
        return lambda row, claims: arg(row, claims) is not None

    def _BooleanTest(self, node: ast.BooleanTest) -> Fn:
        arg = self.compile_bool(node.arg)
        t = enums.BoolTestType
        tests: dict[Any, Callable[[Any], bool]] = {
            t.IS_TRUE: lambda v: v is True,
            t.IS_NOT_TRUE: lambda v: v is not True,
            t.IS_FALSE: lambda v: v is False,
            t.IS_NOT_FALSE: lambda v: v is not False,
            t.IS_UNKNOWN: lambda v: v is None,
            t.IS_NOT_UNKNOWN: lambda v: v is not None,
        }
        test = tests[node.booltesttype]
        return lambda row, claims: test(arg(row, claims))

    # -- operators

    def _A_Expr(self, node: ast.A_Expr) -> Fn:
        kind = node.kind
        if kind == _A.AEXPR_OP:
            return self._operator(node)
        if kind == _A.AEXPR_IN:
            fn = _in(self.compile(node.lexpr), tuple(self.compile(e) for e in node.rexpr))
            return fn if _op(node) == "=" else _negated(fn)
        if kind == _A.AEXPR_OP_ANY:
            return _any(self.compile(node.lexpr), self.array(node.rexpr))
        if kind in (_A.AEXPR_LIKE, _A.AEXPR_ILIKE):
            return self._like(node)
        if kind in (_A.AEXPR_BETWEEN, _A.AEXPR_NOT_BETWEEN):
            low, high = (self.compile(e) for e in node.rexpr)
            return _between(self.compile(node.lexpr), low, high, kind == _A.AEXPR_BETWEEN)
        if kind in (_A.AEXPR_DISTINCT, _A.AEXPR_NOT_DISTINCT):
            fn = _distinct(self.compile(node.lexpr), self.compile(node.rexpr))
            return fn if kind == _A.AEXPR_DISTINCT else _negated(fn)
        raise ExpressionError(f"operator {kind} cannot be evaluated")  # pragma: no cover

    def _operator(self, node: ast.A_Expr) -> Fn:
        op = _op(node)
        right = self.compile(node.rexpr)
        if node.lexpr is None:  # prefix + / -
            return _unary(op, right)
        left = self.compile(node.lexpr)
        if op == "=":
            return _binary(left, right, _eq)
        if op == "<>":
            return _binary(left, right, lambda x, y: not _eq(x, y))
        if op in _CMP_TESTS:
            test = _CMP_TESTS[op]
            return _binary(left, right, lambda x, y: test(_cmp(x, y)))
        if op == "||":
            return _binary(left, right, _concat)
        return _binary(left, right, lambda x, y: _arith(op, x, y))

    def array(self, node: Any) -> Fn:
        if isinstance(node, ast.A_ArrayExpr):
            elements = node.elements or ()
            kind = _common_kind(tuple(self.kind(e) for e in elements))
            return _constant([_to_static_kind(_literal(e), kind) for e in elements])
        claim = self.compile(node)

        def array(row: Row, claims: Claims) -> Any:
            value = claim(row, claims)
            return value if value is None or type(value) is list else [value]

        return array

    def _like(self, node: ast.A_Expr) -> Fn:
        op = _op(node)
        insensitive = op in ("~~*", "!~~*")
        value = self.compile(node.lexpr)
        pattern = _literal(node.rexpr)
        if pattern is None:
            return _constant(None)
        fn = _like(value, pattern, insensitive)
        return _negated(fn) if op.startswith("!") else fn

    # -- functions and casts

    def _FuncCall(self, node: ast.FuncCall) -> Fn:
        name = node.funcname[-1].sval
        args = tuple(self.compile(a) for a in node.args or ())
        if name == "now":
            return lambda row, claims: datetime.now(UTC)
        return _strict_call(_FUNCTIONS[name], args)

    def _CoalesceExpr(self, node: ast.CoalesceExpr) -> Fn:
        args = tuple(self.compile(a) for a in node.args)
        kinds = tuple(self.kind(a) for a in node.args)
        target = _common_kind(kinds)

        def coalesce(row: Row, claims: Claims) -> Any:
            for i, arg in enumerate(args):
                value = arg(row, claims)
                if value is not None:
                    kind = target
                    if kind is None:
                        kind = _runtime_common_kind(kinds, args, i, value, row, claims)
                    return _to_static_kind(value, kind)
            return None

        return coalesce

    def _TypeCast(self, node: ast.TypeCast) -> Fn:
        target = cast_target(node.typeName)
        assert target is not None
        cast = _CASTS[target]
        arg = self.compile(node.arg)

        def typecast(row: Row, claims: Claims) -> Any:
            value = arg(row, claims)
            return None if value is None else cast(value)

        return typecast


def _literal(node: ast.A_Const) -> Any:
    """The Python value of a constant (string constants are of unknown type)."""
    if node.isnull:
        return None
    val = node.val
    if isinstance(val, ast.Boolean):
        return bool(val.boolval)
    if isinstance(val, ast.Integer):
        return int(val.ival)
    if isinstance(val, ast.Float):
        text = val.fval
        if _INT_RE.fullmatch(text) and -(1 << 63) <= int(text) < (1 << 63):
            return int(text)  # an integer too big for int4 is an int8 constant
        return Decimal(text)
    return _Unknown(val.sval)


# -- static types (PostgreSQL's parse-time resolution, as far as coalesce needs it) ---------

_NUMERIC_RANK = {"int": 0, "numeric": 1, "float": 2}
_FUNCTION_KINDS = {"lower": "text", "upper": "text", "btrim": "text", "ltrim": "text"}
_FUNCTION_KINDS |= {"rtrim": "text", "length": "int", "char_length": "int"}
_FUNCTION_KINDS |= {"now": "timestamptz"}
_RUNTIME_KINDS = {int: "int", Decimal: "numeric", float: "float", _Unknown: "unknown"}
_RUNTIME_KINDS |= {str: "text", bool: "bool", date: "date", UUID: "uuid"}


def _static_kind_of_type(type_name: str) -> str | None:
    kind = _column_kind(type_name)
    return "int" if kind in _INT_RANGES else kind


def _runtime_kind(value: Any) -> str | None:
    if type(value) is datetime:
        return "timestamptz" if value.tzinfo is not None else "timestamp"
    return _RUNTIME_KINDS.get(type(value))


def _common_kind(kinds: Sequence[str | None]) -> str | None:
    """The type PostgreSQL resolves for a set of expressions (None: not known statically)."""
    if None in kinds:
        return None
    known = [k for k in kinds if k != "unknown"]
    if not known:
        return "text"  # all unknown: resolved as text
    if all(k in _NUMERIC_RANK for k in known):
        return max(known, key=_NUMERIC_RANK.__getitem__)
    return known[0]


def _runtime_common_kind(
    kinds: Sequence[str | None],
    args: Sequence[Fn],
    found: int,
    value: Any,
    row: Row,
    claims: Claims,
) -> str | None:
    """`_common_kind` with the run-time types of the arguments not typed statically.

    An argument whose type stays unknown (a NULL column) leaves an unknown result as is.
    """
    resolved: list[str] = []
    unresolved = False
    for i, (kind, arg) in enumerate(zip(kinds, args, strict=True)):
        if i == found:
            kind = kind or _runtime_kind(value)
        elif kind is None and i > found:
            try:
                other = arg(row, claims)
            except EvaluationError:
                other = None
            kind = None if other is None else _runtime_kind(other)
        if kind is None:
            unresolved = True
        else:
            resolved.append(kind)
    if unresolved and all(k == "unknown" for k in resolved):
        return None
    return _common_kind(resolved)


def _to_static_kind(value: Any, kind: str | None) -> Any:
    """A value converted to the resolved type of the expression that produced it."""
    if value is None or kind is None or kind == "unknown":
        return value
    vtype = type(value)
    if vtype is _Unknown:
        return str(value) if kind == "text" else _parse_kind(value, _PARSE_KIND.get(kind, kind))
    if kind == "numeric" and vtype is int:
        return Decimal(value)
    if kind == "float" and vtype in _EXACT:
        return float(value)
    return value


_PARSE_KIND = {"int": "int8"}


class _StaticKinds:
    """Static types of nodes, given the compiler's column types."""

    def __init__(self, compiler: _Compiler) -> None:
        self.columns = compiler.column_kinds

    def of(self, node: Any) -> str | None:
        if isinstance(node, ast.ColumnRef):
            return self.columns.get(node.fields[0].sval)
        if isinstance(node, ast.A_Const):
            return _literal_kind(node)
        if isinstance(node, ast.TypeCast):
            target = cast_target(node.typeName)
            return "int" if target in _INT_RANGES else target
        if isinstance(node, ast.FuncCall):
            name = node.funcname[-1].sval
            return self.of(node.args[0]) if name == "abs" else _FUNCTION_KINDS.get(name)
        if isinstance(node, ast.CoalesceExpr):
            return _common_kind(tuple(self.of(a) for a in node.args))
        if isinstance(node, ast.A_Expr):
            return self._operator(node)
        if isinstance(node, _BOOL_NODES):
            return "bool"
        return None  # claims: typed by their values

    def _operator(self, node: ast.A_Expr) -> str | None:
        op = _op(node)
        if node.kind != _A.AEXPR_OP or op not in ("+", "-", "*", "/", "||"):
            return "bool"
        if op == "||":
            return "text"
        if node.lexpr is None:
            return self.of(node.rexpr)
        kinds = [self.of(node.lexpr), self.of(node.rexpr)]
        if None in kinds:
            return None
        numeric = [k for k in kinds if k in _NUMERIC_RANK]
        return max(numeric, key=_NUMERIC_RANK.__getitem__) if numeric else None


def _literal_kind(node: ast.A_Const) -> str:
    value = _literal(node)
    if value is None or type(value) is _Unknown:
        return "unknown"
    return _RUNTIME_KINDS.get(type(value), "unknown")


# -- closure builders (module level: no `self` lookups per row) -----------------------------


def _not(value: Any) -> bool | None:
    return None if value is None else not value


def _and(args: tuple[Fn, ...]) -> Fn:
    def conjunction(row: Row, claims: Claims) -> bool | None:
        result: bool | None = True
        for arg in args:
            value = arg(row, claims)
            if value is False:
                return False
            if value is None:
                result = None
        return result

    return conjunction


def _or(args: tuple[Fn, ...]) -> Fn:
    def disjunction(row: Row, claims: Claims) -> bool | None:
        result: bool | None = False
        for arg in args:
            value = arg(row, claims)
            if value is True:
                return True
            if value is None:
                result = None
        return result

    return disjunction


def _negated(fn: Fn) -> Fn:
    return lambda row, claims: _not(fn(row, claims))


def _binary(left: Fn, right: Fn, op: Callable[[Any, Any], Any]) -> Fn:
    def binary(row: Row, claims: Claims) -> Any:
        x = left(row, claims)
        if x is None:
            return None
        y = right(row, claims)
        if y is None:
            return None
        return op(x, y)

    return binary


def _unary(op: str, arg: Fn) -> Fn:
    def unary(row: Row, claims: Claims) -> Any:
        value = arg(row, claims)
        if value is None:
            return None
        if type(value) not in _NUMBERS:
            raise EvaluationError(f"operator does not exist: {op} {_type_name(value)}")
        return _negate(value) if op == "-" else value

    return unary


def _in(left: Fn, items: tuple[Fn, ...]) -> Fn:
    def member(row: Row, claims: Claims) -> bool | None:
        value = left(row, claims)
        if value is None:
            return None
        saw_null = False
        for item in items:
            other = item(row, claims)
            if other is None:
                saw_null = True
            elif _eq(value, other):
                return True
        return None if saw_null else False

    return member


def _any(left: Fn, array: Fn) -> Fn:
    def any_equal(row: Row, claims: Claims) -> bool | None:
        values = array(row, claims)
        if values is None:
            return None
        if not values:
            return False
        value = left(row, claims)
        if value is None:
            return None
        saw_null = False
        for other in values:
            if other is None:
                saw_null = True
            elif _eq(value, other):
                return True
        return None if saw_null else False

    return any_equal


def _between(value: Fn, low: Fn, high: Fn, inside: bool) -> Fn:
    def between(row: Row, claims: Claims) -> bool | None:
        x, lo, hi = value(row, claims), low(row, claims), high(row, claims)
        if x is None:
            return None
        above = None if lo is None else _cmp(x, lo) >= 0
        below = None if hi is None else _cmp(x, hi) <= 0
        if inside:
            return _and_values(above, below)
        return _or_values(_not(above), _not(below))

    return between


def _and_values(x: bool | None, y: bool | None) -> bool | None:
    if x is False or y is False:
        return False
    return None if x is None or y is None else True


def _or_values(x: bool | None, y: bool | None) -> bool | None:
    if x is True or y is True:
        return True
    return None if x is None or y is None else False


def _distinct(left: Fn, right: Fn) -> Fn:
    def distinct(row: Row, claims: Claims) -> bool:
        x, y = left(row, claims), right(row, claims)
        if x is None or y is None:
            return (x is None) is not (y is None)
        return not _eq(x, y)

    return distinct


def _like(value: Fn, pattern: str, insensitive: bool) -> Fn:
    matches = _like_matcher(pattern.translate(_ASCII_LOWER) if insensitive else pattern)

    def like(row: Row, claims: Claims) -> bool | None:
        text = value(row, claims)
        if text is None:
            return None
        if not isinstance(text, str):
            raise EvaluationError(f"operator does not exist: {_type_name(text)} ~~ unknown")
        return matches(text.translate(_ASCII_LOWER) if insensitive else text)

    return like


def _strict_call(function: Callable[..., Any], args: tuple[Fn, ...]) -> Fn:
    def call(row: Row, claims: Claims) -> Any:
        values = [arg(row, claims) for arg in args]
        if None in values:
            return None
        return function(*values)

    return call


# == evaluating ============================================================================

_CACHE: dict[tuple[str, tuple[tuple[str, str], ...]], Fn] = {}
_CACHE_SIZE = 1024


def compile_evaluator(
    expr: Expression, column_types: Mapping[str, str] | None = None
) -> Callable[[Row, Claims], bool | None]:
    """Closures computing `expr` on (row, claims): TRUE, FALSE or None (NULL).

    `column_types` (column → type as format_type() prints it) is optional; without it a
    column's type is taken from its value, which differs from PostgreSQL only for
    `coalesce` over columns of different numeric types whose first ones are NULL.
    """
    compiler = _Compiler(expr.params, column_types)
    return compiler.compile_bool(expr.node)


def evaluate(
    expr: Expression,
    row: Row,
    claims: Claims,
    column_types: Mapping[str, str] | None = None,
) -> bool | None:
    """`expr` on one row and one caller's claims (a missing claim or column is NULL).

    The expression is compiled once (cached). Raises `EvaluationError` where PostgreSQL
    would raise. For a hot loop, keep the closure of `compile_evaluator` instead.
    """
    key = (expr.text, tuple(sorted(column_types.items())) if column_types else ())
    fn = _CACHE.get(key)
    if fn is None:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.clear()
        fn = _CACHE[key] = compile_evaluator(expr, column_types)
    return fn(row, claims)  # type: ignore[no-any-return]


def bind_claims(
    expr: Expression, claims: Claims, first_param: int = 1
) -> tuple[str, tuple[Any, ...]]:
    """SQL text of `expr` (`$n` placeholders from `first_param`) and the claim values to
    bind, in order.

    A missing claim is NULL; a scalar claim used only as `= ANY(:claim)` is wrapped in a
    list, as the evaluator does.
    """
    sql, names = render_sql(expr, first_param)
    arrays = _array_only_params(expr)
    values = []
    for number, name in enumerate(names, start=1):
        value = claims.get(name)
        if number in arrays and value is not None and not isinstance(value, list):
            value = [value]
        values.append(value)
    return sql, tuple(values)


@functools.lru_cache(maxsize=1024)
def _array_only_params(expr: Expression) -> frozenset[int]:
    """Parameter numbers that only ever appear as `= ANY($n)`."""
    in_any: set[int] = set()
    elsewhere: set[int] = set()
    for node in _walk(expr.node):
        if (
            isinstance(node, ast.A_Expr)
            and node.kind == _A.AEXPR_OP_ANY
            and isinstance(node.rexpr, ast.ParamRef)
        ):
            in_any.add(node.rexpr.number)
    for node in _walk(expr.node):
        if isinstance(node, ast.ParamRef) and node.number not in in_any:
            elsewhere.add(node.number)
    return frozenset(in_any - elsewhere)


# == read scopes ===========================================================================

# format_type() names → the kind partition values are normalized to
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
_TYPMOD = re.compile(r"\([^)]*\)")
_NO_VALUE = object()


def _column_kind(type_name: str) -> str | None:
    """The partition kind of a column type as format_type() prints it (None: unsupported)."""
    return _COLUMN_KINDS.get(" ".join(_TYPMOD.sub("", type_name).lower().split()))


def _partition_value(value: Any, kind: str) -> Any:
    """`value` as a value of a column of `kind`, or `_NO_VALUE` when it equals none.

    Mirrors `_unify`: unknown strings take the column type's input syntax, exact numbers
    and doubles meet through the double's shortest decimal form, dates are midnight.
    """
    try:
        return _to_kind(value, kind)
    except (EvaluationError, ValueError, ArithmeticError, OverflowError):
        return _NO_VALUE


def _to_kind(value: Any, kind: str) -> Any:
    vtype = type(value)
    if vtype is _Unknown:
        return _parse_kind(value, kind)
    if kind == "text":
        return value if vtype is str else _NO_VALUE
    if vtype is str:
        return _NO_VALUE  # typed text never equals a non-text column
    if kind == "bool":
        return value if vtype is bool else _NO_VALUE
    if vtype in _NUMBERS:
        return _number_to_kind(value, kind)
    if vtype in (date, datetime) and kind in ("date", "timestamp", "timestamptz"):
        return _time_to_kind(value, kind)
    if vtype is UUID and kind == "uuid":
        return value
    return _NO_VALUE


def _parse_kind(text: str, kind: str) -> Any:
    if kind in _INT_RANGES:
        return _parse_int(text, kind)
    parsers: dict[str, Callable[[str], Any]] = {
        "numeric": _parse_numeric,
        "float": _parse_float,
        "text": str,
        "bool": _parse_bool,
        "date": _parse_date,
        "timestamp": lambda t: _parse_datetime(t, aware=False),
        "timestamptz": lambda t: _parse_datetime(t, aware=True),
        "uuid": _parse_uuid,
    }
    return parsers[kind](text)


def _number_to_kind(value: Any, kind: str) -> Any:
    if kind == "float":
        return value  # exact numbers meet doubles through the double's shortest decimal
    if kind not in _INT_RANGES and kind != "numeric":
        return _NO_VALUE
    exact = _exact(value)
    if kind == "numeric":
        return exact
    if not exact.is_finite() or exact != exact.to_integral_value():
        return _NO_VALUE
    return _check_range(int(exact), kind)


def _time_to_kind(value: date | datetime, kind: str) -> Any:
    if kind == "date":
        if type(value) is date:
            return value
        assert isinstance(value, datetime)
        naive = _cast_datetime(value, aware=False)
        return naive.date() if naive.time() == time() else _NO_VALUE
    return _cast_datetime(value, aware=kind == "timestamptz")


def _canonical(value: Any, kind: str) -> str | None:
    """A string equal for equal values of a column of `kind` (None: matches nothing)."""
    if value is None:
        return None
    vtype = type(value)
    if vtype is int and kind in _INT_RANGES:  # fast path: a row's own integer column
        return str(value) if -_INT_RANGES[kind] <= value < _INT_RANGES[kind] else None
    if vtype is str and kind == "text":  # fast path: a row's own text column
        return value
    value = _partition_value(value, kind)
    if value is _NO_VALUE or value is None:
        return None
    if kind == "numeric" or kind == "float" or kind in _INT_RANGES:
        return _number_key(_exact(value))
    if kind == "timestamptz":
        return str(value.astimezone(UTC).isoformat())
    if kind in ("date", "timestamp"):
        return str(value.isoformat())
    if kind == "bool":
        return "t" if value else "f"
    return str(value)


def _number_key(value: Decimal) -> str:
    """Equal for numerically equal values: NaN equals NaN (as in PostgreSQL), -0 is 0."""
    if value.is_nan():
        return "NaN"
    if not value.is_finite():
        return "-Infinity" if value < 0 else "Infinity"
    if value == 0:
        return "0"
    return format(value.normalize(_NUMERIC), "f")


@dataclass(frozen=True, slots=True)
class _Partition:
    """`column = <claim values>`: the row side reads `column`, the request side `values`."""

    column: str
    kind: str
    values: Callable[[Claims], list[Any]]


@dataclass(frozen=True, slots=True)
class _Branch:
    prefix: str
    row_tests: tuple[Callable[[Row], bool], ...]
    claim_tests: tuple[Callable[[Claims], bool], ...]
    partitions: tuple[_Partition, ...]


def _encode(values: list[str]) -> str:
    return orjson.dumps(values).decode()


Scopes = tuple[str, ...]


def _one_partition(head: str, index: int, kind: str) -> Callable[[Sequence[Any]], Scopes]:
    """The scopes of a rule `column = <claims>`: one scope, `head` + the JSON list of the
    value's canonical form (none when the value matches nothing)."""
    limit = _INT_RANGES.get(kind, 0)

    def scopes(values: Sequence[Any]) -> Scopes:
        value = values[index]
        if type(value) is int and -limit <= value < limit:  # an integer column's own value
            return (f'{head}["{value}"]',)  # digits need no JSON escaping: as _encode
        canonical = _canonical(value, kind)
        return () if canonical is None else (head + _encode([canonical]),)

    return scopes


@dataclass(frozen=True)
class ReadRule:
    """A read rule compiled to scopes: visible ⇔ row_scopes ∩ request_scopes ≠ ∅."""

    expression: Expression
    columns: frozenset[str]
    branches: tuple[_Branch, ...] = field(default=(), repr=False)

    def row_scopes(self, row: Row) -> tuple[str, ...]:
        """The scopes of one row (values as psycopg loads them; missing columns are NULL)."""
        scopes: list[str] = []
        for branch in self.branches:
            tests = branch.row_tests
            if tests and not all(test(row) for test in tests):
                continue
            if not branch.partitions:
                scopes.append(branch.prefix)
                continue
            values: list[str] = []
            for part in branch.partitions:
                canonical = _canonical(row.get(part.column), part.kind)
                if canonical is None:
                    break
                values.append(canonical)
            else:
                scopes.append(branch.prefix + _encode(values))
        return tuple(scopes)

    def scoper(self, prefix: str, columns: Sequence[str]) -> Callable[[Sequence[Any]], Scopes]:
        """`row_scopes` of rows given as values in `columns` order, each scope prefixed.

        Capture calls this once per row change, so the usual shape of a rule (one branch
        whose only atom is `column = <claims>`) gets a closure that reads the value
        directly, without building a dict per row; other rules go through `row_scopes`.
        """
        names = tuple(columns)
        if len(self.branches) == 1:
            branch = self.branches[0]
            if not branch.row_tests and len(branch.partitions) == 1:
                part = branch.partitions[0]
                return _one_partition(prefix + branch.prefix, names.index(part.column), part.kind)

        def scopes(values: Sequence[Any]) -> Scopes:
            return tuple(prefix + s for s in self.row_scopes(dict(zip(names, values, strict=True))))

        return scopes

    def request_scopes(self, claims: Claims) -> tuple[str, ...]:
        """The scopes a caller with `claims` may read."""
        scopes: list[str] = []
        for branch in self.branches:
            if not all(test(claims) for test in branch.claim_tests):
                continue
            choices: list[list[str]] = []
            for part in branch.partitions:
                found = {_canonical(v, part.kind) for v in part.values(claims)}
                found.discard(None)
                if not found:
                    break
                choices.append(sorted(found))  # type: ignore[arg-type]
            else:
                scopes.extend(
                    branch.prefix + _encode(list(c)) if c else branch.prefix
                    for c in itertools.product(*choices)
                )
        return tuple(scopes)


# -- normal form --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Literal:
    node: Any
    negated: bool


_Formula = tuple[str, tuple[Any, ...]] | _Literal | bool


def _nnf(node: Any, negate: bool, constant: Callable[[Any], bool | None]) -> _Formula:
    """Negation normal form over atoms; constant atoms become True/False.

    An atom is a maximal sub-expression that is not an AND/OR/NOT mixing columns with
    claims: a boolean combination of columns only (or of claims only) stays one atom, so
    only the mixed part of a rule multiplies branches. A constant that is not TRUE (FALSE
    or NULL) becomes False: in Kleene logic that never turns a FALSE-or-NULL rule TRUE.
    """
    if isinstance(node, ast.BoolExpr) and _mixes_columns_and_claims(node):
        if node.boolop == enums.BoolExprType.NOT_EXPR:
            return _nnf(node.args[0], not negate, constant)
        is_and = (node.boolop == enums.BoolExprType.AND_EXPR) != negate
        parts = tuple(_nnf(a, negate, constant) for a in node.args)
        return ("and" if is_and else "or", parts)
    if _is_constant(node):
        value = constant(node)
        return value is (not negate)
    return _Literal(node, negate)


def _mixes_columns_and_claims(node: Any) -> bool:
    columns, params = _refs(node)
    return bool(columns) and bool(params)


def _dnf(formula: _Formula, expr: Expression) -> list[list[_Literal]]:
    """Disjunctive normal form (a list of conjunctions); at most MAX_BRANCHES of them."""
    if formula is True:
        return [[]]
    if formula is False:
        return []
    if isinstance(formula, _Literal):
        return [[formula]]
    op, parts = formula
    if op == "or":
        branches = [b for part in parts for b in _dnf(part, expr)]
    else:
        branches = [[]]
        for part in parts:
            sub = _dnf(part, expr)
            if len(branches) * len(sub) > MAX_BRANCHES:
                raise _too_many(expr)
            branches = [a + b for a in branches for b in sub]
    if len(branches) > MAX_BRANCHES:
        raise _too_many(expr)
    return branches


def _too_many(expr: Expression) -> ExpressionError:
    return expr.error(
        f"the read rule expands to more than {MAX_BRANCHES} OR-branches; simplify it", expr.node
    )


# -- classifying atoms --------------------------------------------------------------------


def _refs(node: Any) -> tuple[set[str], set[int]]:
    columns: set[str] = set()
    params: set[int] = set()
    for n in _walk(node):
        if isinstance(n, ast.ColumnRef):
            columns.add(n.fields[0].sval)
        elif isinstance(n, ast.ParamRef):
            params.add(n.number)
    return columns, params


def _mix_error(expr: Expression, node: Any) -> ExpressionError:
    return expr.error(
        "a column may only be compared to a claim with =, IN (...) or = ANY(...) (and not "
        "under NOT), so that rows can be partitioned into scopes",
        node,
    )


class _RuleCompiler:
    def __init__(self, expr: Expression, column_types: Mapping[str, str]) -> None:
        self.expr = expr
        self.column_types = column_types
        self.compiler = _Compiler(expr.params, column_types)

    def constant(self, node: Any) -> bool | None:
        try:
            return _as_bool(self.compiler.compile(node)(_EMPTY, _EMPTY))
        except EvaluationError:
            return None

    def test(self, literal: _Literal) -> Callable[[Mapping[str, Any]], bool]:
        """TRUE-test of a row atom or a claim atom (an evaluation error is not TRUE)."""
        fn = self.compiler.compile_bool(literal.node)
        wanted = not literal.negated
        as_row = bool(_refs(literal.node)[0])

        def test(values: Mapping[str, Any]) -> bool:
            try:
                result = fn(values, _EMPTY) if as_row else fn(_EMPTY, values)
            except EvaluationError:
                return False
            return result is wanted

        return test

    def partition(self, literal: _Literal) -> _Partition | None:
        """The partition of a `column = claims` atom, or None if it is not one."""
        node = literal.node
        if literal.negated or not isinstance(node, ast.A_Expr) or _op(node) != "=":
            return None
        if node.kind == _A.AEXPR_OP:
            for column, other in ((node.lexpr, node.rexpr), (node.rexpr, node.lexpr)):
                if isinstance(column, ast.ColumnRef) and self._claims_only(other):
                    return self._make(column, node, (self.compiler.compile(other),), False)
        elif node.kind == _A.AEXPR_IN and isinstance(node.lexpr, ast.ColumnRef):
            items = node.rexpr
            if any(self._claims_only(e) for e in items) and all(
                self._claims_only(e) or _is_constant(e) for e in items
            ):
                fns = tuple(self.compiler.compile(e) for e in node.rexpr)
                return self._make(node.lexpr, node, fns, False)
        elif (
            node.kind == _A.AEXPR_OP_ANY
            and isinstance(node.lexpr, ast.ColumnRef)
            and isinstance(node.rexpr, ast.ParamRef)
        ):
            return self._make(node.lexpr, node, (self.compiler.array(node.rexpr),), True)
        return None

    def _claims_only(self, node: Any) -> bool:
        columns, params = _refs(node)
        return not columns and bool(params)

    def _make(
        self, column: ast.ColumnRef, atom: Any, fns: tuple[Fn, ...], array: bool
    ) -> _Partition:
        name = column.fields[0].sval
        kind = _column_kind(self.column_types[name])
        if kind is None:
            raise self.expr.error(
                f"column {name} of type {self.column_types[name]} cannot partition scopes "
                "(compare it to a claim only if it is a number, text, boolean, date, "
                "timestamp or uuid column)",
                atom,
            )

        def values(claims: Claims) -> list[Any]:
            out: list[Any] = []
            for fn in fns:
                try:
                    value = fn(_EMPTY, claims)
                except EvaluationError:
                    continue
                if array:
                    out.extend(value or ())
                elif value is not None:
                    out.append(value)
            return out

        return _Partition(name, kind, values)

    def branch(self, index: int, literals: list[_Literal]) -> _Branch:
        row_tests, claim_tests, partitions = [], [], []
        for literal in literals:
            part = self.partition(literal)
            if part is not None:
                partitions.append(part)
                continue
            columns, params = _refs(literal.node)
            if columns and params:
                raise _mix_error(self.expr, literal.node)
            (row_tests if columns else claim_tests).append(self.test(literal))
        return _Branch(f"{index}:", tuple(row_tests), tuple(claim_tests), tuple(partitions))


def _check_columns(expr: Expression, column_types: Mapping[str, str]) -> None:
    for node in _walk(expr.node):
        if isinstance(node, ast.ColumnRef) and node.fields[0].sval not in column_types:
            raise expr.error(f"unknown column {node.fields[0].sval}", node)
        if _is_now(node):
            raise expr.error(
                "now() cannot be used in a read rule: scopes are computed when rows change",
                node,
            )


def compile_read_rule(expr: Expression, column_types: Mapping[str, str]) -> ReadRule:
    """Compile a read rule into scopes (see the module docstring).

    `column_types` maps each column of the table to its type as format_type() prints it.
    Raises `ExpressionError` (located) for unknown columns, now(), a column compared to a
    claim other than by =/IN/= ANY, partitions on unsupported types, or too many branches.
    """
    _check_columns(expr, column_types)
    rules = _RuleCompiler(expr, column_types)
    formula = _nnf(expr.node, False, rules.constant)
    branches = tuple(rules.branch(i, lits) for i, lits in enumerate(_dnf(formula, expr)))
    return ReadRule(expression=expr, columns=expr.columns, branches=branches)
