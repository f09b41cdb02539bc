"""The replication silence watchdog without a database: what counts as silence, how often
keepalives are asked for, and the abort once the limit passes."""

from __future__ import annotations

import asyncio
import time

from sidecar.capture.source import ReplicationError
from sidecar.capture.watchdog import ReplicationSilent, Silence, reply_every, watch


class Source:
    def __init__(self) -> None:
        self.aborted: ReplicationError | None = None

    def abort(self, error: ReplicationError) -> None:
        self.aborted = error


def test_only_waiting_on_the_server_counts_as_silence():
    silence = Silence(3.0)
    assert silence.silent_for(time.monotonic() + 100) == 0.0  # not reading: not silent
    silence.waiting()
    assert silence.silent_for(time.monotonic() + 5) > 3.0
    silence.heard()
    assert silence.silent_for(time.monotonic() + 5) == 0.0


def test_keepalives_are_asked_for_well_within_the_limit():
    assert reply_every(60.0, 10.0) == 10.0
    assert reply_every(3.0, 10.0) == 1.0


async def test_watch_aborts_a_silent_stream_and_not_a_talking_one():
    silence, source = Silence(0.2), Source()
    silence.waiting()
    await asyncio.wait_for(watch(silence, source), 5)
    assert isinstance(source.aborted, ReplicationSilent)
    assert source.aborted.limit == 0.2 and "wal_sender_timeout" in str(source.aborted)

    silence, source = Silence(0.2), Source()
    watching = asyncio.ensure_future(watch(silence, source))
    for _ in range(10):  # the reader keeps hearing from the server
        silence.waiting()
        await asyncio.sleep(0.05)
        silence.heard()
    assert not watching.done() and source.aborted is None
    watching.cancel()
