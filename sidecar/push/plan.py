"""Push decisions that need no database: each mutation against its locked row, and the
verdict of a write from the row its statement RETURNed.

`plan` decides a mutation: a result now (refused, conflict, nothing to do) or a `Write`
to run; the checks, in order: op allowed, caller allowed to write the collection, key
shape and values, then per op: the row's presence and readability, the columns and
their values (`set:` columns from claims), immutable columns, and `base_rev` against the
collection's conflict strategy (`conflicts.py`). Every write of an existing row — an
update, and an insert that `client_wins` turns into one — passes the same checks
(`_update_data`): key columns in `data` equal the key, `immutable` and `set:` columns
equal the stored values (else `validation_failed`, never silently dropped).

A row outside the caller's read scope is answered as a row that does not exist (update:
`not_found` conflict; delete: applied, nothing to do), so no answer tells whether a key
exists outside the caller's view; an insert on such a key is refused as the table's
unique key would refuse it (`conflict`, without the row). `verdict` reads a write's RETURNING
row: the read rule and `check:` rule as PostgreSQL evaluated them on the new row, and
the row itself. `aborted` gives an atomic batch's results when one mutation failed;
`with_body_pointers` points errors into the request body.

The transaction that runs all this (locks, statements, savepoints) is `pusher.py`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from sidecar import write_sql
from sidecar.auth import Principal
from sidecar.collection import Collection
from sidecar.errors import Conflict, Forbidden, NotFound, SidecarError, ValidationFailed
from sidecar.mutations import Mutation, MutationResult, check_value, rejected
from sidecar.permissions import Permissions
from sidecar.push import conflicts
from sidecar.values import JsonRow, to_json_value
from sidecar.walmessage import MutationMessage


@dataclass(frozen=True, slots=True)
class Current:
    """A locked row (its mutation's key passed `check_key`): its typed values, JSON, rev,
    whether the caller may see it now (read rule) and whether it may write it (its write
    scope: the read rule and `write.where`)."""

    values: Mapping[str, Any]  # typed values of route.needed
    row: Mapping[str, Any]  # JSON form of the exposed columns (a `JsonRow`: read if needed)
    rev: str
    readable: bool
    writable: bool


@dataclass(frozen=True, slots=True)
class Write:
    """A decided mutation: how to build the statement that carries it out (built only when
    run on its own: the fast path sends same-shape updates as one statement instead)."""

    m: Mutation
    route: Collection
    build: Callable[[], write_sql.Statement]
    returns_row: bool  # insert/update RETURN the read/check verdicts and the new row
    key: Mapping[str, Any] | None = None  # deletes: the key (JSON); updates: typed key
    data: Mapping[str, Any] | None = None  # updates: the columns to set


Plan = MutationResult | Write


def plan_safely(
    route: Collection,
    permissions: Permissions | None,
    principal: Principal,
    m: Mutation,
    current: Current | None,
) -> Plan:
    """`plan`, with a refusal (any `SidecarError`) as the mutation's `rejected` result."""
    try:
        return plan(route, permissions, principal, m, current)
    except SidecarError as exc:
        return rejected(m.id, exc)


def plan(
    route: Collection,
    permissions: Permissions | None,
    principal: Principal,
    m: Mutation,
    current: Current | None,
) -> Plan:
    """Decide a mutation against the locked row: a result now, or a write to run.
    Raises the `SidecarError` that refuses it."""
    if m.op not in route.config.write.ops:
        raise Forbidden(f"{m.op} is not allowed on collection {m.collection!r}")
    if permissions is not None and not permissions.can_write(principal, route.config):
        raise Forbidden(f"your token does not allow writing {m.collection!r} (scope or roles)")
    if current is None:  # a locked row's key passed `check_key` before it was locked
        check_key(route, m)
    if m.op == "insert":
        return _plan_insert(principal, route, m, current)
    if current is None or not current.readable:
        # Not in the caller's view, whether it exists elsewhere or not: the same answer.
        if m.op == "delete":  # already gone: the client's intent holds, nothing to do
            return MutationResult(m.id, "applied")
        missing = NotFound(f"no row with key {dict(m.key)} in {m.collection!r}")
        return MutationResult(m.id, "conflict", error=missing.to_problem())
    if not current.writable:  # visible, so refusing it tells nothing new
        raise Forbidden(f"that row is outside your {scope_name(route)}")
    if m.op == "delete":
        if current.rev != m.base_rev and not conflicts.overwrites(route.config.conflict):
            return conflict(m, current, "the row changed since base_rev")
        key = {c: current.values[c] for c in route.key}
        return Write(m, route, lambda: write_sql.delete(route, key), False, key_of(route, current))
    data = _update_data(route, m, principal, current)
    if current.rev != m.base_rev:
        resolved = conflicts.resolve(route.config.conflict, m, current.row, data)
        if isinstance(resolved, conflicts.Lost):
            return conflict(m, current, resolved.detail)
        data = resolved
    return _update_write(principal, route, m, current, data)


def _plan_insert(
    principal: Principal, route: Collection, m: Mutation, current: Current | None
) -> Plan:
    if current is None:
        data = checked_data(route, m, principal, inserting=True)
        return Write(m, route, lambda: write_sql.insert(route, data, principal.claims), True)
    if not current.readable:  # as the unique key would refuse it: nothing of the row
        raise Conflict("a row with that key already exists", pointer="key")
    if not conflicts.overwrites(route.config.conflict):
        return conflict(m, current, "a row with that key already exists")
    # client_wins: an update of that row, with every check an update has
    if not current.writable:
        raise Forbidden(f"that row is outside your {scope_name(route)}")
    data = _update_data(route, m, principal, current)
    return _update_write(principal, route, m, current, data)


def _update_data(
    route: Collection, m: Mutation, principal: Principal, current: Current
) -> dict[str, Any]:
    """The checked data of a write to the existing row `current`. `immutable` and `set:`
    columns (assigned on insert, kept by the server afterwards) may be sent with their
    stored value only; another value is refused, never dropped."""
    wc = route.config.write
    for c in (*wc.immutable, *wc.set):
        if c in m.data and not same_json(m.data[c], current.row.get(c)):
            why = "immutable" if c in wc.immutable else "set by the server (write.set)"
            raise ValidationFailed(
                f"column {c} is {why}: it cannot be changed", column=c, pointer=f"data/{c}"
            )
    data = checked_data(route, m, principal, inserting=False)
    for c in wc.set:
        if c not in wc.immutable:
            data.pop(c, None)  # its stored value: nothing to write
    return data


def same_json(a: Any, b: Any) -> bool:
    """JSON equality: numbers by value (1 == 1.0), booleans equal only to booleans."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _update_write(
    principal: Principal,
    route: Collection,
    m: Mutation,
    current: Current,
    data: Mapping[str, Any],
) -> Write:
    key = {c: current.values[c] for c in route.key}
    data = dict(data)
    return Write(
        m,
        route,
        lambda: write_sql.update(route, key, data, principal.claims),
        True,
        key=key,
        data=data,
    )


def check_key(route: Collection, m: Mutation) -> None:
    """ValidationFailed unless the key has exactly the key columns (an insert may leave
    out generated ones) with values of their types."""
    extra = [c for c in m.key if c not in route.key]
    if extra or (m.op != "insert" and any(c not in m.key for c in route.key)):
        raise ValidationFailed(
            f"key must have exactly the key columns ({', '.join(route.key)})",
            pointer="key",
        )
    for c, v in m.key.items():
        check_value(route.table.column(c), v)  # type: ignore[arg-type]


def key_ok(route: Collection, m: Mutation) -> bool:
    """Whether the key passes `check_key` (a bad one's row is not locked: `plan` refuses it)."""
    try:
        check_key(route, m)
    except ValidationFailed:
        return False
    return True


def checked_data(
    route: Collection, m: Mutation, principal: Principal, *, inserting: bool
) -> dict[str, Any]:
    """Client data checked against the collection, with `set:` columns assigned."""
    wc = route.config.write
    unknown = [c for c in m.data if c not in route.exposed]
    if unknown:
        raise ValidationFailed(
            f"column(s) {', '.join(unknown)} cannot be written in {route.name!r}",
            columns=unknown,
        )
    data = dict(m.data)
    for c, v in m.key.items():  # the key names the row: data may repeat it, not change it
        if c in data and not same_json(data[c], v):
            raise ValidationFailed(
                f"key column {c} differs between key and data", column=c, pointer=f"data/{c}"
            )
        if inserting:
            data[c] = v
    for c in data:
        check_value(route.table.column(c), data[c], pointer=f"data/{c}")  # type: ignore[arg-type]
    if inserting:  # server-assigned on insert; a client value is overridden
        for c, v in wc.set.items():
            data[c] = claim_value(v, principal.claims)
    return data


def conflict(m: Mutation, current: Current, detail: str) -> MutationResult:
    """A `conflict` result carrying the server's row and rev."""
    return MutationResult(
        m.id,
        "conflict",
        rev=current.rev,
        row=current.row,
        error=Conflict(detail).to_problem(),
    )


def key_of(route: Collection, current: Current) -> dict[str, Any]:
    """The row's client key as JSON values."""
    return {c: to_json_value(current.values[c]) for c in route.key}


def scope_name(route: Collection) -> str:
    """What refused a row outside the caller's write scope, as refusals name it."""
    return "write scope (write.where)" if route.config.write.where else "read scope"


def claim_value(value: Any, claims: Mapping[str, Any]) -> Any:
    """A `set:` value: a string starting with ':' names a claim, anything else is itself."""
    if isinstance(value, str) and value.startswith(":"):
        return claims.get(value[1:])
    return value


# -- after the write ----------------------------------------------------------------------


def verdict(
    principal: Principal, w: Write, row: Sequence[Any] | None
) -> tuple[MutationResult, MutationMessage | None]:
    """The outcome of a write from its RETURNING row, and its WAL record (None: the
    write was refused)."""
    m, route = w.m, w.route
    if not w.returns_row:  # a delete of a row locked and checked beforehand
        return MutationResult(m.id, "applied"), record(principal, route, m, None, w.key)
    if row is None:
        return MutationResult(
            m.id, "conflict", error=NotFound("the row is gone").to_problem()
        ), None
    if not row[0]:
        outside = Forbidden(f"the change would put the row outside your {scope_name(route)}")
        return rejected(m.id, outside), None
    if not row[1]:
        refused = ValidationFailed("the collection's check rule refused the row")
        return rejected(m.id, refused), None
    try:
        image = route.image_of_values(dict(zip(route.needed, row[2:], strict=True)))
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        # PostgreSQL took a value the sidecar cannot send to clients: undone, not a 500
        unsendable = ValidationFailed(f"the written row cannot be sent to clients: {exc}")
        return rejected(m.id, unsendable), None
    key = orjson.loads(image.key)
    result = MutationResult(m.id, "applied", rev=image.rev, row=JsonRow(image.row))
    return result, record(principal, route, m, image.rev, key)


def record(
    principal: Principal,
    route: Collection,
    m: Mutation,
    rev: str | None,
    key: Mapping[str, Any] | None,
) -> MutationMessage:
    """The idempotency/audit record carried by pg_logical_emit_message."""
    return MutationMessage(
        mutation_id=m.id,
        subject=principal.subject,
        device=principal.device,
        collection=route.name,
        op=m.op,
        key=key,
        rev=rev,
        client_time=m.client_time,
    )


def aborted(
    mutations: Sequence[Mutation],
    failed: MutationResult,
    results: Mapping[str, MutationResult],
) -> list[MutationResult]:
    """An atomic batch's results when `failed` was not applied: it as it is, duplicates as
    they are, every other mutation rejected (nothing was applied)."""
    out = []
    for m in mutations:
        if m.id == failed.id:
            out.append(failed)
        elif results.get(m.id, failed).status == "duplicate":
            out.append(results[m.id])
        else:
            err = Conflict(
                f"not applied: mutation {failed.id!r} of this atomic batch was "
                f"{failed.status}, so none was applied"
            )
            out.append(rejected(m.id, err))
    return out


def with_body_pointers(results: Sequence[MutationResult]) -> list[MutationResult]:
    """Error pointers of results as JSON pointers into the request body: the core names
    a member of the mutation (`key`), the client needs `/mutations/<i>/key`."""
    fixed = []
    for i, r in enumerate(results):
        pointer = (r.error or {}).get("pointer")
        if isinstance(pointer, str) and not pointer.startswith("/"):
            error = {**(r.error or {}), "pointer": f"/mutations/{i}/{pointer}"}
            r = dataclasses.replace(r, error=error)
        fixed.append(r)
    return fixed
