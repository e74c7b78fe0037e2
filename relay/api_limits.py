"""API rate limits per key: at most `MASKLINE_API_RATE_LIMIT` requests a second for each API key
(0: none), counted in Redis so every worker and host shares the count. Past it: 429 with Twilio's
20429 and `Retry-After`, nothing done. A Redis that does not answer lets requests through (the
request itself then meets the store's own errors): the limiter never takes the API down."""

from __future__ import annotations

import logging
import time
from typing import Final

import redis.asyncio as aioredis
import redis.exceptions

__all__ = ["RequestLimiter", "requests_key"]

log = logging.getLogger("maskline.api")

WINDOW_S: Final = 1
_REDIS_DOWN: Final = (redis.exceptions.RedisError, OSError, TimeoutError)


def requests_key(key_sid: str, window: int) -> str:
    """Requests of one API key in one 1-second window (its own hash slot per key)."""
    return f"ml:apilimit:{{{key_sid}}}:{window}"


class RequestLimiter:
    def __init__(self, redis: aioredis.Redis, *, per_second: int) -> None:
        self.redis = redis
        self.per_second = per_second
        self._down = False

    async def retry_after(self, key_sid: str) -> int | None:
        """None when the request may go on; else the seconds to wait (the window's end)."""
        if self.per_second <= 0:
            return None
        window = int(time.time()) // WINDOW_S
        name = requests_key(key_sid, window)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.incr(name)
                pipe.expire(name, WINDOW_S * 2)
                count, _ = await pipe.execute()
        except _REDIS_DOWN as err:
            if not self._down:
                log.warning("API rate limit not counted (Redis: %s); requests go through", type(err).__name__)
            self._down = True
            return None
        self._down = False
        return WINDOW_S if int(count) > self.per_second else None
