"""PostgreSQL value semantics: comparison, text order, unknown-typed literals, refusals."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest

from sidecar.config.expressions import parse_expression
from sidecar.rules.evaluator import EvaluationError, evaluate

T, F, N = True, False, None


def ev(text: str, row: dict[str, Any] | None = None, claims: dict[str, Any] | None = None) -> Any:
    return evaluate(parse_expression(text), row or {}, claims or {})


@pytest.mark.parametrize(
    ("text", "row", "expected"),
    [
        ("a = 1", {"a": 1}, T),
        ("a = 1", {"a": 2}, F),
        ("a = 1", {"a": None}, N),
        ("a = 1", {}, N),  # a missing column is NULL
        ("a <> 1", {"a": None}, N),
        ("a = NULL", {"a": 1}, N),
        ("NULL = NULL", {}, N),
        ("a != 1", {"a": 2}, T),
        ("a < b", {"a": 1, "b": 2}, T),
        ("a >= b", {"a": 2, "b": 2}, T),
        ("a IS NULL", {"a": None}, T),
        ("a IS NOT NULL", {"a": None}, F),
        ("c IS TRUE", {"c": None}, F),
        ("c IS NOT TRUE", {"c": None}, T),
        ("c IS FALSE", {"c": False}, T),
        ("c IS NOT FALSE", {"c": None}, T),
        ("c IS UNKNOWN", {"c": None}, T),
        ("c IS NOT UNKNOWN", {"c": True}, T),
        ("a IS DISTINCT FROM b", {"a": None, "b": None}, F),
        ("a IS DISTINCT FROM b", {"a": 1, "b": None}, T),
        ("a IS NOT DISTINCT FROM b", {"a": 1, "b": 1}, T),
        ("a IS NOT DISTINCT FROM b", {"a": None, "b": 1}, F),
    ],
)
def test_comparisons_and_null_tests(text: str, row: dict[str, Any], expected: Any) -> None:
    assert ev(text, row) is expected


def test_text_is_ordered_by_code_point() -> None:
    # C collation: uppercase before lowercase, 'Z' < 'a', 'é' after 'z'
    assert ev("'Z' < 'a'") is True
    assert ev("b > 'z'", {"b": "é"}) is True
    assert ev("'abc' < 'abd'") is True
    assert ev("'ab' < 'abc'") is True


def test_unknown_literals_take_the_type_they_meet() -> None:
    u = UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    assert ev("u = 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'", {"u": u}) is True
    assert ev("u = '{a0eebc999c0b4ef8bb6d6bb9bd380a11}'", {"u": u}) is True
    assert ev("day = '2024-03-01'", {"day": date(2024, 3, 1)}) is True
    assert ev("day < '2024-03-01 10:00'", {"day": date(2024, 3, 1)}) is False  # a date
    assert ev("day < '2024-03-01 10:00'::timestamp", {"day": date(2024, 3, 1)}) is True
    assert ev("ts = '2024-03-01 10:00:00'", {"ts": datetime(2024, 3, 1, 10)}) is True
    aware = datetime(2024, 3, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    assert ev("tz = '2024-03-01T10:00:00Z'", {"tz": aware}) is True
    assert ev("tz = '2024-03-01 11:00+01'", {"tz": aware}) is True
    assert ev("d = ' 1.50 '", {"d": Decimal("1.5")}) is True
    assert ev("c = 'yes' AND c = 't' AND NOT c = 'off'", {"c": True}) is True
    assert ev("'t'::boolean") is True
    assert ev("'1' = '01'") is False  # two unknowns compare as text
    assert ev("day = ts", {"day": date(2024, 3, 1), "ts": datetime(2024, 3, 1)}) is True


@pytest.mark.parametrize(
    ("text", "row"),
    [
        ("a / 0 = 1", {"a": 1}),
        ("d / 0 = 1", {"d": Decimal(1)}),
        ("b = 1", {"b": "x"}),  # text = integer does not exist
        ("a = 'x'", {"a": 1}),  # invalid input syntax for type integer
        ("a = '1.5'", {"a": 1}),
        ("c", {"c": 1}),
        ("lower(a) = 'x'", {"a": 1}),
        ("a LIKE 'x'", {"a": 1}),
        ("'x'::int = 1", {}),
        ("40000::smallint = 1", {}),
        ("u = 'not-a-uuid'", {"u": UUID(int=1)}),
    ],
)
def test_errors_where_postgres_raises(text: str, row: dict[str, Any]) -> None:
    with pytest.raises(EvaluationError):
        ev(text, row)
