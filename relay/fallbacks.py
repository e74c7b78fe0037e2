"""Texts and calls answered with fallback TwiML (the store failed or stalled) are recorded as not
relayed once the store answers again: the audit log says what was answered, never "relayed" for
a text that was not, and no text is silently dropped from it.

A record waits until its route script's deadline has passed: from then on that script either ran
(and recorded the interaction, which is then marked not relayed) or never will (it refuses to start
after its deadline, core/deadline.py), so the state it looks at is final. Pending records live in
this worker's memory: a worker killed before the store comes back loses them (docs/relay.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Final

from pool.numbers import mask
from sessions.routing import Router

__all__ = ["NotRelayed", "FallbackRecorder"]

log = logging.getLogger("maskline.webhooks")

MAX_PENDING: Final = 100_000
RETRY_S: Final = 0.5
STOP_FLUSH_S: Final = 2.0


@dataclass(frozen=True, slots=True)
class NotRelayed:
    kind: str  # message | voice
    from_: str
    to: str
    resource_sid: str
    interaction_sid: str
    body: str
    reason: str
    not_before_ms: int  # the route script's deadline


class FallbackRecorder:
    def __init__(self, router: Router, *, retry_s: float = RETRY_S, max_pending: int = MAX_PENDING) -> None:
        self.router = router
        self.retry_s = retry_s
        self.pending: deque[NotRelayed] = deque()
        self.max_pending = max_pending
        self.recorded = 0
        self.lost = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def submit(self, item: NotRelayed) -> None:
        if len(self.pending) >= self.max_pending:
            dropped = self.pending.popleft()
            self.lost += 1
            log.error(
                "fallback record queue full (%d): %s %s from %s is not in the audit log",
                self.max_pending,
                dropped.kind,
                dropped.resource_sid,
                mask(dropped.from_),
            )
        self.pending.append(item)
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Try once more to record what is pending (a clean stop loses nothing the store takes)."""
        if self._task is not None:
            # Told twice: a flag it checks when woken, and a cancel. A client library that
            # swallows the CancelledError (redis-py's cluster client can, mid-command) leaves the
            # task waiting again; the flag and the wake-up end it, and the wait is bounded anyway.
            self._stopping = True
            self._wake.set()
            self._task.cancel()
            done, _ = await asyncio.wait({self._task}, timeout=STOP_FLUSH_S)
            if not done:
                log.warning("fallback recorder did not stop within %.0f s; leaving it", STOP_FLUSH_S)
        with contextlib.suppress(Exception):
            # Bounded: a Redis that accepts connections and never answers must not hold shutdown.
            async with asyncio.timeout(STOP_FLUSH_S):
                await self.flush(wait=False)
        if self.pending:
            log.error("stopping with %d fallback record(s) not in the audit log", len(self.pending))

    async def flush(self, *, wait: bool = True) -> int:
        """Record every pending item whose deadline has passed; returns how many were recorded.
        Stops at the first store error (the store is still away: the rest waits)."""
        done = 0
        while self.pending:
            item = self.pending[0]
            delay_s = (item.not_before_ms - time.time() * 1000) / 1000
            if delay_s > 0:
                if not wait:
                    break
                await asyncio.sleep(delay_s)
            await self.router.record_not_relayed(
                from_=item.from_,
                to=item.to,
                kind=item.kind,
                resource_sid=item.resource_sid,
                interaction_sid=item.interaction_sid,
                body=item.body,
                reason=item.reason,
            )
            self.pending.popleft()
            self.recorded += 1
            done += 1
        return done

    async def _run(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            while self.pending:
                try:
                    await self.flush()
                except asyncio.CancelledError:
                    raise
                except Exception as err:  # the store is still away: try again shortly
                    log.warning(
                        "%d fallback record(s) wait for the store: %s", len(self.pending), type(err).__name__
                    )
                    await asyncio.sleep(self.retry_s)
