"""Phase 3 of loading a config: what the schema cannot say, building the frozen model.

`Builder` reads the structurally checked data section by section (database, store,
server, auth and its JWT, limits, log, then each collection) into `sidecar.config.model`,
adding the problems only it can find: durations, sizes and rates (`units`), rule
expressions parsed and located inside their scalar (`expressions`), an admin rule without
columns, JWT algorithms that fit the key, key and conflict columns among `columns`, claim
references in `write.set`, identifier lengths, and `store.path` resolved against the
config file's directory. A value the schema already refused is replaced by its default,
silently (the problem is reported once, by the schema).
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, TypeVar, cast

import psycopg
from pglast import ast
from psycopg.conninfo import conninfo_to_dict

from sidecar.config.expressions import Expression, ExpressionError, parse_expression
from sidecar.config.model import (
    CONFLICT_KINDS,
    MIN_MEMORY,
    WRITE_OPS,
    AuthConfig,
    ClaimsConfig,
    CollectionConfig,
    Config,
    ConflictKind,
    ConflictStrategy,
    DatabaseConfig,
    JwtConfig,
    LimitsConfig,
    LogConfig,
    LogFormat,
    LogLevel,
    ObservabilityConfig,
    Rate,
    ServerConfig,
    SetValue,
    StoreConfig,
    TableRef,
    TlsConfig,
    WriteConfig,
)
from sidecar.config.problems import KeyPath, Problems
from sidecar.config.tls import tls_file_problems
from sidecar.config.units import parse_duration, parse_rate, parse_size
from sidecar.rules.functions import FUNCTIONS

__all__ = ["Builder"]

T = TypeVar("T")
_CLAIM_REF = re.compile(r":[A-Za-z_][A-Za-z0-9_]*")
_LOG_LEVELS = ("debug", "info", "warning", "error")
_LOG_FORMATS = ("auto", "json", "console")
_MAX_IDENTIFIER = 63


def _section(raw: Any, key: str) -> dict[str, Any]:
    value = raw.get(key) if isinstance(raw, dict) else None
    return value if isinstance(value, dict) else {}


def _typed(raw: dict[str, Any], key: str, kind: type[T], default: T) -> T:
    """`raw[key]` when present and of `kind` (the schema reported anything else)."""
    value = raw.get(key, default)
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) and kind is not bool:
        return default
    return value if isinstance(value, kind) else default


def _optional_int(raw: dict[str, Any], key: str) -> int | None:
    """`raw[key]` when it is an integer; None when absent or null (the schema reported
    anything else)."""
    value = raw.get(key)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _optional_str(raw: dict[str, Any], key: str) -> str | None:
    value = raw.get(key)
    return value if isinstance(value, str) else None


def _leaf(path: KeyPath) -> str:
    """The key of a mapping value's path (its last part)."""
    key = path[-1]
    if not isinstance(key, str):
        raise TypeError(f"{path!r} does not end in a key")
    return key


def _nodes(root: Any) -> Iterator[Any]:
    """Every node of a pglast tree, `root` first."""
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        for name in getattr(type(node), "__slots__", ()):
            value = getattr(node, name, None)
            children = value if isinstance(value, tuple | list) else (value,)
            stack.extend(child for child in children if isinstance(child, ast.Node))


