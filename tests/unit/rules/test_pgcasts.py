"""PostgreSQL casts (`::type`)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sidecar.config.expressions import parse_expression
from sidecar.rules.evaluator import evaluate


def ev(text: str, row: dict[str, Any] | None = None, claims: dict[str, Any] | None = None) -> Any:
    return evaluate(parse_expression(text), row or {}, claims or {})


def test_casts() -> None:
    assert ev("a::text = '5'", {"a": 5}) is True
    assert ev("c::text = 'true'", {"c": True}) is True
    assert ev("d::text = '1.50'", {"d": Decimal("1.50")}) is True
    assert ev("'2024-01-02'::date > '2024-01-01'") is True
    assert ev("x::boolean", {"x": "on"}) is True
    assert ev("a::numeric / 4 = 0.25", {"a": 1}) is True
    assert ev("a::bigint IS NULL", {"a": None}) is True
    assert ev("ts::date = '2024-01-01'", {"ts": datetime(2024, 1, 1, 23, 59)}) is True
    assert ev("b || 1 = 'x1' AND b || 1.50 = 'x1.50'", {"b": "x"}) is True
