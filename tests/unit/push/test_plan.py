"""Push decisions without PostgreSQL (`sidecar.push.plan`): each mutation against the row
its batch locked — refused, a conflict, nothing to do, or a write — and a write's verdict
from the row its statement returned. Routes are built from a config and a table made
here."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from psycopg.postgres import types as pgt

from sidecar.auth import Principal
from sidecar.catalog import ColumnInfo, TableInfo
from sidecar.collection import Collection
from sidecar.config.loader import load_config_text
from sidecar.config.model import TableRef
from sidecar.errors import Conflict, Forbidden, ValidationFailed
from sidecar.mutations import Mutation, MutationResult
from sidecar.permissions import Permissions
from sidecar.push.plan import (
    Current,
    Write,
    aborted,
    check_key,
    claim_value,
    key_ok,
    plan,
    plan_safely,
    verdict,
    with_body_pointers,
)

CONFIG = """
database: {{url: "postgresql://h/d"}}
auth: {{jwt: {{secret: "0123456789abcdef0123456789abcdef"}}}}
collections:
  todos:
    table: todos
    columns: [id, title, done, owner_id, code]
    read: "owner_id = :sub"
    write:
      ops: [{ops}]
      set: {{owner_id: ":sub"}}
      immutable: [code]
    conflict: {conflict}
