"""Which collections a caller may read or write (`sidecar.permissions`): token scopes
(`sync:read`, `<collection>:write`, …) and per-collection roles."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.auth import Principal
from sidecar.config.loader import load_config_text
from sidecar.config.model import CollectionConfig, Config
from sidecar.permissions import Permissions


def _config(claims: str = "") -> Config:
    return load_config_text(
        f"""
database: {{url: "postgresql://h/d"}}
auth: {{jwt: {{secret: "0123456789abcdef0123456789abcdef"}}{claims}}}
collections:
  todos: {{table: todos, read: "true"}}
  notes: {{table: notes, read: "true"}}
  audit: {{table: audit, read: "true", roles: [admin, support]}}
""",
        file="t.yaml",
        env={},
    )


CONFIG = _config()
TODOS, NOTES, AUDIT = (CONFIG.collections[n] for n in ("todos", "notes", "audit"))


def caller(**claims: Any) -> Principal:
    return Principal("u1", None, {"sub": "u1", **claims})


def access(principal: Principal, coll: CollectionConfig) -> tuple[bool, bool]:
    permissions = Permissions(CONFIG.auth)
    return permissions.can_read(principal, coll), permissions.can_write(principal, coll)


def test_a_token_without_scopes_is_not_restricted_by_scopes() -> None:
    assert access(caller(), TODOS) == (True, True)


@pytest.mark.parametrize(
    ("scope", "todos", "notes"),
    [
        ("sync:read", (True, False), (True, False)),
        ("sync:write", (False, True), (False, True)),  # write does not imply read
        ("sync:read sync:write", (True, True), (True, True)),
        (["sync:read", "todos:write"], (True, True), (True, False)),
        ("todos:read", (True, False), (False, False)),
        ("", (False, False), (False, False)),  # the claim is there: only what it lists
        ("other:read profile", (False, False), (False, False)),
        (42, (False, False), (False, False)),  # neither a string nor a list: nothing
    ],
)
def test_scopes_grant_what_they_list(
    scope: Any, todos: tuple[bool, bool], notes: tuple[bool, bool]
) -> None:
    principal = caller(scope=scope)
    assert (access(principal, TODOS), access(principal, NOTES)) == (todos, notes)


@pytest.mark.parametrize(
    ("roles", "allowed"),
    [(None, False), ("admin", True), (["viewer", "support"], True), ("viewer", False), ([], False)],
)
def test_a_collection_with_roles_needs_one_of_them(roles: Any, allowed: bool) -> None:
    principal = caller() if roles is None else caller(roles=roles)
    assert access(principal, AUDIT) == (allowed, allowed)
    assert access(principal, TODOS) == (True, True)  # no roles: open to every caller


def test_roles_and_scopes_both_apply() -> None:
    assert access(caller(roles="admin", scope="audit:read"), AUDIT) == (True, False)
    assert access(caller(roles="viewer", scope="sync:read"), AUDIT) == (False, False)


def test_the_claim_names_come_from_the_config() -> None:
    config = _config(", claims: {scope: scp, roles: groups}")
    permissions = Permissions(config.auth)
    principal = caller(scp="sync:read", scope="sync:write", groups=["admin"])
    assert permissions.can_read(principal, config.collections["audit"])
    assert not permissions.can_write(principal, config.collections["todos"])


def test_readable_keeps_the_order_of_the_collections() -> None:
    permissions = Permissions(CONFIG.auth)
    readable = permissions.readable(caller(scope="notes:read todos:read"), [NOTES, AUDIT, TODOS])
    assert [c.name for c in readable] == ["notes", "todos"]
