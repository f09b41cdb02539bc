"""Read rules compiled to scopes: visible ⇔ a row's scopes and a request's scopes meet.

`compile_read_rule(expr, column_types)` puts the rule in disjunctive normal form over
atoms (NOT pushed down, which De Morgan allows in Kleene logic; a boolean combination of
columns only, or of claims only, stays one atom) and classifies the atoms of each branch:
partition atoms (`column = <claims>`, `column IN (<claims and literals>)`,
`column = ANY(:claim)`), row atoms (columns and literals only) and claim atoms (claims and
literals only). A row's scope in branch `i` is `'i:' + JSON list of the partition values`
(e.g. `0:["42"]`, canonical per column type) when its row atoms are TRUE and no partition
value is NULL; a request's scopes are the same strings built from its claim values coerced
to the columns' types, when its claim atoms are TRUE; a branch without partition atoms
gives `'i:'`. Visible ⇔ the two sets intersect ⇔ `evaluator.evaluate(...) is True` (with
the same column types).

A membership sub-select `column IN (SELECT value FROM t WHERE cond)` is a partition atom
whose request side is not a claim but a `Lookup`: the values of `t.value` over the rows
of `t` that `cond` admits for the caller. `cond` is itself a read rule over `t` (compiled
the same way, possibly with its own lookup): a row of `t` *grants* its value (canonical
in the outer column's kind) to each of its `cond` scopes (`Lookup.pairs`); the caller's
values are the grants of its `cond` request scopes, read from the store at the version a
pull serves (`request_scopes(claims, grants)`).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from pglast import ast, enums
from pglast.stream import RawStream

from sidecar.config.expressions import Expression, ExpressionError
from sidecar.rules.canonical import canonical
from sidecar.rules.closures import EMPTY, Claims, Fn, Row
from sidecar.rules.evaluator import Compiler
from sidecar.rules.nodes import (
    SUBQUERY_PARAM,
    column_name,
    function_name,
    is_constant,
    is_volatile,
    items,
    operator,
    refs,
    walk,
)
from sidecar.rules.pgvalues import (
    INT_RANGES,
    EvaluationError,
    as_bool,
    column_kind,
)

__all__ = [
    "MAX_BRANCHES",
    "Grants",
    "Lookup",
    "ReadRule",
    "Scopes",
    "TableTypes",
    "compile_read_rule",
]

MAX_BRANCHES = 32

_A = enums.A_Expr_Kind


@dataclass(frozen=True, slots=True)
class _Partition:
    """`column = <claim values>`: the row side reads `column`, the request side `values`
    (or, for `column IN (SELECT ...)`, the grants of `lookup`)."""

    column: str
    kind: str
    values: Callable[[Claims], list[Any]]
    lookup: Lookup | None = None


# (lookup id, its `cond` request scopes) → the values granted to them (canonical strings)
Grants = Callable[[str, Sequence[str]], Iterable[str]]
# a table as a rule's sub-select names it → (its qualified name, column → type name)
TableTypes = Callable[[str], tuple[str, Mapping[str, str]]]


@dataclass(frozen=True)
class Lookup:
    """`IN (SELECT value FROM table WHERE rule)` of a read rule: `id` names its grants in
    the store (stable while the table, column, condition and kind stay the same)."""

    id: str
    table: str  # qualified: schema.name
    value: str
    kind: str  # of the outer column: grants are canonical in it
    rule: ReadRule

    @property
    def columns(self) -> frozenset[str]:
        """The columns of `table` a row's grants depend on."""
        return frozenset({self.value, *self.rule.columns})

    def pairs(self, row: Row) -> tuple[tuple[str, str], ...]:
        """What one row of `table` grants: (scope of `rule`, value) pairs."""
        value = canonical(row.get(self.value), self.kind)
        if value is None:
            return ()
        return tuple((scope, value) for scope in self.rule.row_scopes(row))

    def all(self) -> tuple[Lookup, ...]:
        """This lookup and those its condition uses, innermost last."""
        return (self, *self.rule.lookups)


