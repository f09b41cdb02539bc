"""Push bodies as values (`sidecar.mutations`): the shapes `parse_push` accepts, the limits
and refusals that leave everything unapplied, and the per-column value checks."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sidecar.catalog import ColumnInfo
from sidecar.errors import InvalidRequest, PayloadTooLarge, ValidationFailed
from sidecar.mutations import (
    MAX_ID,
    Mutation,
    MutationResult,
    check_value,
    parse_push,
    rejected,
)

COLLECTIONS = {"todos": object(), "projects": object()}


def parse(body: Any, max_push: int = 10) -> tuple[list[Mutation], bool]:
    return parse_push(body, collections=COLLECTIONS, max_push=max_push)


def insert(mid: str = "m1", **fields: Any) -> dict[str, Any]:
    return {"id": mid, "collection": "todos", "op": "insert", "data": {"title": "x"}, **fields}


def update(mid: str = "m2", **fields: Any) -> dict[str, Any]:
    return {
        "id": mid,
        "collection": "todos",
        "op": "update",
        "key": {"id": 1},
        "data": {"done": True},
        "base_rev": "abc",
        **fields,
    }


def refusal(body: Any, max_push: int = 10) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        parse(body, max_push)
    return caught.value


# -- shapes -------------------------------------------------------------------------------


def test_every_op_in_one_body_keeps_its_order() -> None:
    delete = {"id": "m3", "collection": "projects", "op": "delete", "key": {"id": 9}}
    delete["base_rev"] = "r9"
    mutations, atomic = parse({"mutations": [insert(), update(), delete]})
    assert atomic is False
    assert [(m.id, m.collection, m.op) for m in mutations] == [
        ("m1", "todos", "insert"),
        ("m2", "todos", "update"),
        ("m3", "projects", "delete"),
    ]
    first, second, third = mutations
    assert dict(first.data) == {"title": "x"} and dict(first.key) == {}
    assert first.base_rev is None and first.base is None and first.client_time is None
    assert dict(second.key) == {"id": 1} and second.base_rev == "abc"
    assert dict(third.data) == {} and third.base_rev == "r9"


def test_optional_fields_and_the_atomic_flag() -> None:
    body = {
        "mutations": [update(base={"done": False}, client_time="2024-01-01T00:00:00Z")],
        "atomic": True,
    }
    (mutation,), atomic = parse(body)
    assert atomic is True
    assert mutation.base is not None and dict(mutation.base) == {"done": False}
    assert mutation.client_time == "2024-01-01T00:00:00Z"


def test_parsed_values_are_read_only() -> None:
    (mutation,), _ = parse({"mutations": [insert()]})
    with pytest.raises(TypeError):
        mutation.data["title"] = "changed"  # type: ignore[index]


def test_an_id_of_the_longest_length_is_accepted() -> None:
    (mutation,), _ = parse({"mutations": [insert("x" * MAX_ID)]})
    assert len(mutation.id) == MAX_ID


# -- whole-request refusals: nothing is applied -------------------------------------------


@pytest.mark.parametrize("body", [None, [], "mutations", 1])
def test_the_body_must_be_an_object(body: Any) -> None:
    assert "must be a JSON object" in refusal(body).detail


def test_unknown_fields_of_the_body_and_of_a_mutation_are_ignored() -> None:
    """Forward compatibility: a newer client's extra fields do not break the push."""
    (mutation,), atomic = parse(
        {"mutations": [{**insert("m"), "priority": 3}], "zeta": 1, "alpha": {"x": 2}}
    )
    assert (mutation.id, atomic) == ("m", False)


@pytest.mark.parametrize("mutations", [None, [], {}, "m1"])
def test_mutations_must_be_a_non_empty_list(mutations: Any) -> None:
    body = {} if mutations is None else {"mutations": mutations}
    assert refusal(body).extra == {"pointer": "/mutations"}


def test_too_many_mutations_is_413() -> None:
    with pytest.raises(PayloadTooLarge, match=r"3 mutations in one push; the limit is 2"):
        parse({"mutations": [insert("a"), insert("b"), insert("c")]}, max_push=2)
    assert len(parse({"mutations": [insert("a"), insert("b")]}, max_push=2)[0]) == 2


@pytest.mark.parametrize("atomic", [1, "true", None])
def test_atomic_must_be_a_boolean(atomic: Any) -> None:
    assert refusal({"mutations": [insert()], "atomic": atomic}).extra == {"pointer": "/atomic"}


def test_a_repeated_id_is_refused_where_it_repeats() -> None:
    found = refusal({"mutations": [insert("same"), update("other"), insert("same")]})
    assert found.extra == {"pointer": "/mutations/2/id"} and "'same' appears twice" in found.detail


@pytest.mark.parametrize(
    ("mutation", "pointer"),
    [
        ("not an object", "/mutations/0"),
        ({**insert(), "id": ""}, "/mutations/0/id"),
        ({**insert(), "id": 7}, "/mutations/0/id"),
        ({**insert(), "id": "x" * (MAX_ID + 1)}, "/mutations/0/id"),
        ({**insert(), "id": "a\x00b"}, "/mutations/0/id"),
        ({k: v for k, v in insert().items() if k != "id"}, "/mutations/0/id"),
        ({**insert(), "collection": "nope"}, "/mutations/0/collection"),
        ({**insert(), "collection": ["todos"]}, "/mutations/0/collection"),
        ({**insert(), "op": "upsert"}, "/mutations/0/op"),
        ({**insert(), "key": [1]}, "/mutations/0/key"),
        ({**insert(), "data": "x"}, "/mutations/0/data"),
        ({**insert(), "base_rev": 5}, "/mutations/0/base_rev"),
        ({**update(), "base_rev": None}, "/mutations/0/base_rev"),
        ({k: v for k, v in update().items() if k != "base_rev"}, "/mutations/0/base_rev"),
        ({**update(), "key": {}}, "/mutations/0/key"),
        ({**insert(), "base": [1]}, "/mutations/0/base"),
        ({**insert(), "client_time": 1700000000}, "/mutations/0/client_time"),
    ],
)
def test_a_malformed_mutation_refuses_the_request(mutation: Any, pointer: str) -> None:
    assert refusal({"mutations": [mutation]}).extra == {"pointer": pointer}


