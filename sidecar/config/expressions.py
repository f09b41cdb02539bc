"""Rule expressions: PostgreSQL's own grammar (pglast), an allow-list, located errors.

A rule is ONE boolean SQL expression over a table's columns and the caller's claims, the
claims written `:name` (`owner_id = :sub`, `:role = 'admin'`, `group_id = ANY(:groups)`).

How a text becomes an `Expression`:

1. the real PostgreSQL lexer (`pglast.parser.scan`) splits it into tokens, so strings,
   quoted identifiers and comments are never looked into by hand;
2. each `:` immediately followed by an identifier token becomes a positional parameter
   `$n` (the same claim name always gets the same `n`); `::` casts are a distinct token;
3. `SELECT 1 WHERE <expression>` is parsed by the real parser (`pglast.parse_sql`);
4. the statement must be exactly that (no ORDER BY, LIMIT, UNION, ...) and the WHERE tree
   is walked against an allow-list: anything not explicitly allowed is refused.

Every refusal is an `ExpressionError` naming the offending token and its 0-based character
offset in the text as the user wrote it (positions of the rewritten text are mapped back;
pglast keeps no location for constants, which are located at their enclosing operator).
Claim names keep their case (`:Sub` is not `:sub`); `:"odd-name"` quotes one.

The allowed subset: unqualified column references, `:claim` parameters, constants (integer,
numeric, string, boolean, NULL), comparisons `= <> != < <= > >=`, `IS [NOT] DISTINCT FROM`,
AND/OR/NOT, `IN (list)`, `= ANY(:claim)` and `= ANY(ARRAY[<literals>])`, `IS [NOT] NULL`,
`IS [NOT] TRUE/FALSE/UNKNOWN`, `[NOT] BETWEEN` (not SYMMETRIC), `[NOT] [I]LIKE` with a
constant pattern (no ESCAPE clause), arithmetic `+ - * /`, string concatenation `||`,
casts to the types of `ALLOWED_CASTS` (no typmods, no arrays), `coalesce` and the functions
of `sidecar.rules.functions.FUNCTIONS` (the table the evaluator computes them from;
optionally qualified `pg_catalog.`). Limits: `MAX_EXPRESSION_LENGTH` characters,
`MAX_DEPTH` levels of nesting. Beyond PostgreSQL's own checks, a few obviously non-boolean
shapes are refused early: a constant, arithmetic or function call where a boolean is
expected, and a boolean operand of arithmetic or of a function.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from pglast import ast, enums, parse_sql
from pglast.parser import ParseError, scan
from pglast.stream import RawStream

from sidecar.rules.functions import FUNCTIONS

__all__ = [
    "ALLOWED_CASTS",
    "MAX_DEPTH",
    "MAX_EXPRESSION_LENGTH",
    "Expression",
    "ExpressionError",
    "SourceMap",
    "cast_target",
    "parse_expression",
    "render_sql",
]

MAX_EXPRESSION_LENGTH = 10_000
MAX_DEPTH = 100  # nesting of the expression tree (keeps every later walk far from recursion limits)

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

_PREFIX = "SELECT 1 WHERE "
_COMMENTS = frozenset({"SQL_COMMENT", "C_COMMENT"})
_SEMICOLON, _COLON, _LPAREN, _RPAREN = "ASCII_59", "ASCII_58", "ASCII_40", "ASCII_41"
# Keywords that start a clause the wrapper statement must not grow (ORDER BY, LIMIT, ...).
_CLAUSE_KEYWORDS = frozenset(
    {
        "ORDER",
        "LIMIT",
        "OFFSET",
        "FETCH",
        "GROUP_P",
        "HAVING",
        "WINDOW",
        "FOR",
        "UNION",
        "INTERSECT",
        "EXCEPT",
        "INTO",
        "FROM",
    }
)
_SUBQUERY_KEYWORDS = frozenset({"SELECT", "VALUES", "TABLE", "WITH"})
_SELECT_ALLOWED = frozenset({"targetList", "whereClause"})
_BARE_NAME = re.compile(r"[A-Za-z_\u0080-\U0010ffff][\w$\u0080-\U0010ffff]*")


class ExpressionError(Exception):
    """An expression that is refused; `token` and `position` locate it in the user's text."""

    def __init__(self, message: str, token: str | None = None, position: int | None = None):
        super().__init__(message)
        self.message = message
        self.token = token
        self.position = position  # 0-based character offset into the expression text

    def __repr__(self) -> str:
        return f"ExpressionError({self.message!r}, token={self.token!r}, position={self.position})"


