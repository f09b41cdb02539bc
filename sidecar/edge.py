"""Request helpers shared by the HTTP handlers (`sidecar.http`) and the protocol adapters
(`adapters`): the service and the authenticated caller of a request, the bounded JSON
body, query parameters within bounds, ETag revalidation and JSON answers.

Nothing here decides anything about sync: these only turn requests into values for the
core and values into answers. The app factory stores the service under `SERVICE`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import orjson
import structlog
from aiohttp import web

from sidecar.auth import Principal
from sidecar.errors import (
    CertificateMismatch,
    InvalidRequest,
    PayloadTooLarge,
    RequestTimeout,
    Unauthorized,
)
from sidecar.ratelimit import Quota
from sidecar.service import Service

SERVICE = web.AppKey("service", Service)
RATE_QUOTA = web.RequestKey("rate_quota", Quota)
"""The quota of the rate limit the request spent (its RateLimit-* headers)."""
COMPRESS_FROM = 1400  # bytes: smaller JSON bodies are sent as they are (one packet anyway)


def service_of(request: web.Request) -> Service:
    """The started service the app serves."""
    return request.app[SERVICE]


async def principal_of(request: web.Request) -> Principal:
    """The authenticated caller, who also spends one token of their subject's rate limit
    (`limits.rate`, shared by all their devices). A token refused with 401 spends one of
    the client address's `limits.unauthenticated_rate` (429 once it is spent). Over mutual
    TLS with `server.tls.bind_claim`, the token's claim must name the client certificate
    (403 `certificate_mismatch`)."""
    service = service_of(request)
    try:
        principal = await service.auth.authenticate(request.headers.get("Authorization"))
    except Unauthorized:
        count_unauthenticated(request)
        raise
    structlog.contextvars.bind_contextvars(subject=principal.subject)  # on every log line
    if service.limiter is not None:
        request[RATE_QUOTA] = service.limiter.take(principal.subject)
    tls = service.config.server.tls
    if tls is not None and tls.bind_claim is not None and _over_tls(request):
        _check_binding(principal, client_certificate(request), tls.bind_claim)
    return principal


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """The verified certificate a client presented over mutual TLS (`server.tls.client_ca`)."""

    cn: str | None  # the subject's common name
    fingerprint: str  # SHA-256 of the DER certificate, lowercase hex


def _over_tls(request: web.Request) -> bool:
    transport = request.transport
    return transport is not None and transport.get_extra_info("ssl_object") is not None


def client_certificate(request: web.Request) -> ClientCertificate | None:
    """The client's verified certificate, when the request came over mutual TLS."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    info = ssl_object.getpeercert()  # empty unless the certificate was verified
    if not der or not info:
        return None
    names = [v for rdn in info.get("subject", ()) for k, v in rdn if k == "commonName"]
    return ClientCertificate(names[0] if names else None, hashlib.sha256(der).hexdigest())


def bind_client_certificate(request: web.Request) -> None:
    """Put the client certificate's CN and fingerprint on the request's log lines."""
    cert = client_certificate(request)
    if cert is not None:
        structlog.contextvars.bind_contextvars(client_cn=cert.cn, client_cert=cert.fingerprint)


def _check_binding(principal: Principal, cert: ClientCertificate | None, claim: str) -> None:
    claimed = principal.claims.get(claim)
    if cert is None or cert.cn is None or not isinstance(claimed, str) or claimed != cert.cn:
        raise CertificateMismatch(
            f"the token's {claim} claim does not name the client certificate of this "
            "connection (its subject CN; server.tls.bind_claim)",
        )


_PUBLIC: set[object] = set()
Handler = TypeVar("Handler", bound=Callable[[web.Request], Awaitable[web.StreamResponse]])


def public(handler: Handler) -> Handler:
    """Marks a handler that answers without a token (`/healthz`, `/metrics`, a CORS
    preflight, …): each of its requests spends one of the client address's
    `limits.unauthenticated_rate` (`is_public`, counted by the middleware)."""
    _PUBLIC.add(handler)
    return handler


def is_public(request: web.Request) -> bool:
    """The request goes to a `public` handler, or to no handler at all (404, 405)."""
    route = request.match_info.route
    return route.resource is None or route.handler in _PUBLIC


