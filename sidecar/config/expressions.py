"""Rule expressions: PostgreSQL's own grammar (pglast), an allow-list, located errors.

A rule is ONE boolean SQL expression over a table's columns and the caller's claims, the
claims written `:name` (`owner_id = :sub`, `:role = 'admin'`, `group_id = ANY(:groups)`).

How a text becomes an `Expression` (`parse_expression`):

1. the real PostgreSQL lexer splits it into tokens, and each `:name` becomes a positional
   parameter `$n` (`expression_source`: tokens, claims, the source map, `ExpressionError`);
2. `SELECT 1 WHERE <expression>` is parsed by the real parser (`pglast.parse_sql`), and
   the statement must be exactly that (no ORDER BY, LIMIT, UNION, ...);
3. the WHERE tree is walked against an allow-list: anything not explicitly allowed is
   refused (`expression_check`, which lists the allowed subset).

Rendering a checked expression back to SQL with placeholders is `expression_sql`.

Every refusal is an `ExpressionError` naming the offending token and its 0-based character
offset in the text as the user wrote it (positions of the rewritten text are mapped back;
pglast keeps no location for constants, which are located at their enclosing operator).
Claim names keep their case (`:Sub` is not `:sub`); `:"odd-name"` quotes one. Limits:
`MAX_EXPRESSION_LENGTH` characters and `expression_check.MAX_NODES` nodes (by default;
a caller may ask for less: `ExpressionTooLarge`), `expression_check.MAX_DEPTH` levels of
nesting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from pglast import ast, parse_sql
from pglast.parser import ParseError

from sidecar.config.expression_check import MAX_NODES, Checker, SubqueryInfo
from sidecar.config.expression_source import (
    LPAREN,
    PREFIX,
    RPAREN,
    ExpressionError,
    ExpressionTooLarge,
    SourceMap,
    Token,
    clean_message,
    error_location,
    located,
    precheck_tokens,
    rewrite_claims,
    scan_tokens,
    token_at,
)

__all__ = [
    "MAX_EXPRESSION_LENGTH",
    "MAX_NODES",
    "Expression",
    "ExpressionError",
    "ExpressionTooLarge",
    "SourceMap",
    "Subquery",
    "parse_expression",
]

MAX_EXPRESSION_LENGTH = 10_000

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
_SELECT_ALLOWED = frozenset({"targetList", "whereClause"})


@dataclass(frozen=True, slots=True)
class Expression:
    """A parsed, checked rule expression.

    `node` is the pglast node of the boolean expression (read-only), where claim `n` is
    the parameter `$n` and `params[n - 1]` is its claim name. `columns` are the table's
    own columns it names; `subqueries` its membership sub-selects (`x IN (SELECT ...)`,
    outermost ones; each has its own), whose columns are the sub-select's table's.
    """

    text: str
    node: Any = field(hash=False)
    columns: frozenset[str]
    claims: frozenset[str]
    params: tuple[str, ...] = ()
    source_map: SourceMap = field(default=SourceMap(), compare=False, repr=False)
    subqueries: tuple[Subquery, ...] = field(default=(), compare=False, repr=False)

    def locate(self, node: Any) -> tuple[str | None, int | None]:
        """(token, position) in `text` of a node of `self.node`, for error messages.

        A node without a location (constants) is located at its nearest located ancestor.
        """
        for candidate in (node, *reversed(_path_to(self.node, node))):
            position = self.source_map.to_source(getattr(candidate, "location", None))
            if position is not None:
                return token_at(self.text, position)
        return token_at(self.text, 0)

    def error(self, message: str, node: Any) -> ExpressionError:
        """An `ExpressionError` located at `node`."""
        token, position = self.locate(node)
        return ExpressionError(message, token, position)


@dataclass(frozen=True, slots=True)
class Subquery:
    """`column IN (SELECT value FROM schema.table WHERE where)` in a rule: `where` is an
    `Expression` over the sub-select table's columns (TRUE when there is no WHERE), in the
    same text and with the same claim numbering as the rule it is part of."""

    node: Any = field(hash=False, compare=False)
    column: str
    schema: str | None
    table: str
    value: str
    where: Expression

    @property
    def table_name(self) -> str:
        """The table as written (`schema.table` or `table`)."""
        return f"{self.schema}.{self.table}" if self.schema else self.table


_TRUE = ast.A_Const(val=ast.Boolean(boolval=True))


def _subquery(info: SubqueryInfo, outer: Expression) -> Subquery:
    where = outer.__class__(
        text=outer.text,
        node=_TRUE if info.where is None else info.where,
        columns=frozenset(info.columns),
        claims=frozenset(
            outer.params[n.number - 1]
            for n in _walk_nodes(info.where)
            if isinstance(n, ast.ParamRef) and n.number
        ),
        params=outer.params,
        source_map=outer.source_map,
    )
    where = _with_subqueries(where, info.nested)
    return Subquery(info.node, info.column, info.schema, info.table, info.value, where)


def _with_subqueries(expr: Expression, infos: Sequence[SubqueryInfo]) -> Expression:
    if not infos:
        return expr
    object.__setattr__(expr, "subqueries", tuple(_subquery(i, expr) for i in infos))
    return expr


def _walk_nodes(node: Any) -> list[Any]:
    out: list[Any] = []
    stack = [node] if node is not None else []
    while stack:
        n = stack.pop()
        out.append(n)
        stack.extend(_children(n))
    return out


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


def parse_expression(
    text: str, max_length: int = MAX_EXPRESSION_LENGTH, max_nodes: int = MAX_NODES
) -> Expression:
    """Parse and check one rule expression; raises `ExpressionError` (located) if refused,
    `ExpressionTooLarge` past `max_length` characters or `max_nodes` nodes."""
    if not isinstance(text, str):
        raise ExpressionError("an expression must be a string")
    if len(text) > max_length:
        raise ExpressionTooLarge(
            f"expression longer than {max_length} characters", None, max_length
        )
    tokens = scan_tokens(text)
    precheck_tokens(text, tokens)
    rewritten, params, source_map = rewrite_claims(text, tokens)
    where = _parse_where(text, tokens, rewritten, source_map)
    checker = Checker(text, source_map, params, max_nodes)
    checker.check_boolean(where)
    expr = Expression(
        text=text,
        node=where,
        columns=frozenset(checker.columns),
        claims=frozenset(params),
        params=params,
        source_map=source_map,
    )
    return _with_subqueries(expr, checker.subqueries)


def _parse_where(text: str, tokens: Sequence[Token], rewritten: str, source_map: SourceMap) -> Any:
    """Parse `SELECT 1 WHERE <rewritten>` and return its WHERE node (refusing any extra)."""
    try:
        statements = parse_sql(PREFIX + rewritten)
    except ParseError as error:
        location = error_location(error)
        position = len(text) if location is None else source_map.to_source(location)
        raise located(clean_message(error), text, position) from None
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
    for name in stmt:  # a pglast node iterates over its field names
        value = getattr(stmt, name, None)
        if name in _SELECT_ALLOWED or value is None or value is False or value == ():
            continue
        if isinstance(value, Enum) and not value.value:
            continue
        return True
    return len(stmt.targetList or ()) != 1


def _first_clause_keyword(tokens: Sequence[Token]) -> Token | None:
    depth = 0
    for tok in tokens:
        if tok.name == LPAREN:
            depth += 1
        elif tok.name == RPAREN:
            depth -= 1
        elif depth == 0 and tok.name in _CLAUSE_KEYWORDS:
            return tok
    return None
