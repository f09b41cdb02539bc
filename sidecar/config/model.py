"""The configuration as typed, frozen values: what `sidecar.config.loader` produces.

Every value here has already been validated and converted (durations are float seconds,
sizes int bytes, rules parsed expressions), so consumers never re-check the YAML.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from sidecar.config.expressions import Expression

DAY = 86_400.0
MIB = 1024 * 1024
MIN_MEMORY = 16 * MIB  # the least `limits.memory` accepted

WriteOp = Literal["insert", "update", "delete"]
ConflictKind = Literal["reject", "merge", "client_wins", "server_wins", "latest_wins"]
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["auto", "json", "console"]
SetValue = str | int | float | bool | None

WRITE_OPS: tuple[WriteOp, ...] = ("insert", "update", "delete")
CONFLICT_KINDS: tuple[ConflictKind, ...] = (
    "reject",
    "merge",
    "client_wins",
    "server_wins",
    "latest_wins",
)


def _empty_mapping() -> Mapping[str, SetValue]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Rate:
    """At most `count` requests per `per_seconds` seconds (`50/s` is Rate(50, 1.0))."""

    count: int
    per_seconds: float

    @property
    def per_second(self) -> float:
        return self.count / self.per_seconds


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    url: str
    publication: str = "sidecar"
    slot: str = "sidecar"
    create_publication: bool = True
    pool_size: int = 10  # connections for the write path


@dataclass(frozen=True, slots=True)
class StoreConfig:
    path: str = "./data/sidecar.db"  # the loader makes relative paths relative to the file
    tombstone_retention: float = 30 * DAY
    # A PostgreSQL store (instead of the SQLite file at `path`): its server and database,
    # and the schema that holds its tables.
    url: str | None = None
    schema: str = "sidecar_store"
    # The SQLite store encrypted with SQLCipher under this passphrase (never in a repr).
    encryption_key: str | None = field(default=None, repr=False)
    # Several replicas over a PostgreSQL store: the bound (s) within which another replica
    # takes over capture from a leader that died or was cut off.
    takeover_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """HTTPS on the public listener: PEM files (paths relative to the config file resolved
    by the loader), re-read when they change. With `client_ca`, clients must present a
    certificate it signed (mutual TLS); with `bind_claim` too, a token's claim of that
    name must equal the client certificate's subject CN."""

    cert: str
    key: str
    client_ca: str | None = None
    bind_claim: str | None = None


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 8080
    ready_max_lag: float | None = None  # seconds
    tls: TlsConfig | None = None
    # A separate listener for /healthz, /readyz, /metrics, the OpenAPI document and the
    # admin API (then not served on `port`); None: everything on `port`.
    admin_port: int | None = None
    admin_host: str = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class JwtConfig:
    """Exactly one of `secret` (HMAC) or `jwks` (file path or URL of a key set) is set."""

    secret: str | None = None
    jwks: str | None = None
    issuer: str | None = None
    audience: str | None = None
    algorithms: tuple[str, ...] = ("HS256",)
    leeway: float = 30.0
    max_age: float | None = None  # seconds since `iat`


@dataclass(frozen=True, slots=True)
class ClaimsConfig:
    """Which token claims carry the user (subject) and the device id."""

    user: str = "sub"
    device: str = "device_id"
    scope: str = "scope"  # OAuth-style scopes: sync:read, sync:write, <collection>:read|write
    roles: str = "roles"  # matched against a collection's `roles:`


@dataclass(frozen=True, slots=True)
class AuthConfig:
    jwt: JwtConfig
    claims: ClaimsConfig = field(default_factory=ClaimsConfig)
    admin: Expression | None = None  # a rule over :claims only, e.g. ":role = 'admin'"


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_page: int = 1000
    max_push: int = 500
    max_body: int = 5 * MIB
    max_page_bytes: int = MIB  # a pull page's bytes (at least one change)
    rate: Rate | None = None
    pull_wait: float = 30.0
    push_lock_timeout: float = 3.0  # a push waits this long for a locked row (then 503)
    push_statement_timeout: float = 10.0  # bounds each statement of a push (then 503)
    live_per_subject: int = 16
    live_total: int = 20_000
    page_cache: int = 64 * MIB
    memory: int = 256 * MIB  # data capture buffers: copy, stream, ingest, reconcile
    client_timeout: float = 30.0
    header_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    max_connections: int | None = None  # None: from the descriptor limit (sidecar.http.connections)
    unauthenticated_rate: Rate | None = Rate(20, 1.0)


@dataclass(frozen=True, slots=True)
class ConflictStrategy:
    """How a push that lost the race is resolved; `column` is set for latest_wins only."""

    kind: ConflictKind = "reject"
    column: str | None = None


@dataclass(frozen=True, slots=True)
class WriteConfig:
    """What clients may write. In `set`, a string starting with ':' names a claim."""

    ops: tuple[WriteOp, ...] = ()
    set: Mapping[str, SetValue] = field(default_factory=_empty_mapping, hash=False)
    immutable: tuple[str, ...] = ()
    check: Expression | None = None
    where: Expression | None = None  # rows the caller may write (with the read rule)


@dataclass(frozen=True, slots=True)
class TableRef:
    schema: str
    name: str

    @property
    def identifier(self) -> sql.Identifier:
        """The table as a psycopg identifier, for composing queries."""
        return sql.Identifier(self.schema, self.name)

    @property
    def qualified(self) -> str:
        """`"schema"."name"`, quoted by psycopg (safe to splice into SQL text)."""
        return self.identifier.as_string(None)

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True, slots=True)
class CollectionConfig:
    name: str
    table: TableRef
    key: tuple[str, ...] | None  # None: the table's primary key
    columns: tuple[str, ...] | None  # None: every column
    read: Expression
    write: WriteConfig
    conflict: ConflictStrategy
    line: int | None  # where the collection is declared in the config file
    roles: tuple[str, ...] | None = None  # only callers with one of these roles
    read_line: int | None = None  # where `read:` is in the config file


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: LogLevel = "info"
    format: LogFormat = "auto"


@dataclass(frozen=True, slots=True)
class ObservabilityConfig:
    otlp_endpoint: str | None = None  # an OTLP/HTTP collector: spans exported there


@dataclass(frozen=True, slots=True)
class Config:
    file: str
    database: DatabaseConfig
    store: StoreConfig
    server: ServerConfig
    auth: AuthConfig
    limits: LimitsConfig
    log: LogConfig
    collections: Mapping[str, CollectionConfig] = field(hash=False)  # declaration order
    observability: ObservabilityConfig = field(default_factory=lambda: ObservabilityConfig())

    def secrets(self) -> tuple[str, ...]:
        """Values no log line may show: the JWT secret, the passwords of the database and
        of a PostgreSQL store, and the store's encryption key."""
        found = [self.auth.jwt.secret or "", self.store.encryption_key or ""]
        for url in (self.database.url, self.store.url):
            with contextlib.suppress(psycopg.ProgrammingError):
                found.append(str(conninfo_to_dict(url or "").get("password") or ""))
        return tuple(s for s in found if s)
