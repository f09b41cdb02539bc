"""The Python evaluator agrees with PostgreSQL's own verdict, row by row.

Generated rules are rendered with `render_sql` (through `bind_claims`) and run by
PostgreSQL itself over a batch of generated rows, claims bound as `$n` parameters with a
`RawCursor`; for every row TRUE, FALSE and NULL must match `evaluate`. A rule PostgreSQL
refuses at run time (a data error, e.g. a LIKE pattern ending with a backslash) is
rejected with `assume`; any other error is a failure, and so is an evaluator error where
PostgreSQL had an answer. The read scopes are checked against PostgreSQL the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg
import pytest
from hypothesis import HealthCheck, assume, event, given, note, settings
from hypothesis import strategies as st
from psycopg import RawCursor

from sidecar.config.expressions import parse_expression
from sidecar.rules import pglike
from sidecar.rules.evaluator import EvaluationError, evaluate
from sidecar.rules.scopes import compile_read_rule
from sidecar.write_sql import bind_claims
from tests.unit.rules.test_scopes import CLAIM_VALUES, PROPERTY_TYPES, ROW_VALUES, read_rules

pytestmark = pytest.mark.pg

COLUMN_TYPES = {
    "a": "integer",
    "b": "text",
    "c": "boolean",
    "d": "numeric",
    "o": "integer",
    "e": "date",
    "u": "uuid",
}
COLUMNS = tuple(COLUMN_TYPES)
TABLE_DDL = (
    "CREATE TEMPORARY TABLE t (id int PRIMARY KEY, "
    + ", ".join(f"{name} {type_name}" for name, type_name in COLUMN_TYPES.items())
    + ")"
)
INSERT = "INSERT INTO t (id, a, b, c, d, o, e, u) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"


@pytest.fixture
def conn(pg_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_dsn, autocommit=True, cursor_factory=RawCursor) as connection:
        connection.execute(TABLE_DDL)
        yield connection


def postgres_verdicts(
    conn: psycopg.Connection[Any], text: str, rows: list[dict[str, Any]], claims: dict[str, Any]
) -> list[bool | None]:
    """PostgreSQL's value of the rule for each row (raises psycopg errors)."""
    sql, params = bind_claims(parse_expression(text), claims)
    conn.execute("TRUNCATE t")
    with conn.cursor() as cur:
        values = [(i, *(row.get(c) for c in COLUMNS)) for i, row in enumerate(rows)]
        cur.executemany(INSERT, values)
        cur.execute(f"SELECT id, ({sql}) FROM t ORDER BY id", params)
        return [value for _, value in cur.fetchall()]


def assert_agrees(
    conn: psycopg.Connection[Any], text: str, rows: list[dict[str, Any]], claims: dict[str, Any]
) -> list[bool | None]:
    """PostgreSQL and the evaluator give the same verdict on every row; returns them."""
    expected = postgres_verdicts(conn, text, rows, claims)
    expr = parse_expression(text)
    for row, pg in zip(rows, expected, strict=True):
        try:
            mine = evaluate(expr, row, claims, COLUMN_TYPES)
        except EvaluationError as error:
            pytest.fail(f"{text!r} on {row} {claims}: PostgreSQL says {pg}, evaluator: {error}")
        assert mine is pg, f"{text!r} on {row} with {claims}: PostgreSQL {pg}, evaluator {mine}"
    return expected


# == a typed grammar (well-typed for PostgreSQL: no ambiguous unknowns) =====================

_cmp = st.sampled_from(["=", "<>", "<", "<=", ">", ">="])


def _paren(op: str) -> Any:
    return lambda t: f"({t[0]} {op} {t[1]})"


def ints(depth: int) -> st.SearchStrategy[str]:
    leaf = st.sampled_from(["a", "o", "0", "1", "-2", "7", "NULL::int", "length(b)"])
    if depth == 0:
        return leaf
    sub = ints(depth - 1)
    return st.one_of(
        leaf,
        st.tuples(sub, st.sampled_from(["+", "-", "*"]), sub).map(" ".join).map(lambda e: f"({e})"),
        st.tuples(sub, st.sampled_from(["2", "-3", "7"])).map(_paren("/")),
        sub.map(lambda e: f"abs({e})"),
        sub.map(lambda e: f"(- {e})"),
        st.tuples(sub, sub).map(lambda t: f"coalesce({t[0]}, {t[1]})"),
        nums(depth - 1).map(lambda e: f"({e})::int"),
        texts(0).map(lambda e: f"char_length({e})"),
    )


