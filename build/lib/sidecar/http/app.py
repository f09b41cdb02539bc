"""The aiohttp application factory."""

from __future__ import annotations

from aiohttp import web

from sidecar.http import routes
from sidecar.http.middleware import add_request_id, make_middleware
from sidecar.service import Service


def create_app(service: Service) -> web.Application:
    """An aiohttp app serving `service` (started by the caller, closed by the caller)."""
    app = web.Application(
        middlewares=[make_middleware(service.metrics)],
        client_max_size=service.config.limits.max_body,
    )
    app[routes.SERVICE] = service
    app.on_response_prepare.append(add_request_id)
    app.router.add_get("/healthz", routes.healthz)
    app.router.add_get("/readyz", routes.readyz)
    app.router.add_get("/metrics", routes.metrics)
    app.router.add_get("/v1/schema", routes.schema)
    app.router.add_get("/v1/pull", routes.pull)
    app.router.add_get("/v1/stream", routes.stream)
    app.router.add_post("/v1/push", routes.push)
    app.router.add_get("/v1/audit", routes.audit)
    app.router.add_get("/v1/openapi.json", routes.openapi)
    from adapters import install_all  # client-protocol adapters add their own routes

    install_all(app, service)
    return app