def count_unauthenticated(request: web.Request) -> None:
    """Spend one token of the client address's `limits.unauthenticated_rate`, or raise
    RateLimited (429 with Retry-After)."""
    limiter = service_of(request).ip_limiter
    if limiter is not None:
        request[RATE_QUOTA] = limiter.take(
            request.remote or "unknown", "this address (limits.unauthenticated_rate)"
        )


async def json_body(request: web.Request, max_body: int, timeout: float = 30.0) -> object:
    """The request body parsed as JSON: 413 past `max_body` bytes, 408 when it does not
    arrive within `timeout` seconds, 400 when it is not JSON."""
    if request.content_length is not None and request.content_length > max_body:
        raise PayloadTooLarge(f"the body is larger than {max_body} bytes (limits.max_body)")
    try:
        async with asyncio.timeout(timeout):
            raw = await request.read()
    except TimeoutError:
        raise RequestTimeout(
            f"the body did not arrive within {timeout:g}s (limits.client_timeout)"
        ) from None
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(
            f"the body is larger than {max_body} bytes (limits.max_body)"
        ) from None
    try:
        body = orjson.loads(raw)  # what JSON is: UTF-8, no lone surrogates, no NaN, depth
        return _exact_json(raw) if _LONG_NUMBER.search(raw) else body
    except (orjson.JSONDecodeError, ValueError) as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequest("the body is not valid JSON: nested too deep") from None


# 19 digits in a row: maybe an integer beyond 64 bits, which orjson reads as a float
# (losing digits). Such bodies, valid JSON for orjson, are read again by the standard
# library, which keeps integers exact.
_LONG_NUMBER = re.compile(rb"[0-9]{19}")


def _exact_json(raw: bytes) -> object:
    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"number {text[:40]} is out of range")
        return value

    def constant(text: str) -> object:
        raise ValueError(f"{text} is not JSON")

    return json.loads(raw, parse_float=finite, parse_constant=constant)


# -- query parameters -----------------------------------------------------------------------


def int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    """Query parameter `name` as an integer in [lo, hi]; `default` when absent or empty."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer", parameter=name) from None
    if not lo <= value <= hi:
        raise InvalidRequest(f"{name} must be between {lo} and {hi}", parameter=name)
    return value


def bool_param(request: web.Request, name: str) -> bool:
    """Query parameter `name` as a boolean (true/1/yes, false/0/no); false when absent."""
    raw = request.query.get(name, "false").lower()
    if raw in ("true", "1", "yes"):
        return True
    if raw in ("false", "0", "no", ""):
        return False
    raise InvalidRequest(f"{name} must be true or false", parameter=name)


def float_param(request: web.Request, name: str, default: float, hi: float) -> float:
    """Query parameter `name` as seconds in [0, hi]; `default` when absent or empty."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be a number of seconds", parameter=name) from None
    if not 0 <= value <= hi:
        raise InvalidRequest(f"{name} must be between 0 and {hi:g}", parameter=name)
    return value


# -- answers --------------------------------------------------------------------------------


def json_response(body: object, status: int = 200) -> web.Response:
    """`body` as a JSON answer."""
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def etag_of(body: bytes) -> str:
    """A strong ETag over the exact bytes of an answer."""
    return '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


def etags_in(header: str) -> set[str]:
    """The entity tags of an `If-None-Match` value, weak ones (`W/"…"`) as their strong
    form: revalidation compares weakly."""
    tags = {t.strip() for t in header.split(",") if t.strip()}
    return {t[2:] if t.startswith("W/") else t for t in tags}


def revalidated(
    request: web.Request, body: bytes, cache_control: str, etag: str | None = None
) -> web.Response:
    """A JSON answer that depends on the token: an ETag over the exact bytes, 304 when the
    client already has them, gzip when accepted and worth it."""
    etag = etag or etag_of(body)
    headers = {"ETag": etag, "Cache-Control": cache_control, "Vary": "Authorization"}
    if etag in etags_in(request.headers.get("If-None-Match", "")):
        return web.Response(status=304, headers=headers)
    resp = web.Response(body=body, content_type="application/json", headers=headers)
    if len(body) >= COMPRESS_FROM:
        resp.enable_compression()  # picks gzip/deflate from Accept-Encoding, or nothing
    return resp