def nums(depth: int) -> st.SearchStrategy[str]:
    leaf = st.sampled_from(
        ["d", "1.5", "-0.25", "0.001", "100", "2.50", "NULL::numeric", "a::numeric"]
    )
    if depth == 0:
        return leaf
    sub = nums(depth - 1)
    either = st.one_of(sub, ints(depth - 1))
    return st.one_of(
        leaf,
        st.tuples(sub, st.sampled_from(["+", "-", "*"]), either)
        .map(" ".join)
        .map(lambda e: f"({e})"),
        st.tuples(either, st.sampled_from(["+", "*"]), sub).map(" ".join).map(lambda e: f"({e})"),
        st.tuples(sub, st.sampled_from(["3", "0.7", "-1.5", "7", "1000"])).map(_paren("/")),
        st.tuples(ints(depth - 1), st.sampled_from(["1.5", "3.0"])).map(_paren("/")),
        sub.map(lambda e: f"abs({e})"),
        st.tuples(sub, either).map(lambda t: f"coalesce({t[0]}, {t[1]})"),
        st.tuples(either, sub).map(lambda t: f"coalesce({t[0]}, {t[1]})"),
    )


_text_literals = ["b", "''", "'a'", "'ab'", "'É'", "'a%b'", "' a '", "NULL::text"]


def texts(depth: int) -> st.SearchStrategy[str]:
    leaf = st.sampled_from(_text_literals)
    if depth == 0:
        return leaf
    sub = texts(depth - 1)
    return st.one_of(
        leaf,
        st.sampled_from(["lower", "upper", "trim"]).flatmap(lambda f: sub.map(f"{f}({{}})".format)),
        st.tuples(sub, sub).map(_paren("||")),
        sub.map(lambda e: f"coalesce({e}, 'z')"),
        st.one_of(ints(depth - 1), nums(depth - 1)).map(lambda e: f"({e})::text"),
        st.one_of(nums(depth - 1), ints(depth - 1)).map(lambda e: f"({e} || '')"),
        sub.map(lambda e: f"btrim({e}, 'a')"),
    )


_patterns = st.text("ab%_É\\", max_size=4).map(lambda p: "'" + p + "'")
_any_term = st.one_of(ints(1), nums(1), texts(1))

# `:claim` atoms are typed by their context, as PostgreSQL needs to type `$n`.
_claim_atoms = st.sampled_from(
    [
        "a = :sub",
        ":sub = o",
        "o = ANY(:groups)",
        "a = ANY(:groups)",
        "a IN (:sub, 3)",
        "d = :sub",
        "d > :sub",
        "b = :role",
        ":role = 'admin'",
        ":role LIKE 'a%'",
        ":role IN ('admin', 'staff', NULL)",
        ":sub::int > 2",
        "coalesce(:role, 'none') = 'none'",
        "2 = ANY(:groups)",
    ]
)


