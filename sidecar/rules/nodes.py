"""What the rules read from the pglast tree of a checked expression.

`config.expressions.parse_expression` has already refused every node outside its
allow-list, so these readers only narrow pglast's optional fields (a checked column
reference has one name, a checked operator one symbol, ...).
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from pglast import ast

from sidecar.rules.functions import FUNCTIONS
from sidecar.rules.pgvalues import EvaluationError, Unknown, check_numeric, parse_int

__all__ = [
    "SUBQUERY_PARAM",
    "column_name",
    "function_name",
    "is_constant",
    "is_volatile",
    "items",
    "literal",
    "operator",
    "refs",
    "walk",
]


def walk(node: Any, *, into_subqueries: bool = False) -> Iterator[Any]:
    """`node` and every pglast node under it, but not into a membership sub-select: of
    `x IN (SELECT ...)`, only `x` belongs to the rule's own table (see `subquery_of`).
    With `into_subqueries`, every node (what the SQL text holds: claims of sub-selects)."""
    yield node
    if isinstance(node, ast.SubLink) and not into_subqueries:
        yield from walk(node.testexpr)
        return
    for name in getattr(type(node), "__slots__", ()):
        value = getattr(node, name, None)
        for item in value if isinstance(value, tuple | list) else (value,):
            if isinstance(item, ast.Node):
                yield from walk(item, into_subqueries=into_subqueries)


def items(value: ast.Node | tuple[Any, ...] | None) -> tuple[Any, ...]:
    """A list field of a node (argument list, IN list, ...) as a tuple (() when absent)."""
    if value is None:
        return ()
    return value if isinstance(value, tuple) else (value,)


def column_name(node: ast.ColumnRef) -> str:
    """The name of a (checked: unqualified) column reference."""
    return str(items(node.fields)[0].sval)


def function_name(node: ast.FuncCall) -> str:
    """The bare name of a (checked) function call: `pg_catalog.lower` is `lower`."""
    return str(items(node.funcname)[-1].sval)


def operator(node: ast.A_Expr) -> str:
    """The symbol of an operator expression (`=`, `<`, `~~`, ...)."""
    return str(items(node.name)[-1].sval)


def is_volatile(node: Any) -> bool:
    """A call of a function whose value changes per call (`now()`)."""
    if not isinstance(node, ast.FuncCall):
        return False
    function = FUNCTIONS.get(function_name(node))
    return function is not None and function.volatile


def is_constant(node: Any) -> bool:
    """No column, claim or volatile function under `node`: it can be evaluated once."""
    return not any(
        isinstance(n, ast.ColumnRef | ast.ParamRef) or is_volatile(n) for n in walk(node)
    )


def literal(node: ast.A_Const) -> Any:
    """The Python value of a constant (string constants are of unknown type)."""
    if node.isnull:
        return None
    val = node.val
    if isinstance(val, ast.Boolean):
        return bool(val.boolval)
    if isinstance(val, ast.Integer):
        return int(val.ival or 0)
    if isinstance(val, ast.Float):
        text = str(val.fval)
        try:
            return parse_int(text)  # an integer too big for int4 is an int8 constant
        except EvaluationError:
            return check_numeric(Decimal(text))
    assert isinstance(val, ast.String)
    return Unknown(val.sval)


# A membership sub-select depends on the caller (through captured rows) as a claim does:
# `refs` counts it as this parameter number, so a rule's normal form treats it like one.
SUBQUERY_PARAM = 0


def refs(node: Any) -> tuple[set[str], set[int]]:
    """The column names and claim parameter numbers under `node` (a membership sub-select
    counts as parameter `SUBQUERY_PARAM`)."""
    columns: set[str] = set()
    params: set[int] = set()
    for n in walk(node):
        if isinstance(n, ast.ColumnRef):
            columns.add(column_name(n))
        elif isinstance(n, ast.ParamRef):
            params.add(int(n.number or 0))
        elif isinstance(n, ast.SubLink):
            params.add(SUBQUERY_PARAM)
    return columns, params
