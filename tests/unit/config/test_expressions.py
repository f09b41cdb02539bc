"""Rule expressions: the allow-list, located refusals, claims and SQL rendering."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pglast import parse_sql

from sidecar.config.expression_sql import render_sql
from sidecar.config.expressions import Expression, ExpressionError, parse_expression

# -- accepted -----------------------------------------------------------------------------

ACCEPTED = [
    "owner_id = :sub",
    ":role = 'admin'",
    "group_id = ANY(:groups)",
    "team IN (:team_a, :team_b)",
    "owner_id = :sub OR is_public",
    "(a = :x OR b = :y) AND NOT archived",
    "x::int > 1",
    ":sub::int = owner_id",
    "created_at >= '2024-01-01'::timestamptz",
    "d = date '2024-01-01'",
    "length(title) BETWEEN 1 AND 200",
    "title NOT BETWEEN 'a' AND 'b'",
    "title LIKE 'a%' AND title NOT LIKE '%\\_x' AND title ILIKE 'A_' AND title NOT ILIKE 'z'",
    "a IS NULL OR b IS NOT NULL",
    "done IS TRUE OR done IS NOT FALSE OR done IS UNKNOWN",
    "a IS DISTINCT FROM b AND a IS NOT DISTINCT FROM :x",
    "a != 1 AND a <> 2 AND a < 3 AND a <= 4 AND a > 5 AND a >= 6",
    "(a + 1) * 2 - -b / 3 > 1.5",
    "lower(email) = lower(:email) AND upper(x) = 'X' AND char_length(t) < 9",
    "coalesce(deleted, false) = false",
    "abs(balance) < 100 AND trim(name) <> '' AND btrim(name, 'x') = 'y'",
    "trim(both 'x' from name) = 'y' AND trim(leading from name) = 'z'",
    "updated_at < now()",
    "first || ' ' || last = :name",
    "a IN (1, NULL, 3) AND b = ANY(ARRAY[1, 2, NULL])",
    "u = :sub::uuid AND n::numeric > 0 AND n::bigint > 0 AND n::smallint > 0",
    "t::text = 'x' AND t::boolean AND t::bool AND t::date IS NULL AND t::timestamp IS NULL",
    "true",
    "NULL",
    "is_public -- a comment\n",
    "/* leading */ is_public",
    'a = :"https://example.com/role"',
    "pg_catalog.lower(a) = 'x'",
    '"Mixed Case" = 1',
]


@pytest.mark.parametrize("text", ACCEPTED)
def test_accepts_the_safe_subset(text: str) -> None:
    expr = parse_expression(text)
    assert isinstance(expr, Expression)
    assert expr.text == text
    sql, names = render_sql(expr)
    assert ":" not in sql.replace("::", "") or "https" in sql
    assert len(names) == len(set(names)) == len(expr.claims)


def test_columns_and_claims_are_collected() -> None:
    expr = parse_expression("(a = :x OR b = :y) AND NOT archived AND :x = c")
    assert expr.columns == frozenset({"a", "b", "archived", "c"})
    assert expr.claims == frozenset({"x", "y"})
    assert expr.params == ("x", "y")  # the same claim is the same parameter


def test_claim_names_keep_their_case_and_keywords_are_names() -> None:
    expr = parse_expression(":Role = 'admin' AND g = ANY(:groups) AND :select = 1")
    assert expr.params == ("Role", "groups", "select")


def test_quoted_claim_names() -> None:
    expr = parse_expression(':"x-y" = a AND :"say ""hi""" = b')
    assert expr.params == ("x-y", 'say "hi"')


def test_claims_with_casts() -> None:
    expr = parse_expression(":sub::int = owner_id AND x::int > 1 AND y:: text = :t")
    sql, names = render_sql(expr)
    assert names == ("sub", "t")
    assert (
        sql == "CAST($1 AS integer) = owner_id AND CAST(x AS integer) > 1 AND CAST(y AS text) = $2"
    )


def test_claims_inside_strings_and_comments_are_text() -> None:
    expr = parse_expression("note = ':sub' /* :x */ AND tag = :tag -- :y")
    assert expr.params == ("tag",)
    assert render_sql(expr) == ("note = ':sub' AND tag = $1", ("tag",))


# -- refused ------------------------------------------------------------------------------

