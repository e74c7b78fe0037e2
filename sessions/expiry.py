"""The sweeper: closes sessions whose TTL or DateExpiry has passed, and settles relays whose
webhook never answered (settle_unanswered.lua); when it starts and hourly, it deletes other
releases' Redis function libraries (core/scripts.py prune_function_libraries). maskline/server.py
runs it in one process at a time (a lease, core/lease.py).

close_expired.lua takes a session off the expiry zset in the same atomic step that closes it, so
even two sweepers (a lease handed over while its old holder still ran) never close one session
twice."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import cast

from core import keys
from core.scripts import prune_function_libraries
from sessions.store import SessionStore

__all__ = ["sweep_once", "run_sweeper"]

log = logging.getLogger("maskline.expiry")

PRUNE_LIBRARIES_EVERY_S = 3600.0


async def sweep_once(store: SessionStore, *, batch: int = 500) -> int:
    """Close every due session of every Service; returns how many this call closed."""
    closed = 0
    service_sids = cast(set[str], await store.redis.smembers(keys.SERVICES))
    for service_sid in service_sids:
        while True:
            n = await store.close_expired(service_sid, limit=batch)
            closed += n
            if n < batch:
                break
        await store.prune_index(service_sid)
        while True:
            judged, _ = await store.settle_unanswered(service_sid, limit=batch)
            if judged < batch:
                break
    return closed


async def run_sweeper(store: SessionStore, *, interval_s: float, stop: asyncio.Event) -> None:
    prune_at = time.monotonic()
    while not stop.is_set():
        try:
            closed = await sweep_once(store)
            if closed:
                log.info("closed %d expired session(s)", closed)
            if time.monotonic() >= prune_at:
                prune_at = time.monotonic() + PRUNE_LIBRARIES_EVERY_S
                deleted = await prune_function_libraries(store.redis)
                if deleted:
                    log.info("deleted earlier releases' Redis function libraries: %s", ", ".join(deleted))
        except Exception as err:  # Redis away: try again next tick, never die
            log.warning("expiry sweep failed: %s", err)
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
        except TimeoutError:
            pass
