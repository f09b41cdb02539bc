"""The audit trail (no HTTP): who changed a row through the sidecar, newest first, for
callers the admin rule (`auth.admin`) lets in. `GET /v1/audit` only translates onto it.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from sidecar.auth import Principal
from sidecar.config.expressions import Expression
from sidecar.errors import Forbidden, InvalidRequest
from sidecar.lsn import lsn_to_str
from sidecar.rules.evaluator import evaluate
from sidecar.rules.pgvalues import EvaluationError
from sidecar.store.base import MutationRecord, StoreReader

MAX_ADMIN_TRIES = 64  # element combinations of list claims tried against auth.admin


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """One row whose trail an admin asked for."""

    collection: str
    key: dict[str, Any]


def is_admin(admin: Expression, claims: Mapping[str, Any]) -> bool:
    """Whether `claims` satisfy the admin rule. A claim that is a list (`"role": ["admin",
    "user"]`) satisfies it when one of its elements does: the rule is tried as written
    (`'admin' = ANY(:role)` reads the list), then with each element of the list claims it
    names in the list's place (at most `MAX_ADMIN_TRIES` combinations). A claim the rule
    cannot compare (an object, a boolean compared to text) makes it not TRUE, never a 500."""
    if _holds(admin, claims):
        return True
    lists = [
        (name, value[:MAX_ADMIN_TRIES])
        for name in sorted(admin.claims)
        if isinstance(value := claims.get(name), list) and value
    ]
    if not lists:
        return False
    names = [name for name, _ in lists]
    tries = itertools.islice(itertools.product(*(v for _, v in lists)), MAX_ADMIN_TRIES)
    return any(_holds(admin, {**claims, **dict(zip(names, combo, strict=True))}) for combo in tries)


def _holds(rule: Expression, claims: Mapping[str, Any]) -> bool:
    try:
        return evaluate(rule, {}, claims) is True
    except (EvaluationError, TypeError, ValueError, ArithmeticError, RecursionError):
        return False


def audit_query(
    admin: Expression | None,
    principal: Principal,
    collections: Container[str],
    collection: str,
    raw_key: str,
) -> AuditQuery:
    """The row asked for, once the caller is known to be an admin (403 otherwise): a known
    collection and a key given as a non-empty JSON object (400 otherwise)."""
    if admin is None or not is_admin(admin, principal.claims):
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
