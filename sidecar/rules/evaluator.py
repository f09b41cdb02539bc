"""The evaluator: a checked rule expression compiled into closures, run per row.

`compile_evaluator(expr, column_types)` turns a parsed `Expression` into nested closures
once; `evaluate(expr, row, claims, column_types)` runs the (cached) closures on one row.
Values and their semantics are PostgreSQL's (`pgvalues`, `pgarithmetic`, `pgcasts`,
`pglike`, `functions`, `closures`): string literals and string claims are of PostgreSQL's
*unknown* type (a string claim is bound the same way on the write side: psycopg sends
`str` parameters as unknown); numeric literals (`1.5`) are Decimal; constant sub-trees are
computed once, at compile time; `coalesce` is lazy and takes the common type of its
arguments, resolved statically as PostgreSQL's parser does when `column_types` gives the
columns' types.

A value PostgreSQL would refuse at run time raises `EvaluationError`.

Known differences from a PostgreSQL session (deliberate), beyond `pgvalues`': string
elements of a claim array are unknown-typed like string claims; a scalar claim used as
`= ANY(:claim)` is a one-element array (`write_sql.bind_claims` wraps it the same way for
the write side); without `column_types`, `coalesce(a, b)` of two columns of different
numeric types whose first is NULL takes the type of the value it returns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any, cast
from uuid import UUID

from pglast import ast, enums

from sidecar.config.expression_check import cast_target
from sidecar.config.expressions import Expression, ExpressionError
from sidecar.rules.closures import (
    EMPTY,
    Claims,
    Fn,
    Row,
    between,
    binary,
    concatenation,
    constant,
    distinct,
    equals_any,
    in_list,
    kleene_and,
    kleene_not,
    kleene_or,
    like,
    negated,
    strict_call,
    unary,
)
from sidecar.rules.functions import FUNCTIONS
from sidecar.rules.nodes import (
    column_name,
    function_name,
    is_constant,
    items,
    literal,
    operator,
)
from sidecar.rules.pgarithmetic import arithmetic
from sidecar.rules.pgcasts import CASTS
from sidecar.rules.pgvalues import (
    EXACT_NUMBERS,
    INT_RANGES,
    EvaluationError,
    Unknown,
    as_bool,
    column_kind,
    compare,
    equal,
    parse_kind,
)

__all__ = ["Compiler", "EvaluationError", "compile_evaluator", "evaluate"]

_A = enums.A_Expr_Kind
_BOOL_NODES = (ast.BoolExpr, ast.NullTest, ast.BooleanTest)
_CMP_TESTS: dict[str, Callable[[int], bool]] = {
    "<": lambda c: c < 0,
    "<=": lambda c: c <= 0,
    ">": lambda c: c > 0,
    ">=": lambda c: c >= 0,
}


# -- the compiler: AST → closures ----------------------------------------------------------


class Compiler:
    """Compiles the nodes of one (already checked) expression into closures.

    `column_types` (format_type() names), when known, give columns a static type: it
    decides the type of `coalesce(...)` when its typed arguments are NULL, as PostgreSQL's
    parse-time type resolution does.
    """

    def __init__(self, params: Sequence[str], column_types: Mapping[str, str] | None) -> None:
        self.params = params
        self.column_kinds = {
            name: _static_kind_of_type(type_name)
            for name, type_name in (column_types or {}).items()
        }

    def kind(self, node: Any) -> str | None:
        """The static type of `node` ("int", "numeric", "text", ..., "unknown"; None: only
        known at run time)."""
        return _StaticKinds(self).of(node)

    def compile(self, node: Any) -> Fn:
        """A closure computing `node`; constant sub-trees are computed once, here."""
        fn = self._dispatch(node)
        if not isinstance(node, ast.A_Const) and is_constant(node):
            try:
                return constant(fn(EMPTY, EMPTY))
            except EvaluationError:
                return fn  # PostgreSQL raises too; keep raising, per evaluation
        return fn

    def compile_bool(self, node: Any) -> Fn:
        """A closure for a boolean position (non-boolean values are converted or refused)."""
        fn = self.compile(node)
        if isinstance(node, _BOOL_NODES) or (
            isinstance(node, ast.A_Expr) and operator(node) not in ("+", "-", "*", "/", "||")
        ):
            return fn
        return lambda row, claims: as_bool(fn(row, claims))

    def _dispatch(self, node: Any) -> Fn:
        handler = getattr(self, "_" + type(node).__name__, None)
        if handler is None:  # pragma: no cover - parse_expression refused it already
            raise ExpressionError(f"{type(node).__name__} cannot be evaluated")
        return handler(node)

    # -- leaves

    def _ColumnRef(self, node: ast.ColumnRef) -> Fn:
        name = column_name(node)
        return lambda row, claims: row.get(name)

    def _ParamRef(self, node: ast.ParamRef) -> Fn:
        assert node.number is not None
        name = self.params[node.number - 1]

        def claim(row: Row, claims: Claims) -> Any:
            value = claims.get(name)
            kind = type(value)
            if kind is str:
                return Unknown(value)
            if kind is list:
                return [Unknown(v) if type(v) is str else v for v in cast(list[Any], value)]
            return value

        return claim

    def _A_Const(self, node: ast.A_Const) -> Fn:
        return constant(literal(node))

    def _SubLink(self, node: ast.SubLink) -> Fn:
        # Its value depends on another table's rows: `rules.scopes` compiles it to a lookup
        # (read rules) and PostgreSQL evaluates it in the write statement (write rules).
        raise ExpressionError(
            "a sub-select reads another table: it is evaluated through its lookup (read "
            "rules) or by PostgreSQL (write rules), not row by row"
        )

    # -- boolean structure

    def _BoolExpr(self, node: ast.BoolExpr) -> Fn:
        args = tuple(self.compile_bool(a) for a in items(node.args))
        if node.boolop == enums.BoolExprType.NOT_EXPR:
            (arg,) = args
            return lambda row, claims: kleene_not(arg(row, claims))
        if node.boolop == enums.BoolExprType.AND_EXPR:
            return kleene_and(args)
        return kleene_or(args)

    def _NullTest(self, node: ast.NullTest) -> Fn:
        arg = self.compile(node.arg)
        if node.nulltesttype == enums.NullTestType.IS_NULL:
            return lambda row, claims: arg(row, claims) is None
        return lambda row, claims: arg(row, claims) is not None

    def _BooleanTest(self, node: ast.BooleanTest) -> Fn:
        arg = self.compile_bool(node.arg)
        t = enums.BoolTestType
        tests: dict[Any, Callable[[Any], bool]] = {
            t.IS_TRUE: lambda v: v is True,
            t.IS_NOT_TRUE: lambda v: v is not True,
            t.IS_FALSE: lambda v: v is False,
            t.IS_NOT_FALSE: lambda v: v is not False,
            t.IS_UNKNOWN: lambda v: v is None,
            t.IS_NOT_UNKNOWN: lambda v: v is not None,
        }
        test = tests[node.booltesttype]
        return lambda row, claims: test(arg(row, claims))

    # -- operators

    def _A_Expr(self, node: ast.A_Expr) -> Fn:
        kind = node.kind
        if kind == _A.AEXPR_OP:
            return self._operator(node)
        if kind == _A.AEXPR_IN:
            fn = in_list(
                self.compile(node.lexpr), tuple(self.compile(e) for e in items(node.rexpr))
            )
            return fn if operator(node) == "=" else negated(fn)
        if kind == _A.AEXPR_OP_ANY:
            return equals_any(self.compile(node.lexpr), self.array(node.rexpr))
        if kind in (_A.AEXPR_LIKE, _A.AEXPR_ILIKE):
            return self._like(node)
        if kind in (_A.AEXPR_BETWEEN, _A.AEXPR_NOT_BETWEEN):
            low, high = (self.compile(e) for e in items(node.rexpr))
            return between(self.compile(node.lexpr), low, high, kind == _A.AEXPR_BETWEEN)
        if kind in (_A.AEXPR_DISTINCT, _A.AEXPR_NOT_DISTINCT):
            fn = distinct(self.compile(node.lexpr), self.compile(node.rexpr))
            return fn if kind == _A.AEXPR_DISTINCT else negated(fn)
        raise ExpressionError(f"operator {kind} cannot be evaluated")  # pragma: no cover

    def _operator(self, node: ast.A_Expr) -> Fn:
        op = operator(node)
        if op == "||":
            return concatenation(tuple(self.compile(n) for n in _concat_operands(node)))
        right = self.compile(node.rexpr)
        if node.lexpr is None:  # prefix + / -
            return unary(op, right)
        left = self.compile(node.lexpr)
        if op == "=":
            return binary(left, right, equal)
        if op == "<>":
            return binary(left, right, lambda x, y: not equal(x, y))
        if op in _CMP_TESTS:
            test = _CMP_TESTS[op]
            return binary(left, right, lambda x, y: test(compare(x, y)))
        return binary(left, right, lambda x, y: arithmetic(op, x, y))

    def array(self, node: Any) -> Fn:
        if isinstance(node, ast.A_ArrayExpr):
            elements = node.elements or ()
            kind = _common_kind(tuple(self.kind(e) for e in elements))
            return constant([_to_static_kind(literal(e), kind) for e in elements])
        claim = self.compile(node)

        def array(row: Row, claims: Claims) -> Any:
            value = claim(row, claims)
            return value if value is None or type(value) is list else [value]

        return array

    def _like(self, node: ast.A_Expr) -> Fn:
        op = operator(node)
        insensitive = op in ("~~*", "!~~*")
        value = self.compile(node.lexpr)
        assert isinstance(node.rexpr, ast.A_Const)
        pattern = literal(node.rexpr)
        if pattern is None:
            return constant(None)
        fn = like(value, pattern, insensitive)
        return negated(fn) if op.startswith("!") else fn

    # -- functions and casts

    def _FuncCall(self, node: ast.FuncCall) -> Fn:
        function = FUNCTIONS[function_name(node)]
        args = tuple(self.compile(a) for a in items(node.args))
        return strict_call(function.call, args)

    def _CoalesceExpr(self, node: ast.CoalesceExpr) -> Fn:
        args = tuple(self.compile(a) for a in items(node.args))
        kinds = tuple(self.kind(a) for a in items(node.args))
        target = _common_kind(kinds)

        def coalesce(row: Row, claims: Claims) -> Any:
            for i, arg in enumerate(args):
                value = arg(row, claims)
                if value is not None:
                    kind = target
                    if kind is None:
                        kind = _runtime_common_kind(kinds, args, i, value, row, claims)
                    return _to_static_kind(value, kind)
            return None

        return coalesce

    def _TypeCast(self, node: ast.TypeCast) -> Fn:
        assert node.typeName is not None
        target = cast_target(node.typeName)
        assert target is not None
        cast = CASTS[target]
        arg = self.compile(node.arg)

        def typecast(row: Row, claims: Claims) -> Any:
            value = arg(row, claims)
            return None if value is None else cast(value)

        return typecast


def _concat_operands(node: ast.A_Expr) -> list[Any]:
    """The operands of a left-deep chain `a || b || c` (how the parser nests it)."""
    operands = []
    current: Any = node
    while (
        isinstance(current, ast.A_Expr)
        and current.kind == _A.AEXPR_OP
        and current.lexpr is not None
        and operator(current) == "||"
    ):
        operands.append(current.rexpr)
        current = current.lexpr
    operands.append(current)
    return operands[::-1]


# -- static types (PostgreSQL's parse-time resolution, as far as coalesce needs it) ---------

_NUMERIC_RANK = {"int": 0, "numeric": 1, "float": 2}
_RUNTIME_KINDS = {int: "int", Decimal: "numeric", float: "float", Unknown: "unknown"}
_RUNTIME_KINDS |= {str: "text", bool: "bool", date: "date", UUID: "uuid"}


def _static_kind_of_type(type_name: str) -> str | None:
    kind = column_kind(type_name)
    return "int" if kind in INT_RANGES else kind


def _runtime_kind(value: Any) -> str | None:
    if type(value) is datetime:
        return "timestamptz" if value.tzinfo is not None else "timestamp"
    return _RUNTIME_KINDS.get(type(value))


def _common_kind(kinds: Sequence[str | None]) -> str | None:
    """The type PostgreSQL resolves for a set of expressions (None: not known statically)."""
    if None in kinds:
        return None
    known = [k for k in kinds if k is not None and k != "unknown"]
    if not known:
        return "text"  # all unknown: resolved as text
    if all(k in _NUMERIC_RANK for k in known):
        return max(known, key=_NUMERIC_RANK.__getitem__)
    return known[0]


def _runtime_common_kind(
    kinds: Sequence[str | None],
    args: Sequence[Fn],
    found: int,
    value: Any,
    row: Row,
    claims: Claims,
) -> str | None:
    """`_common_kind` with the run-time types of the arguments not typed statically.

    An argument whose type stays unknown (a NULL column) leaves an unknown result as is.
    """
    resolved: list[str] = []
    unresolved = False
    for i, (kind, arg) in enumerate(zip(kinds, args, strict=True)):
        if i == found:
            kind = kind or _runtime_kind(value)
        elif kind is None and i > found:
            try:
                other = arg(row, claims)
            except EvaluationError:
                other = None
            kind = None if other is None else _runtime_kind(other)
        if kind is None:
            unresolved = True
        else:
            resolved.append(kind)
    if unresolved and all(k == "unknown" for k in resolved):
        return None
    return _common_kind(resolved)


def _to_static_kind(value: Any, kind: str | None) -> Any:
    """A value converted to the resolved type of the expression that produced it."""
    if value is None or kind is None or kind == "unknown":
        return value
    vtype = type(value)
    if vtype is Unknown:
        return str(value) if kind == "text" else parse_kind(value, _PARSE_KIND.get(kind, kind))
    if kind == "numeric" and vtype is int:
        return Decimal(value)
    if kind == "float" and vtype in EXACT_NUMBERS:
        return float(value)
    return value


_PARSE_KIND = {"int": "int8"}


class _StaticKinds:
    """Static types of nodes, given the compiler's column types."""

    def __init__(self, compiler: Compiler) -> None:
        self.columns = compiler.column_kinds

    def of(self, node: Any) -> str | None:
        if isinstance(node, ast.ColumnRef):
            return self.columns.get(column_name(node))
        if isinstance(node, ast.A_Const):
            return _literal_kind(node)
        if isinstance(node, ast.TypeCast):
            assert node.typeName is not None
            target = cast_target(node.typeName)
            return "int" if target in INT_RANGES else target
        if isinstance(node, ast.FuncCall):
            function = FUNCTIONS.get(function_name(node))
            if function is None:  # pragma: no cover - parse_expression refused it already
                return None
            if function.result is None:  # the kind of the first argument (abs)
                return self.of(items(node.args)[0])
            return function.result
        if isinstance(node, ast.CoalesceExpr):
            return _common_kind(tuple(self.of(a) for a in items(node.args)))
        if isinstance(node, ast.A_Expr):
            return self._operator(node)
        if isinstance(node, _BOOL_NODES):
            return "bool"
        return None  # claims: typed by their values

    def _operator(self, node: ast.A_Expr) -> str | None:
        op = operator(node)
        if node.kind != _A.AEXPR_OP or op not in ("+", "-", "*", "/", "||"):
            return "bool"
        if op == "||":
            return "text"
        if node.lexpr is None:
            return self.of(node.rexpr)
        kinds = [self.of(node.lexpr), self.of(node.rexpr)]
        if None in kinds:
            return None
        numeric = [k for k in kinds if k in _NUMERIC_RANK]
        return max(numeric, key=_NUMERIC_RANK.__getitem__) if numeric else None


