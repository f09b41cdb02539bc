"""The closures an evaluator is built from: each computes one node on (row, claims).

Three-valued logic: NULL (None) propagates through comparisons, arithmetic and function
calls; AND/OR are Kleene's; `x IN (..., NULL)` is NULL when nothing matches; `= ANY(array)`
is FALSE for an empty array even for a NULL left side; `IS [NOT] DISTINCT FROM` never
yields NULL. Builders are module functions (not compiler methods), so a closure looks up
nothing but its own cells per row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sidecar.rules.pgarithmetic import concat, negate
from sidecar.rules.pglike import like_matcher
from sidecar.rules.pgvalues import (
    ASCII_LOWER,
    NUMBERS,
    EvaluationError,
    compare,
    equal,
    to_text,
    type_name_of,
)

__all__ = [
    "EMPTY",
    "Claims",
    "Fn",
    "Row",
    "between",
    "binary",
    "concatenation",
    "constant",
    "distinct",
    "equals_any",
    "in_list",
    "kleene_and",
    "kleene_not",
    "kleene_or",
    "like",
    "negated",
    "strict_call",
    "unary",
]

Row = Mapping[str, Any]
Claims = Mapping[str, Any]
Fn = Callable[[Row, Claims], Any]

EMPTY: Mapping[str, Any] = {}


def constant(value: Any) -> Fn:
    """A closure returning `value` (a constant, or a sub-tree computed at compile time)."""
    return lambda row, claims: value


def kleene_not(value: Any) -> bool | None:
    return None if value is None else not value


def kleene_and(args: tuple[Fn, ...]) -> Fn:
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


def kleene_or(args: tuple[Fn, ...]) -> Fn:
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


def negated(fn: Fn) -> Fn:
    return lambda row, claims: kleene_not(fn(row, claims))


def binary(left: Fn, right: Fn, op: Callable[[Any, Any], Any]) -> Fn:
    def binary(row: Row, claims: Claims) -> Any:
        x = left(row, claims)
        if x is None:
            return None
        y = right(row, claims)
        if y is None:
            return None
        return op(x, y)

    return binary


def concatenation(args: tuple[Fn, ...]) -> Fn:
    """`a || b || c ...` (a left-deep chain) in one join: linear in the result's length,
    where nested pairs would copy the growing text once per operator. NULL and type errors
    as the nested pairs give them, in the same order."""
    first, second, *rest = args

    def concatenation(row: Row, claims: Claims) -> Any:
        x = first(row, claims)
        if x is None:
            return None
        y = second(row, claims)
        if y is None:
            return None
        pieces = [concat(x, y)]
        for arg in rest:
            value = arg(row, claims)
            if value is None:
                return None
            if type(value) is list:
                raise EvaluationError(f"operator does not exist: text || {type_name_of(value)}")
            pieces.append(to_text(value))
        return "".join(pieces)

    return concatenation


def unary(op: str, arg: Fn) -> Fn:
    def unary(row: Row, claims: Claims) -> Any:
        value = arg(row, claims)
        if value is None:
            return None
        if type(value) not in NUMBERS:
            raise EvaluationError(f"operator does not exist: {op} {type_name_of(value)}")
        return negate(value) if op == "-" else value

    return unary


def in_list(left: Fn, items: tuple[Fn, ...]) -> Fn:
    def member(row: Row, claims: Claims) -> bool | None:
        value = left(row, claims)
        if value is None:
            return None
        saw_null = False
        for item in items:
            other = item(row, claims)
            if other is None:
                saw_null = True
            elif equal(value, other):
                return True
        return None if saw_null else False

    return member


def equals_any(left: Fn, array: Fn) -> Fn:
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
            elif equal(value, other):
                return True
        return None if saw_null else False

    return any_equal


def between(value: Fn, low: Fn, high: Fn, inside: bool) -> Fn:
    def between(row: Row, claims: Claims) -> bool | None:
        x, lo, hi = value(row, claims), low(row, claims), high(row, claims)
        if x is None:
            return None
        above = None if lo is None else compare(x, lo) >= 0
        below = None if hi is None else compare(x, hi) <= 0
        if inside:
            return _and_values(above, below)
        return _or_values(kleene_not(above), kleene_not(below))

    return between


def _and_values(x: bool | None, y: bool | None) -> bool | None:
    if x is False or y is False:
        return False
    return None if x is None or y is None else True


def _or_values(x: bool | None, y: bool | None) -> bool | None:
    if x is True or y is True:
        return True
    return None if x is None or y is None else False


def distinct(left: Fn, right: Fn) -> Fn:
    def distinct(row: Row, claims: Claims) -> bool:
        x, y = left(row, claims), right(row, claims)
        if x is None or y is None:
            return (x is None) is not (y is None)
        return not equal(x, y)

    return distinct


def like(value: Fn, pattern: str, insensitive: bool) -> Fn:
    matches = like_matcher(pattern.translate(ASCII_LOWER) if insensitive else pattern)

    def like(row: Row, claims: Claims) -> bool | None:
        text = value(row, claims)
        if text is None:
            return None
        if not isinstance(text, str):
            raise EvaluationError(f"operator does not exist: {type_name_of(text)} ~~ unknown")
        return matches(text.translate(ASCII_LOWER) if insensitive else text)

    return like


def strict_call(function: Callable[..., Any], args: tuple[Fn, ...]) -> Fn:
    def call(row: Row, claims: Claims) -> Any:
        values = [arg(row, claims) for arg in args]
        if None in values:
            return None
        return function(*values)

    return call