def _list(items: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.lists(st.one_of(items, st.just("NULL")), min_size=1, max_size=4).map(", ".join)


def atoms() -> st.SearchStrategy[str]:
    kinds: dict[str, st.SearchStrategy[str]] = {
        "int": st.tuples(ints(2), _cmp, ints(2)).map(" ".join),
        "num": st.tuples(nums(2), _cmp, nums(2)).map(" ".join),
        "mixed": st.tuples(ints(1), _cmp, nums(2)).map(" ".join),
        "text": st.tuples(texts(2), _cmp, texts(2)).map(" ".join),
        "null": st.tuples(_any_term, _cmp).map(lambda t: f"{t[0]} {t[1]} NULL"),
        "bool": st.sampled_from(
            [
                "c",
                "c IS TRUE",
                "c IS NOT TRUE",
                "c IS FALSE",
                "c IS NOT FALSE",
                "c IS UNKNOWN",
                "c = true",
                "c <> false",
                "true",
                "false",
                "NULL",
                "coalesce(c, a > 1)",
            ]
        ),
        "is null": st.tuples(_any_term, st.sampled_from(["IS NULL", "IS NOT NULL"])).map(" ".join),
        "in": st.one_of(
            st.tuples(ints(1), st.sampled_from(["IN", "NOT IN"]), _list(ints(1))).map(
                lambda t: f"{t[0]} {t[1]} ({t[2]})"
            ),
            st.tuples(nums(1), st.sampled_from(["IN", "NOT IN"]), _list(nums(0))).map(
                lambda t: f"{t[0]} {t[1]} ({t[2]})"
            ),
            st.tuples(texts(1), st.sampled_from(["IN", "NOT IN"]), _list(texts(0))).map(
                lambda t: f"{t[0]} {t[1]} ({t[2]})"
            ),
        ),
        "between": st.one_of(
            st.tuples(ints(1), st.sampled_from(["", "NOT "]), ints(1), ints(1)),
            st.tuples(nums(1), st.sampled_from(["", "NOT "]), nums(1), ints(1)),
            st.tuples(texts(1), st.sampled_from(["", "NOT "]), texts(0), texts(0)),
        ).map(lambda t: f"{t[0]} {t[1]}BETWEEN {t[2]} AND {t[3]}"),
        "like": st.tuples(
            texts(2), st.sampled_from(["LIKE", "NOT LIKE", "ILIKE", "NOT ILIKE"]), _patterns
        ).map(" ".join),
        "any": st.one_of(
            ints(1).map(lambda e: f"{e} = ANY(ARRAY[1, NULL, 3])"),
            ints(1).map(lambda e: f"{e} = ANY(ARRAY[-2, 7])"),
            texts(1).map(lambda e: f"{e} = ANY(ARRAY['a', NULL, 'É'])"),
        ),
        "distinct": st.one_of(
            st.tuples(ints(1), ints(1)),
            st.tuples(texts(1), texts(1)),
            st.tuples(nums(1), ints(1)),
        ).flatmap(
            lambda t: st.sampled_from(["IS DISTINCT FROM", "IS NOT DISTINCT FROM"]).map(
                lambda op: f"{t[0]} {op} {t[1]}"
            )
        ),
        "claim": _claim_atoms,
        "date": st.sampled_from(
            [
                "e = '2024-03-01'",
                "e < '2024-03-01 10:00'",
                "e::timestamp < '2024-03-01 10:00'",
                "e BETWEEN '2024-01-01' AND '2024-12-31'",
                "e IN ('2024-03-01', NULL)",
                "e::text = '2024-03-01'",
                "coalesce(e, '2000-01-01') < '2024-01-01'",
                "e > date '2024-02-29'",
            ]
        ),
        "uuid": st.sampled_from(
            [
                f"u = '{UUID_A.upper()}'",
                f"u <> '{{{UUID_B.replace('-', '')}}}'",
                f"u::text = '{UUID_A}'",
                f"u < '{UUID_B}'",
                f"u IN ('{UUID_A}', NULL)",
            ]
        ),
    }
    return st.sampled_from(sorted(kinds)).flatmap(kinds.__getitem__)


def rules(depth: int) -> st.SearchStrategy[str]:
    if depth == 0:
        return atoms()
    sub = rules(depth - 1)
    return st.one_of(
        st.tuples(sub, st.sampled_from(["AND", "OR"]), sub).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        ),
        atoms(),
        sub.map(lambda e: f"NOT ({e})"),
        sub.map(lambda e: f"({e}) IS NOT TRUE"),
    )


