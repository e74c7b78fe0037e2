"""`maskline bench sessions`: session creates per second against a running Redis, with a pool of
1,000 and of 100,000 numbers, and their ratio (target: >= 1,500/s on one core, ratio <= 1.3).
Also: a participant who already holds thousands of live sessions vs. new participants.

Each create is what the API does minus HTTP: validate both identifiers with phonenumbers, then
one create_session.lua call (allocation, writes, audit event). Runs in one process (one core).
The two pools live side by side and creates alternate between them in chunks of 1,000, so the
shared machine's noise hits both alike; the medians of the chunks are compared. It uses its own Redis DB
(--redis-db, default 11) and flushes that DB only."""

from __future__ import annotations

import argparse
import random
import statistics
import time

import phonenumbers
import redis.asyncio as aioredis

from core import keys
from core.scripts import Scripts
from core.settings import Settings
from maskline.devservers import with_database
from pool.numbers import parse_proxy_number
from sessions.models import ParticipantRequest
from sessions.scripts import SESSION_LUA
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


async def _setup_pool(redis: aioredis.Redis, scripts: Scripts, service_sid: str, pool: list[str]) -> None:
    await redis.hset(
        keys.service_settings(service_sid),
        mapping={"sid": service_sid, "cool_off_s": 3600, "default_ttl_s": 0},
    )
    prefix = keys.service_prefix(service_sid)
    sha = scripts._scripts["number_upsert"].sha
    for start in range(0, len(pool), 5000):
        async with redis.pipeline(transaction=False) as pipe:
            for i, e164 in enumerate(pool[start : start + 5000], start=start):
                n = parse_proxy_number(e164)
                pipe.evalsha(sha, 1, prefix, n.e164, f"PN{i:032x}", n.region, n.area, "0", "")
            await pipe.execute()


async def _create_many(
    store: SessionStore, pairs: list[tuple[str, str]], concurrency: int, service_sid: str = SERVICE
) -> float:
    """Creates one session per pair with `concurrency` in flight; returns creates per second."""
    import asyncio

    queue = iter(pairs)

    async def worker() -> None:
        for a, b in queue:
            await store.create_session(
                service_sid, participants=[ParticipantRequest(identifier=a), ParticipantRequest(identifier=b)]
            )

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(pairs) / (time.perf_counter() - start)


async def main(settings: Settings, args: argparse.Namespace) -> int:
    redis = aioredis.from_url(with_database(settings.redis_url, str(args.redis_db)), decode_responses=True)
    try:
        scripts = Scripts(redis, SESSION_LUA)
        await redis.script_load(scripts._scripts["number_upsert"].script)
        store = SessionStore(redis, scripts=scripts)
        n = args.sessions
        chunk = 1000
        probe = min(n, 5000)
        people = _numbers(4 * n + 5000 + 2 * probe + 1, seed=7)
        heavy = people[-1]
        # Both pools live side by side (two Services) and the creates alternate between them in
        # chunks, so the machine's noise hits both alike; the ratio compares chunk medians.
        services = {"1,000": "KS" + "a1" * 16, "100,000": "KS" + "b1" * 16}
        pools = {"1,000": _numbers(1_000, seed=1), "100,000": _numbers(100_000, seed=2)}
        await redis.flushdb()
        for label, pool in pools.items():
            await _setup_pool(redis, scripts, services[label], pool)
        pairs = {
            label: [(people[offset + 2 * i], people[offset + 2 * i + 1]) for i in range(n)]
            for label, offset in (("1,000", 0), ("100,000", 2 * n))
        }
        results: dict[str, list[float]] = {"1,000": [], "100,000": []}
        print(
            f"maskline bench sessions: {n} creates per pool in chunks of {chunk}, alternating, concurrency {args.concurrency}"
        )
        for start in range(0, n, chunk):
            for label in pools:
                batch = pairs[label][start : start + chunk]
                results[label].append(await _create_many(store, batch, args.concurrency, services[label]))
        med = {k: statistics.median(v) for k, v in results.items()}
        for label in pools:
            spread = f"(chunks: min {min(results[label]):.0f}, max {max(results[label]):.0f})"
            print(
                f"pool of {label:>7} numbers: {med[label]:8.0f} session creates/s (median of {len(results[label])}) {spread}"
            )
        print(f"ratio 1,000 / 100,000:   {med['1,000'] / med['100,000']:8.2f}  (target <= 1.3)")

        # A courier already in 5,000 live sessions against new participants, on the 100,000 pool.
        spare = people[4 * n : -1]
        big = services["100,000"]
        await _create_many(store, [(heavy, b) for b in spare[:5000]], args.concurrency, big)
        rest = spare[5000:]
        heavy_rates, fresh_rates = [], []
        for start in range(0, probe, chunk):
            heavy_rates.append(
                await _create_many(
                    store, [(heavy, b) for b in rest[start : start + chunk]], args.concurrency, big
                )
            )
            fresh = [(rest[probe + start + i], rest[probe + start + i + 1]) for i in range(0, chunk, 2)]
            fresh_rates.append(await _create_many(store, fresh, args.concurrency, big))
        print(
            f"participant holding 5,000+ live sessions: {statistics.median(heavy_rates):8.0f} creates/s; "
            f"new participants: {statistics.median(fresh_rates):8.0f} creates/s"
        )
        await redis.flushdb()
    finally:
        await redis.aclose()
    return 0
