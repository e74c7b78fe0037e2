"""Limits on guessing logins: failed logins counted per client address and per SID in Redis
(`FailureLimiter`), and the refusal they lead to (`TooManyAttempts`, answered 429 with
Retry-After by the auth middleware). relay/credentials.py decides what a login is."""

from __future__ import annotations

import asyncio
import logging
from typing import Final

import redis.asyncio as aioredis
import redis.exceptions

__all__ = ["TooManyAttempts", "FailureLimiter", "failures_by_address_key", "failures_by_sid_key"]

log = logging.getLogger("maskline.auth")

_REDIS_DOWN: Final = (redis.exceptions.RedisError, OSError, TimeoutError)


# The limiter's Redis keys. They live here rather than in core/keys.py because nothing else reads
# them. The `{auth}` hash tag puts every counter in one slot (one MULTI may span both in a Cluster).
def failures_by_address_key(address: str) -> str:
    """Failed logins from one client address (request.remote) in the current window."""
    return f"ml:{{auth}}:fail:addr:{address}"


def failures_by_sid_key(sid: str) -> str:
    """Failed logins naming one (well-formed) key SID in the current window."""
    return f"ml:{{auth}}:fail:sid:{sid}"


class TooManyAttempts(Exception):
    """Answer 429 (Twilio's 20429) with `Retry-After: retry_after_s`; nothing was verified."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class FailureLimiter:
    """Failed logins per client address and per key SID, fixed windows in Redis (shared by every
    worker). A successful login does not reset them. Redis unreachable: no limit (logged once)."""

    def __init__(
        self, redis: aioredis.Redis, *, limit: int = 20, window_s: int = 60, timeout_s: float = 0.5
    ) -> None:
        if limit < 1 or window_s < 1:
            raise ValueError(f"FailureLimiter needs limit >= 1 and window_s >= 1, got {limit} and {window_s}")
        self.redis = redis
        self.limit = limit
        self.window_s = window_s
        self.timeout_s = timeout_s
        self._failing = False

    @staticmethod
    def _keys(address: str, sid: str | None) -> list[str]:
        found = [failures_by_address_key(address or "unknown")]
        if sid is not None:
            found.append(failures_by_sid_key(sid))
        return found

    async def retry_after(self, address: str, sid: str | None) -> int | None:
        """Seconds until the window that holds this address or SID over the limit ends; None if neither is."""
        keys = self._keys(address, sid)
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self.redis.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.get(key)
                        pipe.ttl(key)
                    replies = await pipe.execute()
        except _REDIS_DOWN as err:
            self._down(err)
            return None
        self._up()
        waits = [
            int(ttl) if int(ttl) > 0 else self.window_s
            for count, ttl in zip(replies[::2], replies[1::2], strict=True)
            if count is not None and int(count) >= self.limit
        ]
        return max(waits) if waits else None

    async def record_failure(self, address: str, sid: str | None) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self.redis.pipeline(transaction=True) as pipe:
                    for key in self._keys(address, sid):
                        # The first failure of a window creates the counter with the window's
                        # expiry (SET NX EX); INCR keeps it. MULTI: never a counter without expiry.
                        pipe.set(key, 0, ex=self.window_s, nx=True)
                        pipe.incr(key)
                    await pipe.execute()
        except _REDIS_DOWN as err:
            self._down(err)
            return
        self._up()

    def _down(self, err: BaseException) -> None:
        if not self._failing:
            self._failing = True
            log.warning("login limiter off: Redis unavailable (%s); failed logins are not limited", err)

    def _up(self) -> None:
        if self._failing:
            self._failing = False
            log.info("login limiter on again: Redis answers")
