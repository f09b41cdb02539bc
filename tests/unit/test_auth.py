"""Tokens: a corpus of bad ones all get 401 with a useful reason; good ones give a principal."""

from __future__ import annotations

import base64
import json
import time
import warnings
from pathlib import Path

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from sidecar import auth as auth_module
from sidecar.auth import Authenticator
from sidecar.config.model import AuthConfig, ClaimsConfig, JwtConfig
from sidecar.errors import Unauthorized

SECRET = "a-test-secret-that-is-long-enough-0123456789"
NOW = int(time.time())


def claims(**extra: object) -> dict:
    return {"sub": "42", "device_id": "d1", "iat": NOW, "exp": NOW + 86_400, **extra}


def hmac_auth(**jwt_kw: object) -> Authenticator:
    return Authenticator(AuthConfig(JwtConfig(secret=SECRET, **jwt_kw), ClaimsConfig()))  # type: ignore[arg-type]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_good_hmac_token_gives_principal() -> None:
    p = await hmac_auth().authenticate("Bearer " + jwt.encode(claims(role="x"), SECRET, "HS256"))
    assert (p.subject, p.device, p.claims["role"]) == ("42", "d1", "x")


BAD_HMAC = {
    "garbage": "not-a-token",
    "empty segments": "..",
    "wrong signature": jwt.encode(claims(), SECRET + "x", "HS256"),
    "expired": jwt.encode(claims(exp=NOW - 3600), SECRET, "HS256"),
    "not yet valid": jwt.encode(claims(nbf=NOW + 3600), SECRET, "HS256"),
    "no exp": jwt.encode({"sub": "42"}, SECRET, "HS256"),
    "no sub": jwt.encode({"exp": NOW + 86_400}, SECRET, "HS256"),
    "object sub": jwt.encode(claims(sub={"a": 1}), SECRET, "HS256"),
    "alg none": b64(b'{"alg":"none","typ":"JWT"}') + "." + b64(json.dumps(claims()).encode()) + ".",
}
with warnings.catch_warnings():  # a short key for HS512 is the point of this case
    warnings.simplefilter("ignore")
    BAD_HMAC["alg not allowed"] = jwt.encode(claims(), SECRET, "HS512")


@pytest.mark.parametrize("name", sorted(BAD_HMAC))
async def test_bad_hmac_tokens_are_refused(name: str) -> None:
    with pytest.raises(Unauthorized) as caught:
        await hmac_auth(algorithms=("HS256",)).authenticate("Bearer " + BAD_HMAC[name])
    assert caught.value.status == 401 and caught.value.detail
    assert SECRET not in caught.value.detail


async def test_tampered_claims_are_refused() -> None:
    token = jwt.encode(claims(), SECRET, "HS256")
    head, _, sig = token.split(".")
    forged = b64(json.dumps(claims(sub="1", role="admin")).encode())
    with pytest.raises(Unauthorized, match="signature"):
        await hmac_auth().authenticate(f"Bearer {head}.{forged}.{sig}")


@pytest.mark.parametrize(
    ("kw", "extra", "reason"),
    [
        ({"audience": "app"}, {"aud": "other"}, "audience"),
        ({"audience": "app"}, {}, "aud"),
        ({"issuer": "https://id.example"}, {"iss": "https://evil.example"}, "issuer"),
    ],
)
async def test_audience_and_issuer(kw: dict, extra: dict, reason: str) -> None:
    with pytest.raises(Unauthorized, match=reason):
        await hmac_auth(**kw).authenticate("Bearer " + jwt.encode(claims(**extra), SECRET, "HS256"))
    good = {"aud": kw.get("audience"), "iss": kw.get("issuer")}
    good = {k: v for k, v in good.items() if v}
    p = await hmac_auth(**kw).authenticate("Bearer " + jwt.encode(claims(**good), SECRET, "HS256"))
    assert p.subject == "42"


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer", "Bearer   "])
async def test_bad_headers(header: str | None) -> None:
    with pytest.raises(Unauthorized):
        await hmac_auth().authenticate(header)


# -- public keys (JWKS) -------------------------------------------------------------------


def _keys() -> dict[str, tuple[object, str]]:
    return {
        "rsa": (rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),
        "ec": (ec.generate_private_key(ec.SECP256R1()), "ES256"),
        "ed": (ed25519.Ed25519PrivateKey.generate(), "EdDSA"),
    }


