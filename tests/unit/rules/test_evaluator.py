"""The evaluator: three-valued logic, IN / ANY / BETWEEN, claims, coalesce, compilation."""

from __future__ import annotations

import itertools
from decimal import Decimal
from typing import Any

import pytest

from sidecar.config.expressions import parse_expression
from sidecar.rules.evaluator import EvaluationError, compile_evaluator, evaluate

T, F, N = True, False, None


def ev(text: str, row: dict[str, Any] | None = None, claims: dict[str, Any] | None = None) -> Any:
    return evaluate(parse_expression(text), row or {}, claims or {})


KLEENE = [T, F, N]


@pytest.mark.parametrize(("x", "y"), list(itertools.product(KLEENE, KLEENE)))
def test_and_or_not_are_kleene(x: bool | None, y: bool | None) -> None:
    row = {"x": x, "y": y}
    expected_and = F if F in (x, y) else (N if N in (x, y) else T)
    expected_or = T if T in (x, y) else (N if N in (x, y) else F)
    assert ev("x AND y", row) is expected_and
    assert ev("x OR y", row) is expected_or
    assert ev("NOT x", row) is (None if x is None else not x)
    assert ev("NOT (x AND y)", row) is ev("NOT x OR NOT y", row)  # De Morgan holds


@pytest.mark.parametrize(
    ("text", "a", "expected"),
    [
        ("a IN (1, 2)", 1, T),
        ("a IN (1, 2)", 3, F),
        ("a IN (1, NULL)", 1, T),
        ("a IN (1, NULL)", 3, N),
        ("a IN (1, 2)", None, N),
        ("a NOT IN (1, 2)", 3, T),
        ("a NOT IN (1, NULL)", 3, N),
        ("a NOT IN (1, NULL)", 1, F),
        ("a = ANY(ARRAY[1, 2])", 2, T),
        ("a = ANY(ARRAY[1, NULL])", 2, N),
        ("a BETWEEN 1 AND 3", 2, T),
        ("a BETWEEN 1 AND 3", 4, F),
        ("a BETWEEN 1 AND NULL", 2, N),
        ("a BETWEEN 3 AND NULL", 2, F),
        ("a BETWEEN 1 AND 3", None, N),
        ("a NOT BETWEEN 3 AND NULL", 2, T),
        ("a NOT BETWEEN 1 AND NULL", 2, N),
        ("a NOT BETWEEN 1 AND 3", 2, F),
    ],
)
def test_in_any_between(text: str, a: Any, expected: Any) -> None:
    assert ev(text, {"a": a}) is expected


@pytest.mark.parametrize(
    ("groups", "a", "expected"),
    [
        ([1, 2], 2, T),
        ([1, 2], 3, F),
        ([1, None], 3, N),
        ([], 3, F),
        ([], None, F),  # an empty array: FALSE even for NULL, as in PostgreSQL
        (None, 3, N),
        ([1], None, N),
        (["2"], 2, T),  # string elements of a claim array are unknown-typed
        (2, 2, T),  # a scalar claim is a one-element array
    ],
)
def test_any_of_a_claim(groups: Any, a: Any, expected: Any) -> None:
    claims = {} if groups is None else {"groups": groups}
    assert ev("a = ANY(:groups)", {"a": a}, claims) is expected


def test_coalesce_takes_the_common_type() -> None:
    expr = parse_expression("(coalesce(a, d) / 2)::text = '0.50000000000000000000'")
    types = {"a": "integer", "d": "numeric"}
    assert evaluate(expr, {"a": 1, "d": None}, {}, types) is True  # numeric, as in PostgreSQL
    assert evaluate(expr, {"a": 1, "d": Decimal(3)}, {}) is True  # known from the value
    assert evaluate(expr, {"a": 1, "d": None}, {}) is False  # no types: integer division
    assert ev("coalesce(a, 1.5) / 2 = 0.5", {"a": 1}) is True  # the literal's type counts
    assert ev("coalesce(d, '5') / 2 = 2.5", {"d": None}, None) is False  # '5' stays unknown
    assert evaluate(parse_expression("coalesce(d, '5') / 2 = 2.5"), {}, {}, types) is True
    assert ev("coalesce(NULL, 'x') || 'y' = 'xy'") is True
    assert ev("a = ANY(ARRAY[1, 2.5])", {"a": 1}) is True


def test_coalesce() -> None:
    assert ev("coalesce(a, b, 3) = 3", {"a": None, "b": None}) is True
    assert ev("coalesce(a, b, 3) = 2", {"a": None, "b": 2}) is True
    assert ev("coalesce(a, '5') = 5", {"a": None}) is True  # unknown meets an integer
    assert ev("coalesce(a, NULL) = 1", {"a": None}) is None
    assert ev("coalesce(c, false)", {"c": None}) is False


def test_numeric_literals_are_decimal() -> None:
    fn = compile_evaluator(parse_expression("d = 1.5"))
    assert fn({"d": Decimal("1.50")}, {}) is True
    assert fn({"d": 1.5}, {}) is True  # a double meets numeric


def test_claims() -> None:
    expr = parse_expression("owner_id = :sub")
    assert evaluate(expr, {"owner_id": 42}, {"sub": "42"}) is True
    assert evaluate(expr, {"owner_id": 42}, {"sub": 42}) is True
    assert evaluate(expr, {"owner_id": 42}, {"sub": " 42 "}) is True  # int input syntax
    assert evaluate(expr, {"owner_id": 42}, {}) is None  # a missing claim is NULL
    assert evaluate(expr, {"owner_id": 42}, {"sub": None}) is None
    assert ev(":role = 'admin'", {}, {"role": "admin"}) is True
    assert ev(":role IS NULL", {}, {}) is True
    assert ev(":role = 'admin'", {}, {}) is None
    assert ev(":sub::int > 3", {}, {"sub": "7"}) is True
    assert ev("team IN (:a, :b)", {"team": "x"}, {"b": "x"}) is True
    with pytest.raises(EvaluationError):
        evaluate(expr, {"owner_id": 42}, {"sub": "abc"})


def test_evaluator_is_compiled_once() -> None:
    expr = parse_expression("a = 1 AND b = 'x'")
    fn = compile_evaluator(expr)
    assert fn({"a": 1, "b": "x"}, {}) is True
    assert fn({"a": 2, "b": "x"}, {}) is False
    assert evaluate(expr, {"a": 1, "b": "x"}, {}) is True


def test_a_sub_select_is_refused_with_a_clear_error_not_a_crash() -> None:
    from sidecar.config.expressions import ExpressionError

    expr = parse_expression(
        "owner = :sub OR project_id IN (SELECT project_id FROM members WHERE user_id = :sub)"
    )
    for call in (
        lambda: compile_evaluator(expr),
        lambda: evaluate(expr, {"owner": "x", "project_id": 1}, {"sub": "x"}),
    ):
        with pytest.raises(ExpressionError, match="sub-select reads another table"):
            call()
