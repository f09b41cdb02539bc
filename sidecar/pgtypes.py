"""PostgreSQL type names and float text, as PostgreSQL itself writes them.

- `parse_type_name`: a type name as `format_type()` prints it (`numeric(10,2)`,
  `timestamp(3) with time zone`, `character varying(20)[]`, `"MyEnum"`) split into its
  base name, its type modifiers and its array dimensions. Double-quoted identifiers are
  kept whole (parentheses or brackets inside them are part of the name).
- `float_text`: PostgreSQL's text output of a `float8` or `float4` value
  (`extra_float_digits` > 0, the default since PostgreSQL 12): the shortest digits that
  read back as the same value, in exponent form outside [1e-4, 1e15) (`float8`) or
  [1e-4, 1e6) (`float4`).

A leaf module: it imports nothing of the sidecar.
"""

from __future__ import annotations

import decimal
import functools
import math
import re
import struct
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

__all__ = ["TypeName", "float_text", "parse_type_name"]

# -- type names ---------------------------------------------------------------------------

# a quoted identifier | a type modifier list | array brackets | blanks | other text
_PIECE = re.compile(r'"(?:[^"]|"")*"|\(([^)]*)\)|\[\]|\s+|[^"(\[\s]+|.', re.DOTALL)


@dataclass(frozen=True, slots=True)
class TypeName:
    """A `format_type()` name in parts.

    `base`: the name without modifiers or brackets, blanks between words collapsed to one
    (`timestamp with time zone`, `character varying`, `public.mood`); `typmods`: the
    modifiers as written, stripped (`("10", "2")` for `numeric(10,2)`); `dims`: the number
    of `[]` (format_type() prints one for any array).
    """

    base: str
    typmods: tuple[str, ...]
    dims: int


@functools.lru_cache(maxsize=1024)
def parse_type_name(name: str) -> TypeName:
    """`name` (as `format_type()` prints it) split into base name, modifiers and dims."""
    parts: list[str] = []
    typmods: tuple[str, ...] = ()
    dims = 0
    for match in _PIECE.finditer(name):
        piece = match.group()
        if match.group(1) is not None:
            if not typmods:
                typmods = tuple(m.strip() for m in match.group(1).split(","))
        elif piece == "[]":
            dims += 1
        elif piece.isspace():
            if parts and parts[-1] != " ":
                parts.append(" ")
        else:
            parts.append(piece)
    return TypeName("".join(parts).strip(), typmods, dims)


# -- float text ---------------------------------------------------------------------------

_EXACT = decimal.Context(
    prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN, traps=[]
)
# first decimal exponent written in exponent form: DBL_DIG, FLT_DIG (float.c, d2s.c, f2s.c)
_EXPONENT_FROM = {"float8": 15, "float4": 6}


def float_text(value: float, kind: Literal["float8", "float4"] = "float8") -> str:
    """PostgreSQL's text output of a float8 (or float4) value.

    For a float4, `value` is rounded to single precision first (psycopg loads a float4 as
    the double nearest to its text, which rounds back to the same float4); its digits are
    the shortest that identify it among float4 values.
    """
    if value != value:
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    shortest = _shortest_float4(value) if kind == "float4" else _shortest_float8(value)
    sign, digits, exponent = shortest.normalize(_EXACT).as_tuple()
    assert isinstance(exponent, int)
    e10 = len(digits) - 1 + exponent
    if -4 <= e10 < _EXPONENT_FROM[kind]:
        return format(Decimal((sign, digits, exponent)), "f")
    text = "".join(map(str, digits))
    mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
    return f"{'-' if sign else ''}{mantissa}e{'+' if e10 >= 0 else '-'}{abs(e10):02d}"


def _shortest_float8(value: float) -> Decimal:
    return _shortest_decimal(
        value, math.nextafter(value, -math.inf), math.nextafter(value, math.inf), 17
    )


def _shortest_float4(value: float) -> Decimal:
    try:
        single = _to_float4(value)
    except OverflowError:  # not a float4 value: its double digits
        return _shortest_float8(value)
    bits = struct.unpack("<I", struct.pack("<f", abs(single)))[0]
    down, up = _from_float4_bits(bits - 1), _from_float4_bits(bits + 1)
    if single < 0:
        down, up = -up, -down
    return _shortest_decimal(single, down, up, 9)


def _to_float4(value: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


def _from_float4_bits(bits: int) -> float:
    return float(struct.unpack("<f", struct.pack("<I", bits))[0])


def _shortest_decimal(value: float, below: float, above: float, max_digits: int) -> Decimal:
    """The shortest decimal strictly inside `value`'s rounding interval, closest to it.

    `below` and `above` are the neighbouring values of its precision (±inf past the
    largest). PostgreSQL's Ryu (d2s.c, f2s.c) never accepts a decimal on the interval's
    bounds, where Python's repr() does when the tie would round back to `value`.
    """
    exact = Decimal(value)
    down = _half_gap(exact, below)
    up = _half_gap(exact, above)
    low = _EXACT.subtract(exact, _either(down, up))
    high = _EXACT.add(exact, _either(up, down))
    for digits in range(1, max_digits + 1):
        rounded = Decimal(format(value, f".{digits - 1}e"))
        step = Decimal((0, (1,), rounded.adjusted() - digits + 1))
        candidates = [
            c
            for c in (rounded, _EXACT.subtract(rounded, step), _EXACT.add(rounded, step))
            if low < c < high
        ]
        if candidates:
            return min(candidates, key=lambda c: abs(_EXACT.subtract(c, exact)))
    return Decimal(repr(value))


def _half_gap(exact: Decimal, neighbour: float) -> Decimal | None:
    """Half the distance to a neighbouring value (None past ±max: the other side's)."""
    if math.isinf(neighbour):
        return None
    return _EXACT.divide(abs(_EXACT.subtract(Decimal(neighbour), exact)), 2)


def _either(gap: Decimal | None, other: Decimal | None) -> Decimal:
    """`gap`, or the other side's when `gap` is past ±max (a finite value has one)."""
    found = gap if gap is not None else other
    assert found is not None
    return found
