"""A fault-injecting TCP proxy (asyncio) between clients and the sidecar.

Each accepted connection gets one fault, drawn from `Faults` with the proxy's
`random.Random`:

- `drop`: the connection is closed before anything reaches the server;
- `delay`: each direction waits a random time before its first bytes;
- `cut`: the request reaches the server, the server acts and answers, and the answer is
  thrown away (the client sees the connection close): "did my push apply?";
- `truncate`: only the first part of the answer reaches the client;
- `duplicate`: the request is sent twice, on two server connections at once; the
  client gets the first one's answer, the second's is discarded.

It works on bytes, so it knows nothing of HTTP: a fault hits a whole connection. The
reference client opens one connection per request (no keep-alive), so a fault hits one
request. `pause()` holds new connections (they wait; nothing is refused) and `idle()`
waits until no connection is open: together, a moment when nothing is in flight.
When the server is down the client's connection is closed, as a refused connection would be.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from dataclasses import dataclass

FAULTS = ("drop", "delay", "cut", "truncate", "duplicate")
CHUNK = 65536


@dataclass(frozen=True)
class Faults:
    """The probability of each fault per connection (the rest pass untouched)."""

    drop: float = 0.0
    delay: float = 0.0
    cut: float = 0.0
    truncate: float = 0.0
    duplicate: float = 0.0
    max_delay: float = 0.3  # seconds, for `delay`

    def choose(self, rng: random.Random) -> str:
        x = rng.random()
        for name in FAULTS:
            p = getattr(self, name)
            if x < p:
                return name
            x -= p
        return "pass"


NONE = Faults()


class FaultProxy:
    def __init__(
        self, upstream_port: int, rng: random.Random, faults: Faults = NONE, host: str = "127.0.0.1"
    ) -> None:
        self.host, self.upstream_port, self.rng, self.faults = host, upstream_port, rng, faults
        self.counts: Counter[str] = Counter()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._open = asyncio.Event()
        self._open.set()
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    def pause(self) -> None:
        """Hold new connections until `resume()`."""
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    async def idle(self) -> None:
        """Wait until no connection is open (with `pause()`: nothing is in flight)."""
        await self._idle.wait()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._open.wait()
            self._active += 1
            self._idle.clear()
            try:
                await self._serve(reader, writer)
            finally:
                self._active -= 1
                if self._active == 0:
                    self._idle.set()
        except asyncio.CancelledError:
            pass
        finally:
            _close(writer)
            self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        fault = self.faults.choose(self.rng)
        self.counts[fault] += 1
        if fault == "drop":
            return
        delay = self.rng.uniform(0, self.faults.max_delay) if fault == "delay" else 0.0
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.upstream_port)
        except OSError:
            self.counts["upstream_down"] += 1
            return
        uppers = [up_writer]
        twin: asyncio.Task[None] | None = None
        if fault == "duplicate":
            with contextlib.suppress(OSError):
                twin_reader, twin_writer = await asyncio.open_connection(
                    self.host, self.upstream_port
                )
                uppers.append(twin_writer)
                twin = asyncio.create_task(_discard(twin_reader))
        up = asyncio.create_task(_pump_request(reader, uppers, delay))
        down = asyncio.create_task(self._pump_answer(up_reader, writer, fault, delay))
        try:  # either side closing ends the exchange
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (up, down):
                task.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
            _close(writer)
            _close(up_writer)
            if twin is not None:  # the duplicate runs to its answer (or silence), unread
                await asyncio.gather(twin, return_exceptions=True)
                _close(uppers[1])

    async def _pump_answer(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, fault: str, delay: float
    ) -> None:
        first = True
        while True:
            data = await src.read(CHUNK)
            if not data:
                return
            if first:
                first = False
                if delay:
                    await asyncio.sleep(delay)
                if fault == "cut":  # the server answered: it acted; the client never knows
                    return
                if fault == "truncate":
                    dst.write(data[: max(1, len(data) // 2)])
                    with contextlib.suppress(ConnectionError):
                        await dst.drain()
                    return
            dst.write(data)
            try:
                await dst.drain()
            except ConnectionError:
                return


async def _pump_request(
    src: asyncio.StreamReader, dsts: list[asyncio.StreamWriter], delay: float
) -> None:
    if delay:
        await asyncio.sleep(delay)
    while data := await src.read(CHUNK):
        for d in dsts:
            d.write(data)
        for d in dsts:
            with contextlib.suppress(ConnectionError):
                await d.drain()


async def _discard(src: asyncio.StreamReader) -> None:
    """Read an answer nobody wants: until the server closes, or is quiet for a moment
    after it began answering (a keep-alive connection), at most 15 s."""
    with contextlib.suppress(ConnectionError, TimeoutError):
        async with asyncio.timeout(15):
            if not await src.read(CHUNK):
                return
            while await asyncio.wait_for(src.read(CHUNK), 0.5):
                pass


def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()
