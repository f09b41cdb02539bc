"""SQL statements of the write path, with every value and claim bound as a parameter.

Statements use `$n` placeholders (run with psycopg's raw cursor) so that rule
expressions, rendered by pglast with their own `$n` claim parameters, share one numbering.
Identifiers are quoted by psycopg; type names come from the catalog (`format_type`).
`bind_claims` renders a rule with its claims as parameters (the write side's rules).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from pglast import ast, enums
from psycopg import sql
from psycopg.types.json import Jsonb

from sidecar.collection import Collection
from sidecar.config.expression_sql import render_sql
from sidecar.config.expressions import Expression
from sidecar.rules.nodes import walk
from sidecar.walmessage import PREFIX, MutationMessage

_PREFIX = sql.Literal(PREFIX).as_string(None)  # 'sidecar'


def ident(name: str) -> str:
    return sql.Identifier(name).as_string(None)


def table_name(route: Collection) -> str:
    return sql.Identifier(route.table.ref.schema, route.table.ref.name).as_string(None)


def bind_claims(
    expr: Expression, claims: Mapping[str, Any], first_param: int = 1
) -> tuple[str, tuple[Any, ...]]:
    """SQL text of `expr` (`$n` placeholders from `first_param`) and the claim values to
    bind, in order.

    A missing claim is NULL; a scalar claim used only as `= ANY(:claim)` is wrapped in a
    list, as the evaluator does.
    """
    sql_text, names = render_sql(expr, first_param)
    arrays = _array_only_params(expr)
    values = []
    for number, name in enumerate(names, start=1):
        value = claims.get(name)
        if number in arrays and value is not None and not isinstance(value, list):
            value = [value]
        values.append(value)
    return sql_text, tuple(values)


@functools.lru_cache(maxsize=1024)
def _array_only_params(expr: Expression) -> frozenset[int]:
    """Parameter numbers that only ever appear as `= ANY($n)` (sub-selects included)."""
    nodes = list(walk(expr.node, into_subqueries=True))
    in_any = {
        id(node.rexpr)
        for node in nodes
        if isinstance(node, ast.A_Expr)
        and node.kind == enums.A_Expr_Kind.AEXPR_OP_ANY
        and isinstance(node.rexpr, ast.ParamRef)
    }
    params = [n for n in nodes if isinstance(n, ast.ParamRef) and n.number is not None]
    arrays = {int(n.number or 0) for n in params if id(n) in in_any}
    elsewhere = {int(n.number or 0) for n in params if id(n) not in in_any}
    return frozenset(arrays - elsewhere)


class Statement:
    """SQL text assembled in parts, and its parameters in `$n` order."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.params: list[Any] = []

    def add(self, *text: str) -> Statement:
        self.parts.extend(text)
        return self

    def value(self, value: Any, type_name: str | None = None) -> str:
        """A placeholder for `value` (cast to the column type when given)."""
        if type_name in ("json", "jsonb") or (type_name is None and isinstance(value, dict | list)):
            value = None if value is None else Jsonb(value)
        self.params.append(value)
        placeholder = f"${len(self.params)}"
        return f"{placeholder}::{type_name}" if type_name else placeholder

    def rule(self, expr: Expression | None, claims: Mapping[str, Any]) -> str:
        """`(<expr>) IS TRUE` with its claims bound; TRUE when there is no rule."""
        if expr is None:
            return "TRUE"
        text, values = bind_claims(expr, claims, len(self.params) + 1)
        self.params.extend(values)
        return f"(({text}) IS TRUE)"

    def scope(self, route: Collection, claims: Mapping[str, Any]) -> str:
        """Whether the caller may write the row: the read rule and `write.where` (when
        set) both TRUE for its claims."""
        read = self.rule(route.config.read, claims)
        where = route.config.write.where
        return read if where is None else f"({read} AND {self.rule(where, claims)})"

    @property
    def text(self) -> str:
        return "".join(self.parts)


def column_type(route: Collection, column: str) -> str:
    info = route.table.column(column)
    assert info is not None, column
    return info.type_name


def _select_list(route: Collection) -> str:
    return ", ".join(ident(c) for c in route.needed)


