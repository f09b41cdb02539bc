"""Rules: the evaluator's SQL semantics, and read scopes that agree with it exactly."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sidecar.config.expressions import ExpressionError, parse_expression
from sidecar.rules import (
    MAX_BRANCHES,
    EvaluationError,
    ReadRule,
    bind_claims,
    compile_evaluator,
    compile_read_rule,
    evaluate,
)

T, F, N = True, False, None


def ev(text: str, row: dict[str, Any] | None = None, claims: dict[str, Any] | None = None) -> Any:
    return evaluate(parse_expression(text), row or {}, claims or {})


# == evaluator ============================================================================

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


def test_text_is_ordered_by_code_point() -> None:
    # C collation: uppercase before lowercase, 'Z' < 'a', 'é' after 'z'
    assert ev("'Z' < 'a'") is True
    assert ev("b > 'z'", {"b": "é"}) is True
    assert ev("'abc' < 'abd'") is True
    assert ev("'ab' < 'abc'") is True


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


def test_numeric_literals_are_decimal() -> None:
    fn = compile_evaluator(parse_expression("d = 1.5"))
    assert fn({"d": Decimal("1.50")}, {}) is True
    assert fn({"d": 1.5}, {}) is True  # a double meets numeric


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


def test_evaluator_is_compiled_once() -> None:
    expr = parse_expression("a = 1 AND b = 'x'")
    fn = compile_evaluator(expr)
    assert fn({"a": 1, "b": "x"}, {}) is True
    assert fn({"a": 2, "b": "x"}, {}) is False
    assert evaluate(expr, {"a": 1, "b": "x"}, {}) is True


# == scopes ===============================================================================

TYPES = {
    "owner_id": "integer",
    "is_public": "boolean",
    "archived": "boolean",
    "a": "integer",
    "b": "text",
    "group_id": "bigint",
    "team": "character varying(20)",
    "d": "numeric(10,2)",
    "f": "double precision",
    "u": "uuid",
    "day": "date",
    "ts": "timestamp without time zone",
    "tz": "timestamp with time zone",
    "doc": "jsonb",
    "tags": "text[]",
    "level": "integer",
}


def rule(text: str) -> ReadRule:
    return compile_read_rule(parse_expression(text), TYPES)


def visible(r: ReadRule, row: dict[str, Any], claims: dict[str, Any]) -> bool:
    return bool(set(r.row_scopes(row)) & set(r.request_scopes(claims)))


def test_owner_scopes() -> None:
    r = rule("owner_id = :sub")
    assert r.columns == frozenset({"owner_id"})
    assert r.row_scopes({"owner_id": 42}) == ('0:["42"]',)
    assert r.row_scopes({"owner_id": None}) == ()
    assert r.request_scopes({"sub": "42"}) == ('0:["42"]',)
    assert r.request_scopes({"sub": 42}) == ('0:["42"]',)
    assert r.request_scopes({"sub": "abc"}) == ()  # cannot be coerced: matches nothing
    assert r.request_scopes({"sub": "99999999999"}) == ()  # out of integer range
    assert r.request_scopes({}) == ()  # a missing claim: no scope
    assert r.request_scopes({"sub": None}) == ()


def test_either_side_of_equals() -> None:
    assert rule(":sub = owner_id").row_scopes({"owner_id": 7}) == ('0:["7"]',)


def test_owner_or_public() -> None:
    r = rule("owner_id = :sub OR is_public")
    assert r.row_scopes({"owner_id": 1, "is_public": True}) == ('0:["1"]', "1:")
    assert r.row_scopes({"owner_id": 1, "is_public": False}) == ('0:["1"]',)
    assert r.row_scopes({"owner_id": None, "is_public": None}) == ()
    assert r.request_scopes({"sub": "2"}) == ('0:["2"]', "1:")
    assert r.request_scopes({}) == ("1:",)


def test_two_partitions_and_a_row_condition() -> None:
    r = rule("(a = :x OR b = :y) AND NOT archived")
    row = {"a": 1, "b": "z", "archived": False}
    assert r.row_scopes(row) == ('0:["1"]', '1:["z"]')
    assert r.row_scopes({**row, "archived": True}) == ()
    assert r.row_scopes({**row, "archived": None}) == ()  # NOT NULL is not TRUE
    assert r.request_scopes({"x": 1, "y": "z"}) == ('0:["1"]', '1:["z"]')
    assert r.request_scopes({"y": "z"}) == ('1:["z"]',)


def test_claim_array() -> None:
    r = rule("group_id = ANY(:groups)")
    assert r.row_scopes({"group_id": 3}) == ('0:["3"]',)
    assert r.request_scopes({"groups": [1, "3", None, "bad", 3]}) == ('0:["1"]', '0:["3"]')
    assert r.request_scopes({"groups": []}) == ()
    assert r.request_scopes({"groups": 5}) == ('0:["5"]',)  # a scalar: one element


def test_several_claims_in_a_list() -> None:
    r = rule("team IN (:team_a, :team_b, 'shared')")
    assert r.row_scopes({"team": "red"}) == ('0:["red"]',)
    assert set(r.request_scopes({"team_a": "red"})) == {'0:["red"]', '0:["shared"]'}


def test_claim_only_rules() -> None:
    r = rule(":role = 'admin'")
    assert r.columns == frozenset()
    assert r.row_scopes({}) == ("0:",)
    assert r.request_scopes({"role": "admin"}) == ("0:",)
    assert r.request_scopes({"role": "user"}) == ()
    assert r.request_scopes({}) == ()


def test_admin_or_owner() -> None:
    r = rule(":role = 'admin' OR owner_id = :sub")
    assert r.row_scopes({"owner_id": 5}) == ("0:", '1:["5"]')
    assert r.request_scopes({"role": "admin", "sub": "1"}) == ("0:", '1:["1"]')
    assert r.request_scopes({"role": "user", "sub": "5"}) == ('1:["5"]',)
    assert visible(r, {"owner_id": 5}, {"role": "admin"})
    assert not visible(r, {"owner_id": 5}, {"role": "user", "sub": 6})


def test_true_false_and_null_rules() -> None:
    assert rule("true").row_scopes({}) == ("0:",)
    assert rule("true").request_scopes({}) == ("0:",)
    assert rule("false").row_scopes({}) == ()
    assert rule("NULL").request_scopes({}) == ()
    assert rule("owner_id = :sub OR 1 = 1").row_scopes({"owner_id": None}) == ("1:",)
    assert rule("owner_id = :sub AND 1 = 2").branches == ()


def test_partition_claims_are_coerced_to_the_column_type() -> None:
    u = UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    cases: list[tuple[str, Any, Any]] = [
        ("u = :x", u, "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"),
        ("d = :x", Decimal("1.50"), "1.5"),
        ("d = :x", Decimal("2.00"), 2),
        ("d = :x", Decimal("0.10"), 0.1),
        ("f = :x", 0.5, "0.50"),
        ("f = :x", 2.0, 2),
        ("a = :x", 2, 2.0),
        ("day = :x", date(2024, 1, 2), "2024-01-02"),
        ("ts = :x", datetime(2024, 1, 2, 3, 4, 5), "2024-01-02T03:04:05"),
        ("tz = :x", datetime(2024, 1, 2, 3, tzinfo=UTC), "2024-01-02 05:00:00+02:00"),
        ("is_public = :x", True, "yes"),
        ("is_public = :x", False, False),
        ("b = :x", "x", "x"),
        ("owner_id = :x::int", 5, "5"),
    ]
    for text, value, claim in cases:
        r = rule(text)
        column = text.split()[0]
        assert visible(r, {column: value}, {"x": claim}), (text, value, claim)
        assert evaluate(r.expression, {column: value}, {"x": claim}) is True


def test_claims_that_never_match() -> None:
    assert rule("a = :x").request_scopes({"x": 2.5}) == ()
    assert rule("a = :x").request_scopes({"x": True}) == ()
    assert rule("a = :x").request_scopes({"x": [1]}) == ()
    assert rule("b = :x").request_scopes({"x": 5}) == ()  # text = integer does not exist
    assert rule("u = :x").request_scopes({"x": "nope"}) == ()
    assert rule("day = :x").request_scopes({"x": "2024-13-01"}) == ()


@pytest.mark.parametrize(
    "text",
    [
        "level > :level",
        "NOT (owner_id = :sub)",
        "owner_id <> :sub",
        "lower(b) = :sub",
        "a + :x = 1",
        "a IS DISTINCT FROM :x",
        "a IN (:x, b)",
        "owner_id = :sub OR level > :level",
        "coalesce(owner_id, :sub) = 1",
        "a BETWEEN :lo AND :hi",
        "(owner_id = :sub) IS TRUE",
        "NOT (is_public OR owner_id = :sub)",
    ],
)
def test_refused_mixes(text: str) -> None:
    with pytest.raises(ExpressionError, match="partitioned into scopes") as caught:
        rule(text)
    assert caught.value.position is not None
    assert caught.value.token


def test_other_refusals_are_located() -> None:
    with pytest.raises(ExpressionError, match="unknown column nope") as caught:
        rule("owner_id = :sub OR nope")
    assert (caught.value.token, caught.value.position) == ("nope", 19)
    with pytest.raises(ExpressionError, match=r"now\(\)"):
        rule("ts > now()")
    with pytest.raises(ExpressionError, match="cannot partition"):
        rule("doc = :x")
    with pytest.raises(ExpressionError, match="cannot partition"):
        rule("tags = :x")
    clause = "(a = :x OR b = :y)"
    with pytest.raises(ExpressionError, match=f"more than {MAX_BRANCHES}"):
        rule(" AND ".join([clause] * 6))
    assert len(rule(" AND ".join([clause] * 5)).branches) == MAX_BRANCHES


def test_pure_row_and_pure_claim_parts_do_not_multiply_branches() -> None:
    many = " OR ".join(f"a = {i}" for i in range(100))
    r = rule(f"({many}) AND (owner_id = :sub OR :role = 'admin' OR :role = 'root')")
    assert len(r.branches) == 3  # the 100-way OR is one row atom, each claim test one atom
    assert r.row_scopes({"a": 50, "owner_id": 1}) == ('0:["1"]', "1:", "2:")
    assert r.request_scopes({"sub": 1}) == ('0:["1"]',)
    assert r.row_scopes({"a": 500, "owner_id": 1}) == ()


def test_bind_claims() -> None:
    expr = parse_expression("owner_id = :sub OR group_id = ANY(:groups) OR :role = 'admin'")
    sql, values = bind_claims(expr, {"sub": "7", "groups": 3})
    assert sql == "owner_id = $1 OR group_id = ANY($2) OR $3 = 'admin'"
    assert values == ("7", [3], None)


# == property: scopes agree with the evaluator ============================================
#
# Columns: a int, b text, c bool, d numeric, o int.
# Claims: sub (int or int-as-string), role (str), groups (list of ints, with NULLs).

PROPERTY_TYPES = {"a": "integer", "b": "text", "c": "boolean", "d": "numeric", "o": "integer"}

_ints = st.sampled_from(["a", "o", "-1", "0", "2", "NULL", "(a + 1)", "abs(o)", "(a / 2)"])
_ints = st.one_of(_ints, st.just("coalesce(a, o, 0)"), st.just("length(b)"))
_nums = st.sampled_from(["d", "1.5", "-0.25", "0", "NULL", "(d * 2)", "(d + a)", "(d / 3)"])
_texts = st.sampled_from(["b", "'a'", "'ab'", "'É'", "NULL", "lower(b)", "(b || 'a')", "'%'"])
_patterns = st.text("ab%_É\\", max_size=4).filter(lambda p: (len(p) - len(p.rstrip("\\"))) % 2 == 0)
_cmp = st.sampled_from(["=", "<>", "<", "<=", ">", ">="])


def _binary(terms: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.tuples(terms, _cmp, terms).map(" ".join)


_row_atoms = st.one_of(
    _binary(_ints),
    _binary(_nums),
    _binary(_texts),
    st.tuples(_ints, _cmp, _nums).map(" ".join),
    st.sampled_from(["c", "c IS TRUE", "c IS NOT FALSE", "c IS NULL", "c = true", "NOT c"]),
    st.sampled_from(["a IN (1, NULL, 2)", "o NOT IN (0, 2)", "b IN ('a', NULL)"]),
    st.sampled_from(["a = ANY(ARRAY[1, 2, NULL])", "a IS DISTINCT FROM o", "d IS NULL"]),
    st.sampled_from(["d = '1.50'", "d > ' 0.5'", "(d / 3)::text = '0.50000000000000000000'"]),
    st.tuples(_ints, _ints, _ints).map(lambda t: f"{t[0]} BETWEEN {t[1]} AND {t[2]}"),
    st.tuples(_nums, _nums, _nums).map(lambda t: f"{t[0]} NOT BETWEEN {t[1]} AND {t[2]}"),
    st.tuples(st.sampled_from(["LIKE", "NOT LIKE", "ILIKE", "NOT ILIKE"]), _patterns).map(
        lambda t: f"b {t[0]} '{t[1]}'"
    ),
    st.sampled_from(["true", "false", "NULL", "1 = 1", "NULL IS NULL"]),
)
_claim_atoms = st.sampled_from(
    [
        ":role = 'admin'",
        ":role <> 'banned'",
        ":role IN ('admin', 'staff', NULL)",
        ":role LIKE 'a%'",
        ":role::text IS NULL",
        ":sub::int > 2",
        "coalesce(:role, 'none') = 'none'",
        ":role IS NOT DISTINCT FROM 'staff'",
        "2 = ANY(:groups)",
    ]
)
_partition_atoms = st.sampled_from(
    [
        "a = :sub",
        ":sub = o",
        "o = ANY(:groups)",
        "a = ANY(:groups)",
        "a IN (:sub, 3)",
        "d = :sub",
        "b = :role",
        "o IN (:sub, NULL)",
        "a = :sub::int",
    ]
)


def read_rules(depth: int, positive: bool) -> st.SearchStrategy[str]:
    """Boolean expressions; partition atoms only where no NOT is above them."""
    kinds = {"row": _row_atoms, "claim": _claim_atoms, "partition": _partition_atoms}
    choices = ["partition", "row", "claim", "partition"] if positive else ["row", "claim"]
    leaf = st.sampled_from(choices).flatmap(kinds.__getitem__)  # one_of would flatten
    if depth == 0:
        return leaf
    sub = read_rules(depth - 1, positive)
    return st.one_of(
        st.tuples(sub, st.sampled_from(["AND", "OR"]), sub).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        ),
        leaf,
        read_rules(depth - 1, not positive).map(lambda e: f"NOT ({e})"),
    )


_small = st.integers(-2, 4)
ROW_VALUES = st.fixed_dictionaries(
    {
        "a": st.none() | _small,
        "o": st.none() | _small,
        "b": st.none() | st.sampled_from(["", "a", "ab", "A", "aÉ", "é", "b%", "%"]),
        "c": st.none() | st.booleans(),
        "d": st.none()
        | st.sampled_from(["0", "1.5", "1.50", "-0.25", "2", "3.00", "-1"]).map(Decimal),
    }
)
CLAIM_VALUES = st.fixed_dictionaries(
    {},
    optional={
        "sub": st.one_of(_small, _small.map(str), _small.map(lambda i: f" {i}")),
        "role": st.sampled_from(["admin", "staff", "banned", "a%", "none", "ab"]),
        "groups": st.lists(st.none() | _small, max_size=3),
    },
)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(
    text=read_rules(3, True),
    rows=st.lists(ROW_VALUES, min_size=1, max_size=6),
    claims=st.lists(CLAIM_VALUES, min_size=1, max_size=6),
)
def test_scopes_agree_with_the_evaluator(
    text: str, rows: list[dict[str, Any]], claims: list[dict[str, Any]]
) -> None:
    expr = parse_expression(text)
    try:
        r = compile_read_rule(expr, PROPERTY_TYPES)
    except ExpressionError as error:
        assume("OR-branches" not in error.message)
        raise
    requests = [set(r.request_scopes(c)) for c in claims]
    for row in rows:
        row_scopes = set(r.row_scopes(row))
        for claim, request in zip(claims, requests, strict=True):
            expected = evaluate(expr, row, claim, PROPERTY_TYPES) is True
            assert bool(row_scopes & request) == expected, (row, claim, row_scopes, request)
