"""The webhooks' time limit (core/deadline.py, Watchdog): asyncio.timeout's behaviour with one
timer for every request in flight."""

from __future__ import annotations

import asyncio
import time

import pytest

from core.deadline import Watchdog


async def test_only_the_blocks_that_overrun_their_limit_time_out() -> None:
    watchdog = Watchdog(0.2, tick_s=0.01)

    async def request(work_s: float) -> str:
        started = time.monotonic()
        try:
            async with watchdog.limit():
                await asyncio.sleep(work_s)
        except TimeoutError:
            return f"timed out after {time.monotonic() - started:.1f}"
        await asyncio.sleep(0.3)  # a block that ended in time is never cancelled afterwards
        return "answered"

    results = await asyncio.gather(*(request(s) for s in (0.01, 1.0, 0.05, 5.0, 0.1)))
    assert results == ["answered", "timed out after 0.2", "answered", "timed out after 0.2", "answered"]


async def test_a_cancellation_that_is_not_the_watchdogs_stays_a_cancellation() -> None:
    watchdog = Watchdog(5)

    async def request() -> None:
        async with watchdog.limit():
            await asyncio.sleep(10)

    task = asyncio.create_task(request())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_one_watchdog_serves_a_new_event_loop_as_it_served_the_first() -> None:
    # The watchdog remembers the loop it served (to find the running task without a system call):
    # on a new loop it must find the new loop's task, and time it out on the new loop's clock.
    watchdog = Watchdog(0.1, tick_s=0.01)

    async def request(work_s: float) -> str:
        try:
            async with watchdog.limit():
                await asyncio.sleep(work_s)
        except TimeoutError:
            return "timed out"
        return "answered"

    for _ in range(2):
        assert asyncio.run(request(0.01)) == "answered"
        assert asyncio.run(request(2.0)) == "timed out"
