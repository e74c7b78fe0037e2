"""Audit benchmark (`maskline bench audit`).

1. Writer throughput: `write_events` events waiting in Redis streams (spread over Services) are
   drained by one AuditWriter (one process; batches of `batch_size`, two stored at once) into
   Postgres; prints events/s (target >= 20,000/s).
2. Query by phone number: the log is topped up to `events` stored rows (generated in SQL, same
   shape as the writer's), then random participant and proxy numbers are queried (first page,
   100 rows) through audit.queries.query_events; prints p50/p95 (target p95 <= 50 ms).

Uses its own database (maskline_bench, dropped and re-created) and Redis DB 12 (flushed)."""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any

import asyncpg
import orjson
import redis.asyncio as aioredis

from audit.queries import query_events
from audit.writer import AuditWriter
from core import keys
from core.ids import new_event_id, new_sid
from core.settings import Settings
from maskline.devservers import with_database
from maskline.migrate import apply_migrations

__all__ = ["main"]

BENCH_DB = "maskline_bench"
BENCH_REDIS_DB = 12
PARTICIPANTS = 100_000
PROXIES = 1_000
SERVICES = 20

# Tops the log up with rows shaped like the writer's: two subject tokens per event (participant,
# proxy), a session, canonical JSON data; spread over the last 90 days (several partitions).
FILL_EVENTS = """
INSERT INTO audit_events (ts, id, service_sid, seq, type, session_sid, numbers, data, prev_hash, hash)
SELECT now() - (g % 7776000) * interval '1 second' - interval '1 day',
       'EV' || md5(g::text || 'fill'),
       'KS' || lpad((g % $3)::text, 32, '0'),
       1000000 + g,
       'interaction.created',
       'KC' || md5((g / 4)::text),
       ARRAY['SJ' || md5('p' || (g % $1)), 'SJ' || md5('x' || (g % $2))],
       '{"body":"enc1:AAAA","from":"SJ","to":"SJ","type":"message"}',
       '\\x00', '\\x00'
FROM generate_series($4::bigint, $5::bigint) AS g
"""
FILL_SUBJECTS = """
INSERT INTO audit_subjects (subject_id, number, key)
SELECT 'SJ' || md5('p' || g), '+1555' || lpad(g::text, 7, '0'), '\\x00'::bytea FROM generate_series(0, $1 - 1) AS g
UNION ALL
SELECT 'SJ' || md5('x' || g), '+1666' || lpad(g::text, 7, '0'), '\\x00'::bytea FROM generate_series(0, $2 - 1) AS g
"""
ENSURE_MONTHS = """
SELECT audit_ensure_partition(now() - m * interval '1 month') FROM generate_series(0, 4) AS m
"""


async def _fresh_database(database_url: str, name: str = BENCH_DB) -> str:
    """The bench's own database `name`, dropped, created again and migrated; returns its URL."""
    admin = await asyncpg.connect(with_database(database_url, "postgres"))
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    url = with_database(database_url, name)
    await apply_migrations(url)
    return url


