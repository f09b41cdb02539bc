"""PostgreSQL arithmetic on Python values: `+ - * /`, prefix `-`, and `||`.

Both operands are non-NULL (NULL propagation is the caller's). Integer division truncates
toward zero; numeric results keep PostgreSQL's scales, division included
(select_div_scale, rounded half away from zero); a double meeting an exact number makes a
double, an integer meeting a numeric a numeric; an unknown string takes the other
operand's number type. Division by zero, or an operator PostgreSQL does not have for the
operands' types, raises `EvaluationError`. Integer overflow is not detected (deliberate).
"""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction
from typing import Any

from sidecar.rules.pgvalues import (
    NUMBERS,
    NUMERIC,
    EvaluationError,
    Unknown,
    from_text,
    to_text,
    type_name_of,
)

__all__ = ["arithmetic", "concat", "negate"]


def _numbers(x: Any, y: Any, op: str) -> tuple[Any, Any]:
    tx, ty = type(x), type(y)
    if tx is Unknown and ty in NUMBERS:
        x, tx = from_text(x, y), ty
    elif ty is Unknown and tx in NUMBERS:
        y, ty = from_text(y, x), tx
    if tx in NUMBERS and ty in NUMBERS:
        if tx is ty:
            return x, y
        if tx is float or ty is float:
            return float(x), float(y)
        return Decimal(x), Decimal(y)
    raise EvaluationError(f"operator does not exist: {type_name_of(x)} {op} {type_name_of(y)}")


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
    return weight, int(NUMERIC.scaleb(abs(value), -4 * weight))


def _dscale(value: Decimal) -> int:
    exponent = value.as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def _numeric_div(x: Decimal, y: Decimal) -> Decimal:
    """x / y with PostgreSQL's result scale (select_div_scale), rounded half away from 0."""
    if y == 0:
        raise EvaluationError("division by zero")
    if not (x.is_finite() and y.is_finite()):
        return NUMERIC.divide(x, y)
    weight1, first1 = _pg_weight(x)
    weight2, first2 = _pg_weight(y)
    qweight = weight1 - weight2 - (1 if first1 <= first2 else 0)
    scale = min(max(16 - qweight * 4, _dscale(x), _dscale(y), 0), 1000)
    scaled = Fraction(x) / Fraction(y) * 10**scale
    rounded = math.floor(abs(scaled) + Fraction(1, 2))
    return Decimal(f"{'-' if scaled < 0 else ''}{rounded}E-{scale}")


def arithmetic(op: str, x: Any, y: Any) -> Any:
    """`x op y` for two non-NULL numbers (+ - * /)."""
    if type(x) is not type(y) or type(x) not in NUMBERS:
        x, y = _numbers(x, y, op)
    kind = type(x)
    if kind is Decimal:
        if op == "/":
            return _numeric_div(x, y)
        return {"+": NUMERIC.add, "-": NUMERIC.subtract, "*": NUMERIC.multiply}[op](x, y)
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


def negate(value: Any) -> Any:
    kind = type(value)
    if kind is int or kind is float:
        return -value
    if kind is Decimal:
        return value.copy_negate()
    raise EvaluationError(f"operator does not exist: - {type_name_of(value)}")


def concat(x: Any, y: Any) -> str:
    if not (isinstance(x, str) or isinstance(y, str)) or type(x) is list or type(y) is list:
        raise EvaluationError(f"operator does not exist: {type_name_of(x)} || {type_name_of(y)}")
    return to_text(x) + to_text(y)
