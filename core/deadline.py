"""Deadlines that bind: a caller that will answer "failed" after some time hands that moment to
every state-changing Lua script it runs, and a script that starts after it does nothing.

Why: a command queued on a stalled Redis connection still runs when Redis wakes up, after the
caller was told it failed (a webhook answered with fallback TwiML, an API request with 503). The
script compares the deadline with Redis' own TIME before any write (core/lua/_lib.lua), so a
request answered "failed" has changed nothing.

The deadline is epoch milliseconds on the worker's clock, compared with the Redis server's
clock: on one host they are the same clock; across hosts NTP keeps them within milliseconds, far
inside the margin below. It travels in a ContextVar, so every script call made while handling one
request carries it without threading it through each signature."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from contextvars import ContextVar
from types import TracebackType
from typing import Final

from core.errors import Unavailable

__all__ = [
    "SCRIPT_MARGIN_S",
    "DeadlineExceeded",
    "Watchdog",
    "deadline",
    "current_deadline_ms",
    "script_arg",
]

# A script must start this long before the caller gives up: one that started in time has then
# answered before the caller stops waiting (a script runs in well under a millisecond), unless
# Redis stalls in that very instant.
SCRIPT_MARGIN_S: Final = 0.25
# The error reply a script gives when it starts too late (core/lua/_lib.lua).
DEADLINE_REPLY: Final = "DEADLINE"

_deadline_ms: ContextVar[int | None] = ContextVar("maskline_deadline_ms", default=None)


class DeadlineExceeded(Unavailable):
    """The store did not answer in time; nothing was changed. The caller may retry."""

    def __init__(
        self,
        message: str = "Maskline's data store did not answer in time; nothing was changed, retry shortly",
    ) -> None:
        super().__init__(message)


class deadline:  # noqa: N801 (used as a function: `with deadline(2.0) as at_ms:`)
    """Scripts run inside this block must start `SCRIPT_MARGIN_S` before the caller gives up,
    `give_up_s` from now. Yields the scripts' deadline (epoch ms). (A class rather than a
    generator-based context manager: every webhook enters one.)"""

    __slots__ = ("at_ms", "_token")

    def __init__(self, give_up_s: float) -> None:
        self.at_ms = int((time.time() + max(0.0, give_up_s - SCRIPT_MARGIN_S)) * 1000)

    def __enter__(self) -> int:
        self._token = _deadline_ms.set(self.at_ms)
        return self.at_ms

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        _deadline_ms.reset(self._token)


def current_deadline_ms() -> int | None:
    return _deadline_ms.get()


def script_arg() -> str:
    """The last ARGV of every script: the current deadline, or '' for none (background work)."""
    at = _deadline_ms.get()
    return "" if at is None else str(at)


class Watchdog:
    """`async with watchdog.limit():` is `asyncio.timeout(seconds)` for the many requests that share
    one limit (the webhooks'): the block raises TimeoutError once it has run `seconds`, give or take
    `tick_s`. One timer serves them all, ticking only while some block is pending, instead of a
    timer set and cancelled per block (a measurable share of a relay's CPU). Blocks are queued in
    the order they start, which is the order of their deadlines, since they share one limit."""

    def __init__(self, seconds: float, *, tick_s: float = 0.02) -> None:
        self.seconds = seconds
        self.tick_s = tick_s
        self._pending: deque[_Limit] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def limit(self) -> _Limit:
        return _Limit(self)

    def _watch(self, limit: _Limit, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self._loop:  # first use, or a new event loop: nothing of the old one holds
            self._pending.clear()
            self._timer, self._loop = None, loop
        self._pending.append(limit)
        if self._timer is None:
            self._timer = loop.call_at(limit.at, self._tick)

    def _tick(self) -> None:
        self._timer = None
        assert self._loop is not None
        now, pending = self._loop.time(), self._pending
        while pending and (pending[0].task is None or pending[0].at <= now):
            limit = pending.popleft()
            if limit.task is not None:  # still running at its deadline
                limit.fired = True
                limit.task.cancel()
        if pending:
            self._timer = self._loop.call_at(max(pending[0].at, now + self.tick_s), self._tick)


class _Limit:
    __slots__ = ("watchdog", "at", "task", "fired", "cancelling")

    def __init__(self, watchdog: Watchdog) -> None:
        self.watchdog = watchdog
        self.task: asyncio.Task[object] | None = None
        self.fired = False

    async def __aenter__(self) -> None:
        # asyncio.get_running_loop() is a getpid() system call on Python 3.11, and so is
        # current_task() without a loop: ask with the loop the watchdog last served (the running
        # one, unless this is the first block on a new loop), and take the loop from the task.
        served = self.watchdog._loop
        task = asyncio.current_task(served) if served is not None else None
        if task is None:
            task = asyncio.current_task()
        assert task is not None
        loop = task.get_loop()
        self.task, self.cancelling = task, task.cancelling()
        self.at = loop.time() + self.watchdog.seconds
        self.watchdog._watch(self, loop)

    async def __aexit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        task, self.task = self.task, None  # done: the watchdog lets it be
        # As asyncio.timeout does: our cancellation, and no other, becomes TimeoutError.
        if (
            self.fired
            and task is not None
            and task.uncancel() <= self.cancelling
            and kind is asyncio.CancelledError
        ):
            raise TimeoutError from err
