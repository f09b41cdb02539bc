"""Middleware: request id, problem+json for every refusal, metrics, and no tracebacks out;
the trace context of every request (`make_tracing_middleware`)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable

import orjson
import structlog
from aiohttp import web
from opentelemetry.trace import StatusCode

from sidecar.edge import RATE_QUOTA, bind_client_certificate, count_unauthenticated, is_public
from sidecar.errors import (
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    SidecarError,
    Unavailable,
)
from sidecar.http.connections import SECURITY_HEADERS, SERVER_NAME
from sidecar.observability import Metrics
from sidecar.store.base import StoreUnavailable
from sidecar.tracing import Tracing

log = structlog.get_logger("sidecar.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PROBLEM_JSON = "application/problem+json"
REQUEST_ID = web.RequestKey("request_id", str)
TRACE_RESPONSE = web.RequestKey("traceresponse", str)
# Probes and scrapes get a span only when they carry a `traceparent` (no trace a second
# from each load balancer)
STORE_RETRY_AFTER = 2  # seconds: a store that cannot be read now (a PostgreSQL store down)
UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})


def problem_response(exc: SidecarError, request: web.Request) -> web.Response:
    body = exc.to_problem(instance=request.path)
    rid = request.get(REQUEST_ID)
    if rid:
        body["request_id"] = rid
    return web.Response(
        body=orjson.dumps(body),
        status=exc.status,
        content_type=PROBLEM_JSON,
        headers=exc.headers(),
    )


def _endpoint(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


def make_middleware(
    metrics: Metrics, max_body: int
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The app's one middleware; `max_body` is the app's `client_max_size`, named in 413s."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        rid = request.headers.get("X-Request-Id") or uuid.uuid4().hex[:16]
        if len(rid) > 64 or not rid.isprintable():
            rid = uuid.uuid4().hex[:16]
        request[REQUEST_ID] = rid
        endpoint = _endpoint(request)
        started = time.perf_counter()
        structlog.contextvars.bind_contextvars(request_id=rid)
        bind_client_certificate(request)  # mutual TLS: client_cn, client_cert
        try:
            try:
                if is_public(request):
                    count_unauthenticated(request)  # 429 past limits.unauthenticated_rate
                response = await handler(request)
            except web.HTTPNotFound:
                response = problem_response(NotFound(f"no such endpoint: {request.path}"), request)
            except web.HTTPMethodNotAllowed as exc:
                allowed = ", ".join(sorted(exc.allowed_methods))
                err = MethodNotAllowed(f"method {request.method} not allowed; use {allowed}")
                response = problem_response(err, request)
                response.headers["Allow"] = allowed
            except web.HTTPRequestEntityTooLarge:
                too_large = f"the body is larger than {max_body} bytes (limits.max_body)"
                response = problem_response(PayloadTooLarge(too_large), request)
            except SidecarError as exc:
                response = problem_response(exc, request)
            except StoreUnavailable as exc:  # a PostgreSQL store down or unreachable
                log.warning("store unavailable", kind=exc.kind, path=request.path)
                response = problem_response(
                    Unavailable(
                        f"the store cannot be read now ({exc.kind}); retry later",
                        STORE_RETRY_AFTER,
                    ),
                    request,
                )
            except web.HTTPException:
                raise
            except Exception:
                log.exception("unhandled error", path=request.path)
                response = problem_response(
                    SidecarError("internal error; the request id identifies it in the logs"),
                    request,
                )
            if not response.prepared:  # (streams got it in `add_request_id`)
                response.headers["X-Request-Id"] = rid
            return response
        finally:
            status = getattr(locals().get("response"), "status", 500)
            metrics.requests.labels(endpoint, str(status)).inc()
            metrics.latency.labels(endpoint, str(status)).observe(time.perf_counter() - started)
            structlog.contextvars.unbind_contextvars(
                "request_id", "subject", "client_cn", "client_cert"
            )

    return middleware


def make_tracing_middleware(tracing: Tracing) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The request's span (`tracing.server_span`: a child of the client's `traceparent`),
    outside the app's middleware: its trace and span ids in every log line of the request
    and in the `traceresponse` header of the answer."""

    @web.middleware
    async def traced(request: web.Request, handler: Handler) -> web.StreamResponse:
        endpoint = _endpoint(request)
        if endpoint in UNTRACED and "traceparent" not in request.headers:
            return await handler(request)
        name = request.method if endpoint == "unmatched" else f"{request.method} {endpoint}"
        attributes = {"http.request.method": request.method, "url.path": request.path}
        if endpoint != "unmatched":
            attributes["http.route"] = endpoint
        with tracing.server_span(name, request.headers, attributes) as span:
            ids = tracing.log_ids(span)
            header = tracing.traceresponse(span)
            if header is not None:
                request[TRACE_RESPONSE] = header
            structlog.contextvars.bind_contextvars(**ids)
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                structlog.contextvars.unbind_contextvars(*ids)
                span.set_attribute("http.response.status_code", status)
                rid = request.get(REQUEST_ID)
                if rid:
                    span.set_attribute("sidecar.request_id", rid)
                if status >= 500:
                    span.set_status(StatusCode.ERROR)

    return traced


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: streamed responses carry the request id too (and the trace's
    `traceresponse`); every answer (the adapters' too) says `Server: sidecar` (no
    versions) and `nosniff`."""
    rid = request.get(REQUEST_ID)
    if rid and "X-Request-Id" not in response.headers:
        response.headers["X-Request-Id"] = rid
    traced = request.get(TRACE_RESPONSE)
    if traced:
        response.headers["traceresponse"] = traced
    response.headers["Server"] = SERVER_NAME
    response.headers.update(SECURITY_HEADERS)


async def add_rate_limit_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: an answer to a request a rate limit applied to says where the
    caller stands (RateLimit-Limit, -Remaining, -Reset, -Policy; a 429 has them from its
    error, with Retry-After)."""
    quota = request.get(RATE_QUOTA)
    if quota is not None:
        for name, value in quota.headers().items():
            response.headers.setdefault(name, value)