def _names(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    return None


class Builder:
    """Builds the model from validated data, adding the problems the schema cannot find."""

    def __init__(self, file: str, base_dir: str | None, problems: Problems) -> None:
        self.file = file
        self.base_dir = base_dir
        self.problems = problems

    def config(self, data: Any) -> Config:
        collections = _section(data, "collections")
        built = {name: self.collection(name, body) for name, body in collections.items()}
        database = self.database(_section(data, "database"))
        tables = {c.table.schema for c in built.values() if c is not None}
        return Config(
            file=self.file,
            database=database,
            store=self.store(_section(data, "store"), database.url, tables),
            server=self.server(_section(data, "server")),
            auth=self.auth(_section(data, "auth")),
            limits=self.limits(_section(data, "limits")),
            log=self.log(_section(data, "log")),
            observability=ObservabilityConfig(
                _optional_str(_section(data, "observability"), "otlp_endpoint")
            ),
            collections=MappingProxyType({k: c for k, c in built.items() if c is not None}),
        )

    # -- converted values

    def duration(
        self, raw: dict[str, Any], path: KeyPath, default: float, *, allow_zero: bool = False
    ) -> float:
        key = _leaf(path)
        if key not in raw:
            return default
        try:
            return parse_duration(raw[key], allow_zero=allow_zero)
        except ValueError as error:
            self.problems.add(path, str(error))
            return default

    def size(self, raw: dict[str, Any], path: KeyPath, default: int) -> int:
        key = _leaf(path)
        if key not in raw:
            return default
        try:
            return parse_size(raw[key])
        except ValueError as error:
            self.problems.add(path, str(error))
            return default

    def memory(self, raw: dict[str, Any], default: int) -> int:
        path: KeyPath = ("limits", "memory")
        budget = self.size(raw, path, default)
        if budget < MIN_MEMORY:
            self.problems.add(path, f"{raw['memory']}: must be at least 16MiB")
            return default
        return budget

    def rate(self, raw: dict[str, Any], path: KeyPath) -> Rate | None:
        key = _leaf(path)
        if raw.get(key) is None:
            return None
        try:
            return parse_rate(raw[key])
        except ValueError as error:
            self.problems.add(path, str(error))
            return None

    def expression(self, raw: dict[str, Any], path: KeyPath) -> Expression | None:
        text = raw.get(_leaf(path))
        if not isinstance(text, str) or not text:
            return None  # missing or not a string: the schema said so
        try:
            return parse_expression(text)
        except RecursionError:
            self.problems.add(path, "invalid expression: nested too deeply")
            return None
        except ExpressionError as error:
            near = f" (near {error.token!r})" if error.token else ""
            line = self.problems.where.line_in_scalar(path, text, error)
            self.problems.add(path, f"invalid expression: {error.message}{near}", line=line)
            return None

    # -- sections

    def database(self, raw: dict[str, Any]) -> DatabaseConfig:
        defaults = DatabaseConfig(url="")
        url = _typed(raw, "url", str, "")
        if "url" in raw and isinstance(raw["url"], str) and not url.strip():
            self.problems.add(("database", "url"), "must not be empty")
        return DatabaseConfig(
            url=url,
            publication=_typed(raw, "publication", str, defaults.publication),
            slot=_typed(raw, "slot", str, defaults.slot),
            create_publication=_typed(raw, "create_publication", bool, defaults.create_publication),
            pool_size=_typed(raw, "pool_size", int, defaults.pool_size),
        )

    def store(self, raw: dict[str, Any], app_url: str, app_schemas: set[str]) -> StoreConfig:
        defaults = StoreConfig()
        path = _typed(raw, "path", str, defaults.path)
        retention = self.duration(
            raw, ("store", "tombstone_retention"), defaults.tombstone_retention
        )
        url = _typed(raw, "url", str, "").strip() or None
        schema = _typed(raw, "schema", str, defaults.schema)
        key = _typed(raw, "encryption_key", str, "") or None
        if key is not None and url is not None:
            self.problems.add(
                ("store", "encryption_key"),
                "encrypts the SQLite store only: a PostgreSQL store (store.url) relies on the "
                "server's disk encryption, TLS and privileges (docs/ops.md)",
            )
        elif key is not None and importlib.util.find_spec("sqlcipher3") is None:
            self.problems.add(
                ("store", "encryption_key"),
                "needs the SQLCipher binding: pip install 'sidecar[encryption]' (sqlcipher3)",
            )
        takeover = self.duration(raw, ("store", "takeover_timeout"), defaults.takeover_timeout)
        if takeover < 3:
            self.problems.add(
                ("store", "takeover_timeout"),
                "must be at least 3s (the leader's lost session is detected by TCP keepalives "
                "counted in whole seconds)",
            )
        if url is not None:
            if "path" in raw:
                self.problems.add(
                    ("store", "url"),
                    "store.path and store.url name two stores: keep one (path: an embedded "
                    "SQLite file; url: a PostgreSQL database)",
                )
            self.store_place(url, schema, app_url, app_schemas)
            return StoreConfig(
                path=defaults.path,
                tombstone_retention=retention,
                url=url,
                schema=schema,
                takeover_timeout=takeover,
            )
        if path == ":memory:":
            self.problems.add(
                ("store", "path"),
                "must be a file: the store is read from several threads and must survive "
                "restarts (e.g. ./data/sidecar.db)",
            )
        return StoreConfig(
            path=self.store_path(path), tombstone_retention=retention, encryption_key=key
        )

    def store_place(self, url: str, schema: str, app_url: str, app_schemas: set[str]) -> None:
        """A PostgreSQL store never goes into the application's own schema: in the
        application's database (same host, port and database name), its schema must be
        neither `public` nor a schema of a synced table."""
        try:
            store, app = conninfo_to_dict(url), conninfo_to_dict(app_url)
        except psycopg.ProgrammingError as error:
            self.problems.add(("store", "url"), f"not a connection URL: {error}")
            return

        def place(info: Mapping[str, Any]) -> tuple[str, str, str]:
            return (
                str(info.get("host") or ""),
                str(info.get("port") or "5432"),
                str(info.get("dbname") or info.get("user") or ""),
            )

        if place(store) != place(app):
            return
        if schema == "public" or schema in app_schemas:
            self.problems.add(
                ("store", "schema"),
                f"{schema!r} is the application's own schema in its database: give the store "
                "a schema of its own (e.g. sidecar_store) or another database",
            )

    def store_path(self, path: str) -> str:
        if path == ":memory:":
            return path
        path = os.path.expanduser(path)
        if self.base_dir is None or os.path.isabs(path):
            return path
        return os.path.normpath(os.path.join(self.base_dir, path))

    def server(self, raw: dict[str, Any]) -> ServerConfig:
        defaults = ServerConfig()
        port = _typed(raw, "port", int, defaults.port)
        admin_port = _optional_int(raw, "admin_port")
        if admin_port is not None and admin_port == port:
            self.problems.add(
                ("server", "admin_port"),
                f"{admin_port} is server.port: give the admin listener a port of its own",
            )
        return ServerConfig(
            host=_typed(raw, "host", str, defaults.host),
            port=port,
            ready_max_lag=(
                self.duration(raw, ("server", "ready_max_lag"), 0.0)
                if raw.get("ready_max_lag") is not None
                else None
            ),
            tls=self.tls(raw.get("tls")),
            admin_port=admin_port,
            admin_host=_typed(raw, "admin_host", str, defaults.admin_host),
        )

    def tls(self, raw: Any) -> TlsConfig | None:
        """`server.tls`, its paths resolved like store.path and its files read now, so a
        missing, unreadable or mismatched file is a located problem, not a failed start."""
        if not isinstance(raw, dict) or not isinstance(raw.get("cert"), str):
            return None  # absent, null, or the schema reported it
        if not isinstance(raw.get("key"), str):
            return None
        ca = _optional_str(raw, "client_ca")
        tls = TlsConfig(
            cert=self.store_path(raw["cert"]),
            key=self.store_path(raw["key"]),
            client_ca=self.store_path(ca) if ca else None,
            bind_claim=_optional_str(raw, "bind_claim"),
        )
        if tls.bind_claim is not None and tls.client_ca is None:
            self.problems.add(
                ("server", "tls", "bind_claim"),
                "needs server.tls.client_ca (the claim is matched against the client "
                "certificate's subject CN)",
            )
        for key, message in tls_file_problems(tls):
            self.problems.add(("server", "tls", key), message)
        return tls

    def auth(self, raw: dict[str, Any]) -> AuthConfig:
        claims = _section(raw, "claims")
        defaults = ClaimsConfig()
        return AuthConfig(
            jwt=self.jwt(_section(raw, "jwt")),
            claims=ClaimsConfig(
                user=_typed(claims, "user", str, defaults.user),
                device=_typed(claims, "device", str, defaults.device),
                scope=_typed(claims, "scope", str, defaults.scope),
                roles=_typed(claims, "roles", str, defaults.roles),
            ),
            admin=self.admin(raw),
        )

    def admin(self, raw: dict[str, Any]) -> Expression | None:
        rule = self.expression(raw, ("auth", "admin"))
        if rule is not None and rule.columns:
            columns = ", ".join(sorted(rule.columns))
            self.problems.add(
                ("auth", "admin"), f"may only use :claims, not columns (found {columns})"
            )
        return rule

    def jwt(self, raw: dict[str, Any]) -> JwtConfig:
        defaults = JwtConfig()
        secret = _optional_str(raw, "secret")
        jwks = _optional_str(raw, "jwks")
        fallback = ("RS256", "ES256") if jwks and not secret else defaults.algorithms
        algorithms = _names(raw.get("algorithms")) or fallback
        self.check_algorithms(algorithms, secret, jwks)
        return JwtConfig(
            secret=secret,
            jwks=jwks,
            issuer=_optional_str(raw, "issuer"),
            audience=_optional_str(raw, "audience"),
            algorithms=algorithms,
            leeway=self.duration(raw, ("auth", "jwt", "leeway"), defaults.leeway, allow_zero=True),
            max_age=(
                self.duration(raw, ("auth", "jwt", "max_age"), 0.0)
                if raw.get("max_age") is not None
                else None
            ),
        )

    def check_algorithms(
        self, algorithms: tuple[str, ...], secret: str | None, jwks: str | None
    ) -> None:
        if bool(secret) == bool(jwks):
            return  # the schema reported "exactly one of"
        path: KeyPath = ("auth", "jwt", "algorithms")
        for index, name in enumerate(algorithms):
            if secret and not name.startswith("HS"):
                message = "a secret verifies HMAC tokens only: use HS256, HS384 or HS512"
                self.problems.add((*path, index), f"{name}: {message}")
            if jwks and name.startswith("HS"):
                message = "HMAC algorithms cannot be used with jwks (public keys)"
                self.problems.add((*path, index), f"{name}: {message}")

    def limits(self, raw: dict[str, Any]) -> LimitsConfig:
        defaults = LimitsConfig()
        return LimitsConfig(
            max_page=_typed(raw, "max_page", int, defaults.max_page),
            max_push=_typed(raw, "max_push", int, defaults.max_push),
            max_body=self.size(raw, ("limits", "max_body"), defaults.max_body),
            max_page_bytes=self.size(raw, ("limits", "max_page_bytes"), defaults.max_page_bytes),
            rate=self.rate(raw, ("limits", "rate")),
            pull_wait=self.duration(raw, ("limits", "pull_wait"), defaults.pull_wait),
            push_lock_timeout=self.duration(
                raw, ("limits", "push_lock_timeout"), defaults.push_lock_timeout
            ),
            push_statement_timeout=self.duration(
                raw, ("limits", "push_statement_timeout"), defaults.push_statement_timeout
            ),
            live_per_subject=_typed(raw, "live_per_subject", int, defaults.live_per_subject),
            live_total=_typed(raw, "live_total", int, defaults.live_total),
            page_cache=self.size(raw, ("limits", "page_cache"), defaults.page_cache),
            memory=self.memory(raw, defaults.memory),
            client_timeout=self.duration(
                raw, ("limits", "client_timeout"), defaults.client_timeout
            ),
            header_timeout=self.duration(
                raw, ("limits", "header_timeout"), defaults.header_timeout
            ),
            keepalive_timeout=self.duration(
                raw, ("limits", "keepalive_timeout"), defaults.keepalive_timeout
            ),
            max_connections=_optional_int(raw, "max_connections"),
            unauthenticated_rate=(
                self.rate(raw, ("limits", "unauthenticated_rate"))
                if "unauthenticated_rate" in raw
                else defaults.unauthenticated_rate
            ),
        )

    def log(self, raw: dict[str, Any]) -> LogConfig:
        defaults = LogConfig()
        level = raw.get("level", defaults.level)
        form = raw.get("format", defaults.format)
        return LogConfig(
            level=cast(LogLevel, level) if level in _LOG_LEVELS else defaults.level,
            format=cast(LogFormat, form) if form in _LOG_FORMATS else defaults.format,
        )

    # -- collections

    def collection(self, name: str, raw: Any) -> CollectionConfig | None:
        raw = raw if isinstance(raw, dict) else {}
        path: KeyPath = ("collections", name)
        table = self.table(raw.get("table"), (*path, "table"))
        key, columns = _names(raw.get("key")), _names(raw.get("columns"))
        self.check_among(key, columns, (*path, "key"), "key column")
        read = self.expression(raw, (*path, "read"))
        if read is not None:
            self.check_stable(read, (*path, "read"))
        write = self.write(_section(raw, "write"), (*path, "write"))
        conflict = self.conflict(raw.get("conflict", "reject"), columns, (*path, "conflict"))
        if table is None or read is None:
            return None
        return CollectionConfig(
            name=name,
            table=table,
            key=key,
            columns=columns,
            read=read,
            write=write,
            conflict=conflict,
            line=self.problems.where.line(path, at_key=True),
            roles=_names(raw.get("roles")),
            read_line=self.problems.where.line((*path, "read")),
        )

    def check_stable(self, rule: Expression, path: KeyPath) -> None:
        """A read rule is evaluated when rows change (their scopes are stored), not when
        they are read: a function whose value changes per call (`now()`) cannot be in it."""
        for node in _nodes(rule.node):
            if not isinstance(node, ast.FuncCall):
                continue
            name = str((node.funcname or ())[-1].sval)
            function = FUNCTIONS.get(name)
            if function is None or not function.volatile:
                continue
            error = rule.error(
                f"{name}() cannot be used in a read rule: rows are scoped when they change, "
                "not when they are read (use it in write.check or write.where instead)",
                node,
            )
            near = f" (near {error.token!r})" if error.token else ""
            line = self.problems.where.line_in_scalar(path, rule.text, error)
            self.problems.add(path, f"invalid expression: {error.message}{near}", line=line)
            return

    def table(self, value: Any, path: KeyPath) -> TableRef | None:
        if not isinstance(value, str):
            return None
        schema, _, name = value.rpartition(".")
        for part in (schema, name):
            if len(part) > _MAX_IDENTIFIER:
                self.problems.add(path, f"{part!r} is longer than {_MAX_IDENTIFIER} characters")
        return TableRef(schema or "public", name)

    def check_among(
        self,
        names: tuple[str, ...] | None,
        columns: tuple[str, ...] | None,
        path: KeyPath,
        what: str,
    ) -> None:
        if names is None or columns is None:
            return
        for index, name in enumerate(names):
            if name not in columns:
                listed = ", ".join(columns)
                self.problems.add((*path, index), f"{what} {name!r} is not among columns: {listed}")

    def write(self, raw: dict[str, Any], path: KeyPath) -> WriteConfig:
        ops = _names(raw.get("ops")) or ()
        return WriteConfig(
            ops=tuple(op for op in ops if op in WRITE_OPS),
            set=self.set_values(raw.get("set"), (*path, "set")),
            immutable=_names(raw.get("immutable")) or (),
            check=self.expression(raw, (*path, "check")),
            where=self.expression(raw, (*path, "where")),
        )

    def set_values(self, raw: Any, path: KeyPath) -> Mapping[str, SetValue]:
        if not isinstance(raw, dict):
            return MappingProxyType({})
        for column, value in raw.items():
            if isinstance(value, str) and value.startswith(":") and not _CLAIM_REF.fullmatch(value):
                self.problems.add(
                    (*path, column),
                    f"{value!r}: a claim is written ':' and its name, e.g. ':sub'"
                    " (values starting with ':' always name a claim)",
                )
        return MappingProxyType(dict(raw))

    def conflict(
        self, value: Any, columns: tuple[str, ...] | None, path: KeyPath
    ) -> ConflictStrategy:
        if isinstance(value, str) and value in CONFLICT_KINDS and value != "latest_wins":
            return ConflictStrategy(cast(ConflictKind, value))
        column = value.get("latest_wins") if isinstance(value, dict) else None
        if not isinstance(column, str):
            return ConflictStrategy()  # the schema reported it
        if columns is not None and column not in columns:
            listed = ", ".join(columns)
            self.problems.add(
                (*path, "latest_wins"), f"column {column!r} is not among columns: {listed}"
            )
        return ConflictStrategy("latest_wins", column)
