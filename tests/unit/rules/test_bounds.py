"""Hostile expressions are refused or answered within a bound (issue 12, item 6).

Each case runs in a child process with a wall-clock timeout and a memory limit, so a case
that would freeze (unbounded `Decimal` folding, a backtracking LIKE) fails the test instead
of hanging the suite. The outcomes are PostgreSQL's: numeric magnitude and scale as
PostgreSQL bounds them ("value overflows numeric format"), integer casts and arithmetic
outside bigint ("bigint out of range"), LIKE in linear time.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import textwrap

import pytest

TIMEOUT = 30.0  # seconds per case: generous (each takes milliseconds once bounded)
MEMORY = 1 << 30  # bytes of address space for a case beyond what the child starts with

_PRELUDE = """
import sys
from decimal import Decimal
from sidecar.config.expressions import ExpressionError, parse_expression
from sidecar.rules.evaluator import EvaluationError, evaluate

TYPES = {"id": "bigint", "d": "numeric", "title": "text", "a": "integer"}

def run(text, row):
    try:
        print("value:", evaluate(parse_expression(text), row, {}, TYPES))
    except ExpressionError as error:
        print("refused:", error.message)
    except EvaluationError as error:
        print("error:", error)
"""


def _limit_memory() -> None:  # pragma: no cover - runs in the child
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_AS, (4 * MEMORY, resource.RLIM_INFINITY))


def bounded(text: str, row: str = "{}") -> str:
    """The outcome of `text` on `row` (Python source), computed in a child process."""
    code = _PRELUDE + textwrap.dedent(f"run({text!r}, {row})\n")
    try:
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            preexec_fn=_limit_memory,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{text!r} was still evaluating after {TIMEOUT:.0f} s")
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


@pytest.mark.parametrize(
    ("text", "row", "expected"),
    [
        # a literal out of numeric's range is refused when parsed, never expanded
        ("(1e9999999)::int8 = id", "{'id': 1}", "refused: value overflows numeric format"),
        ("1e131072 > d", "{'d': Decimal(1)}", "refused: value overflows numeric format"),
        ("1e-16384 < d", "{'d': Decimal(1)}", "refused: value overflows numeric format"),
        ("0.0e-99999 = d", "{'d': Decimal(1)}", "refused: value overflows numeric format"),
        # the same values as text, cast or compared at run time
        ("'1e9999999'::numeric::int8 = id", "{'id': 1}", "error: value overflows numeric format"),
        ("d = '1e9999999'", "{'d': Decimal(1)}", "error: value overflows numeric format"),
        ("d::int8 = id", "{'d': Decimal('1e131071'), 'id': 1}", "error: bigint out of range"),
        ("d::int4 = a", "{'d': Decimal('1e20'), 'a': 1}", "error: integer out of range"),
        # arithmetic past numeric's range
        ("1e131071 * d > 0", "{'d': Decimal('1e131071')}", "error: value overflows numeric format"),
        ("d * 10 > 0", "{'d': Decimal('1e131071')}", "error: value overflows numeric format"),
        ("d + 1e131071 > 0", "{'d': Decimal('9e131071')}", "error: value overflows numeric format"),
        ("d / 1e-16383 > 0", "{'d': Decimal('1e131071')}", "error: value overflows numeric format"),
        # and within it: a product's scale is capped at 16383 digits, as PostgreSQL does
        ("1e-10000 * d = 0", "{'d': Decimal('1e-10000')}", "value: True"),
        ("1e131071 + d > 0", "{'d': Decimal('1e-16383')}", "value: True"),
        # integers beyond bigint
        ("9223372036854775807 + id > 0", "{'id': 1}", "error: bigint out of range"),
        ("id * id * id > 0", "{'id': 3037000500}", "error: bigint out of range"),
        # LIKE without backtracking
        ("title LIKE '%a%a%a%a%a%a%a%a%a%a%a%a%b'", "{'title': 'a' * 200}", "value: False"),
        ("title ILIKE '%A%A%A%A%A%A%A%A%A%A%A%A%b'", "{'title': 'a' * 200}", "value: False"),
        ("title LIKE '%a_a_a_a_a_a_a_a%b'", "{'title': 'a' * 100000}", "value: False"),
        ("title LIKE '%a%a%a%a%a%a%a%a%a%a%a%a%'", "{'title': 'a' * 200}", "value: True"),
    ],
)
def test_hostile_expressions_are_bounded(text: str, row: str, expected: str) -> None:
    assert bounded(text, row) == expected


def test_huge_text_against_a_long_wildcard_pattern_is_bounded() -> None:
    pattern = "%" + "a_" * 2000 + "b"
    assert bounded(f"title LIKE '{pattern}'", "{'title': 'a' * 1_000_000}") == "value: False"


def test_expression_with_too_many_nodes_is_refused() -> None:
    text = "a IN (" + ", ".join(["1"] * 1500) + ")"  # 1502 nodes in 4503 characters
    outcome = bounded(text, "{'a': 1}")
    assert outcome.startswith("refused: expression has more than"), outcome
