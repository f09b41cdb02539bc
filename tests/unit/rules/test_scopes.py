"""Read scopes: rules compiled to scopes that agree with the evaluator exactly."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sidecar.config.expressions import ExpressionError, parse_expression
from sidecar.rules.evaluator import evaluate
from sidecar.rules.scopes import MAX_BRANCHES, ReadRule, compile_read_rule

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
