"""The functions a rule may call: ONE table, read by the config's allow-list and the evaluator.

A new rule function goes here, and only here: one `Function` in `FUNCTIONS` with its name
(as PostgreSQL's parser spells it: `trim(x)` is `btrim`), how many arguments it takes, the
kind of its result (for `coalesce`'s type resolution) and its implementation with
PostgreSQL's semantics. `config.expressions` then accepts it (optionally qualified
`pg_catalog.`, with that many arguments) and the evaluator computes it; the tests check
both against PostgreSQL (tests/integration/test_rules_vs_postgres.py).

Every function is strict: a NULL argument makes the result NULL without a call.
`coalesce` is not a function here (it is lazy and typed by its arguments: the evaluator
handles it as PostgreSQL's parser does, as its own node).

This module imports nothing of `sidecar.config` (which imports it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from sidecar.rules.pgvalues import (
    ASCII_LOWER,
    ASCII_UPPER,
    EvaluationError,
    check_int8,
    type_name_of,
)

__all__ = ["FUNCTIONS", "Function"]


@dataclass(frozen=True, slots=True)
class Function:
    """One allowed function.

    `result` is the kind of the result (`sidecar.rules.pgvalues`' kinds, with "int" for
    any integer), or None for "the kind of the first argument" (`abs`). `call` takes the
    arguments' values, none of them NULL. A `volatile` function gives a new value per call
    (`now()`): it is never computed ahead of time, and read rules refuse it (scopes are
    computed when rows change, not when they are read).
    """

    name: str
    min_args: int
    max_args: int
    result: str | None
    call: Callable[..., Any]
    volatile: bool = False


def _text_arg(value: Any, function: str) -> str:
    if isinstance(value, str):
        return value
    raise EvaluationError(f"function {function}({type_name_of(value)}) does not exist")


def _lower(value: Any) -> str:
    return _text_arg(value, "lower").translate(ASCII_LOWER)  # ASCII only (C ctype)


def _upper(value: Any) -> str:
    return _text_arg(value, "upper").translate(ASCII_UPPER)


def _length(function: str) -> Callable[[Any], int]:
    def length(value: Any) -> int:
        return len(_text_arg(value, function))

    return length


def _abs(value: Any) -> Any:
    kind = type(value)
    if kind is int:
        return check_int8(abs(value))
    if kind is float:
        return abs(value)
    if kind is Decimal:
        return value.copy_abs()
    raise EvaluationError(f"function abs({type_name_of(value)}) does not exist")


def _trim(method: str) -> Callable[..., str]:
    def trim(value: Any, chars: Any = " ") -> str:
        text = _text_arg(value, "trim")
        return str(getattr(str, method)(text, _text_arg(chars, "trim")))

    return trim


def _now() -> datetime:
    return datetime.now(UTC)


FUNCTIONS: Mapping[str, Function] = MappingProxyType(
    {
        f.name: f
        for f in (
            Function("lower", 1, 1, "text", _lower),
            Function("upper", 1, 1, "text", _upper),
            Function("length", 1, 1, "int", _length("length")),
            Function("char_length", 1, 1, "int", _length("char_length")),
            Function("abs", 1, 1, None, _abs),
            Function("btrim", 1, 2, "text", _trim("strip")),  # trim(x), trim(both 'x' from y)
            Function("ltrim", 1, 2, "text", _trim("lstrip")),  # trim(leading ...)
            Function("rtrim", 1, 2, "text", _trim("rstrip")),  # trim(trailing ...)
            Function("now", 0, 0, "timestamptz", _now, volatile=True),
        )
    }
)