"""

TABLE = TableInfo(
    TableRef("public", "todos"),
    1,
    (
        ColumnInfo("id", pgt["int4"].oid, "integer", False),
        ColumnInfo("title", pgt["text"].oid, "text", True),
        ColumnInfo("done", pgt["bool"].oid, "boolean", True),
        ColumnInfo("owner_id", pgt["text"].oid, "text", True),
        ColumnInfo("code", pgt["text"].oid, "text", True),
    ),
    ("id",),
    "d",
    ("id",),
    (),
)

ME = Principal("u1", "d1", {"sub": "u1"})


def route(conflict: str = "reject", ops: str = "insert, update, delete") -> Collection:
    config = load_config_text(CONFIG.format(conflict=conflict, ops=ops), env={})
    return Collection(config.collections["todos"], TABLE)


def permissions() -> Permissions:
    return Permissions(load_config_text(CONFIG.format(conflict="reject", ops="update")).auth)


def row(**changes: Any) -> Current:
    """The locked row 1 of u1 (readable and writable unless told), its rev as the read
    path makes it."""
    readable = changes.pop("readable", True)
    writable = changes.pop("writable", readable)
    values = {"id": 1, "title": "a", "done": False, "owner_id": "u1", "code": "c1", **changes}
    image = route().image_of_values(values)
    return Current(values, orjson.loads(image.row), image.rev, readable, writable)


CURRENT = row()


def mutation(op: str = "update", **fields: Any) -> Mutation:
    fields.setdefault("key", {"id": 1})
    fields.setdefault("data", {})
    if op != "insert":
        fields.setdefault("base_rev", CURRENT.rev)
    return Mutation("m1", "todos", op, **fields)  # type: ignore[arg-type]


def decide(m: Mutation, current: Current | None, r: Collection | None = None) -> Any:
    return plan(r or route(), None, ME, m, current)


def refusal(m: Mutation, current: Current | None, r: Collection | None = None) -> MutationResult:
    result = plan_safely(r or route(), permissions(), ME, m, current)
    assert isinstance(result, MutationResult) and result.status == "rejected"
    return result


# -- refused before the row is looked at ---------------------------------------------------


def test_an_op_the_collection_does_not_allow_is_forbidden() -> None:
    with pytest.raises(Forbidden, match="delete is not allowed"):
        decide(mutation("delete"), CURRENT, route(ops="insert, update"))
    result = plan_safely(route(ops="update"), None, ME, mutation("insert"), None)
    assert isinstance(result, MutationResult)
    assert result.status == "rejected" and result.error and result.error["code"] == "forbidden"


def test_a_token_without_write_permission_is_forbidden() -> None:
    reader = Principal("u1", "d1", {"sub": "u1", "scope": "sync:read"})
    with pytest.raises(Forbidden, match="does not allow writing"):
        plan(route(), permissions(), reader, mutation(), CURRENT)
    writer = Principal("u1", "d1", {"sub": "u1", "scope": "todos:write"})
    assert isinstance(plan(route(), permissions(), writer, mutation(), CURRENT), Write)


@pytest.mark.parametrize(
    ("op", "key"),
    [
        ("update", {"id": 1, "title": "x"}),  # a column that is not a key column
        ("update", {}),  # the key column missing
        ("delete", {"nope": 1}),
        ("insert", {"id": 1, "code": "x"}),
    ],
)
def test_a_key_without_exactly_the_key_columns_is_refused(op: str, key: dict) -> None:
    m = mutation(op, key=key)
    with pytest.raises(ValidationFailed, match="exactly the key columns") as caught:
        check_key(route(), m)
    assert caught.value.extra == {"pointer": "key"}
    assert not key_ok(route(), m)
    assert refusal(m, None).error["pointer"] == "key"  # type: ignore[index]


def test_key_values_are_checked_against_the_column_type() -> None:
    m = mutation(key={"id": "one"})
    assert not key_ok(route(), m)
    with pytest.raises(ValidationFailed, match="expects an integer"):
        decide(m, None)
    assert key_ok(route(), mutation(key={"id": 7}))
    assert key_ok(route(), mutation("insert", key={}))  # an insert may leave out its key


# -- update ---------------------------------------------------------------------------------


def test_an_update_of_a_missing_row_is_a_not_found_conflict() -> None:
    result = decide(mutation(data={"title": "b"}), None)
    assert isinstance(result, MutationResult) and result.status == "conflict"
    assert result.error is not None and result.error["code"] == "not_found"
    assert result.row is None and result.rev is None


def test_a_row_the_caller_cannot_read_is_answered_as_a_missing_one() -> None:
    hidden = row(owner_id="u2", readable=False)
    for op in ("update", "delete"):  # nothing tells whether the key exists elsewhere
        m = mutation(op, data={"title": "b"})
        assert decide(m, hidden) == decide(m, None)
    with pytest.raises(Conflict, match="a row with that key already exists") as caught:
        decide(mutation("insert", data={"title": "b"}), hidden)  # as the unique key would
    assert caught.value.extra == {"pointer": "key"}  # and nothing of the row


def test_an_update_at_base_rev_is_a_write_of_its_data() -> None:
    w = decide(mutation(data={"title": "b", "done": True}), CURRENT)
    assert isinstance(w, Write) and w.returns_row
    assert w.key == {"id": 1} and w.data == {"title": "b", "done": True}
    st = w.build()
    assert st.text.startswith('UPDATE "public"."todos" SET "title" = $1::text')
    assert st.params[:3] == ["b", True, 1]


def test_unknown_and_mistyped_columns_are_refused() -> None:
    with pytest.raises(ValidationFailed, match="cannot be written") as caught:
        decide(mutation(data={"nope": 1, "title": "b"}), CURRENT)
    assert caught.value.extra == {"columns": ["nope"]}
    with pytest.raises(ValidationFailed, match=r"done \(boolean\): expects true or false"):
        decide(mutation(data={"done": "yes"}), CURRENT)


def test_immutable_columns_may_be_sent_but_not_changed() -> None:
    with pytest.raises(ValidationFailed, match="column code is immutable") as caught:
        decide(mutation(data={"code": "c2"}), CURRENT)
    assert caught.value.extra == {"column": "code", "pointer": "data/code"}
    w = decide(mutation(data={"code": "c1", "title": "b"}), CURRENT)
    assert isinstance(w, Write) and w.data == {"code": "c1", "title": "b"}


def test_set_columns_are_kept_by_the_server_on_update() -> None:
    w = decide(mutation(data={"owner_id": "u1", "title": "b"}), CURRENT)
    assert isinstance(w, Write) and w.data == {"title": "b"}  # the stored value: no write
    with pytest.raises(ValidationFailed, match="owner_id is set by the server") as caught:
        decide(mutation(data={"owner_id": "u2", "title": "b"}), CURRENT)  # refused, not dropped
    assert caught.value.extra == {"column": "owner_id", "pointer": "data/owner_id"}


def test_an_update_cannot_change_the_key() -> None:
    with pytest.raises(ValidationFailed, match="key column id differs") as caught:
        decide(mutation(data={"id": 2}), CURRENT)
    assert caught.value.extra == {"column": "id", "pointer": "data/id"}
    assert isinstance(decide(mutation(data={"id": 1}), CURRENT), Write)


def test_a_stale_update_goes_to_the_conflict_strategy() -> None:
    stale = mutation(data={"title": "b"}, base_rev="old")
    result = decide(stale, CURRENT)
    assert isinstance(result, MutationResult) and result.status == "conflict"
    assert (result.rev, result.row) == (CURRENT.rev, CURRENT.row)  # the server's row
    assert result.error is not None and result.error["code"] == "conflict"
    assert result.error["detail"] == "the row changed since base_rev"
    w = decide(stale, CURRENT, route("client_wins"))
    assert isinstance(w, Write) and w.data == {"title": "b"}
    merged = decide(
        mutation(data={"title": "b"}, base_rev="old", base={"title": "a"}), CURRENT, route("merge")
    )
    assert isinstance(merged, Write) and merged.data == {"title": "b"}


# -- delete ---------------------------------------------------------------------------------


def test_deleting_a_missing_row_is_applied_with_nothing_to_do() -> None:
    assert decide(mutation("delete"), None) == MutationResult("m1", "applied")


def test_a_delete_at_base_rev_writes_with_the_rows_key() -> None:
    w = decide(mutation("delete"), CURRENT)
    assert isinstance(w, Write) and not w.returns_row and w.data is None
    assert w.key == {"id": 1}  # JSON, for the WAL record
    st = w.build()
    assert st.text == 'DELETE FROM "public"."todos" WHERE "id" = $1::integer'
    assert st.params == [1]


@pytest.mark.parametrize(
    ("strategy", "status"),
    [
        ("reject", "conflict"),
        ("server_wins", "conflict"),
        ("merge", "conflict"),
        ("{latest_wins: title}", "conflict"),
        ("client_wins", "applied"),
    ],
)
def test_a_stale_delete_goes_through_only_if_the_client_wins(strategy: str, status: str) -> None:
    result = decide(mutation("delete", base_rev="old", base={}), CURRENT, route(strategy))
    if status == "applied":
        assert isinstance(result, Write)
    else:
        assert isinstance(result, MutationResult) and result.status == "conflict"
        assert result.error is not None and result.error["detail"] == (
            "the row changed since base_rev"
        )


# -- insert ---------------------------------------------------------------------------------


def test_an_insert_assigns_set_columns_and_the_key() -> None:
    w = decide(mutation("insert", data={"title": "n", "owner_id": "someone"}), None)
    assert isinstance(w, Write) and w.returns_row and w.key is None and w.data is None
    st = w.build()
    assert st.text.startswith('INSERT INTO "public"."todos" ("title", "owner_id", "id") ')
    assert st.params[:3] == ["n", "u1", 1]  # owner_id from the caller's claim, not the client


def test_an_insert_key_must_agree_with_its_data() -> None:
    with pytest.raises(ValidationFailed, match="key column id differs"):
        decide(mutation("insert", data={"id": 2}), None)
    assert isinstance(decide(mutation("insert", data={"id": 1}), None), Write)


def test_an_insert_over_an_existing_row_is_a_conflict_unless_the_client_wins() -> None:
    m = mutation("insert", data={"title": "n", "owner_id": "u9"})
    result = decide(m, CURRENT)
    assert isinstance(result, MutationResult) and result.status == "conflict"
    assert result.error is not None
    assert result.error["detail"] == "a row with that key already exists"
    assert result.row == CURRENT.row
    with pytest.raises(ValidationFailed, match="owner_id is set by the server"):
        decide(m, CURRENT, route("client_wins"))  # becomes an update, with its checks
    m = mutation("insert", data={"title": "n", "owner_id": "u1"})
    w = decide(m, CURRENT, route("client_wins"))  # set: columns kept
    assert isinstance(w, Write) and w.key == {"id": 1} and w.data == {"title": "n"}


@pytest.mark.parametrize(
    ("data", "column"),
    [({"code": "other"}, "code"), ({"id": 5}, "id"), ({"owner_id": "u9"}, "owner_id")],
)
def test_an_insert_that_client_wins_turns_into_an_update_has_the_update_checks(
    data: dict[str, Any], column: str
) -> None:
    m = mutation("insert", data={"title": "n", **data})
    with pytest.raises(ValidationFailed) as caught:
        decide(m, CURRENT, route("client_wins"))
    assert caught.value.extra == {"column": column, "pointer": f"data/{column}"}


def test_claim_values() -> None:
    claims = {"sub": "u1", "org": 7}
    assert claim_value(":sub", claims) == "u1"
    assert claim_value(":org", claims) == 7
    assert claim_value(":missing", claims) is None
    assert claim_value("mobile", claims) == "mobile" and claim_value(3, claims) == 3


# -- after the write ------------------------------------------------------------------------


def _returned(read: bool, check: bool, **values: Any) -> tuple[Any, ...]:
    full = {"id": 1, "title": "b", "done": False, "owner_id": "u1", "code": "c1", **values}
    return (read, check, *(full[c] for c in route().needed))


def test_verdicts_from_the_returning_row() -> None:
    w = decide(mutation(data={"title": "b"}), CURRENT)
    returned = _returned(True, True)
    result, record = verdict(ME, w, returned)
    image = route().image_of_values(dict(zip(route().needed, returned[2:], strict=True)))
    assert result == MutationResult("m1", "applied", rev=image.rev, row=orjson.loads(image.row))
    assert record is not None and (record.mutation_id, record.subject, record.device) == (
        "m1",
        "u1",
        "d1",
    )
    assert (record.collection, record.op, record.key, record.rev) == (
        "todos",
        "update",
        {"id": 1},
        image.rev,
    )
    outside, none = verdict(ME, w, _returned(False, True))
    assert none is None and outside.status == "rejected"
    assert outside.error is not None and outside.error["code"] == "forbidden"
    refused, none = verdict(ME, w, _returned(True, False))
    assert none is None and refused.status == "rejected"
    assert refused.error is not None and refused.error["code"] == "validation_failed"
    gone, none = verdict(ME, w, None)
    assert none is None and gone.status == "conflict"
    assert gone.error is not None and gone.error["code"] == "not_found"


def test_a_deletes_verdict_needs_no_row() -> None:
    w = decide(mutation("delete"), CURRENT)
    result, record = verdict(ME, w, None)
    assert result == MutationResult("m1", "applied")
    assert record is not None and (record.op, record.key, record.rev) == ("delete", {"id": 1}, None)


def test_an_aborted_atomic_batch() -> None:
    ms = [Mutation(i, "todos", "update", {"id": n}, {}) for n, i in enumerate(("a", "b", "c"))]
    failed = MutationResult("b", "conflict")
    results = {"a": MutationResult("a", "duplicate", rev="r"), "c": MutationResult("c", "applied")}
    out = aborted(ms, failed, results)
    assert out[0] == results["a"] and out[1] is failed
    assert out[2].status == "rejected" and out[2].error is not None
    assert out[2].error["detail"] == (
        "not applied: mutation 'b' of this atomic batch was conflict, so none was applied"
    )


def test_error_pointers_point_into_the_body() -> None:
    results = [
        MutationResult("a", "applied"),
        MutationResult("b", "rejected", error={"code": "x", "pointer": "key"}),
        MutationResult("c", "rejected", error={"code": "x", "pointer": "/already"}),
    ]
    out = with_body_pointers(results)
    assert out[0] == results[0] and out[2] == results[2]
    assert out[1].error == {"code": "x", "pointer": "/mutations/1/key"}
