"""The shape a request asks for: a collection, some of its columns, a row filter.

`parse_shape` reads `table=`, `columns=` (quoted or bare identifiers), `replica=` and
`where=` with its `params[n]` (`where.parse_where`), refusing what is not supported
(subset snapshots, `log=` other than full). `shape_hash` names what decides the rows a
caller gets, for the handle.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import orjson
from aiohttp import web

from adapters.electric.where import parse_where, where_params
from sidecar.auth import Principal
from sidecar.collection import Collection
from sidecar.config.expressions import Expression
from sidecar.errors import InvalidRequest
from sidecar.service import Service

__all__ = ["ShapeSpec", "parse_shape", "shape_hash"]


@dataclass(frozen=True, slots=True)
class ShapeSpec:
    """What the client asked for: a collection, some of its columns, a row filter."""

    route: Collection
    columns: tuple[str, ...]
    where: Expression | None
    replica: str

    @property
    def table(self) -> str:
        return self.route.name


def parse_shape(request: web.Request, service: Service) -> ShapeSpec:
    _refuse_unsupported(request)
    route = _route(request.query.get("table", ""), service)
    replica = request.query.get("replica", "default")
    if replica not in ("default", "full"):
        raise InvalidRequest("replica must be default or full", parameter="replica")
    columns = _columns(request.query.get("columns"), route)
    where = parse_where(request.query.get("where"), where_params(request), route)
    return ShapeSpec(route, columns, where, replica)


def _refuse_unsupported(request: web.Request) -> None:
    for name in request.query:
        if name.startswith("subset__"):
            raise InvalidRequest("subset snapshots are not supported", parameter=name)
    if request.query.get("log", "full") != "full":
        raise InvalidRequest("only log=full is supported", parameter="log")


def _route(table: str, service: Service) -> Collection:
    if table not in service.routes:
        known = ", ".join(service.routes)
        raise InvalidRequest(f"unknown table {table!r}; known: {known}", parameter="table")
    return service.routes[table]


def _columns(raw: str | None, route: Collection) -> tuple[str, ...]:
    if not raw:
        return route.exposed
    names = _identifiers(raw)
    unknown = [n for n in names if n not in route.exposed]
    if unknown:
        raise InvalidRequest(f"unknown column(s): {', '.join(unknown)}", parameter="columns")
    missing = [k for k in route.key if k not in names]
    if missing:
        raise InvalidRequest(
            f"columns must include the key column(s): {', '.join(missing)}", parameter="columns"
        )
    return tuple(c for c in route.exposed if c in names)


_IDENTIFIER = re.compile(r'\s*(?:"((?:[^"]|"")*)"|([^",]+?))\s*(?:,|$)')


def _identifiers(raw: str) -> list[str]:
    """`"a","b""c",d` → ['a', 'b"c', 'd'] (unquoted names fold to lower case)."""
    names: list[str] = []
    pos = 0
    while pos < len(raw):
        m = _IDENTIFIER.match(raw, pos)
        if m is None or m.end() == pos:
            raise InvalidRequest("columns must be a comma-separated list", parameter="columns")
        quoted, bare = m.groups()
        names.append(quoted.replace('""', '"') if quoted is not None else bare.lower())
        pos = m.end()
    return names


def shape_hash(spec: ShapeSpec, principal: Principal, service: Service) -> str:
    """12 hex characters that change whenever the rows this caller gets could change."""
    puller = service.puller
    where = spec.where
    basis = [
        spec.table,
        spec.columns,
        where.text if where else None,
        spec.replica,
        puller.schema_version,
        sorted(puller.scopes_for(principal, [spec.route])),
        [principal.claims.get(c) for c in where.params] if where else [],
    ]
    return hashlib.blake2b(orjson.dumps(basis, default=str), digest_size=6).hexdigest()
