"""The listening socket's guard: a bound on open connections and a header-read timeout.

aiohttp's own keep-alive timeout closes a connection that sends nothing between requests;
it does not bound how long a client may take to send a request's headers (a "slowloris"
client trickling bytes keeps its connection, and its descriptor, forever), nor how many
connections are open at once. `GuardedHandler` is aiohttp's `RequestHandler` with both:

- `limits.header_timeout`: a new connection, and each request after the first byte of its
  headers, must deliver the complete headers within this time, or the connection is closed.
  A request whose headers arrived is then bounded by `limits.client_timeout` (its body) and
  by the handler; an idle keep-alive connection by `limits.keepalive_timeout`.
- `limits.max_connections`: past it, a new connection gets a `503 unavailable`
  problem+json (`Retry-After: 1`) and is closed at once, so the process keeps descriptors
  for its store, its database connections and the connections it serves.

`GuardedSite` listens with these handlers instead of `web.TCPSite`'s plain ones.
"""

from __future__ import annotations

import asyncio
import resource
import ssl
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from sidecar.config.model import LimitsConfig
from sidecar.errors import InvalidRequest, SidecarError, Unavailable

log = structlog.get_logger("sidecar.http")

SERVER_NAME = "sidecar"  # the Server header: no library or version
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff"}
REJECT_WAIT = 0.5  # seconds a rejected connection may take to send its request
REJECT_PENDING = 32  # rejected connections answered at once; past that, closed unanswered
FD_HEADROOM = 64  # descriptors kept for the store, the database, pending rejections


def default_max_connections() -> int:
    """Three quarters of the soft descriptor limit, less some headroom (at least 16)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        soft = 65536
    return max(16, soft * 3 // 4 - FD_HEADROOM)


@dataclass
class ConnectionGuard:
    """What every guarded connection shares: the bounds (a reload changes them for the
    connections opened after it) and the count of open ones."""

    max_connections: int
    header_timeout: float
    keepalive_timeout: float
    open: int = 0
    rejecting: int = 0  # rejected connections waiting for their request, to answer 503
    rejected: int = 0
    timed_out: int = 0
    handlers: set[GuardedHandler] = field(default_factory=set)


def guard_for(limits: LimitsConfig) -> ConnectionGuard:
    return ConnectionGuard(
        max_connections=limits.max_connections or default_max_connections(),
        header_timeout=limits.header_timeout,
        keepalive_timeout=limits.keepalive_timeout,
    )


def update_guard(guard: ConnectionGuard, limits: LimitsConfig) -> None:
    """A reloaded config's bounds, for the connections opened from now on."""
    new = guard_for(limits)
    guard.max_connections = new.max_connections
    guard.header_timeout = new.header_timeout
    guard.keepalive_timeout = new.keepalive_timeout


