"""Configs that are valid but risky: what `sidecar check` warns about (and `sidecar run`
logs once at start), without refusing them.

- writes allowed under a read rule with an OR-branch that names no claim (`is_public`,
  `true`) and no `write.where`: every caller may write the rows that branch admits;
- a read rule that admits every row (`read: "true"`) over every column (no `columns:`);
- `conflict: client_wins` on a collection with `write.immutable` columns;
- an HMAC secret shorter than its algorithm's hash (RFC 7518 §3.2: 32 bytes for HS256) or
  a value published with the demo, the Docker files or common examples;
- a database URL (`database.url`, `store.url`) to a host other than this one whose
  `sslmode` (or `PGSSLMODE`) is below `verify-full`: the server is not verified, so the
  password and every row may be read or changed on the way.

Messages never show a secret.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping

import psycopg
from psycopg.conninfo import conninfo_to_dict

from sidecar.config.model import CollectionConfig, Config, JwtConfig
from sidecar.rules.scopes import ReadRule

__all__ = ["KNOWN_SECRETS", "config_warnings"]

# Secrets shipped in this repository (sidecar/demo/demo.yaml, docker/compose.yaml) and in
# well-known examples (jwt.io's debugger): anyone can sign tokens with them.
KNOWN_SECRETS = frozenset(
    {
        "demo-secret-change-me-0123456789abcdef",
        "a-string-secret-at-least-256-bits-long",
        "your-256-bit-secret",
        "secret",
        "changeme",
        "change-me",
    }
)
MIN_SECRET_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}


def config_warnings(config: Config, read_rules: Mapping[str, ReadRule]) -> list[str]:
    """Every warning for `config`; `read_rules` are the collections' compiled read rules
    (those that compiled: a rule that did not is a preflight problem already)."""
    warnings = _secret_warnings(config.auth.jwt)
    warnings.extend(_sslmode_warning("database.url", config.database.url))
    if config.store.url is not None:
        warnings.extend(_sslmode_warning("store.url", config.store.url))
    for coll in config.collections.values():
        rule = read_rules.get(coll.name)
        if rule is not None:
            warnings.extend(_scope_warnings(coll, rule))
        if coll.conflict.kind == "client_wins" and coll.write.immutable and coll.write.ops:
            warnings.append(
                f"collection {coll.name!r}: conflict: client_wins with write.immutable "
                f"({', '.join(coll.write.immutable)}): any stale client overwrites the whole "
                "row, and a client's insert on an existing key becomes an update of it; "
                "immutable columns are refused, but consider merge or latest_wins"
            )
    return warnings


def _scope_warnings(coll: CollectionConfig, rule: ReadRule) -> list[str]:
    warnings = []
    where = f"collection {coll.name!r}"
    open_branches = rule.open_branches()
    if coll.write.ops and coll.write.where is None and open_branches:
        listed = "; ".join(open_branches)
        warnings.append(
            f"{where}: writes ({', '.join(coll.write.ops)}) are allowed under the read rule "
            f"{coll.read.text!r}, whose branch(es) {listed} name no :claim, so every caller "
            "may write the rows they admit: set write.where to the rows a caller may write "
            "(e.g. the part of the rule that names the caller)"
        )
    if rule.admits_every_row and coll.columns is None:
        warnings.append(
            f"{where}: read {coll.read.text!r} shows every row of {coll.table} to every "
            "authenticated caller, with every column (no columns:): list the columns to "
            "expose in columns:"
        )
    return warnings


def _secret_warnings(jwt: JwtConfig) -> list[str]:
    if jwt.secret is None:
        return []
    if jwt.secret in KNOWN_SECRETS:
        return [
            "auth.jwt.secret is a published example value (the demo's, the Docker files' or "
            "a well-known one): anyone can sign tokens for any user; set a random secret of "
            "your own (e.g. `openssl rand -base64 48`)"
        ]
    needed = max((MIN_SECRET_BYTES.get(a, 32) for a in jwt.algorithms), default=32)
    size = len(jwt.secret.encode())
    if size < needed:
        algorithms = ", ".join(jwt.algorithms)
        return [
            f"auth.jwt.secret is {size} bytes, shorter than the {needed} bytes {algorithms} "
            "needs (RFC 7518 §3.2): a short secret can be guessed offline from one token; "
            "use a random secret (e.g. `openssl rand -base64 48`)"
        ]
    return []


def _is_local(host: str) -> bool:
    """A Unix socket (a path, or none given) or a loopback name or address."""
    host = host.strip().strip("[]")
    if not host or host.startswith(("/", "@")) or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _sslmode_warning(key: str, url: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """A warning when `url` reaches a non-local host without verifying it (libpq reads
    the host and sslmode the URL does not give from PGHOST/PGHOSTADDR/PGSSLMODE)."""
    env = os.environ if environ is None else environ
    try:
        info = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return []  # not a URL: the connection itself says so
    hosts = [
        h
        for name, var in (("host", "PGHOST"), ("hostaddr", "PGHOSTADDR"))
        for h in str(info.get(name) or env.get(var) or "").split(",")
    ]
    remote = [h.strip() for h in hosts if not _is_local(h)]
    if not remote:
        return []
    mode = str(info.get("sslmode") or env.get("PGSSLMODE") or "")
    if mode == "verify-full":
        return []
    said = f"sslmode={mode}" if mode else "no sslmode (libpq's default: prefer)"
    return [
        f"{key} connects to {', '.join(dict.fromkeys(remote))} with {said}: the server's "
        "certificate is not verified, so the password and every row can be read or changed "
        "on the way; add sslmode=verify-full (and sslrootcert=<the CA file>) to the URL"
    ]
