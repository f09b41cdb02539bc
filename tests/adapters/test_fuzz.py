"""The adapters' endpoints under generated requests: never a server error.

The adapters speak other projects' protocols (ElectricSQL's Shape API, RxDB's and
WatermelonDB's replication), so they are not in the sidecar's own OpenAPI document. This
test describes their parameters and bodies loosely, as a client of each could send them,
and lets schemathesis generate valid and invalid requests against the live server: every
answer must be below 500, and every refusal (4xx) a JSON body. Long-lived requests (live
modes, SSE streams) are left out: they wait for changes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.fixtures.service import Sidecar, auth, run_sql

pytestmark = pytest.mark.pg

EXAMPLES = 40  # per operation and mode

SCHEMA = """
CREATE TABLE notes (
    id text PRIMARY KEY,
    title text NOT NULL,
    done boolean NOT NULL DEFAULT false,
    owner_id text NOT NULL
);
INSERT INTO notes VALUES ('n1', 'buy milk', false, '1'), ('b1', 'bob note', false, '2');
CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, owner_id text NOT NULL);
INSERT INTO items (name, owner_id) VALUES ('one', '1'), ('two', '2');
"""

COLLECTIONS = """
  notes:
    table: notes
    read: "owner_id = :sub"
    write:
      ops: [insert, update, delete]
      set: {owner_id: ":sub"}
  items:
    table: items
    read: "owner_id = :sub"
"""

_TEXT: dict[str, Any] = {"type": "string"}
_ANY: dict[str, Any] = {}


def _query(*names: str, required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    return [{"name": n, "in": "query", "required": n in required, "schema": _TEXT} for n in names]


_COLLECTION = {
    "name": "collection",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "enum": ["notes", "items", "nothing"]},
}
_ANSWER = {"default": {"description": "any"}}
_RXDB_ROW = {
    "type": "object",
    "properties": {"newDocumentState": _ANY, "assumedMasterState": _ANY},
}
_WATERMELON_CHANGES = {
    "type": "object",
    "properties": {
        "changes": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "properties": {
                    "created": {"type": "array", "items": _ANY},
                    "updated": {"type": "array", "items": _ANY},
                    "deleted": {"type": "array", "items": _ANY},
                },
            },
        }
    },
}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "sidecar adapters (fuzz only)", "version": "1"},
    "paths": {
        "/electric/v1/shape": {
            "get": {
                "operationId": "electricShape",
                "parameters": _query(
                    "table",
                    "offset",
                    "handle",
                    "where",
                    "columns",
                    "replica",
                    "log",
                    "cursor",
                    "params[1]",
                    required=("table", "offset"),
                ),
                "responses": _ANSWER,
            }
        },
        "/rxdb/{collection}/pull": {
            "get": {
                "operationId": "rxdbPull",
                "parameters": [_COLLECTION, *_query("id", "lwt", "limit")],
                "responses": _ANSWER,
            }
        },
        "/rxdb/{collection}/push": {
            "post": {
                "operationId": "rxdbPush",
                "parameters": [_COLLECTION],
                "requestBody": _body({"type": "array", "items": _RXDB_ROW}),
                "responses": _ANSWER,
            }
        },
        "/watermelondb/sync": {
            "get": {
                "operationId": "watermelonPull",
                "parameters": _query("last_pulled_at", "schema_version", "migration"),
                "responses": _ANSWER,
            },
            "post": {
                "operationId": "watermelonPush",
                "parameters": _query("last_pulled_at", required=("last_pulled_at",)),
                "requestBody": _body(_WATERMELON_CHANGES),
                "responses": _ANSWER,
            },
        },
    },
}


@pytest.fixture
async def sc(pg_dsn: str, pg_url: str, sidecar_factory: Any) -> Sidecar:
    run_sql(pg_dsn, SCHEMA)
    return await sidecar_factory(pg_url, COLLECTIONS)


def _fuzz(base_url: str, headers: dict[str, str]) -> tuple[int, list[str]]:
    schema = schemathesis.openapi.from_dict(DOCUMENT)
    failures: list[str] = []
    sent = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,  # the same cases every run: failures reproduce
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def one(case: schemathesis.Case) -> None:
                nonlocal sent
                response = case.call(base_url=base_url, headers=headers, timeout=10)
                sent += 1
                status = response.status_code
                kind = " ".join(response.headers.get("content-type", []))
                label = f"{case.operation.label} {case.method} {case.path} {case.query}"
                if status >= 500:
                    failures.append(f"{label}: {status} {response.text[:300]}")
                elif status >= 400 and "json" not in kind:
                    failures.append(f"{label}: {status} with {kind!r}: {response.text[:200]}")

            try:
                one()
            except Unsatisfiable:  # nothing of this operation can be made invalid
                assert mode.is_negative, operation.label
    return sent, failures


async def test_adapters_never_answer_a_server_error(sc: Sidecar) -> None:
    assert sc.client is not None
    base_url = str(sc.client.make_url("")).rstrip("/")
    sent, failures = await asyncio.to_thread(_fuzz, base_url, auth(1))
    assert not failures, "\n".join(failures[:20])
    assert sent >= 5 * EXAMPLES, sent  # it did run
