"""`within`: a push attempt's own deadline, whatever the database does."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.push.breaker import within


async def test_within_returns_the_result_or_raises_its_error():
    async def quick(held: list) -> int:
        return 7

    assert await within(quick, 5) == 7

    async def failing(held: list) -> int:
        raise ValueError("refused")

    with pytest.raises(ValueError):
        await within(failing, 5)


async def test_within_gives_up_at_the_deadline_and_cancels_what_holds_no_connection():
    cancelled = asyncio.Event()

    async def hanging(held: list) -> int:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return 0

    with pytest.raises(TimeoutError):
        await within(hanging, 0.1)
    await asyncio.wait_for(cancelled.wait(), 5)