def lock_rows(
    route: Collection, keys: Sequence[Mapping[str, Any]], claims: Mapping[str, Any]
) -> Statement:
    """SELECT … FOR UPDATE of the rows with these keys, tagged with their position in
    `keys`, whether the caller may read each (read rule) and write it (read rule and
    `write.where`)."""
    st = Statement()
    key_cols = route.key
    rows = []
    for i, key in enumerate(keys):
        vals = [st.value(i, "integer")] + [
            st.value(key.get(c), column_type(route, c)) for c in key_cols
        ]
        rows.append("(" + ", ".join(vals) + ")")
    cols = ", ".join(["i", *(f"k{n}" for n in range(len(key_cols)))])
    on = " AND ".join(f"t.{ident(c)} = v.k{n}" for n, c in enumerate(key_cols))
    select = ", ".join(f"t.{ident(c)}" for c in route.needed)
    readable = st.rule(route.config.read, claims)
    where = route.config.write.where
    writable = readable if where is None else f"({readable} AND {st.rule(where, claims)})"
    st.add(
        f"SELECT v.i, {readable} AS sidecar_read, {writable} AS sidecar_write, {select} ",
        f"FROM {table_name(route)} AS t ",
        f"JOIN (VALUES {', '.join(rows)}) AS v({cols}) ON {on} ",
        "ORDER BY " + ", ".join(f"t.{ident(c)}" for c in key_cols),
        " FOR UPDATE OF t",
    )
    return st


def _returning(st: Statement, route: Collection, claims: Mapping[str, Any]) -> str:
    read = st.scope(route, claims)
    check = st.rule(route.config.write.check, claims)
    return f" RETURNING {read} AS sidecar_read, {check} AS sidecar_check, {_select_list(route)}"


def insert(route: Collection, data: Mapping[str, Any], claims: Mapping[str, Any]) -> Statement:
    st = Statement()
    cols = list(data)
    if cols:
        values = ", ".join(st.value(data[c], column_type(route, c)) for c in cols)
        st.add(
            f"INSERT INTO {table_name(route)} ({', '.join(ident(c) for c in cols)}) ",
            f"VALUES ({values})",
        )
    else:
        st.add(f"INSERT INTO {table_name(route)} DEFAULT VALUES")
    st.add(_returning(st, route, claims))
    return st


def _where_key(st: Statement, route: Collection, key: Mapping[str, Any]) -> str:
    return " AND ".join(
        f"{ident(c)} = {st.value(key[c], column_type(route, c))}" for c in route.key
    )


def update(
    route: Collection, key: Mapping[str, Any], data: Mapping[str, Any], claims: Mapping[str, Any]
) -> Statement:
    st = Statement()
    sets = ", ".join(f"{ident(c)} = {st.value(v, column_type(route, c))}" for c, v in data.items())
    if not sets:  # nothing to change: still lock-step through the rules
        first = route.key[0]
        sets = f"{ident(first)} = {ident(first)}"
    st.add(f"UPDATE {table_name(route)} SET {sets} WHERE {_where_key(st, route, key)}")
    st.add(_returning(st, route, claims))
    return st


def delete(route: Collection, key: Mapping[str, Any]) -> Statement:
    st = Statement()
    st.add(f"DELETE FROM {table_name(route)} WHERE {_where_key(st, route, key)}")
    return st


def emit_messages(messages: Sequence[MutationMessage]) -> Statement:
    """One transactional WAL message per mutation, prefix `sidecar`, in one statement."""
    st = Statement()
    # One JSON array parameter: psycopg escapes no element (a text[] costs a regex pass
    # per element), and `json` keeps each payload's text as it was.
    payloads = b",".join(m.encode() for m in messages)
    arr = st.value((b"[" + payloads + b"]").decode(), "text")
    st.add(
        f"SELECT count(pg_logical_emit_message(true, {_PREFIX}, m::text)), "
        f"pg_current_xact_id()::xid::text FROM json_array_elements({arr}::json) AS m"
    )
    return st


def update_many(
    route: Collection,
    items: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
    columns: Sequence[str],
    claims: Mapping[str, Any],
) -> Statement:
    """One UPDATE for many rows that change the same columns; RETURNING tags each row
    with its position in `items`, then the write scope and check verdicts and the new row."""
    st = Statement()
    rows = []
    for i, (key, data) in enumerate(items):
        vals = [st.value(i, "integer")]
        vals += [st.value(key[c], column_type(route, c)) for c in route.key]
        vals += [st.value(data[c], column_type(route, c)) for c in columns]
        rows.append("(" + ", ".join(vals) + ")")
    names = ["sidecar_i"]
    names += [f"sidecar_k{n}" for n in range(len(route.key))]
    names += [f"sidecar_d{n}" for n in range(len(columns))]
    sets = ", ".join(f"{ident(c)} = v.sidecar_d{n}" for n, c in enumerate(columns))
    where = " AND ".join(f"t.{ident(c)} = v.sidecar_k{n}" for n, c in enumerate(route.key))
    read = st.scope(route, claims)
    check = st.rule(route.config.write.check, claims)
    select = ", ".join(f"t.{ident(c)}" for c in route.needed)
    st.add(
        f"UPDATE {table_name(route)} AS t SET {sets} ",
        f"FROM (VALUES {', '.join(rows)}) AS v({', '.join(names)}) WHERE {where} ",
        f"RETURNING v.sidecar_i, {read}, {check}, {select}",
    )
    return st
