"""Client-protocol adapters: each module maps one published sync protocol onto the core
pull and push (`sidecar.pull.Puller`, `sidecar.push.Pusher`), adding its own routes.

Each module exposes `install(app, service)`; the composition root (`sidecar.serve`) hands
`install_all` to the app factory as an extension. Adapters call the core, never the store
or the database directly, and read requests with `sidecar.edge`, never `sidecar.http`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web

    from sidecar.service import Service


def install_all(app: web.Application, service: Service) -> None:
    from adapters import electric, rxdb, watermelondb

    for module in (electric, rxdb, watermelondb):
        module.install(app, service)
