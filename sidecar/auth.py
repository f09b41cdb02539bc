"""Tokens → Principal (subject, device, claims).

HS256/384/512 with a shared secret, verified by PyJWT (never hand-written crypto).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import jwt

from sidecar.config.model import AuthConfig
from sidecar.errors import Unauthorized

_HMAC = ("HS256", "HS384", "HS512")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's subject and device, and every claim for the rules."""

    subject: str
    device: str | None
    claims: Mapping[str, Any] = field(hash=False)


class Authenticator:
    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        self.algorithms = [a for a in config.jwt.algorithms if a in _HMAC] or ["HS256"]

    def authenticate(self, header: str | None) -> Principal:
        """The principal of an `Authorization: Bearer <JWT>` header, or `Unauthorized`."""
        if not header:
            raise Unauthorized("missing Authorization header: send `Authorization: Bearer <JWT>`")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("the Authorization header must be `Bearer <JWT>`")
        return self.verify(token.strip())

    def verify(self, token: str) -> Principal:
        jc = self.config.jwt
        if jc.secret is None:
            raise Unauthorized("this sidecar is not configured to verify HMAC tokens")
        options = {"verify_aud": jc.audience is not None}
        try:
            claims = jwt.decode(
                token,
                jc.secret,
                algorithms=self.algorithms,
                audience=jc.audience,
                issuer=jc.issuer,
                leeway=jc.leeway,
                options=options,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired: get a new one") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("token not valid yet (nbf/iat in the future)") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("token audience (aud) is not accepted here") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("token issuer (iss) is not accepted here") from None
        except jwt.InvalidAlgorithmError:
            raise Unauthorized("token algorithm is not allowed") from None
        except jwt.InvalidSignatureError:
            raise Unauthorized("token signature does not verify") from None
        except jwt.PyJWTError:
            raise Unauthorized("token is malformed") from None
        user = claims.get(self.config.claims.user)
        if user is None or isinstance(user, (dict, list)) or str(user) == "":
            raise Unauthorized(f"token has no usable `{self.config.claims.user}` claim")
        device = claims.get(self.config.claims.device)
        return Principal(
            subject=str(user),
            device=None if device is None else str(device),
            claims=MappingProxyType(dict(claims)),
        )
