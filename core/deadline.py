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

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Final

from core.errors import Unavailable

__all__ = ["SCRIPT_MARGIN_S", "DeadlineExceeded", "deadline", "current_deadline_ms", "script_arg"]

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


@contextlib.contextmanager
def deadline(give_up_s: float) -> Iterator[int]:
    """Scripts run inside this block must start `SCRIPT_MARGIN_S` before the caller gives up,
    `give_up_s` from now. Yields the scripts' deadline (epoch ms)."""
    at_ms = int((time.time() + max(0.0, give_up_s - SCRIPT_MARGIN_S)) * 1000)
    token = _deadline_ms.set(at_ms)
    try:
        yield at_ms
    finally:
        _deadline_ms.reset(token)


def current_deadline_ms() -> int | None:
    return _deadline_ms.get()


def script_arg() -> str:
    """The last ARGV of every script: the current deadline, or '' for none (background work)."""
    at = _deadline_ms.get()
    return "" if at is None else str(at)