@dataclass(frozen=True, slots=True)
class _Branch:
    prefix: str
    row_tests: tuple[Callable[[Row], bool], ...]
    claim_tests: tuple[Callable[[Claims], bool], ...]
    partitions: tuple[_Partition, ...]
    atoms: tuple[_Literal, ...] = ()  # what the branch was made of (for `open_branches`)


def _encode(values: list[str]) -> str:
    return orjson.dumps(values).decode()


Scopes = tuple[str, ...]


def _one_partition(head: str, index: int, kind: str) -> Callable[[Sequence[Any]], Scopes]:
    """The scopes of a rule `column = <claims>`: one scope, `head` + the JSON list of the
    value's canonical form (none when the value matches nothing)."""
    limit = INT_RANGES.get(kind, 0)

    def scopes(values: Sequence[Any]) -> Scopes:
        value = values[index]
        if type(value) is int and -limit <= value < limit:  # an integer column's own value
            return (f'{head}["{value}"]',)  # digits need no JSON escaping: as _encode
        text = canonical(value, kind)
        return () if text is None else (head + _encode([text]),)

    return scopes


@dataclass(frozen=True)
class ReadRule:
    """A read rule compiled to scopes: visible ⇔ row_scopes ∩ request_scopes ≠ ∅."""

    expression: Expression
    columns: frozenset[str]
    branches: tuple[_Branch, ...] = field(default=(), repr=False)

    @property
    def lookups(self) -> tuple[Lookup, ...]:
        """Every lookup of the rule, nested ones included (each once)."""
        found: dict[str, Lookup] = {}
        for branch in self.branches:
            for part in branch.partitions:
                if part.lookup is not None:
                    for lookup in part.lookup.all():
                        found.setdefault(lookup.id, lookup)
        return tuple(found.values())

    def row_scopes(self, row: Row) -> tuple[str, ...]:
        """The scopes of one row (values as psycopg loads them; missing columns are NULL)."""
        scopes: list[str] = []
        for branch in self.branches:
            tests = branch.row_tests
            if tests and not all(test(row) for test in tests):
                continue
            if not branch.partitions:
                scopes.append(branch.prefix)
                continue
            values: list[str] = []
            for part in branch.partitions:
                text = canonical(row.get(part.column), part.kind)
                if text is None:
                    break
                values.append(text)
            else:
                scopes.append(branch.prefix + _encode(values))
        return tuple(scopes)

    def scoper(self, prefix: str, columns: Sequence[str]) -> Callable[[Sequence[Any]], Scopes]:
        """`row_scopes` of rows given as values in `columns` order, each scope prefixed.

        Capture calls this once per row change, so the usual shape of a rule (one branch
        whose only atom is `column = <claims>`) gets a closure that reads the value
        directly, without building a dict per row; other rules go through `row_scopes`.
        """
        names = tuple(columns)
        if len(self.branches) == 1:
            branch = self.branches[0]
            if not branch.row_tests and len(branch.partitions) == 1:
                part = branch.partitions[0]
                return _one_partition(prefix + branch.prefix, names.index(part.column), part.kind)

        def scopes(values: Sequence[Any]) -> Scopes:
            return tuple(prefix + s for s in self.row_scopes(dict(zip(names, values, strict=True))))

        return scopes

    @property
    def admits_every_row(self) -> bool:
        """Whether some branch has no condition at all (`read: "true"`): every caller reads
        every row."""
        return any(
            not b.row_tests and not b.partitions and not b.claim_tests for b in self.branches
        )

    def open_branches(self) -> tuple[str, ...]:
        """The OR-branches that do not tie a row to the caller (no claim in them), as SQL
        text (`true` for a rule that admits every row): every caller reads the rows they
        admit, and writes them unless `write.where` says otherwise. A sub-select ties a
        row to the caller only when its condition does, in every branch
        (`IN (SELECT id FROM projects WHERE public)` ties it to nobody)."""
        out = []
        for branch in self.branches:
            if branch.claim_tests or any(_ties(p) for p in branch.partitions):
                continue
            text = " AND ".join(_atom_text(a) for a in branch.atoms) or "true"
            # claims of an open sub-select's condition are rendered as $n: name them
            numbers = sorted({n for a in branch.atoms for n in refs_params(a.node)})
            names = ", ".join(f"${n} = :{self.expression.params[n - 1]}" for n in numbers)
            out.append(f"{text} [{names}]" if names else text)
        return tuple(out)

    def request_scopes(
        self, claims: Claims, grants: Grants | None = None, watch: set[str] | None = None
    ) -> tuple[str, ...]:
        """The scopes a caller with `claims` may read. A branch with a lookup reads its
        values from `grants` (none without it); `watch` collects `<lookup id>|<scope>`
        of every lookup scope asked about: a change of their grants changes the result."""
        scopes: list[str] = []
        for branch in self.branches:
            if not all(test(claims) for test in branch.claim_tests):
                continue
            choices: list[list[str]] = []
            for part in branch.partitions:
                if part.lookup is not None:
                    found = _granted(part.lookup, claims, grants, watch)
                else:
                    found = {canonical(v, part.kind) for v in part.values(claims)}
                    found.discard(None)
                if not found:
                    break
                choices.append(sorted(found))  # type: ignore[arg-type]
            else:
                scopes.extend(
                    branch.prefix + _encode(list(c)) if c else branch.prefix
                    for c in itertools.product(*choices)
                )
        return tuple(scopes)