@dataclass(frozen=True, slots=True)
class SourceMap:
    """Maps a location of the parsed (wrapped, rewritten) text back to the user's text."""

    offset: int = 0  # length of the wrapper prefix
    # (start, end) in the rewritten expression -> (start, end) in the user's text
    replacements: tuple[tuple[int, int, int, int], ...] = ()

    def to_source(self, location: int | None) -> int | None:
        """The user's character offset of a parser location (None when unknown)."""
        if location is None or location < 0:
            return None
        pos = location - self.offset
        delta = 0
        for new_start, new_end, old_start, old_end in self.replacements:
            if pos < new_start:
                break
            if pos < new_end:
                return old_start
            delta = old_end - new_end
        return max(0, pos + delta)


@dataclass(frozen=True, slots=True)
class Expression:
    """A parsed, checked rule expression.

    `node` is the pglast node of the boolean expression (read-only), where claim `n` is
    the parameter `$n` and `params[n - 1]` is its claim name.
    """

    text: str
    node: Any = field(hash=False)
    columns: frozenset[str]
    claims: frozenset[str]
    params: tuple[str, ...] = ()
    source_map: SourceMap = field(default=SourceMap(), compare=False, repr=False)

    def locate(self, node: Any) -> tuple[str | None, int | None]:
        """(token, position) in `text` of a node of `self.node`, for error messages.

        A node without a location (constants) is located at its nearest located ancestor.
        """
        for candidate in (node, *reversed(_path_to(self.node, node))):
            position = self.source_map.to_source(getattr(candidate, "location", None))
            if position is not None:
                return _token_at(self.text, position)
        return _token_at(self.text, 0)

    def error(self, message: str, node: Any) -> ExpressionError:
        """An `ExpressionError` located at `node`."""
        token, position = self.locate(node)
        return ExpressionError(message, token, position)


def _children(node: Any) -> list[Any]:
    """The direct child nodes of a pglast node."""
    out: list[Any] = []
    for name in getattr(type(node), "__slots__", ()):
        value = getattr(node, name, None)
        items = value if isinstance(value, tuple | list) else (value,)
        out.extend(item for item in items if isinstance(item, ast.Node))
    return out


def _path_to(root: Any, target: Any) -> list[Any]:
    """The ancestors of `target` in the tree under `root` (outermost first; [] if absent)."""
    if root is target:
        return []
    for child in _children(root):
        if child is target:
            return [root]
        path = _path_to(child, target)
        if path:
            return [root, *path]
    return []


# -- lexing and claims --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Token:
    start: int
    end: int  # exclusive
    name: str
    kind: str

    def text(self, source: str) -> str:
        return source[self.start : self.end]


def _scan(text: str) -> list[_Token]:
    """Tokens of `text` with the real lexer (comments dropped)."""
    try:
        raw = scan(text)
    except ParseError as error:
        position = _error_location(error)
        rest = text[position:].split(None, 1) if position is not None else []
        raise ExpressionError(_clean_message(error), rest[0] if rest else None, position) from None
    return [_Token(t.start, t.end + 1, t.name, t.kind) for t in raw if t.name not in _COMMENTS]


def _error_location(error: ParseError) -> int | None:
    location = error.args[1] if len(error.args) > 1 else None
    return location if isinstance(location, int) else None


def _clean_message(error: ParseError) -> str:
    return str(error.args[0]) if error.args else str(error)


