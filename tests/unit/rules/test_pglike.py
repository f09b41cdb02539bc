"""LIKE and ILIKE: wildcards, escapes, NULL, ASCII-only folding."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.config.expressions import parse_expression
from sidecar.rules.evaluator import EvaluationError, evaluate

T, F, N = True, False, None


def ev(text: str, row: dict[str, Any] | None = None, claims: dict[str, Any] | None = None) -> Any:
    return evaluate(parse_expression(text), row or {}, claims or {})


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        ("a%", "abc", T),
        ("a%", "bac", F),
        ("%c", "abc", T),
        ("a_c", "abc", T),
        ("a_c", "abbc", F),
        ("%", "", T),
        ("_", "", F),
        ("a\\%", "a%", T),
        ("a\\%", "ab", F),
        ("a\\_", "a_", T),
        ("a\\\\", "a\\", T),
        ("a.c", "abc", F),  # regex characters are literal
        ("(a)*", "(a)*", T),
        ("(a)*", "a", F),
        ("a%", "a\nb", T),
        ("ABC", "abc", F),
    ],
)
def test_like(pattern: str, text: str, expected: bool) -> None:
    literal = pattern.replace("'", "''")
    assert ev(f"b LIKE '{literal}'", {"b": text}) is expected
    assert ev(f"b NOT LIKE '{literal}'", {"b": text}) is (not expected)


def test_like_null_and_ilike_folds_ascii_only() -> None:
    assert ev("b LIKE 'a%'", {"b": None}) is None
    assert ev("b LIKE NULL", {"b": "a"}) is None
    assert ev("b ILIKE 'ABC%'", {"b": "abcd"}) is True
    assert ev("b NOT ILIKE 'ABC%'", {"b": "abcd"}) is False
    assert ev("b ILIKE 'É'", {"b": "é"}) is False  # C ctype: only ASCII folds


def test_like_pattern_ending_with_escape_raises_only_when_reached() -> None:
    # PostgreSQL raises only when matching reaches the lone backslash with text left
    assert ev("b LIKE 'a\\'", {"b": None}) is None
    assert ev("b LIKE 'a\\'", {"b": ""}) is False
    assert ev("b LIKE 'a\\'", {"b": "a"}) is False
    assert ev("b LIKE 'x\\'", {"b": "ab"}) is False
    assert ev("b LIKE '%\\'", {"b": ""}) is False
    with pytest.raises(EvaluationError, match="escape"):
        ev("b LIKE 'a\\'", {"b": "ab"})
    with pytest.raises(EvaluationError, match="escape"):
        ev("b LIKE '%\\'", {"b": "a"})
