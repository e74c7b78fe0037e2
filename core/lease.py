"""Run a duty in exactly one process across every worker and host: whoever holds a lease in Redis
runs it, renews the lease while it runs, and stops the duty the moment it cannot renew. A holder
that dies (crash, kill -9, lost host) stops renewing, the lease expires after `ttl_s`, and another
process takes the duty over: never twice in steady state, never none for longer than `ttl_s` plus
one retry interval.

Each acquisition gets a fencing number (INCR, strictly increasing); the duty is told its number,
and logs carry it. The duties Maskline runs this way (the sweeper, the audit writer) are idempotent
anyway, so the one overlap a lease cannot exclude (a holder frozen past its lease, then resumed
until its next renewal fails) costs duplicate work, never a wrong result."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Callable, Coroutine
from typing import Any, Final

import redis.asyncio as aioredis
import redis.exceptions

__all__ = ["Lease", "run_while_holding", "lease_key"]

log = logging.getLogger("maskline.lease")

# A duty: runs until its event is set, told the lease's fencing number.
Duty = Callable[[asyncio.Event, int], Coroutine[Any, Any, None]]
_REDIS_DOWN: Final = (redis.exceptions.RedisError, OSError, TimeoutError)


def lease_key(name: str) -> str:
    """The lease's key: value `{host}:{pid}:{random}` of the holder; `...:fence` its counter."""
    return f"ml:{{lease}}:{name}"


class Lease:
    """One process's claim on the lease `name` (a token of its own; `fence` once acquired)."""

    def __init__(self, redis: aioredis.Redis, name: str, *, ttl_s: float = 10.0) -> None:
        self.redis = redis
        self.key = lease_key(name)
        self.ttl_ms = int(ttl_s * 1000)
        self.token = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(6)}"
        self.fence = 0

    async def acquire(self) -> bool:
        if not await self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms):
            return False
        self.fence = int(await self.redis.incr(self.key + ":fence"))
        return True

    async def renew(self) -> bool:
        """Extend the lease if it is still ours (compare and expire, atomically: WATCH/MULTI)."""
        return await self._if_ours(lambda pipe: pipe.pexpire(self.key, self.ttl_ms))

    async def release(self) -> None:
        await self._if_ours(lambda pipe: pipe.delete(self.key))

    async def holder(self) -> str | None:
        value = await self.redis.get(self.key)
        return value.decode() if isinstance(value, bytes) else value

    async def _if_ours(self, change: Callable[[aioredis.client.Pipeline], object]) -> bool:
        async with self.redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(self.key)
                current = await pipe.get(self.key)
                if (current.decode() if isinstance(current, bytes) else current) != self.token:
                    await pipe.unwatch()  # type: ignore[no-untyped-call]
                    return False
                pipe.multi()  # type: ignore[no-untyped-call]
                change(pipe)
                await pipe.execute()
                return True
            except redis.exceptions.WatchError:
                return False


async def run_while_holding(
    lease: Lease,
    duty: Duty,
    stop: asyncio.Event,
    *,
    retry_s: float | None = None,
) -> None:
    """Until `stop` is set: acquire `lease`, run `duty(duty_stop, fence)` while it is held
    (renewed every ttl/3), set `duty_stop` and wait for the duty as soon as the lease is lost or
    `stop` is set; then try again every `retry_s` (default ttl/3). Redis errors count as not
    holding the lease; the duty is stopped before the lease can have expired."""
    every_s = retry_s if retry_s is not None else lease.ttl_ms / 3000
    while not stop.is_set():
        try:
            held = await lease.acquire()
        except _REDIS_DOWN as err:
            log.warning("lease %s: Redis unavailable (%s); retrying", lease.key, err)
            held = False
        if held:
            log.info("lease %s acquired (fence %d): running the duty here", lease.key, lease.fence)
            await _hold(lease, duty, stop, every_s)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)


async def _hold(lease: Lease, duty: Duty, stop: asyncio.Event, every_s: float) -> None:
    duty_stop = asyncio.Event()
    task = asyncio.create_task(duty(duty_stop, lease.fence))
    try:
        while not stop.is_set() and not task.done():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
            if stop.is_set() or task.done():
                break
            try:
                async with asyncio.timeout(every_s):
                    ours = await lease.renew()
            except (TimeoutError, *_REDIS_DOWN) as err:
                log.warning("lease %s: cannot renew (%s); stopping the duty", lease.key, err)
                ours = False
            if not ours:
                log.warning("lease %s lost (fence %d): stopping the duty here", lease.key, lease.fence)
                break
    finally:
        duty_stop.set()
        try:
            await asyncio.wait_for(task, every_s)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()
        except Exception as err:  # the duty's own failure: logged, the lease is given up
            log.error("lease %s: the duty failed (%s)", lease.key, err)
        with contextlib.suppress(*_REDIS_DOWN):
            await lease.release()