REFUSED = [
    # (text, token, position)
    ("pg_sleep(1)", "pg_sleep", 0),
    ("a = 1 AND pg_sleep(1) IS NULL", "pg_sleep", 10),
    ("(select 1)", "select", 1),
    ("a IN (select 1)", "select", 6),
    ("exists (select 1)", "select", 8),
    ("true; drop table t", ";", 4),
    ("true;", ";", 4),
    ("a.b = 1", "a.b", 0),
    ("x = 1 AND s.t.u = 2", "s.t.u", 10),
    ("$1 = 2", "$1", 0),
    ("a = :sub AND b = $2", "$2", 17),
    ("", None, 0),
    ("   ", None, 0),
    ("-- only a comment", None, 0),
    ("x::regclass IS NULL", "regclass", 3),
    ("x::int[] IS NULL", "int", 3),
    ("x::numeric(10, 2) > 1", "numeric", 3),
    ("x::varchar = 'a'", "varchar", 3),
    ("interval '1 day' IS NULL", "interval", 0),
    ("a = 1 ORDER BY 1", "ORDER", 6),
    ("a = 1 LIMIT 1", "LIMIT", 6),
    ("a = 1 OFFSET 1", "OFFSET", 6),
    ("a = 1 GROUP BY a", "GROUP", 6),
    ("true UNION SELECT true", "UNION", 5),
    ("true FOR UPDATE", "FOR", 5),
    ("count(*) > 1", "count", 0),
    ("lower(a, b) = 'x'", "lower", 0),
    ("public.lower(a) = 'x'", "public", 0),
    ("sum(a) OVER () > 1", "sum", 0),
    ("a = : sub", ":", 4),
    ("a = x:sub", ":sub", 5),
    ("a = :", ":", 4),
    ("a LIKE b", "b", 7),
    ("a LIKE :pattern", ":pattern", 7),
    ("a LIKE 'x' ESCAPE '#'", "ESCAPE", 11),
    ("a SIMILAR TO 'x'", "SIMILAR", 2),
    ("a BETWEEN SYMMETRIC 1 AND 2", "BETWEEN", 2),
    ("a = ALL(:g)", "=", 2),
    ("a > ANY(:g)", ">", 2),
    ("a = ANY(ARRAY[b])", "b", 14),
    ("a = ANY(b)", "b", 8),
    ("CASE WHEN a THEN b END", "CASE", 0),
    ("a[1] = 2", "=", 5),
    ("current_user = a", "current_user", 0),
    ("a ~ 'x'", "~", 2),
    ("a % 2 = 0", "%", 2),
    ("ROW(a, b) IS NULL", "ROW", 0),
    ("greatest(a, b) > 1", "greatest", 0),
    ("a = 1 AND", None, 9),
    ("a = 'unterminated", "'unterminated", 4),
    ("''", "''", 0),
    ("1", "1", 0),
    ("a + 1", "+", 2),
    ("lower(a)", "lower", 0),
    ("NOT 1", "NOT", 0),
    ("true AND 'x' || 'y'", "||", 13),
    ("lower(a = 1) = 'x'", "=", 8),
    ("*", "*", 0),
    ("a COLLATE \"C\" = 'x'", "COLLATE", 2),
    ("NULLIF(a, 1) IS NULL", "NULLIF", 0),
    ("B'101' IS NULL", "IS", 7),  # pglast keeps no location for constants
]


@pytest.mark.parametrize(("text", "token", "position"), REFUSED)
def test_refuses_and_locates(text: str, token: str | None, position: int) -> None:
    with pytest.raises(ExpressionError) as caught:
        parse_expression(text)
    error = caught.value
    assert error.message
    assert (error.token, error.position) == (token, position), error.message
    if token is not None:
        assert text[position:].lower().startswith(token.lower())


def test_error_positions_are_in_the_users_text_after_claims() -> None:
    text = "owner_id = :subject AND :role = 'x' AND pg_sleep(1) IS NULL"
    with pytest.raises(ExpressionError) as caught:
        parse_expression(text)
    assert caught.value.position == text.index("pg_sleep")


def test_error_positions_count_characters_not_bytes() -> None:
    text = "é = :sub AND ü = 'ö' AND pg_sleep(1) IS NULL"
    with pytest.raises(ExpressionError) as caught:
        parse_expression(text)
    assert caught.value.position == text.index("pg_sleep")


