"""Fuzzing the rule compiler: it never crashes, and never admits an unsafe construct.

Inputs are token soups built from SQL fragments (including dangerous ones) and raw text.
Whatever `parse_expression` accepts is rendered back to SQL and parsed again with pglast:
it must be a single boolean expression made only of allow-listed parts.
"""

from __future__ import annotations

import contextlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pglast import ast, enums, parse_sql

from sidecar.config.expression_sql import render_sql
from sidecar.config.expressions import ExpressionError, parse_expression
from sidecar.rules.functions import FUNCTIONS
from sidecar.rules.scopes import ReadRule, compile_read_rule

FRAGMENTS = [
    "owner_id",
    "title",
    "done",
    "n",
    ":sub",
    ":role",
    ":groups",
    "=",
    "<>",
    "<",
    ">=",
    "AND",
    "OR",
    "NOT",
    "(",
    ")",
    ",",
    "IN",
    "IS",
    "NULL",
    "TRUE",
    "FALSE",
    "BETWEEN",
    "LIKE",
    "ILIKE",
    "ANY",
    "ARRAY[",
    "]",
    "'x'",
    "'a''b'",
    "1",
    "2.5",
    "-",
    "+",
    "*",
    "/",
    "||",
    "::int",
    "::text",
    "lower(",
    "length(",
    "coalesce(",
    "pg_sleep(",
    "now()",
    "(SELECT 1)",
    "EXISTS",
    ";",
    "DROP TABLE t",
    "--",
    "/*",
    "*/",
    "$1",
    "t.owner_id",
    "current_user",
    "pg_read_file('/etc/passwd')",
    "CASE WHEN",
    "THEN",
    "ELSE",
    "END",
    "UNION",
    "SELECT",
    "FROM",
    "\\",
    '"',
    "E'\\x41'",
    "$$x$$",
    "ROW(",
    "1e400",
]

UNSAFE_NODES = (
    ast.SubLink,
    ast.SelectStmt,
    ast.RangeVar,
    ast.CaseExpr,
    ast.RowExpr,
    ast.A_Star,
    ast.SQLValueFunction,
    ast.FuncCall,
)


def _membership_parts(node: ast.SubLink) -> tuple[object, object]:
    """The only sub-select a rule may hold, `col IN (SELECT col FROM t [WHERE ...])`: its
    test column and WHERE (what is left to check); anything else fails the test."""
    select = node.subselect
    assert node.subLinkType == enums.SubLinkType.ANY_SUBLINK
    assert isinstance(node.testexpr, ast.ColumnRef)
    assert isinstance(select, ast.SelectStmt)
    (target,) = select.targetList
    assert isinstance(target.val, ast.ColumnRef) and len(target.val.fields) == 1
    (table,) = select.fromClause
    assert isinstance(table, ast.RangeVar) and table.alias is None
    for name in select:
        if name not in ("targetList", "fromClause", "whereClause", "limitOption", "op"):
            assert getattr(select, name) in (None, False, ()), name
    assert select.op == enums.SetOperation.SETOP_NONE
    return node.testexpr, select.whereClause


def _walk(node: object):
    if isinstance(node, ast.SubLink):
        for part in _membership_parts(node):
            yield from _walk(part)
        return
    if isinstance(node, ast.Node):
        yield node
        for name in node:
            yield from _walk(getattr(node, name))
    elif isinstance(node, list | tuple):
        for item in node:
            yield from _walk(item)


def _assert_safe(text: str) -> None:
    expr = parse_expression(text)
    sql, _names = render_sql(expr)
    stmts = parse_sql(f"SELECT 1 WHERE {sql}")
    assert len(stmts) == 1
    where = stmts[0].stmt.whereClause
    for node in _walk(where):
        if isinstance(node, ast.FuncCall):
            name = node.funcname[-1].sval.lower()
            assert name in FUNCTIONS, (text, name)
            continue
        assert not isinstance(node, UNSAFE_NODES), (text, type(node).__name__)
        if isinstance(node, ast.ColumnRef):
            assert len(node.fields) == 1, text  # never qualified, never *


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=14).map(" ".join))
def test_token_soup_never_crashes_nor_admits_unsafe(text: str) -> None:
    try:
        _assert_safe(text)
    except ExpressionError as exc:
        assert exc.message
        assert exc.position is None or 0 <= exc.position <= len(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_raw_text_never_crashes(text: str) -> None:
    with contextlib.suppress(ExpressionError):
        _assert_safe(text)


COLUMN = st.sampled_from(["owner_id", "title", "done", "n", "t.owner_id", "*"])
VALUE = st.sampled_from(["1", "'x'", "NULL", ":sub", ":role", "now()", "(SELECT 1)", "$1"])
FUNC = st.sampled_from(["lower", "length", "coalesce", "pg_sleep", "upper", "md5", "abs"])
OP = st.sampled_from(["=", "<>", "<", ">=", "LIKE", "IS DISTINCT FROM"])


def _atoms() -> st.SearchStrategy[str]:
    plain = st.builds(lambda c, o, v: f"{c} {o} {v}", COLUMN, OP, VALUE)
    called = st.builds(lambda f, c, o, v: f"{f}({c}) {o} {v}", FUNC, COLUMN, OP, VALUE)
    listed = st.builds(lambda c, v: f"{c} IN ({v}, 2)", COLUMN, VALUE)
    member = st.builds(
        lambda c, d, o, v, tail: f"{c} IN (SELECT {d} FROM members WHERE {d} {o} {v}{tail})",
        COLUMN,
        COLUMN,
        OP,
        VALUE,
        st.sampled_from(["", " LIMIT 1", " ORDER BY 1", " GROUP BY 1", ") OR (true"]),
    )
    return st.one_of(plain, called, listed, member, st.sampled_from(FRAGMENTS))


EXPRESSIONS = st.recursive(
    _atoms(),
    lambda inner: st.one_of(
        st.builds(lambda a, b: f"({a}) AND ({b})", inner, inner),
        st.builds(lambda a, b: f"({a}) OR ({b})", inner, inner),
        st.builds(lambda a: f"NOT ({a})", inner),
    ),
    max_leaves=6,
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EXPRESSIONS)
def test_structured_rules_never_admit_unsafe(text: str) -> None:
    try:
        _assert_safe(text)
    except ExpressionError as exc:
        assert exc.message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=12).map(" ".join))
def test_read_rule_compiler_never_crashes(text: str) -> None:
    try:
        expr = parse_expression(text)
        rule = compile_read_rule(
            expr, {"owner_id": "integer", "title": "text", "done": "boolean", "n": "numeric"}
        )
    except ExpressionError:
        return
    assert isinstance(rule, ReadRule)
    rule.row_scopes({"owner_id": 1, "title": "x", "done": None, "n": None})
    rule.request_scopes({"sub": "1", "role": "admin", "groups": [1, 2]})