def _token_at(
    text: str, position: int | None, names: frozenset[str] | None = None
) -> tuple[str | None, int | None]:
    """(token, its start): the first token at or after `position`.

    With `names`, the first one whose lexer name is in `names`. An opening parenthesis is
    skipped, and a claim gives `:name`.
    """
    if position is None:
        return None, None
    try:
        tokens = _scan(text)
    except ExpressionError:
        return text[position : position + 1] or None, position
    for i, tok in enumerate(tokens):
        if tok.end <= position or (names is not None and tok.name not in names):
            continue
        if tok.name == _LPAREN and names is None and i + 1 < len(tokens):
            i, tok = i + 1, tokens[i + 1]
        if tok.name == _COLON and i + 1 < len(tokens) and tokens[i + 1].start == tok.end:
            return text[tok.start : tokens[i + 1].end], tok.start
        return tok.text(text), tok.start
    return None, position


def _located(message: str, text: str, position: int | None) -> ExpressionError:
    """An error at the token found at `position` of `text`."""
    token, start = _token_at(text, position)
    return ExpressionError(message, token, start)


def _is_name(token: _Token) -> bool:
    return token.name == "IDENT" or token.kind != "NO_KEYWORD"


def _is_operand(token: _Token) -> bool:
    return _is_name(token) or token.name.endswith("CONST") or token.name == "PARAM"


def _claim_name(text: str, token: _Token) -> str:
    raw = token.text(text)
    if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
        name = raw[1:-1].replace('""', '"')
        if name:
            return name
    elif _BARE_NAME.fullmatch(raw):
        return raw
    raise ExpressionError(f"invalid claim name {raw!r}", ":" + raw, token.start - 1)


def _rewrite_claims(text: str, tokens: Sequence[_Token]) -> tuple[str, tuple[str, ...], SourceMap]:
    """Replace every `:name` by ` $n`; returns (new text, claim names by n, source map)."""
    params: list[str] = []
    numbers: dict[str, int] = {}
    parts: list[str] = []
    replacements: list[tuple[int, int, int, int]] = []
    copied = 0
    new_len = 0
    for i, tok in enumerate(tokens):
        if tok.name != _COLON:
            continue
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if nxt is None or nxt.start != tok.end or not _is_name(nxt):
            raise ExpressionError(
                "':' must be immediately followed by a claim name (e.g. :sub)", ":", tok.start
            )
        prev = tokens[i - 1] if i else None
        if prev is not None and prev.end == tok.start and _is_operand(prev):
            raise ExpressionError(
                f"claim :{nxt.text(text)} must be separated from {prev.text(text)!r}",
                ":" + nxt.text(text),
                tok.start,
            )
        name = _claim_name(text, nxt)
        if name not in numbers:
            params.append(name)
            numbers[name] = len(params)
        chunk = text[copied : tok.start]
        parts.append(chunk)
        new_len += len(chunk)
        placeholder = f" ${numbers[name]}"  # the space keeps `x:sub` from fusing into `x$1`
        parts.append(placeholder)
        replacements.append((new_len, new_len + len(placeholder), tok.start, nxt.end))
        new_len += len(placeholder)
        copied = nxt.end
    parts.append(text[copied:])
    return "".join(parts), tuple(params), SourceMap(len(_PREFIX), tuple(replacements))


def _precheck_tokens(text: str, tokens: Sequence[_Token]) -> None:
    """Refuse what the lexer alone shows: emptiness, several statements, `$n` parameters."""
    if not tokens:
        raise ExpressionError("empty expression", None, 0)
    for tok in tokens:
        if tok.name == _SEMICOLON:
            raise ExpressionError(
                "only one expression is allowed (no ';')", tok.text(text), tok.start
            )
        if tok.name == "PARAM":
            raise ExpressionError(
                f"positional parameter {tok.text(text)} is not allowed: write claims as :name",
                tok.text(text),
                tok.start,
            )


# -- parsing ------------------------------------------------------------------------------


def parse_expression(text: str) -> Expression:
    """Parse and check one rule expression; raises `ExpressionError` (located) if refused."""
    if not isinstance(text, str):
        raise ExpressionError("an expression must be a string")
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise ExpressionError(
            f"expression longer than {MAX_EXPRESSION_LENGTH} characters",
            None,
            MAX_EXPRESSION_LENGTH,
        )
    tokens = _scan(text)
    _precheck_tokens(text, tokens)
    rewritten, params, source_map = _rewrite_claims(text, tokens)
    where = _parse_where(text, tokens, rewritten, source_map)
    checker = _Checker(text, source_map, params)
    checker.check_boolean(where)
    return Expression(
        text=text,
        node=where,
        columns=frozenset(checker.columns),
        claims=frozenset(params),
        params=params,
        source_map=source_map,
    )


