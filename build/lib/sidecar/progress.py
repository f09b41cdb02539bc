"""A progress bar for the initial copy, for people watching `sidecar run` in a terminal."""

from __future__ import annotations

import asyncio
from typing import Any, TextIO

from tqdm import tqdm


async def show_copy_progress(capture: Any, stream: TextIO, interval: float = 0.2) -> None:
    """Draw the initial copy's progress on `stream` until capture streams (or fails).

    `capture.status` is read only: the copy runs on the writer thread and updates it.
    """
    bar: tqdm[Any] | None = None
    try:
        while True:
            status = capture.status
            if status.phase == "copying":
                copy = status.copy
                if bar is None:
                    bar = tqdm(total=None, unit=" rows", unit_scale=True, file=stream)
                bar.total = max(copy.estimated_rows, copy.rows) or None
                bar.set_description(
                    f"initial copy {copy.table} ({copy.tables_done}/{copy.tables_total} tables)",
                    refresh=False,
                )
                bar.n = copy.rows
                bar.refresh()
            elif status.phase in ("streaming", "failed"):
                if bar is not None:
                    bar.n = bar.total = status.copy.rows
                    bar.set_description("initial copy done", refresh=False)
                return
            await asyncio.sleep(interval)
    finally:
        if bar is not None:
            bar.close()