def _ties(part: _Partition) -> bool:
    """Whether a partition admits a row only to some callers: a claim's, or a lookup's
    whose condition has no branch open to every caller."""
    return part.lookup is None or not part.lookup.rule.open_branches()


def _granted(
    lookup: Lookup, claims: Claims, grants: Grants | None, watch: set[str] | None
) -> set[str | None]:
    if grants is None:
        return set()
    cond = lookup.rule.request_scopes(claims, grants, watch)
    if watch is not None:
        watch.update(f"{lookup.id}|{c}" for c in cond)
    return set(grants(lookup.id, cond)) if cond else set()


# -- normal form --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Literal:
    node: Any
    negated: bool


_Formula = tuple[str, tuple[Any, ...]] | _Literal | bool


def _atom_text(literal: _Literal) -> str:
    text = RawStream()(literal.node)
    if isinstance(literal.node, ast.BoolExpr):
        text = f"({text})"
    return f"NOT {text}" if literal.negated else text


def _nnf(node: Any, negate: bool, constant: Callable[[Any], bool | None]) -> _Formula:
    """Negation normal form over atoms; constant atoms become True/False.

    An atom is a maximal sub-expression that is not an AND/OR/NOT mixing columns with
    claims: a boolean combination of columns only (or of claims only) stays one atom, so
    only the mixed part of a rule multiplies branches. A constant that is not TRUE (FALSE
    or NULL) becomes False: in Kleene logic that never turns a FALSE-or-NULL rule TRUE.
    """
    if isinstance(node, ast.BoolExpr) and _mixes_columns_and_claims(node):
        if node.boolop == enums.BoolExprType.NOT_EXPR:
            return _nnf(items(node.args)[0], not negate, constant)
        is_and = (node.boolop == enums.BoolExprType.AND_EXPR) != negate
        parts = tuple(_nnf(a, negate, constant) for a in items(node.args))
        return ("and" if is_and else "or", parts)
    if is_constant(node):
        value = constant(node)
        return value is (not negate)
    return _Literal(node, negate)


def _mixes_columns_and_claims(node: Any) -> bool:
    columns, params = refs(node)
    return bool(columns) and bool(params)


def _dnf(formula: _Formula, expr: Expression) -> list[list[_Literal]]:
    """Disjunctive normal form (a list of conjunctions); at most MAX_BRANCHES of them."""
    if formula is True:
        return [[]]
    if formula is False:
        return []
    if isinstance(formula, _Literal):
        return [[formula]]
    op, parts = formula
    if op == "or":
        branches = [b for part in parts for b in _dnf(part, expr)]
    else:
        branches = [[]]
        for part in parts:
            sub = _dnf(part, expr)
            if len(branches) * len(sub) > MAX_BRANCHES:
                raise _too_many(expr)
            branches = [a + b for a in branches for b in sub]
    if len(branches) > MAX_BRANCHES:
        raise _too_many(expr)
    return branches