def _parse_where(text: str, tokens: Sequence[_Token], rewritten: str, source_map: SourceMap) -> Any:
    """Parse `SELECT 1 WHERE <rewritten>` and return its WHERE node (refusing any extra)."""
    try:
        statements = parse_sql(_PREFIX + rewritten)
    except ParseError as error:
        location = _error_location(error)
        position = len(text) if location is None else source_map.to_source(location)
        raise _located(_clean_message(error), text, position) from None
    stmt = statements[0].stmt if len(statements) == 1 else None
    if not isinstance(stmt, ast.SelectStmt) or _has_extra_clauses(stmt):
        tok = _first_clause_keyword(tokens)
        if tok is None:
            raise ExpressionError("the text must be one boolean expression", None, 0)
        raise ExpressionError(
            f"{tok.text(text).upper()} is not allowed: the text must be one boolean expression",
            tok.text(text),
            tok.start,
        )
    if stmt.whereClause is None:  # pragma: no cover - the grammar requires it
        raise ExpressionError("empty expression", None, 0)
    return stmt.whereClause


def _has_extra_clauses(stmt: ast.SelectStmt) -> bool:
    for name in ast.SelectStmt.__slots__:
        value = getattr(stmt, name, None)
        if name in _SELECT_ALLOWED or value is None or value is False or value == ():
            continue
        if isinstance(value, Enum) and not value.value:
            continue
        return True
    return len(stmt.targetList or ()) != 1


def _first_clause_keyword(tokens: Sequence[_Token]) -> _Token | None:
    depth = 0
    for tok in tokens:
        if tok.name == _LPAREN:
            depth += 1
        elif tok.name == _RPAREN:
            depth -= 1
        elif depth == 0 and tok.name in _CLAUSE_KEYWORDS:
            return tok
    return None


# -- the allow-list walk ------------------------------------------------------------------


class _Kind(Enum):
    """What a node yields, as far as the static check needs to know."""

    BOOL = "boolean"
    ANY = "any"  # a column, claim, NULL or coalesce: could be boolean
    VALUE = "value"  # certainly not boolean: numbers, text, arithmetic, functions


_LIKE_KINDS = {enums.A_Expr_Kind.AEXPR_LIKE, enums.A_Expr_Kind.AEXPR_ILIKE}
_BETWEEN_KINDS = {enums.A_Expr_Kind.AEXPR_BETWEEN, enums.A_Expr_Kind.AEXPR_NOT_BETWEEN}
_DISTINCT_KINDS = {enums.A_Expr_Kind.AEXPR_DISTINCT, enums.A_Expr_Kind.AEXPR_NOT_DISTINCT}
_LIKE_OPERATORS = {"~~", "!~~", "~~*", "!~~*"}


class _Checker:
    """Walks a WHERE tree against the allow-list, collecting column names."""

    def __init__(self, text: str, source_map: SourceMap, params: tuple[str, ...]) -> None:
        self.text = text
        self.source_map = source_map
        self.params = params
        self.columns: set[str] = set()
        self._path: list[Any] = []  # the nodes being checked, outermost first

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
        found, start = _token_at(self.text, position, find)
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
        names = [f.sval for f in fields if isinstance(f, ast.String)]
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
        if not 1 <= node.number <= len(self.params):  # pragma: no cover - prechecked
            raise self._fail("positional parameters are not allowed", node)
        return _Kind.ANY

    def const(self, node: ast.A_Const) -> _Kind:
        if node.isnull:
            return _Kind.ANY
        val = node.val
        if isinstance(val, ast.Boolean):
            return _Kind.BOOL
        if isinstance(val, ast.Integer | ast.Float | ast.String):
            return _Kind.VALUE
        raise self._fail(f"{_describe(val)} constants are not allowed", node)

    # boolean structure

    def bool_expr(self, node: ast.BoolExpr) -> _Kind:
        for arg in node.args:
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
            for item in node.rexpr:
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
            for item in node.rexpr if kind in _BETWEEN_KINDS else (node.rexpr,):
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

    # functions and casts

    def func_call(self, node: ast.FuncCall) -> _Kind:
        name = _func_name(node)
        label = ".".join(s.sval for s in node.funcname if isinstance(s, ast.String))
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
        kinds = {self.check(arg) for arg in node.args}
        return _Kind.BOOL if kinds == {_Kind.BOOL} else _Kind.ANY

    def type_cast(self, node: ast.TypeCast) -> _Kind:
        target = cast_target(node.typeName)
        if target is None:
            type_name = node.typeName
            shown = ".".join(s.sval for s in type_name.names if isinstance(s, ast.String))
            allowed = ", ".join(sorted(ALLOWED_CASTS))
            raise self._fail(
                f"cast to {shown} is not allowed (allowed types: {allowed})", type_name
            )
        self.check(node.arg)
        return _Kind.BOOL if target == "bool" else _Kind.VALUE


