"""PostgreSQL arithmetic on Python values: `+ - * /`, prefix `-`, and `||`.

Both operands are non-NULL (NULL propagation is the caller's). Integer division truncates
toward zero; numeric results keep PostgreSQL's scales, division included
(select_div_scale, rounded half away from zero); a double meeting an exact number makes a
double, an integer meeting a numeric a numeric; an unknown string takes the other
operand's number type. Division by zero, or an operator PostgreSQL does not have for the
operands' types, raises `EvaluationError`.

Results are bounded as PostgreSQL bounds them: an integer result outside bigint is
"bigint out of range" (an int4 or int2 overflow inside bigint is not detected: the
evaluator does not track integer widths, deliberate), a numeric result outside numeric's
range "value overflows numeric format" (`pgvalues.check_numeric`); a product's scale is
capped at 16383 digits (rounded), a quotient's at 1000, as PostgreSQL does. So every
operation on values within those bounds costs at most a few milliseconds.
"""

from __future__ import annotations

import decimal
from decimal import Decimal
from typing import Any

from sidecar.rules.pgvalues import (
    NUMBERS,
    NUMERIC,
    NUMERIC_MAX_DIGITS,
    NUMERIC_MAX_SCALE,
    EvaluationError,
    Unknown,
    check_int8,
    check_numeric,
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
    first = NUMERIC.scaleb(abs(value), -4 * weight).to_integral_value(decimal.ROUND_DOWN)
    return weight, int(first)


def _dscale(value: Decimal) -> int:
    exponent = value.as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def _numeric_div(x: Decimal, y: Decimal) -> Decimal:
    """x / y with PostgreSQL's result scale (select_div_scale), rounded half away from 0.

    The exact quotient truncated one digit past the scale, then rounded half up at the
    scale, is the exact quotient rounded (truncation keeps that digit exact).
    """
    if y == 0:
        raise EvaluationError("division by zero")
    if not (x.is_finite() and y.is_finite()):
        return NUMERIC.divide(x, y)
    weight1, first1 = _pg_weight(x)
    weight2, first2 = _pg_weight(y)
    qweight = weight1 - weight2 - (1 if first1 <= first2 else 0)
    scale = min(max(16 - qweight * 4, _dscale(x), _dscale(y), 0), 1000)
    if x == 0:
        return Decimal(0).scaleb(-scale)
    magnitude = x.adjusted() - y.adjusted()  # the quotient's is this or one less
    if magnitude > NUMERIC_MAX_DIGITS:
        raise EvaluationError("value overflows numeric format")
    digits = max(magnitude, 0) + scale + 4
    context = decimal.Context(
        prec=digits, rounding=decimal.ROUND_DOWN, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN
    )
    truncated = context.divide(x, y).quantize(Decimal(1).scaleb(-scale - 1), context=context)
    context.rounding = decimal.ROUND_HALF_UP
    return check_numeric(truncated.quantize(Decimal(1).scaleb(-scale), context=context))


def _numeric_mul(x: Decimal, y: Decimal) -> Decimal:
    """x * y; the scale capped at 16383 digits (rounded half away from 0), as PostgreSQL."""
    product = NUMERIC.multiply(x, y)
    if product.is_finite() and _dscale(product) > NUMERIC_MAX_SCALE:
        unit = Decimal(1).scaleb(-NUMERIC_MAX_SCALE)
        product = product.quantize(unit, decimal.ROUND_HALF_UP, NUMERIC)
    return check_numeric(product)


def arithmetic(op: str, x: Any, y: Any) -> Any:
    """`x op y` for two non-NULL numbers (+ - * /)."""
    if type(x) is not type(y) or type(x) not in NUMBERS:
        x, y = _numbers(x, y, op)
    kind = type(x)
    if kind is Decimal:
        try:
            if op == "/":
                return _numeric_div(x, y)
            if op == "*":
                return _numeric_mul(x, y)
            return check_numeric(NUMERIC.add(x, y) if op == "+" else NUMERIC.subtract(x, y))
        except decimal.Overflow:  # only for values beyond numeric's range to begin with
            raise EvaluationError("value overflows numeric format") from None
    if op == "+":
        return check_int8(x + y) if kind is int else x + y
    if op == "-":
        return check_int8(x - y) if kind is int else x - y
    if op == "*":
        return check_int8(x * y) if kind is int else x * y
    if kind is int:
        return check_int8(_int_div(x, y))
    if y == 0:
        raise EvaluationError("division by zero")
    return x / y


def negate(value: Any) -> Any:
    kind = type(value)
    if kind is int:
        return check_int8(-value)
    if kind is float:
        return -value
    if kind is Decimal:
        return value.copy_negate()
    raise EvaluationError(f"operator does not exist: - {type_name_of(value)}")


def concat(x: Any, y: Any) -> str:
    if not (isinstance(x, str) or isinstance(y, str)) or type(x) is list or type(y) is list:
        raise EvaluationError(f"operator does not exist: {type_name_of(x)} || {type_name_of(y)}")
    return to_text(x) + to_text(y)
