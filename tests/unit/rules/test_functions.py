"""The function table: each function's semantics; the config and the evaluator agree on it."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from sidecar.config.expressions import ExpressionError, parse_expression
from sidecar.rules.evaluator import evaluate
from sidecar.rules.functions import FUNCTIONS, Function
from sidecar.rules.scopes import compile_read_rule


def ev(text: str, row: dict[str, Any] | None = None, claims: dict[str, Any] | None = None) -> Any:
    return evaluate(parse_expression(text), row or {}, claims or {})


def test_functions() -> None:
    row = {"b": "  aBÉ ", "n": None, "d": Decimal("-1.50"), "a": -3}
    assert ev("lower(b) = '  abÉ '", row) is True  # ASCII only
    assert ev("upper(b) = '  ABÉ '", row) is True
    assert ev("length(b) = 6 AND char_length(b) = 6", row) is True
    assert ev("trim(b) = 'aBÉ'", row) is True
    assert ev("btrim('xxaxx', 'x') = 'a'") is True
    assert ev("trim(leading 'x' from 'xxaxx') = 'axx'") is True
    assert ev("trim(trailing 'x' from 'xxaxx') = 'xxa'") is True
    assert ev("abs(d) = 1.5 AND abs(a) = 3", row) is True
    assert ev("lower(n) = 'x'", row) is None
    assert ev("length(n) IS NULL", row) is True
    assert ev("now() > '2020-01-01'::timestamptz") is True


# -- one table: the config's allow-list and the evaluator agree -----------------------------

TABLE = sorted(FUNCTIONS.values(), key=lambda f: f.name)


def _call(function: Function, count: int) -> str:
    return f"{function.name}({', '.join(['b'] * count)})"


@pytest.mark.parametrize("function", TABLE, ids=lambda f: f.name)
def test_every_function_the_config_accepts_evaluates(function: Function) -> None:
    for count in range(function.min_args, function.max_args + 1):
        call = _call(function, count)
        for text in (call, f"pg_catalog.{call}"):
            expr = parse_expression(f"coalesce({text}, NULL) IS NULL")  # the config accepts it
            # the evaluator computes it (strict: NULL arguments give NULL) and types it
            expected = count > 0
            assert evaluate(expr, {"b": None}, {}) is expected, text
            assert evaluate(expr, {"b": None}, {}, {"b": "text"}) is expected, text


@pytest.mark.parametrize("function", TABLE, ids=lambda f: f.name)
def test_the_config_refuses_other_argument_counts(function: Function) -> None:
    counts = [function.max_args + 1] + ([function.min_args - 1] if function.min_args else [])
    for count in counts:
        with pytest.raises(ExpressionError, match="argument") as caught:
            parse_expression(f"{_call(function, count)} IS NULL")
        assert (caught.value.token, caught.value.position) == (function.name, 0)


def test_an_unknown_function_is_refused_by_the_config_with_its_location() -> None:
    allowed = ", ".join(sorted({*FUNCTIONS, "coalesce", "trim"}))
    with pytest.raises(ExpressionError) as caught:
        parse_expression("owner_id = 1 OR md5(b) = 'x'")
    assert caught.value.message == f"function md5() is not allowed (allowed: {allowed})"
    assert (caught.value.token, caught.value.position) == ("md5", 16)
    assert "lower" in allowed and "now" in allowed  # the table's names, listed


@pytest.mark.parametrize("function", [f for f in TABLE if f.volatile], ids=lambda f: f.name)
def test_read_rules_refuse_volatile_functions(function: Function) -> None:
    with pytest.raises(ExpressionError, match="cannot be used in a read rule") as caught:
        compile_read_rule(
            parse_expression(f"b = :x OR {_call(function, 0)} IS NULL"), {"b": "text"}
        )
    assert (caught.value.token, caught.value.position) == (function.name, 10)
