"""Which collections a caller may read or write, from token scopes and roles.

- Scopes (`auth.claims.scope`, a space-separated string or a list): `sync:read` and
  `sync:write` cover every collection, `<collection>:read` / `<collection>:write` one.
  A token without the claim is not restricted by scopes; a token with it gets only what it
  lists (write does not imply read).
- Roles (`auth.claims.roles`, a string or a list) against a collection's `roles:`: when the
  collection lists roles, the caller must hold one of them, to read and to write.
Row-level access is the collection's `read` rule, on top of this.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sidecar.auth import Principal
from sidecar.config.model import AuthConfig, CollectionConfig


def _names(value: Any) -> set[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return set(value.split())
    if isinstance(value, list | tuple):
        return {str(v) for v in value}
    return set()


class Permissions:
    def __init__(self, auth: AuthConfig) -> None:
        self.scope_claim = auth.claims.scope
        self.roles_claim = auth.claims.roles

    def _allowed(self, principal: Principal, coll: CollectionConfig, action: str) -> bool:
        if coll.roles is not None:
            roles = _names(principal.claims.get(self.roles_claim)) or set()
            if not roles & set(coll.roles):
                return False
        scopes = _names(principal.claims.get(self.scope_claim))
        if scopes is None:
            return True
        return f"sync:{action}" in scopes or f"{coll.name}:{action}" in scopes

    def can_read(self, principal: Principal, coll: CollectionConfig) -> bool:
        return self._allowed(principal, coll, "read")

    def can_write(self, principal: Principal, coll: CollectionConfig) -> bool:
        return self._allowed(principal, coll, "write")

    def readable(
        self, principal: Principal, collections: Iterable[CollectionConfig]
    ) -> list[CollectionConfig]:
        return [c for c in collections if self.can_read(principal, c)]