def _rejection() -> bytes:
    err = Unavailable(
        "too many open connections (limits.max_connections); retry shortly", retry_after=1
    )
    body = orjson.dumps(err.to_problem())
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/problem+json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        f"Server: {SERVER_NAME}\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class GuardedHandler(RequestHandler):
    """aiohttp's request handler with a header-read timeout and a connection bound."""

    __slots__ = ("_count_at_arm", "_counted", "_guard", "_header_timer", "_rejected")

    def __init__(self, manager: web.Server, *, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._rejected: asyncio.Transport | None = None
        self._header_timer: asyncio.TimerHandle | None = None
        self._count_at_arm = 0
        self._counted = False

    # -- the connection bound -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        guard = self._guard
        if guard.open >= guard.max_connections:
            guard.rejected += 1
            if guard.rejecting >= REJECT_PENDING:  # a flood: free the descriptor at once
                transport.abort()  # type: ignore[attr-defined]
                return
            guard.rejecting += 1
            self._rejected = transport  # type: ignore[assignment]
            # Answer once the request has arrived (so the client reads the answer rather
            # than a reset), or after REJECT_WAIT at most.
            self._header_timer = self._loop.call_later(REJECT_WAIT, self._reject)
            return
        guard.open += 1
        guard.handlers.add(self)
        self._counted = True
        super().connection_made(transport)
        self._arm()

    def _reject(self) -> None:
        transport, self._rejected = self._rejected, None
        if transport is not None:
            self._guard.rejecting -= 1
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        if transport is not None and not transport.is_closing():
            transport.write(_rejection())
            transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        if not self._counted:
            if self._rejected is not None:
                self._rejected = None
                self._guard.rejecting -= 1
            return
        self._counted = False
        self._guard.open -= 1
        self._guard.handlers.discard(self)
        super().connection_lost(exc)

    # -- the header timeout -------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._rejected is not None:
            if b"\r\n\r\n" in data or b"\n\n" in data:
                self._reject()
            return
        super().data_received(data)
        if self._request_count != self._count_at_arm:
            self._disarm()  # a request's headers are complete
        if data and self._header_timer is None and self._idle():
            self._arm()  # the first bytes of the next request's headers

    def _idle(self) -> bool:
        """No request is being handled or waiting to be."""
        return not self._request_in_progress and not self._messages

    def _arm(self) -> None:
        self._disarm()
        self._count_at_arm = self._request_count
        self._header_timer = self._loop.call_later(self._guard.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expired(self) -> None:
        self._header_timer = None
        if self._request_count == self._count_at_arm and self._idle() and self.transport:
            self._guard.timed_out += 1
            peer = self.peername
            log.info(
                "closed a connection that did not send its headers in time",
                seconds=self._guard.header_timeout,
                peer=peer[0] if isinstance(peer, tuple) else peer,
            )
            self.force_close()
            self.transport.close()

    # -- aiohttp's own error answers ----------------------------------------------------

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> StreamResponse:
        """aiohttp's answer to a request it could not parse (no app middleware runs): one
        info line (a client's bad bytes are not a server error; redacted like every line),
        a problem+json answer with the headers every answer carries, nothing echoed back."""
        if request.writer.output_size > 0:  # as aiohttp: too late to answer
            raise ConnectionError("response already started; cannot answer the error")
        peer = self.peername
        log.info(
            "refused a malformed HTTP request",
            status=status,
            reason=str(exc or message),
            peer=peer[0] if isinstance(peer, tuple) else peer,
        )
        err: SidecarError = (
            InvalidRequest("malformed HTTP request (request line or headers)")
            if 400 <= status < 500
            else SidecarError("internal error")
        )
        body = err.to_problem()
        body["status"] = status
        resp = web.Response(
            body=orjson.dumps(body),
            status=status,
            content_type="application/problem+json",
            headers={"Server": SERVER_NAME, **SECURITY_HEADERS},
        )
        resp.force_close()
        return resp


class GuardedSite(web.BaseSite):
    """A TCP site whose connections are `GuardedHandler`s sharing `guard`; HTTPS with
    `ssl_context` (`sidecar.http.tls`)."""

    __slots__ = ("_guard", "_handler_args", "_host", "_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        guard: ConnectionGuard,
        ssl_context: ssl.SSLContext | None = None,
        **handler_args: Any,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._host, self._port, self._guard = host, port, guard
        self._handler_args = handler_args

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None

        def factory() -> GuardedHandler:
            guard = self._guard
            return GuardedHandler(
                server,
                loop=loop,
                guard=guard,
                keepalive_timeout=guard.keepalive_timeout,
                **self._handler_args,
            )

        # A TLS handshake comes before the handler sees the connection: it is bounded by
        # the header timeout too.
        handshake = self._guard.header_timeout if self._ssl_context is not None else None
        self._server = await loop.create_server(
            factory,
            self._host,
            self._port,
            ssl=self._ssl_context,
            ssl_handshake_timeout=handshake,
            reuse_address=True,
        )