def _too_many(expr: Expression) -> ExpressionError:
    return expr.error(
        f"the read rule expands to more than {MAX_BRANCHES} OR-branches; simplify it", expr.node
    )


# -- classifying atoms --------------------------------------------------------------------


def _mix_error(expr: Expression, node: Any) -> ExpressionError:
    return expr.error(
        "a column may only be compared to a claim with =, IN (...) or = ANY(...) (and not "
        "under NOT), so that rows can be partitioned into scopes",
        node,
    )


class _RuleCompiler:
    def __init__(
        self, expr: Expression, column_types: Mapping[str, str], tables: TableTypes | None
    ) -> None:
        self.expr = expr
        self.column_types = column_types
        self.tables = tables
        self.compiler = Compiler(expr.params, column_types)
        self.subqueries = {id(sub.node): sub for sub in expr.subqueries}

    def constant(self, node: Any) -> bool | None:
        try:
            return as_bool(self.compiler.compile(node)(EMPTY, EMPTY))
        except EvaluationError:
            return None

    def test(self, literal: _Literal) -> Callable[[Mapping[str, Any]], bool]:
        """TRUE-test of a row atom or a claim atom (an evaluation error is not TRUE)."""
        fn = self.compiler.compile_bool(literal.node)
        wanted = not literal.negated
        as_row = bool(refs(literal.node)[0])

        def test(values: Mapping[str, Any]) -> bool:
            try:
                result = fn(values, EMPTY) if as_row else fn(EMPTY, values)
            except EvaluationError:
                return False
            return result is wanted

        return test

    def partition(self, literal: _Literal) -> _Partition | None:
        """The partition of a `column = claims` atom, or None if it is not one."""
        node = literal.node
        if isinstance(node, ast.SubLink):
            if literal.negated:
                raise self.expr.error(
                    "a sub-select cannot be negated (NOT ... IN (SELECT ...)): a rule says "
                    "which rows a membership grants, not which it hides; write "
                    "<column> IN (SELECT <column> FROM <table> WHERE <condition>) with a "
                    "condition that selects the granting rows (it may use NOT)",
                    node,
                )
            return self.lookup(node)
        if literal.negated or not isinstance(node, ast.A_Expr) or operator(node) != "=":
            return None
        if node.kind == _A.AEXPR_OP:
            for column, other in ((node.lexpr, node.rexpr), (node.rexpr, node.lexpr)):
                if isinstance(column, ast.ColumnRef) and self._claims_only(other):
                    return self._make(column, node, (self.compiler.compile(other),), False)
        elif node.kind == _A.AEXPR_IN and isinstance(node.lexpr, ast.ColumnRef):
            listed = items(node.rexpr)
            if any(self._claims_only(e) for e in listed) and all(
                self._claims_only(e) or is_constant(e) for e in listed
            ):
                fns = tuple(self.compiler.compile(e) for e in listed)
                return self._make(node.lexpr, node, fns, False)
        elif (
            node.kind == _A.AEXPR_OP_ANY
            and isinstance(node.lexpr, ast.ColumnRef)
            and isinstance(node.rexpr, ast.ParamRef)
        ):
            return self._make(node.lexpr, node, (self.compiler.array(node.rexpr),), True)
        return None

    def _claims_only(self, node: Any) -> bool:
        columns, params = refs(node)
        return not columns and bool(params) and SUBQUERY_PARAM not in params

    def lookup(self, node: ast.SubLink) -> _Partition:
        """The partition of `column IN (SELECT value FROM table WHERE cond)`."""
        sub = self.subqueries[id(node)]
        if self.tables is None:
            raise self.expr.error("a sub-select is not allowed here", node)
        table, types = self.tables(sub.table_name)
        where = sub.where
        for name in (sub.value, *sorted(where.columns)):
            if name not in types:
                raise self.expr.error(
                    f"{table} has no column {name} (a sub-select names only its own table's "
                    "columns: correlated sub-selects are not supported)",
                    node,
                )
        kind = column_kind(self.column_types[sub.column])
        if kind is None:
            raise self.expr.error(
                f"column {sub.column} of type {self.column_types[sub.column]} cannot be "
                "matched by a sub-select (use a number, text, boolean, date, timestamp or "
                "uuid column)",
                node,
            )
        rule = compile_read_rule(where, types, self.tables)
        params = sorted(refs_params(where.node))
        ident = orjson.dumps(
            [table, sub.value, kind, RawStream()(where.node), [where.params[p - 1] for p in params]]
        )
        lookup = Lookup(
            hashlib.blake2b(ident, digest_size=6).hexdigest(), table, sub.value, kind, rule
        )
        return _Partition(sub.column, kind, _no_values, lookup)

    def _make(
        self, column: ast.ColumnRef, atom: Any, fns: tuple[Fn, ...], array: bool
    ) -> _Partition:
        name = column_name(column)
        kind = column_kind(self.column_types[name])
        if kind is None:
            raise self.expr.error(
                f"column {name} of type {self.column_types[name]} cannot partition scopes "
                "(compare it to a claim only if it is a number, text, boolean, date, "
                "timestamp or uuid column)",
                atom,
            )

        def values(claims: Claims) -> list[Any]:
            out: list[Any] = []
            for fn in fns:
                try:
                    value = fn(EMPTY, claims)
                except EvaluationError:
                    continue
                if array:
                    out.extend(value or ())
                elif value is not None:
                    out.append(value)
            return out

        return _Partition(name, kind, values)

    def branch(self, index: int, literals: list[_Literal]) -> _Branch:
        row_tests: list[Callable[[Row], bool]] = []
        claim_tests: list[Callable[[Claims], bool]] = []
        partitions: list[_Partition] = []
        for literal in literals:
            part = self.partition(literal)
            if part is not None:
                partitions.append(part)
                continue
            columns, params = refs(literal.node)
            if columns and params:
                raise _mix_error(self.expr, literal.node)
            (row_tests if columns else claim_tests).append(self.test(literal))
        return _Branch(
            f"{index}:", tuple(row_tests), tuple(claim_tests), tuple(partitions), tuple(literals)
        )