def test_a_refusal_names_the_known_collections() -> None:
    found = refusal({"mutations": [{**insert(), "collection": "nope"}]})
    assert "unknown collection 'nope'; known: todos, projects" in found.detail


def test_a_delete_needs_a_key_and_a_base_rev() -> None:
    delete = {"id": "d", "collection": "todos", "op": "delete", "key": {"id": 1}}
    assert "needs `base_rev`" in refusal({"mutations": [delete]}).detail
    delete["base_rev"] = "r"
    del delete["key"]
    assert "needs `key`" in refusal({"mutations": [delete]}).detail


# -- results ------------------------------------------------------------------------------


def test_result_json_leaves_out_what_is_not_set() -> None:
    assert MutationResult("m", "duplicate").as_json() == {"id": "m", "status": "duplicate"}
    applied = MutationResult("m", "applied", rev="r1", row={"id": 1})
    assert applied.as_json() == {"id": "m", "status": "applied", "rev": "r1", "row": {"id": 1}}


def test_rejected_carries_the_problem() -> None:
    result = rejected("m", ValidationFailed("no", column="title"))
    assert result.status == "rejected" and result.error is not None
    assert result.as_json()["error"]["code"] == "validation_failed"
    assert result.as_json()["error"]["column"] == "title"


# -- values against column types ----------------------------------------------------------


def column(type_name: str, nullable: bool = True) -> ColumnInfo:
    return ColumnInfo("c", 0, type_name, nullable)


@pytest.mark.parametrize(
    ("type_name", "value"),
    [
        ("smallint", 32767),
        ("smallint", -32768),
        ("integer", 2**31 - 1),
        ("bigint", -(2**63)),
        ("numeric(10,2)", 1.5),
        ("numeric", "12.50"),
        ("numeric", " -1e3 "),
        ("numeric", "NaN"),
        ("double precision", float("inf")),
        ("real", 3),
        ("boolean", False),
        ("jsonb", {"any": ["thing", 1]}),
        ("json", 5),
        ("text", "hello"),
        ("character varying(10)", "hi"),
        ("uuid", "123e4567-e89b-12d3-a456-426614174000"),
        ("date", "2024-02-29"),
        ("date", "-infinity"),
        ("timestamp with time zone", "2024-01-01T10:00:00Z"),
        ("timestamp without time zone", "infinity"),
        ("bytea", "\\x00ff"),
        ("integer[]", [1, None, 3]),
        ("text[][]", [["a"], ["b"]]),
        ("integer", None),
    ],
)
def test_values_of_the_right_type_pass(type_name: str, value: Any) -> None:
    check_value(column(type_name), value)


@pytest.mark.parametrize(
    ("type_name", "value", "fragment"),
    [
        ("smallint", 32768, "integer out of range"),
        ("bigint", 2**63, "integer out of range"),
        ("integer", True, "expects an integer"),
        ("integer", 1.0, "expects an integer"),
        ("integer", "1", "expects an integer"),
        ("numeric", float("nan"), "expects a finite number"),
        ("numeric", "1,5", "expects a number"),
        ("real", True, "expects a number"),
        ("boolean", 1, "expects true or false"),
        ("text", 5, "expects a string"),
        ("text", "a\x00b", "NUL"),
        ("jsonb", {"k": "a\x00"}, "NUL"),
        ("uuid", "not-a-uuid", "is not a valid uuid"),
        ("date", "2023-02-29", "is not a valid date"),
        ("timestamp with time zone", "yesterday", "is not a valid timestamp"),
        ("bytea", "00ff", "expects PostgreSQL hex text"),
        ("bytea", "\\xzz", "is not a valid bytea"),
        ("integer[]", 1, "expects a JSON array"),
        ("integer[]", [1, "2"], "array element: expects an integer"),
    ],
)
def test_values_of_the_wrong_type_are_refused_with_the_column(
    type_name: str, value: Any, fragment: str
) -> None:
    with pytest.raises(ValidationFailed, match=fragment) as caught:
        check_value(column(type_name), value)
    assert caught.value.extra == {"column": "c"}
    assert caught.value.detail.startswith(f"column c ({type_name}): ")


def test_null_only_where_the_column_allows_it() -> None:
    check_value(column("text", nullable=True), None)
    with pytest.raises(ValidationFailed, match="column c cannot be null"):
        check_value(column("text", nullable=False), None)


def test_a_result_row_kept_as_json_is_answered_as_its_text_and_read_only_if_looked_into():
    from sidecar.mutations import MutationResult
    from sidecar.values import JsonRow

    raw = b'{"id":1,"big":123456789012345678901234567890,"f":0.1000000000000000055511}'
    row = JsonRow(raw)
    result = MutationResult("m", "applied", rev="r", row=row)
    assert orjson.dumps(result.as_json()["row"]) == raw  # exactly the stored text
    assert row._value is None  # answered without being read
    assert row["id"] == 1 and len(row) == 3 and row.get("nope") is None
    assert row == {"id": 1, "big": row["big"], "f": row["f"]}  # a Mapping like any other
    assert orjson.dumps(row["big"]) == b"123456789012345678901234567890"  # exact
