"""The audit writer: drains every events stream into Postgres, exactly once per event id.

Delivery is at least once (consumer group `audit`: an entry is acknowledged only after the
transaction that stored it committed); storage is exactly once (audit/chain.py skips ids already
stored, under the chain lock). So:
- Postgres down or slow: entries stay pending in Redis, the writer backs off and retries them.
- writer killed mid-batch: its entries stay pending; another writer claims them (XAUTOCLAIM) once
  they have been idle `claim_idle_ms`, or the same consumer re-reads them when it restarts.
- killed after commit, before XACK: the re-delivered entries are recognised and only acknowledged.
Acknowledged entries are deleted (XDEL) so the streams do not grow without bound."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any, Final

import asyncpg
import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from audit.chain import Event, append_events
from pool import keys

__all__ = ["GROUP", "DEAD_LETTERS", "Entry", "AuditWriter", "parse_entry"]

log = logging.getLogger("maskline.audit.writer")

GROUP: Final = "audit"
# Entries the writer cannot read as an event (bad JSON, no type ...): kept here verbatim, with the
# stream they came from, for a human to look at, instead of blocking the stream or being dropped.
DEAD_LETTERS: Final = keys.GLOBAL_PREFIX + "events-dead"
STREAM_PATTERN: Final = "ml:{*}:events"
DISCOVER_EVERY_S: Final = 300.0
MAX_BACKOFF_S: Final = 5.0

# What a failed store or read can raise while Postgres or Redis is away; the entries stay pending.
TRANSIENT_ERRORS: Final = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    RedisError,
)


@dataclass(frozen=True)
class Entry:
    stream: str
    entry_id: str
    event: Event | None  # None: malformed, goes to DEAD_LETTERS
    raw: dict[str, str]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_entry(stream: str, entry_id: str, fields: dict[Any, Any]) -> Entry:
    raw = {
        k if k.__class__ is str else _text(k): v if v.__class__ is str else _text(v)
        for k, v in fields.items()
    }
    try:
        data = orjson.loads(raw.get("data", "{}"))
        if not isinstance(data, dict) or not raw.get("type"):
            raise ValueError("data must be a JSON object and type must be set")
        event_id = raw.get("id") or _derived_id(stream, entry_id)
        event = Event(
            id=event_id,
            type=raw["type"],
            service_sid=raw.get("service_sid") or None,
            ts_ms=int(raw["ts_ms"]),
            data=data,
        )
    except (ValueError, KeyError, orjson.JSONDecodeError):
        return Entry(stream, entry_id, None, raw)
    return Entry(stream, entry_id, event, raw)


def _derived_id(stream: str, entry_id: str) -> str:
    # An entry without an id still needs one that is the same on every delivery (idempotency).
    return "EV" + hashlib.sha256(f"{stream}/{entry_id}".encode()).hexdigest()[:32]


class AuditWriter:
    def __init__(
        self,
        redis: aioredis.Redis,
        pg_pool: asyncpg.Pool,
        *,
        consumer: str,
        batch_size: int = 1000,
        claim_idle_ms: int = 30_000,
        block_ms: int = 1_000,
        store_timeout_s: float = 30.0,
    ) -> None:
        self.redis = redis
        self.pg_pool = pg_pool
        self.consumer = consumer
        self.batch_size = batch_size
        self.claim_idle_ms = claim_idle_ms
        self.block_ms = block_ms
        self.store_timeout_s = store_timeout_s
        self.stored = 0  # rows this writer inserted (re-deliveries excluded)
        self._groups: set[str] = set()
        self._periods: set[date] = set()
        # A restarted consumer may own pending entries from its previous life: read those first.
        self._own_pending = True
        self._last_claim_s = 0.0
        # Pipelining: the next batch is read, and the last one acknowledged, while a batch is being
        # stored (Postgres works on the COPY in its own process meanwhile). Neither weakens a
        # guarantee: a prefetched entry is pending in Redis until its own batch commits, and an
        # acknowledgement only ever follows a commit.
        self._prefetched: asyncio.Task[list[Entry]] | None = None
        self._acking: asyncio.Task[None] | None = None

    async def run(self, stop_event: asyncio.Event) -> None:
        """Drain until stop_event is set; transient failures back off (up to 5 s) and retry."""
        backoff_s = 0.1
        last_discovery_s = 0.0
        while not stop_event.is_set():
            try:
                if time.monotonic() - last_discovery_s > DISCOVER_EVERY_S:
                    await self.discover_streams()
                    last_discovery_s = time.monotonic()
                n = await self._step(block_ms=self.block_ms)
                backoff_s = 0.1
                if n == 0 and not await self._streams():
                    await _wait(stop_event, self.block_ms / 1000)
            except TRANSIENT_ERRORS as exc:
                log.warning("audit writer %s: %r; retrying in %.1fs", self.consumer, exc, backoff_s)
                self._own_pending = True
                await self._settle()
                await _wait(stop_event, backoff_s)
                backoff_s = min(backoff_s * 2, MAX_BACKOFF_S)
        await self._settle()

    async def _settle(self) -> None:
        """Drop a prefetched batch (its entries stay pending: re-read first) and finish the last
        acknowledgement; errors here are the ones the caller is already handling."""
        prefetched, self._prefetched = self._prefetched, None
        acking, self._acking = self._acking, None
        for task in (prefetched, acking):
            if task is not None:
                if task is prefetched:
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError, *TRANSIENT_ERRORS):
                    await task
        if prefetched is not None:
            self._own_pending = True

    async def drain_once(self) -> int:
        """Store what is available now (own pending, claimable, new); returns entries acknowledged."""
        self._last_claim_s = 0.0
        total = 0
        try:
            while n := await self._step(block_ms=None):
                total += n
            if self._acking is not None:
                await self._acking
        finally:
            await self._settle()
        return total

    async def discover_streams(self) -> None:
        """Register streams missing from `ml:event-streams` (for instance after a partial restore)."""
        found = [
            _text(k) async for k in self.redis.scan_iter(match=STREAM_PATTERN, _type="stream", count=1000)
        ]
        if found:
            await self.redis.sadd(keys.EVENT_STREAMS, *found)

    async def _step(self, *, block_ms: int | None) -> int:
        if self._acking is not None:
            acking, self._acking = self._acking, None
            await acking
        streams = await self._streams()
        if not streams:
            return 0
        entries: list[Entry] = []
        if self._own_pending:
            await self._settle()
            entries = await self._read(streams, "0")
            self._own_pending = bool(entries)
        if not entries and time.monotonic() - self._last_claim_s >= self.claim_idle_ms / 2000:
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
        try:
            await self._store(entries)
        except asyncpg.CheckViolationError:
            self._periods.clear()  # a partition was dropped (retention) under us: create it again
            self._own_pending = True
            raise
        except BaseException:
            self._own_pending = True
            raise
        self._acking = asyncio.create_task(self._acknowledge(entries))
        return len(entries)

    async def _streams(self) -> list[str]:
        streams = sorted(_text(s) for s in await self.redis.smembers(keys.EVENT_STREAMS))
        for s in streams:
            if s not in self._groups:
                try:
                    await self.redis.xgroup_create(s, GROUP, id="0", mkstream=True)
                except ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise
                self._groups.add(s)
        return streams

    async def _read(self, streams: list[str], start: str, *, block_ms: int | None = None) -> list[Entry]:
        try:
            reply = await self.redis.xreadgroup(
                GROUP, self.consumer, dict.fromkeys(streams, start), count=self.batch_size, block=block_ms
            )
        except ResponseError as exc:
            if "NOGROUP" in str(exc):  # Redis lost its data: recreate the groups
                self._groups.clear()
            raise
        return list(_entries(reply))

    async def _claim(self, streams: list[str]) -> list[Entry]:
        entries: list[Entry] = []
        for s in streams:
            reply = await self.redis.xautoclaim(
                s, GROUP, self.consumer, self.claim_idle_ms, start_id="0-0", count=self.batch_size
            )
            # reply: [next cursor, [(id, fields)...], [ids deleted while pending]] (Redis 7)
            for entry_id, fields in reply[1]:
                if fields:
                    entries.append(parse_entry(s, _text(entry_id), fields))
            gone = [_text(i) for i in (reply[2] if len(reply) > 2 else [])]
            if gone:
                await self.redis.xack(s, GROUP, *gone)
            if len(entries) >= self.batch_size:
                break
        if entries:
            log.info("audit writer %s claimed %d idle entries", self.consumer, len(entries))
        return entries

    async def _store(self, entries: list[Entry]) -> None:
        events = [e.event for e in entries if e.event is not None]
        dead = [e for e in entries if e.event is None and e.raw]
        if dead:
            pipe = self.redis.pipeline(transaction=False)
            for e in dead:
                log.error(
                    "audit writer: malformed entry %s %s moved to %s", e.stream, e.entry_id, DEAD_LETTERS
                )
                pipe.xadd(DEAD_LETTERS, {**e.raw, "_stream": e.stream, "_entry_id": e.entry_id})
            await pipe.execute()
        if events:
            async with asyncio.timeout(self.store_timeout_s), self.pg_pool.acquire() as conn:
                self.stored += await append_events(conn, events, known_periods=self._periods)

    async def _acknowledge(self, entries: list[Entry]) -> None:
        by_stream: dict[str, list[str]] = {}
        for e in entries:
            by_stream.setdefault(e.stream, []).append(e.entry_id)
        pipe = self.redis.pipeline(transaction=False)
        for stream, ids in by_stream.items():
            pipe.xack(stream, GROUP, *ids)
            pipe.xdel(stream, *ids)
        await pipe.execute()


def _entries(reply: Any) -> Iterable[Entry]:
    if not reply:
        return
    items = reply.items() if isinstance(reply, dict) else reply  # RESP3 answers a map
    for stream, messages in items:
        for entry_id, fields in messages:
            if fields:
                yield parse_entry(_text(stream), _text(entry_id), fields)
            else:  # a pending entry deleted from the stream: nothing to store, only to acknowledge
                yield Entry(_text(stream), _text(entry_id), None, {})


async def _wait(stop_event: asyncio.Event, timeout_s: float) -> None:
    try:
        await asyncio.wait_for(stop_event.wait(), timeout_s)
    except TimeoutError:
        pass
