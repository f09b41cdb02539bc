"""PostgreSQL casts (`value::type`) of non-NULL Python values, per target type.

`CASTS` maps each canonical target type the config allows (`config.expressions.
ALLOWED_CASTS`'s values) to its cast. Numeric → integer rounds half away from zero; a
double → numeric keeps 15 significant digits; a timestamp without a zone meets a zone as
UTC. A cast PostgreSQL would refuse raises `EvaluationError`; a number out of an integer
type's range is refused as PostgreSQL does ("bigint out of range") before any conversion,
so a huge numeric is never expanded into a Python integer.
"""

from __future__ import annotations

import decimal
import math
from collections.abc import Callable
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any
from uuid import UUID

from sidecar.rules.pgvalues import (
    INT_NAMES,
    INT_RANGES,
    EvaluationError,
    check_numeric,
    parse_bool,
    parse_date,
    parse_datetime,
    parse_int,
    parse_numeric,
    parse_uuid,
    to_text,
    type_name_of,
)

__all__ = ["CASTS", "cast_datetime"]


def _round_half_away(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=decimal.ROUND_HALF_UP))


def _in_range(value: int, width: str) -> int:
    limit = INT_RANGES[width]
    if not -limit <= value < limit:
        raise EvaluationError(f"{INT_NAMES[width]} out of range")
    return value


def _cast_int(value: Any, width: str) -> int:
    kind = type(value)
    if kind is int:
        return _in_range(value, width)
    if kind is bool and width == "int4":
        return int(value)
    if isinstance(value, str):
        return parse_int(value, width)
    if kind is Decimal and value.is_finite():
        if value.adjusted() > 19:  # beyond every integer type: never expanded
            raise EvaluationError(f"{INT_NAMES[width]} out of range")
        return _in_range(_round_half_away(value), width)
    if kind is float and math.isfinite(value):
        if abs(value) >= 2.0**64:
            raise EvaluationError(f"{INT_NAMES[width]} out of range")
        return _in_range(round(value), width)
    raise EvaluationError(f"cannot cast {type_name_of(value)} to {width}")


def _cast_numeric(value: Any) -> Decimal:
    kind = type(value)
    if kind is Decimal:
        return value
    if kind is int:
        return check_numeric(Decimal(value))
    if kind is float:
        return Decimal(format(value, ".15g")) if math.isfinite(value) else Decimal(repr(value))
    if isinstance(value, str):
        return parse_numeric(value)
    raise EvaluationError(f"cannot cast {type_name_of(value)} to numeric")


def _cast_bool(value: Any) -> bool:
    kind = type(value)
    if kind is bool:
        return value
    if kind is int:
        return value != 0
    if isinstance(value, str):
        return parse_bool(value)
    raise EvaluationError(f"cannot cast {type_name_of(value)} to boolean")


def cast_datetime(value: Any, aware: bool) -> datetime:
    if isinstance(value, str):
        return parse_datetime(value, aware)
    if type(value) is date:
        value = datetime.combine(value, time())
    if type(value) is not datetime:
        raise EvaluationError(f"cannot cast {type_name_of(value)} to timestamp")
    if aware and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    if not aware and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


def _cast_date(value: Any) -> date:
    if isinstance(value, str):
        return parse_date(value)
    if type(value) is date:
        return value
    return cast_datetime(value, aware=False).date()


def _cast_uuid(value: Any) -> UUID:
    if type(value) is UUID:
        return value
    if isinstance(value, str):
        return parse_uuid(value)
    raise EvaluationError(f"cannot cast {type_name_of(value)} to uuid")


CASTS: dict[str, Callable[[Any], Any]] = {
    "int2": lambda v: _cast_int(v, "int2"),
    "int4": lambda v: _cast_int(v, "int4"),
    "int8": lambda v: _cast_int(v, "int8"),
    "numeric": _cast_numeric,
    "text": to_text,
    "bool": _cast_bool,
    "date": _cast_date,
    "timestamp": lambda v: cast_datetime(v, aware=False),
    "timestamptz": lambda v: cast_datetime(v, aware=True),
    "uuid": _cast_uuid,
}
