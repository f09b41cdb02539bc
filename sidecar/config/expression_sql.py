"""A checked rule expression as SQL text with `$n` placeholders (pglast's deparser).

Claim values are never spliced in: each claim is a placeholder, numbered from
`first_param` so several expressions can share one statement (`write_sql.bind_claims`
binds them).
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from pglast import ast
from pglast.stream import RawStream

from sidecar.config.expressions import Expression

__all__ = ["render_sql"]


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
            node.number = (node.number or 0) + offset
        for name in node:
            _shift_params(getattr(node, name), offset)
    elif isinstance(node, (list, tuple)):
        for item in node:
            _shift_params(item, offset)