_HANDLERS: dict[type, Any] = {
    ast.ColumnRef: _Checker.column_ref,
    ast.ParamRef: _Checker.param_ref,
    ast.A_Const: _Checker.const,
    ast.BoolExpr: _Checker.bool_expr,
    ast.NullTest: _Checker.null_test,
    ast.BooleanTest: _Checker.boolean_test,
    ast.A_Expr: _Checker.a_expr,
    ast.FuncCall: _Checker.func_call,
    ast.CoalesceExpr: _Checker.coalesce,
    ast.TypeCast: _Checker.type_cast,
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
    names = [s.sval for s in node.name or () if isinstance(s, ast.String)]
    return names[0] if len(names) == 1 else None


def _a_expr_label(node: ast.A_Expr) -> str:
    labels = {
        enums.A_Expr_Kind.AEXPR_OP_ALL: "ALL",
        enums.A_Expr_Kind.AEXPR_NULLIF: "NULLIF",
        enums.A_Expr_Kind.AEXPR_SIMILAR: "SIMILAR TO",
        enums.A_Expr_Kind.AEXPR_BETWEEN_SYM: "BETWEEN SYMMETRIC",
        enums.A_Expr_Kind.AEXPR_NOT_BETWEEN_SYM: "NOT BETWEEN SYMMETRIC",
    }
    op = ".".join(s.sval for s in node.name or () if isinstance(s, ast.String))
    label = labels.get(node.kind)
    if node.kind == enums.A_Expr_Kind.AEXPR_OP_ANY:
        label = f"{op} ANY"
    return label or op or str(node.kind)


def _func_name(node: ast.FuncCall) -> str | None:
    """The bare name of an unqualified or `pg_catalog.`-qualified function."""
    names = [s.sval for s in node.funcname if isinstance(s, ast.String)]
    if len(names) == 2 and names[0] == "pg_catalog":
        names = names[1:]
    return names[0] if len(names) == 1 else None


def cast_target(type_name: ast.TypeName) -> str | None:
    """The canonical allowed type of a cast (`int4`, `numeric`, ...), or None if refused."""
    names = [s.sval for s in type_name.names if isinstance(s, ast.String)]
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


# -- rendering ----------------------------------------------------------------------------


def render_sql(expr: Expression, first_param: int = 1) -> tuple[str, tuple[str, ...]]:
    """SQL text of `expr` with `$n` placeholders, and the claim name of each placeholder.

    Placeholders are numbered from `first_param`, so several expressions can share one
    statement. Run it with bound parameters (psycopg `RawCursor`): claim values are never
    spliced in.
    """
    return _render(expr, first_param), expr.params


@functools.lru_cache(maxsize=4096)
def _render(expr: Expression, first_param: int) -> str:
    """Deparsing is slow next to a query: each (expression, numbering) is rendered once."""
    node = expr.node
    if first_param != 1:
        node = copy.deepcopy(node)
        _shift_params(node, first_param - 1)
    return RawStream()(node)


def _shift_params(node: Any, offset: int) -> None:
    if isinstance(node, ast.Node):
        if isinstance(node, ast.ParamRef):
            node.number += offset
        for name in node:
            _shift_params(getattr(node, name), offset)
    elif isinstance(node, (list, tuple)):
        for item in node:
            _shift_params(item, offset)
