"""The client's `where=`: bound, parsed and checked as a rule, evaluated on each row.

`parse_where` binds `params[n]` as string literals (unknown-typed, as Electric binds them)
and parses the text with the rule parser, whose allow-list refuses sub-selects, unknown
functions, ...: a `where` can only narrow the caller's read rule. `where_matcher` compiles
it with the rules' evaluator over the row's JSON, typed back (numeric, dates, timestamps,
uuid) where JSON holds them as strings.

A `where` is bounded: at most `MAX_WHERE_LENGTH` characters once its params are bound and
`MAX_WHERE_NODES` nodes (else `400 expression_too_large`); its values are bounded as
PostgreSQL bounds them and LIKE runs in linear time (`sidecar.rules`), so one row costs at
most a few milliseconds; a page is filtered off the event loop (`handlers.py`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Mapping
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from uuid import UUID

from aiohttp import web
from pglast.parser import ParseError, scan

from adapters.electric.values import column_info
from sidecar.collection import Collection
from sidecar.config import expressions
from sidecar.config.expressions import Expression, ExpressionError, parse_expression
from sidecar.errors import ExpressionTooLarge, InvalidRequest
from sidecar.pgtypes import parse_type_name
from sidecar.rules.evaluator import EvaluationError, compile_evaluator

__all__ = ["MAX_WHERE_LENGTH", "MAX_WHERE_NODES", "parse_where", "where_matcher", "where_params"]

MAX_WHERE_LENGTH = 4096  # characters, with params bound
MAX_WHERE_NODES = 500  # nodes of the parsed expression


def where_params(request: web.Request) -> dict[str, str]:
    """`params[1]=x&params[2]=y` (how the client sends them) → {'1': 'x', '2': 'y'}."""
    out = {}
    for name, value in request.query.items():
        m = re.fullmatch(r"params\[(\d+)\]", name)
        if m:
            out[str(int(m.group(1)))] = value
    return out


def parse_where(raw: str | None, params: Mapping[str, str], route: Collection) -> Expression | None:
    """The client's filter, parsed and checked by the rule parser (its allow-list refuses
    sub-selects, unknown functions, ...): it can only narrow the caller's read rule."""
    if not raw:
        return None
    if len(raw) > MAX_WHERE_LENGTH:
        raise ExpressionTooLarge(
            f"where is longer than {MAX_WHERE_LENGTH} characters", parameter="where"
        )
    try:
        expr = parse_expression(
            _bind_params(raw, params), max_length=MAX_WHERE_LENGTH, max_nodes=MAX_WHERE_NODES
        )
    except expressions.ExpressionTooLarge as exc:
        raise ExpressionTooLarge(
            f"where is refused: {exc.message}", parameter="where", token=exc.token
        ) from None
    except ExpressionError as exc:
        raise InvalidRequest(
            f"where is refused: {exc.message}", parameter="where", token=exc.token
        ) from None
    if expr.subqueries:  # allowed in read rules (membership), not in a client's filter
        raise InvalidRequest(
            "where is refused: sub-selects (IN (SELECT …)) are not allowed in a shape's where",
            parameter="where",
        )
    unknown = sorted(expr.columns - set(route.exposed))
    if unknown:
        raise InvalidRequest(
            f"where uses unknown column(s): {', '.join(unknown)}", parameter="where"
        )
    return expr


def _bind_params(text: str, params: Mapping[str, str]) -> str:
    """Replace each `$n` token by `params[n]` as a string literal (unknown-typed, as
    Electric binds them); the result is parsed and checked like any other expression."""
    try:
        tokens = [t for t in scan(text) if t.name == "PARAM"]
    except ParseError:
        return text  # the parser reports it, located
    for tok in reversed(tokens):
        number = text[tok.start + 1 : tok.end + 1]
        if number not in params:
            raise InvalidRequest(
                f"where uses ${number} but params[{number}] is missing", parameter="params"
            )
        literal = "'" + params[number].replace("'", "''") + "'"
        text = text[: tok.start] + literal + text[tok.end + 1 :]
    return text


def where_matcher(
    where: Expression, route: Collection, claims: Mapping[str, Any]
) -> Callable[[Mapping[str, Any]], bool]:
    """Whether a row (the core's JSON) is admitted by `where` for a caller's claims."""
    types = {c: column_info(route, c).type_name for c in route.exposed}
    fn = compile_evaluator(where, types)
    loaders = {c: f for c in where.columns if (f := _typed_loader(types[c])) is not None}

    def matches(row: Mapping[str, Any]) -> bool:
        try:
            return fn(_typed_row(row, loaders), claims) is True
        except EvaluationError as exc:
            raise InvalidRequest(f"where failed on a row: {exc}", parameter="where") from None

    return matches


_TYPED_LOADERS: dict[str, Callable[[str], Any]] = {
    "numeric": Decimal,
    "real": float,
    "double precision": float,
    "date": date.fromisoformat,
    "timestamp without time zone": datetime.fromisoformat,
    "timestamp with time zone": datetime.fromisoformat,
    "uuid": UUID,
}


def _typed_loader(type_name: str) -> Callable[[str], Any] | None:
    parsed = parse_type_name(type_name)
    if parsed.dims:
        return None
    return _TYPED_LOADERS.get(parsed.base)


def _typed_row(
    row: Mapping[str, Any], loaders: Mapping[str, Callable[[str], Any]]
) -> dict[str, Any]:
    """The row as psycopg would load it, for the columns whose JSON form is a string of
    another type (numeric, dates, timestamps, uuid); what does not parse stays text."""
    typed = dict(row)
    for name, load in loaders.items():
        value = typed.get(name)
        if isinstance(value, str):
            with contextlib.suppress(ValueError, InvalidOperation):
                typed[name] = load(value)
    return typed
