"""The allow-list walk of a rule expression's parsed tree (pglast nodes).

`Checker` walks the WHERE tree of `SELECT 1 WHERE <expression>`: anything not explicitly
allowed is refused with a located `ExpressionError`, and the column names it references
are collected. The allowed subset: unqualified column references, `:claim` parameters,
constants (integer, numeric, string, boolean, NULL), comparisons `= <> != < <= > >=`,
`IS [NOT] DISTINCT FROM`, AND/OR/NOT, `IN (list)`, `= ANY(:claim)` and
`= ANY(ARRAY[<literals>])`, `<column> IN (SELECT <column> FROM <table> [WHERE <condition>])`
(a membership sub-select: one bare column of one table, a condition over that table's
columns, claims and literals, itself allowed one more such sub-select: `MAX_SUBQUERY_DEPTH`
levels; collected as `SubqueryInfo`), `IS [NOT] NULL`, `IS [NOT] TRUE/FALSE/UNKNOWN`,
`[NOT] BETWEEN` (not SYMMETRIC), `[NOT] [I]LIKE` with a constant pattern (no ESCAPE clause),
arithmetic
`+ - * /`, string concatenation `||`, casts to the types of `ALLOWED_CASTS` (no typmods, no
arrays; `cast_target`), `coalesce` and the functions of `sidecar.rules.functions.FUNCTIONS`
(optionally qualified `pg_catalog.`), at most `MAX_DEPTH` levels deep and `max_nodes` nodes
(`ExpressionTooLarge`), numeric constants within numeric's range. A few obviously
non-boolean shapes are refused early: a constant, arithmetic or function call where a
boolean is expected, and a boolean operand of arithmetic or of a function.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from enum import Enum
from typing import Any

from pglast import ast, enums

from sidecar.config.expression_source import (
    ExpressionError,
    ExpressionTooLarge,
    SourceMap,
    token_at,
)
from sidecar.rules.functions import FUNCTIONS
from sidecar.rules.pgvalues import EvaluationError, check_numeric

__all__ = [
    "ALLOWED_CASTS",
    "ARITHMETIC_OPERATORS",
    "COMPARISON_OPERATORS",
    "CONCAT_OPERATOR",
    "MAX_DEPTH",
    "MAX_NODES",
    "MAX_SUBQUERY_DEPTH",
    "Checker",
    "SubqueryInfo",
    "cast_target",
]

MAX_DEPTH = 100  # nesting of the expression tree (keeps every later walk far from recursion limits)
MAX_NODES = 1000  # nodes of the expression tree (bounds the work of evaluating it per row)
MAX_SUBQUERY_DEPTH = 3  # IN (SELECT ...) within IN (SELECT ...): organisation → project → task

_SUBQUERY_FORM = "<column> IN (SELECT <column> FROM <table> WHERE <condition>)"

#: type name as the parser spells it (after `pg_catalog.`) -> canonical PostgreSQL name
ALLOWED_CASTS: dict[str, str] = {
    "int2": "int2",
    "int4": "int4",
    "int8": "int8",
    "int": "int4",
    "integer": "int4",
    "smallint": "int2",
    "bigint": "int8",
    "numeric": "numeric",
    "decimal": "numeric",
    "text": "text",
    "bool": "bool",
    "boolean": "bool",
    "date": "date",
    "timestamp": "timestamp",
    "timestamptz": "timestamptz",
    "uuid": "uuid",
}

COMPARISON_OPERATORS = frozenset({"=", "<>", "<", "<=", ">", ">="})
ARITHMETIC_OPERATORS = frozenset({"+", "-", "*", "/"})
CONCAT_OPERATOR = "||"

_SUBQUERY_KEYWORDS = frozenset({"SELECT", "VALUES", "TABLE", "WITH"})


@dataclass(slots=True)
class SubqueryInfo:
    """One `<column> IN (SELECT <value> FROM <table> WHERE <where>)` as checked: the outer
    column, the table as written, the selected column, the WHERE node (None: no WHERE),
    the columns the WHERE names, and the sub-selects inside it."""

    node: Any
    column: str
    schema: str | None
    table: str
    value: str
    where: Any
    columns: set[str] = field(default_factory=set)
    nested: list[SubqueryInfo] = field(default_factory=list)


class _Kind(Enum):
    """What a node yields, as far as the static check needs to know."""

    BOOL = "boolean"
    ANY = "any"  # a column, claim, NULL or coalesce: could be boolean
    VALUE = "value"  # certainly not boolean: numbers, text, arithmetic, functions


_LIKE_KINDS = {enums.A_Expr_Kind.AEXPR_LIKE, enums.A_Expr_Kind.AEXPR_ILIKE}
_BETWEEN_KINDS = {enums.A_Expr_Kind.AEXPR_BETWEEN, enums.A_Expr_Kind.AEXPR_NOT_BETWEEN}
_DISTINCT_KINDS = {enums.A_Expr_Kind.AEXPR_DISTINCT, enums.A_Expr_Kind.AEXPR_NOT_DISTINCT}
_LIKE_OPERATORS = {"~~", "!~~", "~~*", "!~~*"}


class Checker:
    """Walks a WHERE tree against the allow-list, collecting column names."""

    def __init__(
        self,
        text: str,
        source_map: SourceMap,
        params: tuple[str, ...],
        max_nodes: int = MAX_NODES,
    ) -> None:
        self.text = text
        self.source_map = source_map
        self.params = params
        self.max_nodes = max_nodes
        self.nodes = 0
        self.columns: set[str] = set()
        self.subqueries: list[SubqueryInfo] = []
        self._path: list[Any] = []  # the nodes being checked, outermost first
        self._depth = 0  # sub-selects being checked

    # errors

    def _fail(
        self,
        message: str,
        node: Any,
        token: str | None = None,
        find: frozenset[str] | None = None,
    ) -> ExpressionError:
        """An error at `node` (`token` names it, or the token there, or the first `find`)."""
        position = self._position(node)
        if token is not None:
            return ExpressionError(message, token, position)
        if isinstance(node, ast.SubLink):
            find = _SUBQUERY_KEYWORDS
        found, start = token_at(self.text, position, find)
        return ExpressionError(message, found, start)

    def _position(self, node: Any) -> int:
        """The user's offset of `node`, else of its nearest located ancestor, else 0.

        pglast does not keep the location of constants (A_Const), hence the fallback.
        """
        for candidate in (node, *reversed(self._path)):
            position = self.source_map.to_source(getattr(candidate, "location", None))
            if position is not None:
                return position
        return 0

    # entry points

    def check_boolean(self, node: Any) -> None:
        """`node` must be allowed and may be boolean."""
        if self.check(node) is _Kind.VALUE:
            raise self._fail("a boolean expression is expected here", node)

    def check(self, node: Any) -> _Kind:
        """Check `node` (recursively) and return what it yields."""
        handler = _HANDLERS.get(type(node))
        if handler is None:
            raise self._fail(f"{_describe(node)} is not allowed in a rule expression", node)
        if len(self._path) >= MAX_DEPTH:
            raise self._fail(f"expression nested more than {MAX_DEPTH} levels deep", node)
        self.nodes += 1
        if self.nodes > self.max_nodes:
            error = self._fail(f"expression has more than {self.max_nodes} nodes", node)
            raise ExpressionTooLarge(error.message, error.token, error.position)
        self._path.append(node)
        try:
            return handler(self, node)
        finally:
            self._path.pop()

    # leaves

    def column_ref(self, node: ast.ColumnRef) -> _Kind:
        fields = node.fields or ()
        if any(isinstance(f, ast.A_Star) for f in fields):
            raise self._fail("'*' is not allowed: name one column", node, "*")
        names = _strings(fields)
        if len(fields) != 1 or len(names) != 1:
            dotted = ".".join(names)
            raise self._fail(
                f"qualified column reference {dotted} is not allowed: use the bare column name",
                node,
                dotted or None,
            )
        self.columns.add(names[0])
        return _Kind.ANY

    def param_ref(self, node: ast.ParamRef) -> _Kind:
        if not 1 <= (node.number or 0) <= len(self.params):  # pragma: no cover - prechecked
            raise self._fail("positional parameters are not allowed", node)
        return _Kind.ANY

    def const(self, node: ast.A_Const) -> _Kind:
        if node.isnull:
            return _Kind.ANY
        val = node.val
        if isinstance(val, ast.Boolean):
            return _Kind.BOOL
        if isinstance(val, ast.Float):
            try:  # PostgreSQL refuses it when parsing too; never expanded here
                check_numeric(Decimal(str(val.fval)))
            except EvaluationError as error:
                raise self._fail(str(error), node) from None
            return _Kind.VALUE
        if isinstance(val, ast.Integer | ast.String):
            return _Kind.VALUE
        raise self._fail(f"{_describe(val)} constants are not allowed", node)

    # boolean structure

    def bool_expr(self, node: ast.BoolExpr) -> _Kind:
        for arg in _items(node.args):
            self.check_boolean(arg)
        return _Kind.BOOL

    def null_test(self, node: ast.NullTest) -> _Kind:
        if node.argisrow:  # pragma: no cover - only for ROW(...) IS NULL, refused below
            raise self._fail("row tests are not allowed", node)
        self.check(node.arg)
        return _Kind.BOOL

    def boolean_test(self, node: ast.BooleanTest) -> _Kind:
        self.check_boolean(node.arg)
        return _Kind.BOOL

    # operators

    def a_expr(self, node: ast.A_Expr) -> _Kind:
        kind = node.kind
        op = _operator_name(node)
        if kind == enums.A_Expr_Kind.AEXPR_OP:
            return self._operator(node, op)
        if kind == enums.A_Expr_Kind.AEXPR_IN:
            self.check(node.lexpr)
            for item in _items(node.rexpr):
                self.check(item)
            return _Kind.BOOL
        if kind == enums.A_Expr_Kind.AEXPR_OP_ANY and op == "=":
            self.check(node.lexpr)
            self._any_array(node.rexpr)
            return _Kind.BOOL
        if kind in _LIKE_KINDS and op in _LIKE_OPERATORS:
            self.check(node.lexpr)
            self._like_pattern(node, node.rexpr)
            return _Kind.BOOL
        if kind in _BETWEEN_KINDS or kind in _DISTINCT_KINDS:
            self.check(node.lexpr)
            for item in _items(node.rexpr) if kind in _BETWEEN_KINDS else (node.rexpr,):
                self.check(item)
            return _Kind.BOOL
        raise self._fail(f"operator {_a_expr_label(node)} is not allowed", node)

    def _operator(self, node: ast.A_Expr, op: str | None) -> _Kind:
        if op in COMPARISON_OPERATORS and node.lexpr is not None:
            self.check(node.lexpr)
            self.check(node.rexpr)
            return _Kind.BOOL
        if op in ARITHMETIC_OPERATORS or op == CONCAT_OPERATOR:
            if node.lexpr is None and op not in ("+", "-"):
                raise self._fail(f"prefix operator {op} is not allowed", node, op)
            for side in (node.lexpr, node.rexpr):
                if side is not None and self.check(side) is _Kind.BOOL:
                    raise self._fail(f"operator {op} does not apply to a boolean", side)
            return _Kind.VALUE
        raise self._fail(f"operator {op or '?'} is not allowed", node, op)

    def _any_array(self, node: Any) -> None:
        if isinstance(node, ast.ParamRef):
            self.param_ref(node)
            return
        if isinstance(node, ast.A_ArrayExpr):
            for element in node.elements or ():
                if not isinstance(element, ast.A_Const):
                    raise self._fail("ARRAY[...] in = ANY(...) may hold only literals", element)
                self.const(element)
            return
        raise self._fail("= ANY(...) takes a :claim or an ARRAY[...] of literals", node)

    def _like_pattern(self, owner: ast.A_Expr, node: Any) -> None:
        if isinstance(node, ast.A_Const) and (node.isnull or isinstance(node.val, ast.String)):
            return
        if isinstance(node, ast.FuncCall) and _func_name(node) == "like_escape":
            raise self._fail(
                "LIKE ... ESCAPE is not allowed (use backslash)", owner, find=frozenset({"ESCAPE"})
            )
        raise self._fail("the pattern of LIKE must be a constant string", node)

    # membership sub-selects

    def sub_link(self, node: ast.SubLink) -> _Kind:
        """`<column> IN (SELECT <column> FROM <table> [WHERE <condition>])`, nothing else."""
        names = _strings(node.operName)
        if node.subLinkType != enums.SubLinkType.ANY_SUBLINK or names not in ([], ["="]):
            raise self._fail(
                f"this sub-select is not allowed; a rule may only use {_SUBQUERY_FORM}", node
            )
        if not isinstance(node.testexpr, ast.ColumnRef):
            raise self._fail(
                "the left side of IN (SELECT ...) must be one column of the table: "
                + _SUBQUERY_FORM,
                node.testexpr if node.testexpr is not None else node,
            )
        self.column_ref(node.testexpr)
        if self._depth >= MAX_SUBQUERY_DEPTH:
            raise self._fail(f"sub-selects nested more than {MAX_SUBQUERY_DEPTH} levels deep", node)
        select = node.subselect
        if not isinstance(select, ast.SelectStmt):  # pragma: no cover - the grammar
            raise self._fail(f"a rule may only use {_SUBQUERY_FORM}", node)
        self._select_shape(node, select)
        target = _items(select.targetList)[0].val
        table = _items(select.fromClause)[0]
        info = SubqueryInfo(
            node=node,
            column=_strings(node.testexpr.fields)[0],
            schema=table.schemaname,
            table=str(table.relname),
            value=_strings(target.fields)[0],
            where=select.whereClause,
        )
        outer_columns, outer_subqueries = self.columns, self.subqueries
        self.columns, self.subqueries = {info.value}, info.nested
        self._depth += 1
        try:
            if select.whereClause is not None:
                self.check_boolean(select.whereClause)
            info.columns = self.columns
        finally:
            self._depth -= 1
            self.columns, self.subqueries = outer_columns, outer_subqueries
        self.subqueries.append(info)
        return _Kind.BOOL

    def _select_shape(self, node: ast.SubLink, select: ast.SelectStmt) -> None:
        """One bare column FROM one plain table, an optional WHERE, no other clause."""
        for name in select:  # a pglast node iterates over its field names
            value = getattr(select, name, None)
            if name in ("targetList", "fromClause", "whereClause") or value in (None, False, ()):
                continue
            if isinstance(value, Enum) and not value.value:
                continue
            raise self._fail(
                f"{_CLAUSE_NAMES.get(name, name)} is not allowed in a rule's sub-select: write "
                f"{_SUBQUERY_FORM} (a plain list of values; membership is decided row by row)",
                node,
            )
        targets = _items(select.targetList)
        target = targets[0].val if len(targets) == 1 else None
        if not isinstance(target, ast.ColumnRef) or len(_items(target.fields)) != 1:
            raise self._fail(
                "a rule's sub-select selects exactly one bare column (no aggregate, expression or "
                f"'*'): {_SUBQUERY_FORM}",
                node,
            )
        if any(isinstance(f, ast.A_Star) for f in _items(target.fields)):
            raise self._fail(f"'*' is not allowed: name one column ({_SUBQUERY_FORM})", node, "*")
        tables = _items(select.fromClause)
        if len(tables) != 1 or not isinstance(tables[0], ast.RangeVar):
            raise self._fail(
                "joins, several tables and derived tables are not allowed in a rule's sub-select: "
                f"select from one table, and nest another sub-select for the next level "
                f"({_SUBQUERY_FORM})",
                node,
            )
        table = tables[0]
        if table.alias is not None or table.catalogname or not table.inh:
            raise self._fail(
                "name the sub-select's table as schema.table (no alias, ONLY or catalog)", node
            )

    # functions and casts

    def func_call(self, node: ast.FuncCall) -> _Kind:
        name = _func_name(node)
        label = ".".join(_strings(node.funcname))
        function = FUNCTIONS.get(name or "")
        if function is None:
            allowed = ", ".join(sorted({*FUNCTIONS, "coalesce", "trim"}))
            raise self._fail(f"function {label}() is not allowed (allowed: {allowed})", node)
        if (
            node.agg_star
            or node.agg_distinct
            or node.agg_order
            or node.agg_filter is not None
            or node.over is not None
            or node.func_variadic
            or node.agg_within_group
        ):
            raise self._fail(f"{label}() may only be called with plain arguments", node)
        args = node.args or ()
        low, high = function.min_args, function.max_args
        if not low <= len(args) <= high:
            raise self._fail(f"{label}() takes {_count(low, high)} argument(s)", node)
        for arg in args:
            if self.check(arg) is _Kind.BOOL:
                raise self._fail(f"{label}() does not take a boolean argument", arg)
        return _Kind.VALUE

    def coalesce(self, node: ast.CoalesceExpr) -> _Kind:
        kinds = {self.check(arg) for arg in _items(node.args)}
        return _Kind.BOOL if kinds == {_Kind.BOOL} else _Kind.ANY

    def type_cast(self, node: ast.TypeCast) -> _Kind:
        type_name = node.typeName
        target = None if type_name is None else cast_target(type_name)
        if target is None:
            shown = ".".join(_strings(type_name.names if type_name is not None else None))
            allowed = ", ".join(sorted(ALLOWED_CASTS))
            raise self._fail(
                f"cast to {shown} is not allowed (allowed types: {allowed})",
                type_name if type_name is not None else node,
            )
        self.check(node.arg)
        return _Kind.BOOL if target == "bool" else _Kind.VALUE


_HANDLERS: dict[type, Any] = {
    ast.ColumnRef: Checker.column_ref,
    ast.ParamRef: Checker.param_ref,
    ast.A_Const: Checker.const,
    ast.BoolExpr: Checker.bool_expr,
    ast.NullTest: Checker.null_test,
    ast.BooleanTest: Checker.boolean_test,
    ast.A_Expr: Checker.a_expr,
    ast.FuncCall: Checker.func_call,
    ast.CoalesceExpr: Checker.coalesce,
    ast.TypeCast: Checker.type_cast,
    ast.SubLink: Checker.sub_link,
}

_CLAUSE_NAMES = {
    "distinctClause": "DISTINCT",
    "groupClause": "GROUP BY (an aggregate)",
    "havingClause": "HAVING",
    "sortClause": "ORDER BY",
    "limitCount": "LIMIT",
    "limitOffset": "OFFSET",
    "lockingClause": "FOR UPDATE/SHARE",
    "withClause": "WITH",
    "windowClause": "WINDOW",
    "intoClause": "INTO",
    "valuesLists": "VALUES",
    "op": "UNION/INTERSECT/EXCEPT",
}


def _count(low: int, high: int) -> str:
    return str(low) if low == high else f"{low} to {high}"


def _describe(node: Any) -> str:
    names = {
        ast.SubLink: "a sub-select",
        ast.CaseExpr: "CASE",
        ast.RowExpr: "a row constructor",
        ast.A_Indirection: "subscripting or field selection",
        ast.SQLValueFunction: "a special SQL function",
        ast.A_ArrayExpr: "an ARRAY constructor (outside = ANY)",
        ast.CollateClause: "COLLATE",
        ast.MinMaxExpr: "GREATEST/LEAST",
        ast.BitString: "bit-string",
        ast.NamedArgExpr: "a named argument",
    }
    return names.get(type(node), type(node).__name__)


def _operator_name(node: ast.A_Expr) -> str | None:
    names = _strings(node.name)
    return names[0] if len(names) == 1 else None


def _a_expr_label(node: ast.A_Expr) -> str:
    labels = {
        enums.A_Expr_Kind.AEXPR_OP_ALL: "ALL",
        enums.A_Expr_Kind.AEXPR_NULLIF: "NULLIF",
        enums.A_Expr_Kind.AEXPR_SIMILAR: "SIMILAR TO",
        enums.A_Expr_Kind.AEXPR_BETWEEN_SYM: "BETWEEN SYMMETRIC",
        enums.A_Expr_Kind.AEXPR_NOT_BETWEEN_SYM: "NOT BETWEEN SYMMETRIC",
    }
    op = ".".join(_strings(node.name))
    label = labels.get(node.kind) if node.kind is not None else None
    if node.kind == enums.A_Expr_Kind.AEXPR_OP_ANY:
        label = f"{op} ANY"
    return label or op or str(node.kind)


def _func_name(node: ast.FuncCall) -> str | None:
    """The bare name of an unqualified or `pg_catalog.`-qualified function."""
    names = _strings(node.funcname)
    if len(names) == 2 and names[0] == "pg_catalog":
        names = names[1:]
    return names[0] if len(names) == 1 else None


def cast_target(type_name: ast.TypeName) -> str | None:
    """The canonical allowed type of a cast (`int4`, `numeric`, ...), or None if refused."""
    names = _strings(type_name.names)
    if len(names) == 2 and names[0] == "pg_catalog":
        names = names[1:]
    if (
        len(names) != 1
        or type_name.typmods
        or type_name.arrayBounds
        or type_name.setof
        or type_name.pct_type
    ):
        return None
    return ALLOWED_CASTS.get(names[0])


def _items(value: ast.Node | tuple[Any, ...] | None) -> tuple[Any, ...]:
    """The items of a pglast list field (pglast types every field optional): none for a
    missing list, and a lone node as itself (so it is checked, never skipped)."""
    if value is None:
        return ()
    return value if isinstance(value, tuple) else (value,)


def _strings(value: ast.Node | tuple[Any, ...] | None) -> list[str]:
    """The `String` values of a pglast name list (`funcname`, `names`, `fields`, `name`)."""
    return [s.sval for s in _items(value) if isinstance(s, ast.String) and s.sval is not None]
