"""`maskline bench sessions`: session creates per second against a running Redis, with a pool of
1,000 and of 100,000 numbers, and their ratio (target: >= 1,500/s on one core, ratio <= 1.3).
Also: a participant who already holds thousands of live sessions vs. new participants.

Each create is what the API does minus HTTP: validate both identifiers with phonenumbers, then
one create_session.lua call (allocation, writes, audit event). Runs in one process (one core),
rounds alternate between pool sizes and the median of each is reported. It uses its own Redis DB
(--redis-db, default 11) and flushes that DB only."""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any

import phonenumbers
import redis.asyncio as aioredis

from pool import keys
from pool.numbers import parse_proxy_number
from pool.scripts import Scripts
from relay.settings import Settings
from sessions.models import ParticipantRequest
from sessions.store import SessionStore

__all__ = ["main"]

SERVICE = "KS" + "be" * 16
AREA_CODES = (201, 212, 213, 305, 312, 415, 503, 512, 617, 646, 702, 713, 718, 773, 818, 917)


def _numbers(count: int, seed: int) -> list[str]:
    """Distinct valid US numbers."""
    rng = random.Random(seed)
    out: set[str] = set()
    while len(out) < count:
        e164 = f"+1{rng.choice(AREA_CODES)}{rng.randint(200, 999)}{rng.randint(0, 9999):04d}"
        if e164 not in out and phonenumbers.is_valid_number(phonenumbers.parse(e164)):
            out.add(e164)
    return sorted(out)


async def _setup_pool(redis: aioredis.Redis, scripts: Scripts, pool: list[str]) -> None:
    await redis.flushdb()
    await redis.hset(
        keys.service_settings(SERVICE), mapping={"sid": SERVICE, "cool_off_s": 3600, "default_ttl_s": 0}
    )
    prefix = keys.service_prefix(SERVICE)
    for start in range(0, len(pool), 5000):
        async with redis.pipeline(transaction=False) as pipe:
            for i, e164 in enumerate(pool[start : start + 5000], start=start):
                n = parse_proxy_number(e164)
                pipe.evalsha(
                    scripts._scripts["number_upsert"].sha,
                    1,
                    prefix,
                    n.e164,
                    f"PN{i:032x}",
                    n.region,
                    n.area,
                    "0",
                )
            await pipe.execute()


async def _create_many(store: SessionStore, pairs: list[tuple[str, str]], concurrency: int) -> float:
    """Creates one session per pair with `concurrency` in flight; returns creates per second."""
    import asyncio

    queue = iter(pairs)

    async def worker() -> None:
        for a, b in queue:
            await store.create_session(
                SERVICE, participants=[ParticipantRequest(identifier=a), ParticipantRequest(identifier=b)]
            )

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(pairs) / (time.perf_counter() - start)


async def main(settings: Settings, args: argparse.Namespace) -> int:
    from relay.embedded import ServerUnreachable, ensure_servers

    try:
        settings, servers = await ensure_servers(settings)
    except ServerUnreachable as err:
        print(f"maskline bench: {err}")
        return 2
    base = settings.redis_url.rsplit("/", 1)[0] if settings.redis_url.count("/") > 2 else settings.redis_url
    redis = aioredis.from_url(f"{base}/{args.redis_db}", decode_responses=True)
    try:
        scripts = Scripts(redis)
        await redis.script_load(scripts._scripts["number_upsert"].script)
        store = SessionStore(redis, scripts=scripts)
        n = args.sessions
        probe = min(n, 5000)
        people = _numbers(2 * n + 5000 + 2 * probe + 1, seed=7)
        pairs = [(people[2 * i], people[2 * i + 1]) for i in range(n)]
        heavy = people[-1]
        spare = people[2 * n : -1]
        results: dict[str, list[float]] = {"1,000": [], "100,000": []}
        pools = {"1,000": _numbers(1_000, seed=1), "100,000": _numbers(100_000, seed=2)}
        print(
            f"maskline bench sessions: {n} creates per round, concurrency {args.concurrency}, {args.rounds} rounds"
        )
        for round_no in range(args.rounds):
            for label, pool in pools.items():
                await _setup_pool(redis, scripts, pool)
                rate = await _create_many(store, pairs, args.concurrency)
                results[label].append(rate)
                print(f"  round {round_no + 1}: pool {label:>7}: {rate:8.0f} creates/s")
        med: dict[str, Any] = {k: statistics.median(v) for k, v in results.items()}
        print(f"pool of   1,000 numbers: {med['1,000']:8.0f} session creates/s (median)")
        print(f"pool of 100,000 numbers: {med['100,000']:8.0f} session creates/s (median)")
        print(f"ratio 1,000 / 100,000:   {med['1,000'] / med['100,000']:8.2f}  (target <= 1.3)")

        # A courier already in 5,000 live sessions, against new participants, same pool.
        await _setup_pool(redis, scripts, pools["100,000"])
        await _create_many(store, [(heavy, b) for b in spare[:5000]], args.concurrency)
        rest = spare[5000:]
        heavy_rate = await _create_many(store, [(heavy, b) for b in rest[:probe]], args.concurrency)
        fresh = [(rest[probe + 2 * i], rest[probe + 2 * i + 1]) for i in range(probe // 2)]
        fresh_rate = await _create_many(store, fresh, args.concurrency)
        print(
            f"participant holding 5,000 live sessions: {heavy_rate:8.0f} creates/s; new participants: {fresh_rate:8.0f} creates/s"
        )
        await redis.flushdb()
    finally:
        await redis.aclose()
        await servers.stop()
    return 0
