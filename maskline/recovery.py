"""Recovery: Redis lost its data (FLUSHALL, a restart without persistence). Put back what the hot
path needs, from Postgres, within seconds and without a restart.

Every `serve` process runs a watchdog (`Recovery.run`): one GET of the marker `ml:{recovery}:published`
every `recovery_interval_s`. The marker holds a random epoch, set once a rebuild has put every
Service, every number and every live session in Redis; a Redis that lost its data has lost the
marker with it. A worker that finds it missing takes the rebuild lock (SET NX PX, renewed while it
works) and rebuilds: Services, numbers, the live sessions and the pairs still cooling off, read
from the audit log (audit/live.py) and written by restore_session.lua (sessions/restore.py).
Every step is idempotent, so two rebuilds, or a rebuild over a Redis that kept its data, change
nothing twice. The marker is set in one transaction with releasing the lock, and only if the lock
is still this worker's: a Redis wiped again mid-rebuild (the lock gone with it) leaves the marker
unset and the next tick starts over. Workers that find the lock taken wait for the marker, polling
faster. /readyz answers 503 while the marker is missing (relay/health.py).

What a rebuild cannot bring back is in docs/design.md, "Recovery"."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Final

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import WatchError

from audit.live import CoolingPair, LoggedSession, cooling_pairs, live_sessions, pending_scheduled
from audit.subjects import ERASED
from core import keys
from core.clock import SYSTEM, Clock
from core.settings import Settings
from pool.registry import NumberRegistry
from sessions.restore import Restored, SessionRestorer, expires_at_ms
from sessions.services import ServiceStore

__all__ = ["RECOVERY", "Recovery", "RebuildReport"]

log = logging.getLogger("maskline.recovery")

# A rebuild that takes longer than this has stalled (Postgres hung): give the lock back.
REBUILD_TIMEOUT_S: Final = 300.0
# While the marker is missing, workers look again this often (at most).
WAITING_POLL_S: Final = 0.1
SELECT_SERVICES: Final = "SELECT sid, cool_off_s FROM services ORDER BY sid"
SELECT_NUMBERS: Final = "SELECT * FROM phone_numbers"


@dataclass
class RebuildReport:
    epoch: str = ""
    services: int = 0
    numbers: int = 0
    sessions: Counter[str] = field(default_factory=Counter)  # restore outcome -> sessions
    erased: int = 0  # participants whose number was erased: not restorable
    skipped: int = 0  # participants whose pair another session took, or whose number left the pool
    cooling: int = 0  # pairs set cooling off again
    scheduled: Counter[str] = field(default_factory=Counter)  # restore_scheduled.lua's word -> messages
    seconds: float = 0.0

    def summary(self) -> str:
        outcomes = ", ".join(f"{n} {o}" for o, n in sorted(self.sessions.items())) or "no session"
        return (
            f"{self.services} Service(s), {self.numbers} number(s), sessions: {outcomes}; "
            f"{self.skipped} participant(s) skipped, {self.erased} erased, {self.cooling} cooling pair(s); "
            f"scheduled messages: {dict(self.scheduled) or 'none'}; {self.seconds:.3f} s"
        )


@dataclass
class _Plan:
    """What one Service gets back, read from Postgres before anything is written to Redis (so the
    Service is back in Redis a few round trips after its pool is)."""

    service_sid: str
    live: list[LoggedSession]
    cooling: list[CoolingPair]
    cool_off_ms: int
    scheduled: list[dict[str, str]]  # messages the log last saw `scheduled`


class Recovery:
    def __init__(
        self,
        redis: aioredis.Redis,
        pg: asyncpg.Pool,
        *,
        services: ServiceStore,
        numbers: NumberRegistry,
        restorer: SessionRestorer,
        settings: Settings,
        clock: Clock = SYSTEM,
    ) -> None:
        self.redis = redis
        self.pg = pg
        self.services = services
        self.numbers = numbers
        self.restorer = restorer
        self.clock = clock
        self.interval_s = settings.recovery_interval_s
        self.lock_ms = max(1000, int(settings.recovery_lock_s * 1000))
        self.settle_s = settings.recovery_settle_s
        self.epoch: str | None = None  # the marker this worker last saw
        self.present = False  # whether Redis held the marker at the last look
        self.rebuilds = 0  # rebuilds this worker completed
        self.last_report: RebuildReport | None = None
        self._lost_at: float | None = None  # monotonic time this worker saw the marker go

    # -- checks ----------------------------------------------------------------------------------
    async def marker(self) -> str | None:
        """The epoch of the last complete rebuild, None when Redis lost it (or never had it)."""
        return _text(await self.redis.get(keys.PUBLISHED))

    async def tick(self) -> bool:
        """One look at the marker, and a rebuild if it is missing (unless another worker is on it).
        True when Redis holds the hot copy after this call."""
        marker = await self.marker()
        if marker:
            if marker != self.epoch:
                if self.epoch is not None:
                    log.info("Redis' hot copy was rebuilt by another worker (epoch %s)", marker)
                self.epoch = marker
            self.present = True
            self._lost_at = None
            return True
        if self.epoch is not None and self._lost_at is None:  # it was there: Redis lost its data
            log.warning("Redis lost its data (marker %s gone): rebuilding from Postgres", keys.PUBLISHED)
            self._lost_at = time.monotonic()
        self.present = False
        return await self.rebuild() is not None

    async def startup(self) -> RebuildReport | None:
        """At start-up: a Redis without the marker is rebuilt in full (if no other worker is on it);
        one with it gets its Services and numbers published again (idempotent), as always."""
        marker = await self.marker()
        if not marker:
            return await self.rebuild()
        self.epoch, self.present = marker, True
        await self.services.publish_all()
        await self._publish_numbers()
        return None

    async def run(self, stop: asyncio.Event) -> None:
        """The watchdog: tick every `recovery_interval_s` (faster while the marker is missing) until
        `stop`; failures are logged once per kind and retried."""
        last_error = ""
        while not stop.is_set():
            try:
                waiting = not await self.tick()  # another worker is rebuilding
                last_error = ""
            except Exception as err:  # Redis or Postgres away: look again next tick, never die
                waiting = False
                if repr(err) != last_error:
                    log.warning("recovery watchdog: %r; retrying", err)
                    last_error = repr(err)
            wait_s = min(self.interval_s, WAITING_POLL_S) if waiting else self.interval_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=wait_s)

    # -- the rebuild -----------------------------------------------------------------------------
    async def rebuild(self) -> RebuildReport | None:
        """Rebuild Redis' copy under the lock; None when another worker holds the lock. Raises on
        failure (the marker stays unset: the next tick retries)."""
        token = secrets.token_hex(16)
        if not await self.redis.set(keys.REBUILD_LOCK, token, nx=True, px=self.lock_ms):
            return None
        started = time.monotonic()
        renew = asyncio.create_task(self._renew(token))
        committed = False
        try:
            async with asyncio.timeout(REBUILD_TIMEOUT_S):
                if self._lost_at is not None:
                    # Give the audit writer(s) time to commit what they read before Redis lost it.
                    await asyncio.sleep(max(0.0, self.settle_s - (time.monotonic() - self._lost_at)))
                report = await self._rebuild()
            report.epoch = f"{self.clock.now_ms()}-{secrets.token_hex(4)}"
            committed = await self._commit(token, report.epoch)
        finally:
            renew.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renew
            if not committed:
                with contextlib.suppress(Exception):
                    await self._release(token)
        report.seconds = time.monotonic() - started
        if not committed:
            log.warning("Redis lost its data again during the rebuild (lock gone): starting over")
            return None
        self.epoch, self.present, self._lost_at = report.epoch, True, None
        self.rebuilds += 1
        self.last_report = report
        log.info("Redis' hot copy rebuilt from Postgres: %s", report.summary())
        return report

    async def _rebuild(self) -> RebuildReport:
        report = RebuildReport()
        now = self.clock.now_ms()
        plans = []
        for row in await self.pg.fetch(SELECT_SERVICES):
            cool_off_ms = int(row["cool_off_s"] or 0) * 1000
            plans.append(
                _Plan(
                    row["sid"],
                    await live_sessions(self.pg, row["sid"]),
                    await cooling_pairs(self.pg, row["sid"], since_ms=now - cool_off_ms)
                    if cool_off_ms
                    else [],
                    cool_off_ms,
                    await pending_scheduled(self.pg, row["sid"]),
                )
            )
        # Services, then the pool, then the sessions holding pairs of it: a session created in
        # between may take a pair a restored one held; that participant is then skipped (logged).
        report.services = await self.services.publish_all()
        report.numbers = await self._publish_numbers()
        for plan in plans:
            await self._restore(plan, report)
        return report

    async def _publish_numbers(self) -> int:
        rows = await self.pg.fetch(SELECT_NUMBERS)
        await self.restorer.gather(self.numbers.publish(dict(r)) for r in rows)
        return len(rows)

    async def _restore(self, plan: _Plan, report: RebuildReport) -> None:
        ks = plan.service_sid
        now = self.clock.now_ms()
        calls = []
        for s in plan.live:
            at = expires_at_ms(s.fields)
            if 0 < at <= now:
                report.sessions["expired"] += 1
                continue
            parts = [p for p in s.participants if ERASED not in (p["identifier"], p["proxy_identifier"])]
            report.erased += len(s.participants) - len(parts)
            calls.append(self.restorer.restore(ks, s.sid, s.fields, parts))
        restored: list[Restored] = await self.restorer.gather(calls)
        for r in restored:
            report.sessions[r.outcome] += 1
            for skip in r.skipped:
                report.skipped += 1
                log.warning(
                    "session %s of %s restored without participant %s: proxy number %s %s",
                    r.session_sid,
                    ks,
                    skip.get("sid"),
                    skip.get("proxy"),
                    "is held by another session" if skip.get("why") == "held" else "left the pool",
                )
        # Cooling pairs after every live session: a pair released, then held again, stays held.
        by_session: dict[str, list[tuple[str, str, str, int, str]]] = {}
        for c in plan.cooling:
            if ERASED in (c.identifier, c.proxy_identifier):
                continue
            until = c.released_ms + plan.cool_off_ms
            if until > now:
                by_session.setdefault(c.session_sid, []).append(
                    (c.participant_sid, c.identifier, c.proxy_identifier, until, c.pin)
                )
        counts = await self.restorer.gather(
            self.restorer.cool_off(ks, sid, pairs) for sid, pairs in by_session.items()
        )
        report.cooling += sum(counts)
        # Scheduled messages of the restored sessions: still due later, back on the due list; due
        # already, unknown whether they went out: failed (store_lost), never sent twice.
        words = await self.restorer.gather(
            self.restorer.restore_scheduled(ks, m, lost=int(m["send_at_ms"] or 0) <= now)
            for m in plan.scheduled
        )
        report.scheduled.update(words)

    # -- the lock and the marker -----------------------------------------------------------------
    async def _renew(self, token: str) -> None:
        while True:
            await asyncio.sleep(self.lock_ms / 3000)
            with contextlib.suppress(Exception):
                if _text(await self.redis.get(keys.REBUILD_LOCK)) != token:
                    return  # lost (Redis wiped again, or expired): the commit will refuse
                await self.redis.pexpire(keys.REBUILD_LOCK, self.lock_ms)

    async def _commit(self, token: str, epoch: str) -> bool:
        """Set the marker and release the lock in one transaction, only if the lock is still ours."""
        return await self._if_ours(token, {keys.PUBLISHED: epoch})

    async def _release(self, token: str) -> bool:
        return await self._if_ours(token, {})

    async def _if_ours(self, token: str, values: dict[str, str]) -> bool:
        """Set `values` and delete the lock, atomically, if the lock holds `token` (WATCH: the two
        keys share a slot)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(keys.REBUILD_LOCK)
                if _text(await pipe.get(keys.REBUILD_LOCK)) != token:
                    return False
                pipe.multi()  # type: ignore[no-untyped-call]
                for key, value in values.items():
                    pipe.set(key, value)
                pipe.delete(keys.REBUILD_LOCK)
                await pipe.execute()
                return True
            except WatchError:
                return False


def _text(value: object) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


RECOVERY: web.AppKey[Recovery] = web.AppKey("recovery", Recovery)
