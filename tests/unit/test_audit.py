"""The audit trail's core (`sidecar.audit`) without HTTP or a database: who may ask, what
a valid question is, and the answer's shape."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sidecar.audit import AuditQuery, audit_answer, audit_query, audit_trail
from sidecar.auth import Principal
from sidecar.config.expressions import parse_expression
from sidecar.errors import Forbidden, InvalidRequest
from sidecar.store.base import MutationRecord

ADMIN = parse_expression(":role = 'admin'")
COLLECTIONS = {"todos", "notes"}


def caller(**claims: Any) -> Principal:
    return Principal("u1", "d1", {"sub": "u1", **claims})


def test_only_admins_may_ask() -> None:
    admin = caller(role="admin")
    query = audit_query(ADMIN, admin, COLLECTIONS, "todos", '{"id": 1}')
    assert query == AuditQuery("todos", {"id": 1})
    for principal in (caller(), caller(role="user"), caller(role=None)):
        with pytest.raises(Forbidden, match=r"auth\.admin"):
            audit_query(ADMIN, principal, COLLECTIONS, "todos", '{"id": 1}')
    with pytest.raises(Forbidden):  # no admin rule configured: nobody
        audit_query(None, admin, COLLECTIONS, "todos", '{"id": 1}')


def test_the_admin_check_comes_before_the_question() -> None:
    with pytest.raises(Forbidden):
        audit_query(ADMIN, caller(), COLLECTIONS, "nope", "not json")


@pytest.mark.parametrize(
    ("collection", "raw_key", "parameter"),
    [
        ("", '{"id": 1}', "collection"),
        ("nope", '{"id": 1}', "collection"),
        ("todos", "", "key"),
        ("todos", "{id: 1}", "key"),
        ("todos", "{}", "key"),
        ("todos", "[1]", "key"),
        ("todos", "1", "key"),
        ("nope", "not json", "collection"),  # the collection is checked first
    ],
)
def test_questions_refused(collection: str, raw_key: str, parameter: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        audit_query(ADMIN, caller(role="admin"), COLLECTIONS, collection, raw_key)
    assert caught.value.extra == {"parameter": parameter}


RECORDS = [
    MutationRecord(
        "m2",
        "u1",
        "d1",
        0x16B3748,
        orjson.dumps({"op": "update", "status": "applied", "rev": "ab", "client_time": "t"}),
    ),
    MutationRecord("m1", None, None, 1, orjson.dumps({"status": "rejected"})),
]


def test_answer_shape() -> None:
    answer = audit_answer(AuditQuery("todos", {"id": 1}), RECORDS)
    assert answer == {
        "collection": "todos",
        "key": {"id": 1},
        "mutations": [
            {
                "id": "m2",
                "subject": "u1",
                "device": "d1",
                "op": "update",
                "status": "applied",
                "rev": "ab",
                "client_time": "t",
                "lsn": "0/16B3748",
            },
            {
                "id": "m1",
                "subject": None,
                "device": None,
                "op": None,
                "status": "rejected",
                "rev": None,
                "client_time": None,
                "lsn": "0/1",
            },
        ],
    }


class Store:
    """Only what the audit trail reads of a store."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, bytes, int]] = []

    def audit(self, collection: str, key: bytes, limit: int) -> list[MutationRecord]:
        self.asked.append((collection, key, limit))
        return RECORDS[:limit]


async def test_trail_reads_the_store_with_the_key_as_json() -> None:
    store = Store()
    answer = await audit_trail(store, AuditQuery("todos", {"id": 1}), 1)  # type: ignore[arg-type]
    assert store.asked == [("todos", b'{"id":1}', 1)]
    assert [m["id"] for m in answer["mutations"]] == ["m2"]
