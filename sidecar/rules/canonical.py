"""Partition values: a value as the canonical string of a column kind, so that equal
values (as PostgreSQL compares them) give equal strings in scopes and grants.

Mirrors `pgvalues.compare`: unknown strings take the column type's input syntax, exact
numbers and doubles meet through the double's shortest decimal form, dates are midnight.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any
from uuid import UUID

from sidecar.rules.pgcasts import cast_datetime
from sidecar.rules.pgvalues import (
    INT_RANGES,
    NUMBERS,
    NUMERIC,
    EvaluationError,
    Unknown,
    check_range,
    exact,
    parse_kind,
)

__all__ = ["canonical"]

_NO_VALUE = object()


def _partition_value(value: Any, kind: str) -> Any:
    """`value` as a value of a column of `kind`, or `_NO_VALUE` when it equals none.

    Mirrors `pgvalues.compare`: unknown strings take the column type's input syntax, exact
    numbers and doubles meet through the double's shortest decimal form, dates are midnight.
    """
    try:
        return _to_kind(value, kind)
    except (EvaluationError, ValueError, ArithmeticError, OverflowError):
        return _NO_VALUE


def _to_kind(value: Any, kind: str) -> Any:
    vtype = type(value)
    if vtype is Unknown:
        return parse_kind(value, kind)
    if kind == "text":
        return value if vtype is str else _NO_VALUE
    if vtype is str:
        return _NO_VALUE  # typed text never equals a non-text column
    if kind == "bool":
        return value if vtype is bool else _NO_VALUE
    if vtype in NUMBERS:
        return _number_to_kind(value, kind)
    if vtype in (date, datetime) and kind in ("date", "timestamp", "timestamptz"):
        return _time_to_kind(value, kind)
    if vtype is UUID and kind == "uuid":
        return value
    return _NO_VALUE


def _number_to_kind(value: Any, kind: str) -> Any:
    if kind == "float":
        return value  # exact numbers meet doubles through the double's shortest decimal
    if kind not in INT_RANGES and kind != "numeric":
        return _NO_VALUE
    number = exact(value)
    if kind == "numeric":
        return number
    if not number.is_finite() or number != number.to_integral_value():
        return _NO_VALUE
    return check_range(int(number), kind)


def _time_to_kind(value: date | datetime, kind: str) -> Any:
    if kind == "date":
        if type(value) is date:
            return value
        assert isinstance(value, datetime)
        naive = cast_datetime(value, aware=False)
        return naive.date() if naive.time() == time() else _NO_VALUE
    return cast_datetime(value, aware=kind == "timestamptz")


def canonical(value: Any, kind: str) -> str | None:
    """A string equal for equal values of a column of `kind` (None: matches nothing)."""
    if value is None:
        return None
    vtype = type(value)
    if vtype is int and kind in INT_RANGES:  # fast path: a row's own integer column
        return str(value) if -INT_RANGES[kind] <= value < INT_RANGES[kind] else None
    if vtype is str and kind == "text":  # fast path: a row's own text column
        return value
    value = _partition_value(value, kind)
    if value is _NO_VALUE or value is None:
        return None
    if kind == "numeric" or kind == "float" or kind in INT_RANGES:
        return _number_key(exact(value))
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
    return format(value.normalize(NUMERIC), "f")
