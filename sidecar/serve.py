"""The composition root: the started service, its HTTP app with the protocol adapters, the
server, signals and config watching. `sidecar run` and `sidecar demo` call `serve()`.

The only module besides `sidecar.http` itself that imports `sidecar.http`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys

import structlog
from aiohttp import web

from adapters import install_all
from sidecar.config.loader import load_config
from sidecar.config.model import Config
from sidecar.errors import SidecarError
from sidecar.http.app import Part, create_app
from sidecar.http.listeners import Listeners, open_listeners
from sidecar.observability import configure_logging
from sidecar.service import Service

CONFIG_POLL = 2.0  # seconds between checks of the config file's modification time


def build_app(service: Service, part: Part = "all") -> web.Application:
    """The HTTP app of `service`: the sync API and every protocol adapter (`part`: all of
    it, or one listener's share when `server.admin_port` is set)."""
    return create_app(service, extensions=(install_all,), part=part)


async def start_http(service: Service) -> Listeners:
    """The service's listeners: everything on server.port, or the sync protocol there and
    the operations endpoints on server.admin_port."""
    server = service.config.server
    if server.admin_port is None:
        return await open_listeners(server, service.config.limits, build_app(service))
    return await open_listeners(
        server,
        service.config.limits,
        build_app(service, "sync"),
        build_app(service, "admin"),
    )


async def serve(config: Config, *, ready_message: str | None = None, watch: bool = True) -> None:
    """Run the service and its HTTP server until SIGINT/SIGTERM; SIGHUP or an edit of the
    config file reloads what can change without a restart (`watch`)."""
    service = await Service.start(config)
    listeners: Listeners | None = None
    try:
        listeners = await start_http(service)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if watch:
            hup = asyncio.Event()
            loop.add_signal_handler(signal.SIGHUP, hup.set)
            service.tasks.append(
                asyncio.create_task(watch_config(service, config.file, hup, listeners))
            )
        capture_task = service.tasks[0]
        if sys.stderr.isatty():
            from sidecar.progress import show_copy_progress

            service.tasks.append(
                asyncio.create_task(show_copy_progress(service.capture, sys.stderr))
            )
        if ready_message:
            ready = asyncio.create_task(service.capture.wait_ready())
            await asyncio.wait({ready, capture_task}, return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            if not capture_task.done():
                print(ready_message, flush=True)
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait({waiter, capture_task}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if capture_task.done() and not stop.is_set():
            raise SidecarError(f"capture stopped: {_capture_failure(service, capture_task)}")
    finally:
        if listeners is not None:
            await listeners.close()
        await service.close()


async def watch_config(
    service: Service, path: str, hup: asyncio.Event, listeners: Listeners | None = None
) -> None:
    """Reload the config on SIGHUP (`hup`) or when its file changes; a config that is
    invalid or needs a restart is refused and the running one stays (logged)."""
    log = structlog.get_logger("sidecar.reload")
    last = _mtime(path)
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hup.wait(), CONFIG_POLL)
        mtime = _mtime(path)
        if not hup.is_set() and mtime == last:
            continue
        hup.clear()
        last = mtime
        try:
            new = await asyncio.to_thread(load_config, path)
            changed = await service.reload(new)
        except SidecarError as exc:
            log.error("config reload refused; the running config stays", problems=exc.detail)
            continue
        if "log" in changed or "auth" in changed:  # (the JWT secret is redacted from logs)
            configure_logging(new.log.level, new.log.format, secrets=new.secrets())
        if "limits" in changed and listeners is not None:
            listeners.update_limits(new.limits)


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def _capture_failure(service: Service, task: asyncio.Task[None]) -> str:
    """Why the capture task ended (it only ends on a failure)."""
    if task.cancelled():
        return "cancelled"
    exc = task.exception()
    if exc is not None:
        return f"{type(exc).__name__}: {exc}"
    status = service.capture.status
    return str(status.error or status.phase)
