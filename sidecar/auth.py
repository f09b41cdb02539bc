"""Tokens → Principal (subject, device, claims).

Verified by PyJWT (never hand-written crypto): HS256/384/512 with a shared secret, or
RS*/PS*/ES*/EdDSA with public keys from a JWKS file or URL. Only the configured
algorithms are accepted (never `none`; HMAC and public-key algorithms never mix, so a
public key cannot be used as an HMAC secret). The key set is fetched with aiohttp, cached,
and refreshed when a token names a key id it does not know (at most every 30 s).
Every failure is a 401 `unauthorized` whose reason helps a developer and leaks nothing.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import aiohttp
import jwt
import orjson
import structlog

from sidecar.config.model import AuthConfig
from sidecar.errors import Unauthorized

log = structlog.get_logger("sidecar.auth")

_HMAC = ("HS256", "HS384", "HS512")
JWKS_TTL = 600.0  # a fetched key set is trusted this long
JWKS_MIN_REFRESH = 30.0  # an unknown kid refreshes the set at most this often
JWKS_MAX_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's subject and device, and every claim for the rules."""

    subject: str
    device: str | None
    claims: Mapping[str, Any] = field(hash=False)


_TIME_CLAIMS = ("exp", "nbf", "iat")


def _is_numeric_date(value: Any) -> bool:
    """A JSON number that is a finite double (PyJWT also takes `"1700000000"` and `true`)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def seconds_left(principal: Principal) -> float | None:
    """Seconds until the caller's token expires (`exp`; negative once it has), or None
    when it carries no `exp`. Long-lived requests end by then."""
    exp = principal.claims.get("exp")
    if exp is None or not _is_numeric_date(exp):
        return None
    return float(exp) - time.time()


class KeySet:
    """Public keys from a JWKS document (a file path or an http(s) URL), by key id."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.keys: dict[str | None, jwt.PyJWK] = {}
        self.fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def key(self, kid: str | None) -> jwt.PyJWK:
        now = time.monotonic()
        stale = now - self.fetched_at > JWKS_TTL
        unknown = kid not in self.keys and now - self.fetched_at > JWKS_MIN_REFRESH
        if stale or unknown:
            async with self._lock:
                if time.monotonic() - self.fetched_at > JWKS_MIN_REFRESH or not self.keys:
                    await self._refresh()
        if kid in self.keys:
            return self.keys[kid]
        if kid is None and len(self.keys) == 1:
            return next(iter(self.keys.values()))
        raise Unauthorized("token signed with an unknown key (kid)")

    async def _refresh(self) -> None:
        try:
            raw = await self._read()
            document = orjson.loads(raw)
            keys: dict[str | None, jwt.PyJWK] = {}
            for jwk in document.get("keys", []):
                try:
                    keys[jwk.get("kid")] = jwt.PyJWK(jwk)
                except jwt.PyJWTError as exc:
                    log.warning(
                        "skipped an unusable key in the JWKS", kid=jwk.get("kid"), reason=str(exc)
                    )
            self.keys = keys
        except (
            OSError,
            aiohttp.ClientError,
            TimeoutError,
            orjson.JSONDecodeError,
            AttributeError,
        ) as exc:
            log.warning("could not load the JWKS; keeping the keys we had", error=str(exc))
        finally:
            self.fetched_at = time.monotonic()

    async def _read(self) -> bytes:
        if not self.source.startswith(("http://", "https://")):
            return await asyncio.to_thread(Path(self.source).read_bytes)
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as http, http.get(self.source) as r:
            r.raise_for_status()
            body = await r.content.read(JWKS_MAX_BYTES + 1)
            if len(body) > JWKS_MAX_BYTES:
                raise OSError("JWKS document larger than 1 MiB")
            return body


class Authenticator:
    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        jc = config.jwt
        if jc.secret is not None:
            self.algorithms = [a for a in jc.algorithms if a in _HMAC] or ["HS256"]
            self.keyset: KeySet | None = None
        else:
            self.algorithms = [a for a in jc.algorithms if a not in _HMAC and a != "none"]
            self.keyset = KeySet(jc.jwks) if jc.jwks else None

    async def authenticate(self, header: str | None) -> Principal:
        """The principal of an `Authorization: Bearer <JWT>` header, or `Unauthorized`."""
        if not header:
            raise Unauthorized("missing Authorization header: send `Authorization: Bearer <JWT>`")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("the Authorization header must be `Bearer <JWT>`")
        return await self.verify(token.strip())

    async def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("token is malformed") from None
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise Unauthorized(f"token algorithm {alg!r} is not accepted here")
        if self.keyset is not None:
            kid = header.get("kid")
            jwk = await self.keyset.key(kid if isinstance(kid, str) else None)
            if jwk.algorithm_name != alg and not (
                jwk.key_type == "RSA" and alg.startswith(("RS", "PS"))
            ):
                raise Unauthorized("token algorithm does not match its key")
            key: Any = jwk.key
        elif self.config.jwt.secret is not None:
            key = self.config.jwt.secret
        else:
            raise Unauthorized("this sidecar has no key to verify tokens with")
        return self._principal(self._decode(token, key, alg))

    def _decode(self, token: str, key: Any, alg: str) -> dict[str, Any]:
        jc = self.config.jwt
        required = ["exp", "iat"] if jc.max_age is not None else ["exp"]
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=jc.audience,
                issuer=jc.issuer,
                leeway=jc.leeway,
                options={"verify_aud": jc.audience is not None, "require": required},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired: get a new one") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("token not valid yet (nbf/iat in the future)") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"token has no `{exc.claim}` claim") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("token audience (aud) is not accepted here") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("token issuer (iss) is not accepted here") from None
        except jwt.InvalidAlgorithmError:
            raise Unauthorized("token algorithm is not accepted here") from None
        except jwt.InvalidSignatureError:
            raise Unauthorized("token signature does not verify") from None
        except jwt.PyJWTError:
            raise Unauthorized("token is malformed") from None
        for name in _TIME_CLAIMS:
            if name in claims and not _is_numeric_date(claims[name]):
                raise Unauthorized(
                    f"token claim `{name}` must be a number (seconds since 1970, RFC 7519 "
                    "NumericDate), not a string or another value"
                )
        if jc.max_age is not None and time.time() - claims["iat"] > jc.max_age + jc.leeway:
            raise Unauthorized("token too old (auth.jwt.max_age since iat): get a new one")
        return claims

    def _principal(self, claims: dict[str, Any]) -> Principal:
        user = claims.get(self.config.claims.user)
        if user is None or isinstance(user, dict | list) or str(user) == "":
            raise Unauthorized(f"token has no usable `{self.config.claims.user}` claim")
        device = claims.get(self.config.claims.device)
        return Principal(
            subject=str(user),
            device=None if device is None else str(device),
            claims=MappingProxyType(dict(claims)),
        )
