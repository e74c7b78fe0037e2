"""Time for the scripts. Production passes no time, so the scripts read Redis' own TIME and every
worker agrees; tests inject a ManualClock and move it instead of sleeping."""

from __future__ import annotations

import time

__all__ = ["Clock", "RedisClock", "ManualClock", "SYSTEM"]


class Clock:
    def script_now(self) -> str:
        """The now_ms argument of a script: '' means "use the Redis server's TIME"."""
        raise NotImplementedError

    def now_ms(self) -> int:
        raise NotImplementedError


class RedisClock(Clock):
    def script_now(self) -> str:
        return ""

    def now_ms(self) -> int:
        return int(time.time() * 1000)


class ManualClock(Clock):
    def __init__(self, start_ms: int | None = None) -> None:
        self.ms = start_ms if start_ms is not None else int(time.time() * 1000)

    def script_now(self) -> str:
        return str(self.ms)

    def now_ms(self) -> int:
        return self.ms

    def advance(self, seconds: float) -> None:
        self.ms += int(seconds * 1000)


SYSTEM: Clock = RedisClock()
