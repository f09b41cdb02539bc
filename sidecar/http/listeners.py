"""The listening sockets of a started service: the public one (`server.host`/`port`,
HTTPS with `server.tls`) and, with `server.admin_port`, the operations one
(`server.admin_host`/`admin_port`, plain HTTP) — each with its own connection guard, so a
flood of sync clients does not lock the health checks and the scraper out.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from aiohttp import web

from sidecar.config.model import LimitsConfig, ServerConfig
from sidecar.http.connections import ConnectionGuard, GuardedSite, guard_for, update_guard
from sidecar.http.tls import TlsReloader


@dataclass
class Listeners:
    runners: list[web.AppRunner] = field(default_factory=list)
    guards: list[ConnectionGuard] = field(default_factory=list)
    tls: TlsReloader | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def update_limits(self, limits: LimitsConfig) -> None:
        """A reloaded config's connection bounds, for the connections opened from now on."""
        for guard in self.guards:
            update_guard(guard, limits)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for runner in self.runners:
            await runner.cleanup()


async def open_listeners(
    server: ServerConfig,
    limits: LimitsConfig,
    public: web.Application,
    admin: web.Application | None = None,
) -> Listeners:
    """Serve `public` on server.host:port (HTTPS with server.tls, its files watched) and
    `admin`, when given, on server.admin_host:admin_port."""
    listeners = Listeners()
    try:
        if server.tls is not None:
            listeners.tls = TlsReloader(server.tls)
            listeners.tasks.append(asyncio.create_task(listeners.tls.watch()))
        sites = [(public, server.host, server.port, listeners.tls)]
        if admin is not None and server.admin_port is not None:
            sites.append((admin, server.admin_host, server.admin_port, None))
        for app, host, port, tls in sites:
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            listeners.runners.append(runner)
            guard = guard_for(limits)
            listeners.guards.append(guard)
            context = tls.context if tls is not None else None
            site = GuardedSite(runner, host, port, guard, context, access_log=None)
            await site.start()
    except BaseException:
        await listeners.close()
        raise
    return listeners
