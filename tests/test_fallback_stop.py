"""Shutdown never waits forever for the fallback recorder: a store client that swallows the
CancelledError mid-command (redis-py's cluster client did, after a failover, and a CI run hung in
`relay.stop()`) must not keep stop() from returning."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from relay.fallbacks import STOP_FLUSH_S, FallbackRecorder, NotRelayed


class SwallowingStore:
    """Records not-relayed items slowly and swallows cancellation, as that client did."""

    def __init__(self) -> None:
        self.calls = 0

    async def record_not_relayed(self, **_: Any) -> None:
        self.calls += 1
        try:
            await asyncio.sleep(0.3)
        except asyncio.CancelledError:
            pass  # swallowed: the caller's cancel is lost


async def test_stop_returns_in_bounded_time_even_when_the_store_swallows_the_cancel() -> None:
    store = SwallowingStore()
    recorder = FallbackRecorder(store, retry_s=0.05)  # type: ignore[arg-type]
    recorder.start()
    now_ms = int(time.time() * 1000)
    for i in range(3):
        recorder.submit(
            NotRelayed(
                "message",
                "+14155550101",
                "+14155550201",
                f"SM{i:032x}",
                f"KI{i:032x}",
                "hi",
                "fallback",
                now_ms,
            )
        )
    await asyncio.sleep(0.05)  # the recorder is inside the store call now
    started = time.monotonic()
    await asyncio.wait_for(recorder.stop(), timeout=2 * STOP_FLUSH_S + 2)
    assert time.monotonic() - started <= 2 * STOP_FLUSH_S + 1
    assert recorder._task is not None and recorder._task.done()
    assert store.calls >= 1
