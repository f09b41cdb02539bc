"""The initial copy's progress bar (drawn only when stderr is a terminal)."""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass, field

from sidecar.capture.snapshot import CopyProgress
from sidecar.progress import show_copy_progress


@dataclass
class FakeStatus:
    phase: str = "starting"
    copy: CopyProgress = field(default_factory=CopyProgress)


@dataclass
class FakeCapture:
    status: FakeStatus = field(default_factory=FakeStatus)


async def test_the_bar_follows_the_copy_and_ends_when_streaming() -> None:
    capture = FakeCapture()
    out = io.StringIO()
    task = asyncio.create_task(show_copy_progress(capture, out, interval=0.01))
    await asyncio.sleep(0.05)
    assert out.getvalue() == ""  # nothing before the copy starts
    capture.status.phase = "copying"
    capture.status.copy = CopyProgress("public.items", 500, 2000, 0, 2)
    await asyncio.sleep(0.05)
    assert "initial copy public.items (0/2 tables)" in out.getvalue()
    assert "500/2.00k" in out.getvalue()
    capture.status.copy.rows = 2000
    capture.status.phase = "streaming"
    await asyncio.wait_for(task, 1)
    assert "initial copy done" in out.getvalue()