def _check_columns(expr: Expression, column_types: Mapping[str, str]) -> None:
    for node in walk(expr.node):
        if isinstance(node, ast.ColumnRef) and column_name(node) not in column_types:
            raise expr.error(f"unknown column {column_name(node)}", node)
        if is_volatile(node):
            raise expr.error(
                f"{function_name(node)}() cannot be used in a read rule: scopes are computed "
                "when rows change",
                node,
            )


def _no_values(claims: Claims) -> list[Any]:
    return []


def refs_params(node: Any) -> set[int]:
    """Claim parameter numbers anywhere under `node`, sub-selects included."""
    out: set[int] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, ast.ParamRef) and n.number:
            out.add(int(n.number))
        for name in getattr(type(n), "__slots__", ()):
            value = getattr(n, name, None)
            for item in value if isinstance(value, tuple | list) else (value,):
                if isinstance(item, ast.Node):
                    stack.append(item)
    return out


def compile_read_rule(
    expr: Expression, column_types: Mapping[str, str], tables: TableTypes | None = None
) -> ReadRule:
    """Compile a read rule into scopes (see the module docstring).

    `column_types` maps each column of the table to its type as format_type() prints it;
    `tables` gives the same of a table a sub-select names (no sub-select without it).
    Raises `ExpressionError` (located) for unknown columns, now(), a column compared to a
    claim other than by =/IN/= ANY, partitions on unsupported types, or too many branches.
    """
    _check_columns(expr, column_types)
    rules = _RuleCompiler(expr, column_types, tables)
    formula = _nnf(expr.node, False, rules.constant)
    branches = tuple(rules.branch(i, lits) for i, lits in enumerate(_dnf(formula, expr)))
    return ReadRule(expression=expr, columns=expr.columns, branches=branches)
