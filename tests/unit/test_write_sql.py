"""The write path's SQL (`sidecar.write_sql`): every value and claim is a bound `$n`
parameter, never text of the statement; identifiers are quoted; rules are bound with
their claims."""

from __future__ import annotations

import re
from typing import Any

import pytest
from psycopg.postgres import types as pg_types
from psycopg.types.json import Jsonb

from sidecar.catalog import ColumnInfo, TableInfo
from sidecar.collection import Collection
from sidecar.config.expressions import parse_expression
from sidecar.config.loader import load_config_text
from sidecar.config.model import TableRef
from sidecar.walmessage import MutationMessage
from sidecar.write_sql import (
    Statement,
    bind_claims,
    delete,
    emit_messages,
    insert,
    lock_rows,
    update,
    update_many,
)

HOSTILE = "'); DROP TABLE items; --"
CLAIMS = {"sub": HOSTILE, "team": "t1"}


def test_bind_claims() -> None:
    expr = parse_expression("owner_id = :sub OR group_id = ANY(:groups) OR :role = 'admin'")
    sql, values = bind_claims(expr, {"sub": "7", "groups": 3})
    assert sql == "owner_id = $1 OR group_id = ANY($2) OR $3 = 'admin'"
    assert values == ("7", [3], None)


def test_bind_claims_numbers_from_the_first_parameter_given() -> None:
    sql, values = bind_claims(parse_expression("owner = :sub AND team = :team"), CLAIMS, 4)
    assert sql == "owner = $4 AND team = $5" and values == (HOSTILE, "t1")


def test_bind_claims_wraps_a_scalar_used_as_any_inside_a_sub_select() -> None:
    expr = parse_expression(
        "project_id IN (SELECT project_id FROM members WHERE user_id = ANY(:groups)) "
        "OR owner = :sub"
    )
    sql, values = bind_claims(expr, {"sub": "7", "groups": "g1"})
    assert "user_id = ANY($1)" in sql and "owner = $2" in sql
    assert values == (["g1"], "7")
    # used elsewhere too (here as a scalar): left as it is, as the evaluator would
    both = parse_expression(
        "project_id IN (SELECT project_id FROM members WHERE user_id = ANY(:g)) OR owner = :g"
    )
    assert bind_claims(both, {"g": "g1"})[1] == ("g1",)


def _route(*, check: str | None = None) -> Collection:
    write = "{ops: [insert, update, delete]" + (f', check: "{check}"' if check else "") + "}"
    config = load_config_text(
        f"""
database: {{url: "postgresql://h/d"}}
auth: {{jwt: {{secret: "0123456789abcdef0123456789abcdef"}}}}
collections:
  items:
    table: app.items
    read: "owner = :sub"
    write: {write}
""",
        file="t.yaml",
        env={},
    )
    columns = (
        ColumnInfo("id", pg_types["int4"].oid, "integer", False),
        ColumnInfo("owner", pg_types["text"].oid, "text", False),
        ColumnInfo('odd "name"', pg_types["text"].oid, "text", True),
        ColumnInfo("doc", pg_types["jsonb"].oid, "jsonb", True),
    )
    table = TableInfo(TableRef("app", "items"), 1, columns, ("id",), "d", ("id",), ())
    return Collection(config.collections["items"], table)


def _bound(st: Statement) -> str:
    """The statement's text, after checking that its placeholders are exactly $1..$n for
    its n parameters and that no string parameter is spliced into the text."""
    numbers = {int(n) for n in re.findall(r"\$(\d+)", st.text)}
    assert numbers == set(range(1, len(st.params) + 1)), (st.text, st.params)
    for value in st.params:
        if isinstance(value, str) and len(value) > 3:
            assert value not in st.text, value
    return st.text


