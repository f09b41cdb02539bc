"""A TCP proxy that can freeze: a database host that stops answering without closing
anything (a frozen VM, a network partition).

`freeze()` stops forwarding in both directions: every socket stays open, nothing is read
or written, and a new connection is accepted (the kernel's backlog) but gets no answer —
a client sees silence, never a reset. `thaw()` forwards again, what was held included, as
TCP does once a partition heals. The proxy runs its own event loop on its own thread, so
the process it stands in front of cannot stall it (and its freezing does not depend on
that process's loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType

CHUNK = 65536


class FreezeProxy:
    """127.0.0.1:<port> → 127.0.0.1:<upstream_port>, freezable."""

    def __init__(self, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.host, self.upstream_port = host, upstream_port
        self.port = 0
        self.connections = 0  # accepted so far
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="freeze-proxy")
        self._thawed: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def __enter__(self) -> FreezeProxy:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _call(self, coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)  # type: ignore[arg-type]

    def start(self) -> int:
        self._thread.start()
        self._call(self._start())
        return self.port

    async def _start(self) -> None:
        self._thawed = asyncio.Event()
        self._thawed.set()
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def frozen(self) -> bool:
        return self._thawed is not None and not self._thawed.is_set()

    def freeze(self) -> None:
        assert self._thawed is not None
        self._loop.call_soon_threadsafe(self._thawed.clear)

    def thaw(self) -> None:
        assert self._thawed is not None
        self._loop.call_soon_threadsafe(self._thawed.set)

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None and self._thawed is not None
        self._tasks.add(task)
        self.connections += 1
        up_writer: asyncio.StreamWriter | None = None
        try:
            await self._thawed.wait()  # frozen: accepted, never answered
            up_reader, up_writer = await asyncio.open_connection(self.host, self.upstream_port)
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        except (asyncio.CancelledError, OSError):
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    with contextlib.suppress(Exception):
                        w.close()
            self._tasks.discard(task)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        assert self._thawed is not None
        try:
            while True:
                await self._thawed.wait()
                data = await src.read(CHUNK)
                if not data:
                    break
                await self._thawed.wait()  # read just before a freeze: held until thawed
                dst.write(data)
                await dst.drain()
        finally:
            with contextlib.suppress(Exception):
                dst.close()
