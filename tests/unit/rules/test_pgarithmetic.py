"""PostgreSQL arithmetic: integer division, numeric scales, mixed types."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.config.expressions import parse_expression
from sidecar.rules.evaluator import evaluate

T, F, N = True, False, None


def ev(text: str, row: dict[str, Any] | None = None, claims: dict[str, Any] | None = None) -> Any:
    return evaluate(parse_expression(text), row or {}, claims or {})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7 / 2 = 3", T),
        ("-7 / 2 = -3", T),  # truncation toward zero
        ("7 / -2 = -3", T),
        ("1.5 / 7 = 0.21428571428571428571", T),  # PostgreSQL's numeric result scale
        ("10.0 / 4 = 2.5", T),
        ("(1.5 / 7)::text = '0.21428571428571428571'", T),
        ("(10::numeric / 3)::text = '3.3333333333333333'", T),
        ("(2.50 * 2)::text = '5.00'", T),
        ("(1.5 + 1)::text = '2.5'", T),
        ("1.5 + 1 = 2.5", T),
        ("1 + 1.5 = 2.5", T),
        ("2 * 3 - 1 = 5", T),
        ("-(1.5) = -1.5", T),
        ("0.1 + 0.2 = 0.3", T),  # numeric, not float
        ("2.5::int = 3 AND (-2.5)::int = -3", T),  # numeric → int rounds half away from 0
        ("'1e3'::numeric = 1000", T),
        ("9999999999 + 1 = 10000000000", T),
        ("1 + NULL IS NULL", T),
    ],
)
def test_arithmetic(text: str, expected: bool) -> None:
    assert ev(text) is expected
