"""The aiohttp application factory: middleware, body limit, the sync API's routes, then
the routes its extensions add (the composition root passes the protocol adapters).

With `server.admin_port` the endpoints are split over two apps: `part="sync"` (the sync
protocol and the extensions, on `server.port`) and `part="admin"` (health, readiness,
metrics, the OpenAPI document and the admin API, on `server.admin_port`); `part="all"`
serves everything on one listener.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

from aiohttp import web

from sidecar.edge import SERVICE
from sidecar.http import routes
from sidecar.http.middleware import (
    add_rate_limit_headers,
    add_request_id,
    make_middleware,
    make_tracing_middleware,
)
from sidecar.service import Service

Extension = Callable[[web.Application, Service], None]
"""Adds its own routes (and response hooks) to the app, e.g. `adapters.install_all`."""

Part = Literal["all", "sync", "admin"]


def create_app(
    service: Service, extensions: Iterable[Extension] = (), *, part: Part = "all"
) -> web.Application:
    """An aiohttp app serving `service` (started by the caller, closed by the caller), with
    each of `extensions` installed after the sync API's own routes, in order; `part`: the
    endpoints of one listener when the operations endpoints have their own (see above)."""
    app = web.Application(
        middlewares=[
            make_tracing_middleware(service.tracing),
            make_middleware(service.metrics, service.config.limits.max_body),
        ],
        client_max_size=service.config.limits.max_body,
    )
    app[SERVICE] = service
    app.on_response_prepare.append(add_request_id)
    app.on_response_prepare.append(add_rate_limit_headers)
    if part != "sync":
        app.router.add_get("/healthz", routes.healthz)
        app.router.add_get("/readyz", routes.readyz)
        app.router.add_get("/metrics", routes.metrics)
    if part != "admin":
        app.router.add_get("/v1/schema", routes.schema)
        app.router.add_get("/v1/pull", routes.pull)
        app.router.add_get("/v1/stream", routes.stream)
        app.router.add_post("/v1/push", routes.push)
    if part != "sync":
        app.router.add_get("/v1/audit", routes.audit)
        app.router.add_get("/v1/openapi.json", routes.openapi)
    if part != "admin":
        for install in extensions:
            install(app, service)
    return app
