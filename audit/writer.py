"""The audit writer: drains every events stream into Postgres, exactly once per event id.

Delivery is at least once (consumer group `audit`: an entry is acknowledged only after the
transaction that stored it committed); storage is exactly once (audit/chain.py skips ids already
stored, under the chain lock). So:
- Postgres down or slow: entries stay pending in Redis, the writer backs off and retries them.
- writer killed mid-batch: its entries stay pending; another writer claims them (XAUTOCLAIM) once
  they have been idle `claim_idle_ms`, or the same consumer re-reads them when it restarts.
- killed after commit, before XACK: the re-delivered entries are recognised and only acknowledged.
Acknowledged entries are deleted (XDEL) so the streams do not grow without bound.

Hot path: stream entries are read and acknowledged over a lean hiredis connection (core/resp.py,
raw RESP2 replies, no per-entry objects but one Event tuple), and parsed with as few conversions
as possible (audit/entries.py); see docs/audit.md ("Throughput")."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import date
from typing import Any, Final

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from audit.chain import append_events
from audit.entries import Batch, as_text, entries_in, raw_fields
from audit.subjects import SubjectCache
from core import keys
from core.connections import is_cluster
from core.resp import RespClient

__all__ = ["GROUP", "DEAD_LETTERS", "AuditWriter"]

log = logging.getLogger("maskline.audit.writer")

GROUP: Final = "audit"
# Entries the writer cannot read as an event (bad JSON, no type ...): kept here verbatim, with the
# stream they came from, for a human to look at, instead of blocking the stream or being dropped.
DEAD_LETTERS: Final = keys.GLOBAL_PREFIX + "events-dead"
STREAM_PATTERN: Final = "ml:{*}:events"
DISCOVER_EVERY_S: Final = 300.0
# A consumer idle this long with nothing pending is a writer that is gone (a restart gets a new
# name: host-pid): removed from the group, so the group does not grow with every restart.
DEAD_CONSUMER_IDLE_MS: Final = 3_600_000
MAX_BACKOFF_S: Final = 5.0
# Redis Cluster: how often an idle writer looks for new events (BLOCK cannot span nodes).
CLUSTER_POLL_MS: Final = 100
REDIS_TIMEOUT_S: Final = 10.0  # a reply of the writer's own Redis connection (beyond BLOCK)

# What a failed store or read can raise while Postgres or Redis is away; the entries stay pending.
TRANSIENT_ERRORS: Final = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    # A connection left mid-operation by a failed call (seen when Postgres stops under load).
    asyncpg.exceptions.InternalClientError,
    RedisError,
)


class AuditWriter:
    def __init__(
        self,
        redis: aioredis.Redis,
        pg_pool: asyncpg.Pool,
        *,
        consumer: str,
        batch_size: int = 2000,
        claim_idle_ms: int = 30_000,
        block_ms: int = 1_000,
        store_timeout_s: float = 30.0,
        max_inflight: int = 2,
    ) -> None:
        self.redis = redis
        self.pg_pool = pg_pool
        self.consumer = consumer
        self.batch_size = batch_size
        self.claim_idle_ms = claim_idle_ms
        self.block_ms = block_ms
        self.store_timeout_s = store_timeout_s
        self.max_inflight = max(1, max_inflight)
        self.stored = 0  # rows this writer inserted (re-deliveries excluded)
        self._groups: set[str] = set()
        self._periods: set[date] = set()
        # A restarted consumer may own pending entries from its previous life: read those first.
        self._own_pending = True
        self._last_claim_s = 0.0
        self._active_streams = 0  # streams that had entries in the last read (see _count)
        # Pipelining: the next batch is read while batches are being stored, and up to
        # `max_inflight` batches are stored at once, each in its own transaction on its own
        # connection: while one holds the chain heads for its COPY and COMMIT, the next one locks
        # its subjects and protects its personal data (the CPU-heavy part), then waits for the
        # heads (audit/chain.py). None of it weakens a guarantee: a prefetched or in-flight entry is
        # pending in Redis until its own batch commits, and its acknowledgement (part of its task)
        # only ever follows that commit.
        self._prefetched: asyncio.Task[Batch] | None = None
        self._inflight: list[asyncio.Task[None]] = []
        # Subjects and event keys across batches (re-checked in every transaction, never trusted).
        self._subjects = SubjectCache()
        # Reads and acknowledgements over a lean hiredis connection when Redis is plain TCP (the
        # usual case); redis-py otherwise (TLS, unix socket).
        self._fast: RespClient | None = RespClient.like(redis) if _plain_tcp(redis) else None

    async def run(self, stop_event: asyncio.Event) -> None:
        """Drain until stop_event is set; transient failures back off (up to 5 s) and retry."""
        backoff_s = 0.1
        last_discovery_s = 0.0
        while not stop_event.is_set():
            try:
                if time.monotonic() - last_discovery_s > DISCOVER_EVERY_S:
                    await self.discover_streams()
                    await self.forget_dead_consumers()
                    last_discovery_s = time.monotonic()
                n = await self._step(block_ms=self.block_ms)
                backoff_s = 0.1
                if n == 0 and not await self._streams():
                    await _wait(stop_event, self.block_ms / 1000)
            except Exception as exc:  # the writer never dies: what it has not stored stays pending
                level = logging.WARNING if isinstance(exc, TRANSIENT_ERRORS) else logging.ERROR
                log.log(level, "audit writer %s: %r; retrying in %.1fs", self.consumer, exc, backoff_s)
                self._own_pending = True
                await self._settle()
                await _wait(stop_event, backoff_s)
                backoff_s = min(backoff_s * 2, MAX_BACKOFF_S)
        await self._settle()
        await self.aclose()

    async def aclose(self) -> None:
        """Close the writer's own Redis connection (reopened when the writer is used again)."""
        if self._fast is not None:
            await self._fast.aclose()

    async def _settle(self) -> None:
        """Drop a prefetched batch (its entries stay pending: re-read first) and let the batches
        in flight finish (stored and acknowledged, or left pending); errors here are the ones the
        caller is already handling."""
        prefetched, self._prefetched = self._prefetched, None
        inflight, self._inflight = self._inflight, []
        if prefetched is not None:
            prefetched.cancel()
            self._own_pending = True
        for task in [t for t in (prefetched,) if t is not None] + inflight:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _finish(self, *, keep: int = 0) -> None:
        """Wait for the oldest batches in flight until at most `keep` remain; the first failure is
        raised (the others are still awaited by `_settle`)."""
        while len(self._inflight) > keep:
            task = self._inflight[0]
            try:
                await task
            except asyncpg.CheckViolationError:
                self._periods.clear()  # a partition was dropped (retention) under us: create it again
                self._own_pending = True
                raise
            except BaseException:
                self._own_pending = True
                raise
            finally:
                if self._inflight and self._inflight[0] is task:
                    self._inflight.pop(0)

    async def drain_once(self) -> int:
        """Store what is available now (own pending, claimable, new); returns entries acknowledged."""
        self._last_claim_s = 0.0
        total = 0
        try:
            while n := await self._step(block_ms=None):
                total += n
            await self._finish()
        finally:
            await self._settle()
            await self.aclose()
        return total

    async def discover_streams(self) -> None:
        """Register streams missing from `ml:event-streams` (for instance after a partial restore)."""
        found = [
            as_text(k) async for k in self.redis.scan_iter(match=STREAM_PATTERN, _type="stream", count=1000)
        ]
        if found:
            await self.redis.sadd(keys.EVENT_STREAMS, *found)

    async def forget_dead_consumers(self, *, idle_ms: int = DEAD_CONSUMER_IDLE_MS) -> int:
        """Remove from the group the consumers idle for `idle_ms` with nothing pending (their
        pending entries, if any, are first claimed by a live writer: XAUTOCLAIM). Returns how many."""
        removed = 0
        for stream in await self._streams():
            for info in await self.redis.xinfo_consumers(stream, GROUP):
                name = as_text(info.get("name"))
                if (
                    name != self.consumer
                    and int(info.get("pending", 0)) == 0
                    and int(info.get("idle", 0)) >= idle_ms
                ):
                    await self.redis.xgroup_delconsumer(stream, GROUP, name)
                    removed += 1
                    log.info("audit writer %s: removed dead consumer %s from %s", self.consumer, name, stream)
        return removed

    async def _step(self, *, block_ms: int | None) -> int:
        # Finished batches are collected (their failure raised) without waiting for running ones;
        # with `max_inflight` running, wait for the oldest.
        while self._inflight and self._inflight[0].done():
            await self._finish(keep=len(self._inflight) - 1)
        await self._finish(keep=self.max_inflight - 1)
        streams = await self._streams()
        if not streams:
            return 0
        entries = Batch()
        if self._own_pending:
            await self._settle()
            entries = await self._read(streams, "0")
            self._own_pending = bool(entries)
        if not entries and time.monotonic() - self._last_claim_s >= self.claim_idle_ms / 2000:
            # Our own batches in flight are pending too: finish them first, or we would claim them.
            await self._finish()
            entries = await self._claim(streams)
            if not entries:
                self._last_claim_s = time.monotonic()
        if not entries and self._prefetched is not None:
            prefetched, self._prefetched = self._prefetched, None
            entries = await prefetched
        if not entries:
            entries = await self._read(streams, ">", block_ms=block_ms)
        if not entries:
            return 0
        if not self._own_pending and self._prefetched is None:
            self._prefetched = asyncio.create_task(self._read(streams, ">"))
        self._inflight.append(asyncio.create_task(self._store_and_acknowledge(entries)))
        if self.max_inflight == 1:
            await self._finish()
        return len(entries)

    async def _store_and_acknowledge(self, entries: Batch) -> None:
        await self._store(entries)
        await self._acknowledge(entries)

    async def _streams(self) -> list[str]:
        streams = sorted(as_text(s) for s in await self.redis.smembers(keys.EVENT_STREAMS))
        for s in streams:
            if s not in self._groups:
                try:
                    await self.redis.xgroup_create(s, GROUP, id="0", mkstream=True)
                except ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise
                self._groups.add(s)
        return streams

    async def _read(self, streams: list[str], start: str, *, block_ms: int | None = None) -> Batch:
        batch = Batch(redelivered=start != ">")
        try:
            if self._fast is not None:
                args: list[Any] = ["XREADGROUP", "GROUP", GROUP, self.consumer, "COUNT", self._count(streams)]
                if block_ms is not None:
                    args += ["BLOCK", block_ms]
                args += ["STREAMS", *streams, *[start] * len(streams)]
                # No socket timeout on this connection: bound the wait here (Redis hung, not gone).
                async with asyncio.timeout((block_ms or 0) / 1000 + REDIS_TIMEOUT_S):
                    batch.add_resp2(await self._fast.execute(*args))
            elif is_cluster(self.redis):
                await self._read_each(batch, streams, start, block_ms=block_ms)
            else:
                reply = await self.redis.xreadgroup(
                    GROUP,
                    self.consumer,
                    dict.fromkeys(streams, start),
                    count=self._count(streams),
                    block=block_ms,
                )
                for e in entries_in(reply):
                    batch.add(e.stream, e.entry_id, e.raw)
        except ResponseError as exc:
            if "NOGROUP" in str(exc):  # Redis lost its data: recreate the groups
                self._groups.clear()
            raise
        if batch.acks:
            self._active_streams = len(batch.acks)
        return batch

    async def _read_each(self, batch: Batch, streams: list[str], start: str, *, block_ms: int | None) -> None:
        """Redis Cluster: one XREADGROUP names streams of one slot only, and each Service's stream
        has its own. Read them all in one pipeline (a round trip per node); BLOCK cannot wait on
        streams of several nodes, so an idle writer polls every CLUSTER_POLL_MS instead."""
        for attempt in range(2):
            pipe = self.redis.pipeline(transaction=False)
            for stream in streams:
                pipe.xreadgroup(GROUP, self.consumer, {stream: start}, count=self._count(streams))
            for reply in await pipe.execute():
                for e in entries_in(reply):
                    batch.add(e.stream, e.entry_id, e.raw)
            if batch.acks or not block_ms or attempt:
                return
            await asyncio.sleep(min(block_ms, CLUSTER_POLL_MS) / 1000)

    def _count(self, streams: list[str]) -> int:
        """COUNT per stream, so that a read brings about `batch_size` entries in all (COUNT applies
        to each stream): spread over the streams that had entries last time."""
        active = min(self._active_streams or len(streams), len(streams)) or 1
        return max(1, -(-self.batch_size // active))

    async def _claim(self, streams: list[str]) -> Batch:
        entries = Batch(redelivered=True)
        for s in streams:
            reply = await self.redis.xautoclaim(
                s, GROUP, self.consumer, self.claim_idle_ms, start_id="0-0", count=self.batch_size
            )
            # reply: [next cursor, [(id, fields)...], [ids deleted while pending]] (Redis 7)
            for entry_id, fields in reply[1]:
                if fields:
                    entries.add(s, as_text(entry_id), raw_fields(fields))
            gone = [as_text(i) for i in (reply[2] if len(reply) > 2 else [])]
            if gone:
                await self.redis.xack(s, GROUP, *gone)
            if len(entries) >= self.batch_size:
                break
        if entries:
            log.info("audit writer %s claimed %d idle entries", self.consumer, len(entries))
        return entries

    async def _store(self, entries: Batch) -> None:
        if entries.dead:
            pipe = self.redis.pipeline(transaction=False)
            for stream, entry_id, raw in entries.dead:
                log.error("audit writer: malformed entry %s %s moved to %s", stream, entry_id, DEAD_LETTERS)
                pipe.xadd(DEAD_LETTERS, {**raw, "_stream": stream, "_entry_id": entry_id})  # type: ignore[dict-item]
            await pipe.execute()
        if entries.events:
            async with asyncio.timeout(self.store_timeout_s), self.pg_pool.acquire() as conn:
                n = await append_events(
                    conn,
                    entries.events,
                    known_periods=self._periods,
                    subject_cache=self._subjects,
                    redelivered=entries.redelivered,
                )
            self.stored += n  # not `+= await`: batches are stored concurrently

    async def _acknowledge(self, entries: Batch) -> None:
        if not entries.acks:
            return
        if self._fast is not None:
            fast = self._fast
            async with asyncio.timeout(REDIS_TIMEOUT_S):
                await asyncio.gather(
                    *(
                        cmd
                        for stream, ids in entries.acks.items()
                        for cmd in (
                            fast.execute("XACK", stream, GROUP, *ids),
                            fast.execute("XDEL", stream, *ids),
                        )
                    )
                )
            return
        pipe = self.redis.pipeline(transaction=False)
        for stream, ids in entries.acks.items():
            pipe.xack(stream, GROUP, *ids)
            pipe.xdel(stream, *ids)
        await pipe.execute()


def _plain_tcp(redis: aioredis.Redis) -> bool:
    pool = getattr(redis, "connection_pool", None)
    return pool is not None and pool.connection_class is aioredis.Connection


async def _wait(stop_event: asyncio.Event, timeout_s: float) -> None:
    try:
        await asyncio.wait_for(stop_event.wait(), timeout_s)
    except TimeoutError:
        pass