def _literal_kind(node: ast.A_Const) -> str:
    value = literal(node)
    if value is None or type(value) is Unknown:
        return "unknown"
    return _RUNTIME_KINDS.get(type(value), "unknown")


# -- evaluating ---------------------------------------------------------------------------

_CACHE: dict[tuple[str, tuple[tuple[str, str], ...]], Fn] = {}
_CACHE_SIZE = 1024


def compile_evaluator(
    expr: Expression, column_types: Mapping[str, str] | None = None
) -> Callable[[Row, Claims], bool | None]:
    """Closures computing `expr` on (row, claims): TRUE, FALSE or None (NULL).

    `column_types` (column → type as format_type() prints it) is optional; without it a
    column's type is taken from its value, which differs from PostgreSQL only for
    `coalesce` over columns of different numeric types whose first ones are NULL.
    """
    compiler = Compiler(expr.params, column_types)
    return compiler.compile_bool(expr.node)


def evaluate(
    expr: Expression,
    row: Row,
    claims: Claims,
    column_types: Mapping[str, str] | None = None,
) -> bool | None:
    """`expr` on one row and one caller's claims (a missing claim or column is NULL).

    The expression is compiled once (cached). Raises `EvaluationError` where PostgreSQL
    would raise. For a hot loop, keep the closure of `compile_evaluator` instead.
    """
    key = (expr.text, tuple(sorted(column_types.items())) if column_types else ())
    fn = _CACHE.get(key)
    if fn is None:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.clear()
        fn = _CACHE[key] = compile_evaluator(expr, column_types)
    return fn(row, claims)