def test_insert_binds_every_value_and_quotes_every_name() -> None:
    data = {"id": 1, "owner": HOSTILE, 'odd "name"': "x y z", "doc": {"a": [1]}}
    st = insert(_route(), data, CLAIMS)
    text = _bound(st)
    assert text.startswith(
        'INSERT INTO "app"."items" ("id", "owner", "odd ""name""", "doc") '
        "VALUES ($1::integer, $2::text, $3::text, $4::jsonb)"
    )
    assert " RETURNING ((owner = $5) IS TRUE) AS sidecar_read, TRUE AS sidecar_check, " in text
    assert st.params[:3] == [1, HOSTILE, "x y z"] and st.params[4] == HOSTILE
    assert isinstance(st.params[3], Jsonb) and st.params[3].obj == {"a": [1]}


def test_insert_of_nothing_uses_the_defaults() -> None:
    text = _bound(insert(_route(), {}, CLAIMS))
    assert text.startswith('INSERT INTO "app"."items" DEFAULT VALUES RETURNING ')


def test_update_binds_values_key_and_both_rules() -> None:
    st = update(_route(check="length(owner) > :min"), {"id": 1}, {"owner": HOSTILE}, CLAIMS)
    text = _bound(st)
    assert text.startswith('UPDATE "app"."items" SET "owner" = $1::text WHERE "id" = $2::integer')
    assert "((owner = $3) IS TRUE) AS sidecar_read" in text
    assert "((length(owner) > $4) IS TRUE) AS sidecar_check" in text
    assert st.params == [HOSTILE, 1, HOSTILE, None]  # a missing claim is NULL


def test_an_update_of_no_column_still_runs_the_rules() -> None:
    text = _bound(update(_route(), {"id": 1}, {}, CLAIMS))
    assert text.startswith('UPDATE "app"."items" SET "id" = "id" WHERE "id" = $1::integer')


def test_delete_binds_the_key() -> None:
    st = delete(_route(), {"id": HOSTILE})
    assert _bound(st) == 'DELETE FROM "app"."items" WHERE "id" = $1::integer'
    assert st.params == [HOSTILE]


def test_lock_rows_tags_each_key_with_its_position() -> None:
    st = lock_rows(_route(), [{"id": 5}, {"id": 3}], CLAIMS)
    text = _bound(st)
    read = "((owner = $5) IS TRUE)"
    assert text.startswith(f'SELECT v.i, {read} AS sidecar_read, {read} AS sidecar_write, t."id", ')
    assert "JOIN (VALUES ($1::integer, $2::integer), ($3::integer, $4::integer)) " in text
    assert text.endswith(' ORDER BY t."id" FOR UPDATE OF t')
    assert st.params == [0, 5, 1, 3, HOSTILE]


def test_update_many_binds_every_row() -> None:
    items: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({"id": 1}, {"owner": "a", "doc": None}),
        ({"id": 2}, {"owner": HOSTILE, "doc": {"k": 1}}),
    ]
    st = update_many(_route(), items, ["owner", "doc"], CLAIMS)
    text = _bound(st)
    assert 'SET "owner" = v.sidecar_d0, "doc" = v.sidecar_d1 ' in text
    assert st.params[:4] == [0, 1, "a", None] and st.params[5:7] == [2, HOSTILE]


def test_emit_messages_sends_one_json_array_parameter() -> None:
    message = MutationMessage(
        "m-1", HOSTILE, "device", "items", "update", {"id": 1}, "r1", "2024-01-01T00:00:00Z"
    )
    st = emit_messages([message, message])
    text = _bound(st)
    assert "pg_logical_emit_message(true, 'sidecar', m::text)" in text
    assert "json_array_elements($1::text::json)" in text
    (payload,) = st.params
    assert payload.startswith("[") and payload.count("m-1") == 2


@pytest.mark.parametrize("value", [None, {"a": 1}, [1, 2]])
def test_json_values_are_wrapped_and_null_stays_null(value: Any) -> None:
    st = Statement()
    assert st.value(value, "jsonb") == "$1::jsonb"
    (bound,) = st.params
    if value is None:
        assert bound is None
    else:
        assert isinstance(bound, Jsonb) and bound.obj == value


def test_no_rule_is_true() -> None:
    assert Statement().rule(None, CLAIMS) == "TRUE"