UUID_A = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
UUID_B = "00000000-0000-4000-8000-000000000001"
_small = st.integers(-3, 7)
_rows = st.fixed_dictionaries(
    {
        "a": st.none() | _small,
        "o": st.none() | _small,
        "b": st.none() | st.sampled_from(["", "a", "A", "ab", "aB", "É", "é", "a%b", " a ", "b"]),
        "c": st.none() | st.booleans(),
        "d": st.none()
        | st.sampled_from(["0", "1.5", "1.50", "-0.25", "3", "0.001", "100.0", "-7"]).map(Decimal),
        "e": st.none() | st.sampled_from([date(2024, 3, 1), date(2024, 2, 29), date(1999, 1, 1)]),
        "u": st.none() | st.sampled_from([UUID(UUID_A), UUID(UUID_B)]),
    }
)
_claims = st.fixed_dictionaries(
    {},
    optional={
        "sub": st.one_of(_small, _small.map(str), _small.map(lambda i: f" {i}")),
        "role": st.sampled_from(["admin", "staff", "ab", "none", "a%"]),
        "groups": st.lists(st.none() | _small, max_size=3).filter(
            lambda g: not g or any(x is not None for x in g)  # [NULL] alone has no type
        ),
    },
)


def test_evaluator_agrees_with_postgres(conn: psycopg.Connection[Any]) -> None:
    @settings(
        max_examples=200,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        text=rules(2),
        rows=st.lists(_rows, min_size=1, max_size=8),
        claims=_claims,
    )
    def check(text: str, rows: list[dict[str, Any]], claims: dict[str, Any]) -> None:
        try:
            verdicts = assert_agrees(conn, text, rows, claims)
        except psycopg.errors.DataError as error:  # e.g. a LIKE pattern ending with "\"
            note(f"PostgreSQL refused {text!r}: {error}")
            event(f"postgres refused: {type(error).__name__}")
            assume(False)
            return
        for verdict in set(verdicts):
            event(f"verdict {verdict}")

    check()


KNOWN_CASES = [
    "(1.5 / 7)::text = '0.21428571428571428571'",
    "(d / 3)::text = b",
    "(d * 1.5)::text = b",
    "(d + a)::text = b",
    "(a / -3) = o",
    "(coalesce(a, d) / 2)::text = b",
    "coalesce(d, '5') / 2 = 2.5",
    "(2.5::int + (-2.5)::int) = 0",
    "lower(b) = 'é' OR upper(b) = 'É'",
    "b ILIKE 'É%' OR b LIKE '\\%%'",
    "b < 'a' AND b > 'A'",
    "(d || '') = '1.50'",
    "(c || '') = 'true'",
    "a IN (1, NULL) OR o NOT IN (2, NULL)",
    "d BETWEEN NULL AND 3",
    "a = ANY(:groups) AND d = :sub",
    "o = ANY(:groups)",
]


@pytest.mark.parametrize("text", KNOWN_CASES)
def test_known_cases_agree(conn: psycopg.Connection[Any], text: str) -> None:
    rows = [
        {"a": 1, "o": None, "b": "1.50", "c": True, "d": Decimal("1.50")},
        {"a": None, "o": 2, "b": "é", "c": None, "d": None},
        {"a": -7, "o": 2, "b": "Éa", "c": False, "d": Decimal("-0.25")},
        {"a": 3, "o": -1, "b": "%x", "c": None, "d": Decimal("3")},
        {"a": 0, "o": 0, "b": "B", "c": True, "d": Decimal("0.001")},
    ]
    for claims in ({}, {"sub": "1.5", "groups": [1, None]}, {"sub": 3, "groups": []}):
        assert_agrees(conn, text, rows, claims)


def test_scopes_of_a_rule_match_postgres(conn: psycopg.Connection[Any]) -> None:
    """End to end: the rows PostgreSQL shows a caller are the rows whose scopes intersect."""
    text = "(a = :sub OR o = ANY(:groups) OR :role = 'admin') AND NOT coalesce(c, false)"
    rule = compile_read_rule(parse_expression(text), COLUMN_TYPES)
    rows = [
        {"a": a, "o": o, "b": None, "c": c, "d": None}
        for a in (None, 1, 2)
        for o in (None, 1, 3)
        for c in (None, True, False)
    ]
    for claims in ({"sub": "1"}, {"groups": [3]}, {"role": "admin"}, {"sub": 2, "groups": []}):
        verdicts = postgres_verdicts(conn, text, rows, claims)
        request = set(rule.request_scopes(claims))
        for row, pg in zip(rows, verdicts, strict=True):
            assert bool(set(rule.row_scopes(row)) & request) == (pg is True), (row, claims)


