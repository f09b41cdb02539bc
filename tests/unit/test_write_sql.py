"""The write path's SQL: rule expressions with their claims bound as parameters."""

from __future__ import annotations

from sidecar.config.expressions import parse_expression
from sidecar.write_sql import bind_claims


def test_bind_claims() -> None:
    expr = parse_expression("owner_id = :sub OR group_id = ANY(:groups) OR :role = 'admin'")
    sql, values = bind_claims(expr, {"sub": "7", "groups": 3})
    assert sql == "owner_id = $1 OR group_id = ANY($2) OR $3 = 'admin'"
    assert values == ("7", [3], None)