def test_syntax_error_after_a_claim_maps_back() -> None:
    text = "a = :sub AND ) = 1"
    with pytest.raises(ExpressionError) as caught:
        parse_expression(text)
    assert (caught.value.token, caught.value.position) == (")", text.index(")"))


def test_a_syntax_error_on_a_claim_points_at_the_claim() -> None:
    text = "a = 1 :sub"
    with pytest.raises(ExpressionError) as caught:
        parse_expression(text)
    assert (caught.value.token, caught.value.position) == (":sub", 6)


def test_too_long_is_refused() -> None:
    with pytest.raises(ExpressionError, match="longer than"):
        parse_expression("a = 1 OR " * 2000 + "true")


def test_not_a_string_is_refused() -> None:
    with pytest.raises(ExpressionError):
        parse_expression(42)  # type: ignore[arg-type]


# -- rendering ----------------------------------------------------------------------------


def test_render_sql_uses_placeholders_in_claim_order() -> None:
    expr = parse_expression(":role = 'admin' OR (owner_id = :sub AND :role <> 'banned')")
    sql, names = render_sql(expr)
    assert names == ("role", "sub")
    assert sql == "$1 = 'admin' OR (owner_id = $2 AND $1 <> 'banned')"


def test_render_sql_never_contains_claim_values() -> None:
    expr = parse_expression("owner_id = :sub")
    assert render_sql(expr) == ("owner_id = $1", ("sub",))


def test_render_sql_drops_comments() -> None:
    expr = parse_expression("a = 1 /* ; drop table x */ -- x\n OR b")
    assert render_sql(expr)[0] == "a = 1 OR b"


def _reparsed(sql: str) -> object:
    return parse_sql("SELECT 1 WHERE " + sql)[0].stmt.whereClause


@pytest.mark.parametrize("text", [t for t in ACCEPTED if "trim(" not in t])
def test_render_sql_round_trips(text: str) -> None:
    expr = parse_expression(text)
    assert _reparsed(render_sql(expr)[0]) == expr.node


# A small generator of accepted expressions, for the round trip.
_columns = st.sampled_from(["a", "b", "owner_id", '"Odd Name"'])
_claims = st.sampled_from([":sub", ":role", ":groups"])
_literals = st.one_of(
    st.integers(-1000, 1000).map(str),
    st.decimals("-100", "100", places=2, allow_nan=False).map(str),
    st.text("ab'%_\\ é", max_size=4).map(lambda s: "'" + s.replace("'", "''") + "'"),
    st.just("NULL"),
)
_values = st.recursive(
    st.one_of(_columns, _claims, _literals),
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "||"]), inner).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        ),
        inner.map(lambda v: f"lower({v})"),
        st.lists(inner, min_size=1, max_size=3).map(lambda vs: f"coalesce({', '.join(vs)})"),
        inner.map(lambda v: f"({v})::int"),
    ),
    max_leaves=4,
)
_atoms = st.one_of(
    st.tuples(_values, st.sampled_from(["=", "<>", "<", ">="]), _values).map(" ".join),
    _values.map(lambda v: f"{v} IS NULL"),
    st.tuples(_values, st.lists(_values, min_size=1, max_size=3)).map(
        lambda t: f"{t[0]} IN ({', '.join(t[1])})"
    ),
    _columns.map(lambda c: f"{c} = ANY(:groups)"),
    st.tuples(_values, _values, _values).map(lambda t: f"{t[0]} BETWEEN {t[1]} AND {t[2]}"),
    _columns.map(lambda c: f"{c} NOT LIKE 'a%'"),
)
_booleans = st.recursive(
    _atoms,
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["AND", "OR"]), inner).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        ),
        inner.map(lambda b: f"NOT ({b})"),
        inner.map(lambda b: f"({b}) IS NOT TRUE"),
    ),
    max_leaves=5,
)


@settings(max_examples=200, deadline=None)
@given(_booleans)
def test_render_sql_round_trips_generated(text: str) -> None:
    expr = parse_expression(text)
    sql, names = render_sql(expr)
    assert _reparsed(sql) == expr.node
    assert set(names) == expr.claims
    # and back through the claim syntax: same tree again
    again = sql
    for number in range(len(names), 0, -1):
        again = again.replace(f"${number}", f":{names[number - 1]}")
    assert parse_expression(again).node == expr.node