def _jwks(keys: dict[str, tuple[object, str]]) -> dict:
    out = []
    for kid, (private, alg) in keys.items():
        jwk = json.loads(_public_jwk(private, alg))
        jwk.update({"kid": kid, "alg": alg, "use": "sig"})
        out.append(jwk)
    return {"keys": out}


def _public_jwk(private: object, alg: str) -> str:
    algo = jwt.get_algorithm_by_name(alg)
    return algo.to_jwk(private.public_key())  # type: ignore[attr-defined]


def jwks_auth(
    source: str, algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA")
) -> Authenticator:
    return Authenticator(AuthConfig(JwtConfig(jwks=source, algorithms=algorithms), ClaimsConfig()))


async def test_jwks_file_with_rsa_ec_and_eddsa(tmp_path: Path) -> None:
    keys = _keys()
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(_jwks(keys)))
    a = jwks_auth(str(path))
    for kid, (private, alg) in keys.items():
        token = jwt.encode(claims(), private, alg, headers={"kid": kid})  # type: ignore[arg-type]
        assert (await a.authenticate("Bearer " + token)).subject == "42"


async def test_jwks_bad_tokens(tmp_path: Path) -> None:
    keys = _keys()
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(_jwks(keys)))
    a = jwks_auth(str(path))
    rsa_key = keys["rsa"][0]
    public_pem = rsa_key.public_key().public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cases = {
        # alg confusion: an HMAC token whose secret is the server's public key
        "hs256 with public key": _hs256_with_secret(public_pem),
        "unknown kid": jwt.encode(claims(), other, "RS256", headers={"kid": "nope"}),
        "wrong key for kid": jwt.encode(claims(), other, "RS256", headers={"kid": "rsa"}),
        "alg of another key type": jwt.encode(claims(), rsa_key, "RS256", headers={"kid": "ec"}),
        "expired": jwt.encode(claims(exp=NOW - 999), rsa_key, "RS256", headers={"kid": "rsa"}),
    }
    for name, token in cases.items():
        with pytest.raises(Unauthorized):
            await a.authenticate("Bearer " + token)
        assert name


def _hs256_with_secret(secret: bytes) -> str:
    head = b64(b'{"alg":"HS256","typ":"JWT","kid":"rsa"}')
    body = b64(json.dumps(claims()).encode())
    import hashlib
    import hmac

    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


async def test_jwks_url_is_fetched_and_refreshed_on_unknown_kid(monkeypatch) -> None:
    monkeypatch.setattr(auth_module, "JWKS_MIN_REFRESH", 0.0)
    keys = _keys()
    served = {"doc": _jwks({"rsa": keys["rsa"]}), "hits": 0}

    async def handler(request: web.Request) -> web.Response:
        served["hits"] += 1
        return web.json_response(served["doc"])

    app = web.Application()
    app.router.add_get("/jwks", handler)
    server = TestServer(app)
    await server.start_server()
    try:
        a = jwks_auth(str(server.make_url("/jwks")))
        ok = jwt.encode(claims(), keys["rsa"][0], "RS256", headers={"kid": "rsa"})  # type: ignore[arg-type]
        assert (await a.authenticate("Bearer " + ok)).subject == "42"
        assert (await a.authenticate("Bearer " + ok)).subject == "42"
        assert served["hits"] == 1  # cached
        served["doc"] = _jwks(keys)  # key rotation: a new kid appears
        rotated = jwt.encode(claims(), keys["ec"][0], "ES256", headers={"kid": "ec"})  # type: ignore[arg-type]
        assert (await a.authenticate("Bearer " + rotated)).subject == "42"
        assert served["hits"] == 2
    finally:
        await server.close()


async def test_max_age_refuses_old_tokens_and_tokens_without_iat() -> None:
    a = hmac_auth(max_age=3600.0, leeway=0.0)
    now = int(time.time())
    fresh = jwt.encode(claims(iat=now - 60), SECRET, "HS256")
    assert (await a.verify(fresh)).subject == "42"
    old = jwt.encode(claims(iat=now - 7200, exp=now + 3600), SECRET, "HS256")
    with pytest.raises(Unauthorized, match="too old"):
        await a.verify(old)
    no_iat = {k: v for k, v in claims().items() if k != "iat"}
    with pytest.raises(Unauthorized, match="`iat`"):
        await a.verify(jwt.encode(no_iat, SECRET, "HS256"))
    assert (await hmac_auth().verify(old)).subject == "42"  # without max_age: exp rules
