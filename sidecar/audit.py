"""The audit trail (no HTTP): who changed a row through the sidecar, newest first, for
callers the admin rule (`auth.admin`) lets in. `GET /v1/audit` only translates onto it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Container, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from sidecar.auth import Principal
from sidecar.config.expressions import Expression
from sidecar.errors import Forbidden, InvalidRequest
from sidecar.lsn import lsn_to_str
from sidecar.rules.evaluator import evaluate
from sidecar.store.base import MutationRecord, StoreReader


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """One row whose trail an admin asked for."""

    collection: str
    key: dict[str, Any]


def audit_query(
    admin: Expression | None,
    principal: Principal,
    collections: Container[str],
    collection: str,
    raw_key: str,
) -> AuditQuery:
    """The row asked for, once the caller is known to be an admin (403 otherwise): a known
    collection and a key given as a non-empty JSON object (400 otherwise)."""
    if admin is None or evaluate(admin, {}, principal.claims) is not True:
        raise Forbidden("the audit trail needs the admin claim configured in auth.admin")
    if collection not in collections:
        raise InvalidRequest(f"unknown collection {collection!r}", parameter="collection")
    try:
        key = orjson.loads(raw_key)
    except orjson.JSONDecodeError:
        key = None
    if not isinstance(key, dict) or not key:
        raise InvalidRequest('key must be a JSON object, e.g. key={"id":1}', parameter="key")
    return AuditQuery(collection, key)


async def audit_trail(store: StoreReader, query: AuditQuery, limit: int) -> dict[str, Any]:
    """The row's recorded mutations, newest first, at most `limit` (read on a reader
    thread), as the answer of `GET /v1/audit`."""
    records = await asyncio.to_thread(store.audit, query.collection, orjson.dumps(query.key), limit)
    return audit_answer(query, records)


def audit_answer(query: AuditQuery, records: Sequence[MutationRecord]) -> dict[str, Any]:
    """The answer: the row asked for and, per mutation, who made it and what came of it."""
    entries = []
    for r in records:
        outcome = orjson.loads(r.outcome)
        entries.append(
            {
                "id": r.id,
                "subject": r.subject,
                "device": r.device,
                "op": outcome.get("op"),
                "status": outcome.get("status"),
                "rev": outcome.get("rev"),
                "client_time": outcome.get("client_time"),
                "lsn": lsn_to_str(r.lsn),
            }
        )
    return {"collection": query.collection, "key": query.key, "mutations": entries}