def test_scopes_agree_with_postgres(conn: psycopg.Connection[Any]) -> None:
    """Generated read rules: scopes intersect exactly for the rows PostgreSQL says TRUE."""

    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        text=read_rules(2, True),
        rows=st.lists(ROW_VALUES, min_size=1, max_size=8),
        claims=st.lists(CLAIM_VALUES, min_size=1, max_size=4),
    )
    def check(text: str, rows: list[dict[str, Any]], claims: list[dict[str, Any]]) -> None:
        rule = compile_read_rule(parse_expression(text), PROPERTY_TYPES)
        for claim in claims:
            try:
                verdicts = postgres_verdicts(conn, text, rows, claim)
            except psycopg.errors.DataError:
                assume(False)
                return
            request = set(rule.request_scopes(claim))
            for row, pg in zip(rows, verdicts, strict=True):
                seen = bool(set(rule.row_scopes(row)) & request)
                assert seen == (pg is True), (text, row, claim, pg)

    check()


def test_number_semantics_match_postgres(conn: psycopg.Connection[Any]) -> None:
    """Numeric scales (division included) and double output, against PostgreSQL's text."""
    expr = parse_expression(
        "(x / y)::text = q AND (x * y)::text = m AND (x - y)::text = s "
        "AND (x / 7)::text = q7 AND (f || '') = ft AND (f = g) = eq"
    )
    types = {"x": "numeric", "y": "numeric", "f": "double precision", "g": "double precision"}
    query = (
        "SELECT ($1::numeric / $2::numeric)::text, ($1::numeric * $2::numeric)::text, "
        "($1::numeric - $2::numeric)::text, ($1::numeric / 7)::text, $3::float8::text, "
        "$3::float8 = $4::float8"
    )
    decimals = st.decimals(min_value=-(10**9), max_value=10**9, allow_nan=False, places=None)
    floats = st.one_of(st.floats(), st.sampled_from([1e15, 1e16, 123456789012345.0, 1e-5, -0.0]))

    @settings(max_examples=200, deadline=None)
    @given(x=decimals, y=decimals.filter(lambda d: d != 0), f=floats, g=floats)
    def check(x: Decimal, y: Decimal, f: float, g: float) -> None:
        q, m, s, q7, ft, eq = conn.execute(query, [x, y, f, g]).fetchone()  # type: ignore[misc]
        row = {"x": x, "y": y, "f": f, "g": g, "q": q, "m": m, "s": s, "q7": q7, "ft": ft}
        assert evaluate(expr, {**row, "eq": eq}, {}, types) is True, (row, eq)

    check()


@pytest.mark.parametrize("scan", ["regex", "shift-and"])
def test_like_agrees_with_postgres(
    conn: psycopg.Connection[Any], scan: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The linear LIKE/ILIKE matcher (both of its ways of finding a segment with `_`)
    gives PostgreSQL's verdict on random patterns and texts, errors included (a pattern
    ending with a lone backslash fails only when matching reaches it)."""
    if scan == "shift-and":
        monkeypatch.setattr(pglike, "_REGEX_WORK", 0)

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        pattern=st.text("ab%_\\AÉ", max_size=9),
        texts=st.lists(st.text("ab%_\\AÉé", max_size=14), min_size=1, max_size=6),
    )
    def check(pattern: str, texts: list[str]) -> None:
        literal = pattern.replace("'", "''")
        for op in ("LIKE", "ILIKE"):
            expr = parse_expression(f"b {op} '{literal}'")
            for text in texts:
                try:
                    row = conn.execute(f"SELECT $1::text {op} $2::text", [text, pattern])
                    pg: Any = row.fetchone()[0]  # type: ignore[index]
                except psycopg.errors.DataError as error:
                    pg = type(error).__name__
                try:
                    mine: Any = evaluate(expr, {"b": text}, {}, COLUMN_TYPES)
                except EvaluationError:
                    mine = "InvalidEscapeSequence"
                assert mine == pg, (op, pattern, text)

    check()