async def _prefill_streams(redis: aioredis.Redis, count: int) -> None:
    services = [new_sid("KS") for _ in range(SERVICES)]
    await redis.sadd(keys.EVENT_STREAMS, *[keys.events(s) for s in services])
    now_ms = time.time_ns() // 1_000_000
    pipe = redis.pipeline(transaction=False)
    for i in range(count):
        sid = services[i % SERVICES]
        participant = f"+1777{i % 5000:07d}"
        proxy = f"+1888{i % 200:07d}"
        data: dict[str, Any] = {
            "sid": new_sid("KI"),
            "session_sid": f"KC{i // 4:032x}",
            "type": "message",
            "from": participant,
            "to": proxy,
            "body": f"order {i} is on its way",
            "numbers": [participant, proxy],
        }
        fields = {
            "id": new_event_id(),
            "type": "interaction.created",
            "service_sid": sid,
            "ts_ms": str(now_ms + i // 100),
            "data": orjson.dumps(data),
        }
        pipe.xadd(keys.events(sid), fields)
        if len(pipe) >= 2000:
            await pipe.execute()
    await pipe.execute()


async def bench_writer(redis: aioredis.Redis, pg: asyncpg.Pool, write_events: int, batch_size: int) -> float:
    await _prefill_streams(redis, write_events)
    writer = AuditWriter(redis, pg, consumer="bench", batch_size=batch_size)
    t0 = time.perf_counter()
    done = await writer.drain_once()
    elapsed = time.perf_counter() - t0
    assert done == write_events == writer.stored, (done, writer.stored)
    return write_events / elapsed


async def bench_queries(pg: asyncpg.Pool, events: int, queries: int) -> tuple[float, float, float, float]:
    have = int(await pg.fetchval("SELECT count(*) FROM audit_events"))
    await pg.execute(ENSURE_MONTHS)
    await pg.execute(FILL_SUBJECTS, PARTICIPANTS, PROXIES)
    step = 200_000
    for start in range(0, max(0, events - have), step):
        await pg.execute(
            FILL_EVENTS, PARTICIPANTS, PROXIES, SERVICES, start, min(start + step, events - have) - 1
        )
    await pg.execute("ANALYZE audit_events")
    await pg.execute("ANALYZE audit_subjects")

    async def timed(**kw: Any) -> float:
        t0 = time.perf_counter()
        await query_events(pg, service_sids=None, limit=100, **kw)
        return (time.perf_counter() - t0) * 1000

    rnd = random.Random(7)
    for _ in range(20):  # warm-up: connections, plans, cache
        await timed(number=f"+1555{rnd.randrange(PARTICIPANTS):07d}")
    by_number = [await timed(number=f"+1555{rnd.randrange(PARTICIPANTS):07d}") for _ in range(queries)]
    by_proxy = [await timed(proxy_number=f"+1666{rnd.randrange(PROXIES):07d}") for _ in range(queries // 4)]
    return (
        statistics.median(by_number),
        _p95(by_number),
        statistics.median(by_proxy),
        _p95(by_proxy),
    )


def _p95(values: list[float]) -> float:
    return sorted(values)[max(0, int(len(values) * 0.95) - 1)]


async def main(settings: Settings, args: argparse.Namespace) -> int:
    await bench(settings.redis_url, settings.database_url, events=args.events)
    return 0


async def bench(
    redis_url: str,
    database_url: str,
    events: int = 1_000_000,
    *,
    write_events: int = 100_000,
    batch_size: int = 2000,
    queries: int = 400,
) -> dict[str, float]:
    redis = aioredis.from_url(with_database(redis_url, str(BENCH_REDIS_DB)), decode_responses=True)
    await redis.flushdb()  # DB 12 only
    pg = await asyncpg.create_pool(await _fresh_database(database_url), min_size=2, max_size=4)
    try:
        rate = await bench_writer(redis, pg, write_events, batch_size)
        print(
            f"writer: {write_events} events in Redis -> Postgres at {rate:,.0f} events/s (target >= 20,000; "
            f"1 writer process, batch {batch_size}, 2 batches in flight)"
        )
        p50, p95, proxy_p50, proxy_p95 = await bench_queries(pg, events, queries)
        total = int(await pg.fetchval("SELECT count(*) FROM audit_events"))
        print(
            f"query by number over {total:,} events: p50 {p50:.1f} ms, p95 {p95:.1f} ms (target p95 <= 50 ms); "
            f"by proxy number: p50 {proxy_p50:.1f} ms, p95 {proxy_p95:.1f} ms"
        )
        return {
            "writer_events_per_s": rate,
            "query_p50_ms": p50,
            "query_p95_ms": p95,
            "proxy_query_p95_ms": proxy_p95,
        }
    finally:
        await redis.flushdb()
        await redis.aclose()
        await pg.close()
