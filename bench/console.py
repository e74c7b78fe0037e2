"""`maskline bench console`: how fast the console answers with 10,000 live sessions in Redis and
1,000,000 rows in the audit log (target: every page <= 100 ms).

The audit log is topped up the way `maskline bench audit` does it (rows shaped like the writer's,
spread over 90 days and 20 Services); the live sessions are created through the session store in
one Service with 200 proxy numbers, and a few texts are relayed through signed webhooks (the
sandbox's simulated Twilio) so a timeline has something to show. Each page is fetched signed in,
over HTTP, after a warm-up; the bench prints the median, p95 and worst of each.

Data: Redis DB --redis-db (default 10, flushed) and Postgres database maskline_bench_console."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import re
import statistics
import time
from typing import Final

import aiohttp
import asyncpg
from aiohttp import web

from bench import procs
from bench.audit import (
    ENSURE_MONTHS,
    FILL_EVENTS,
    FILL_SUBJECTS,
    PARTICIPANTS,
    PROXIES,
    SERVICES,
    _fresh_database,
)
from core.connections import redis_client
from core.settings import Settings
from maskline.devservers import with_database
from maskline.sandbox.simulator import Simulator
from maskline.server import create_app
from relay.credentials import create_key
from sessions.models import ParticipantRequest
from sessions.store import SessionStore

__all__ = ["main"]

BENCH_DB: Final = "maskline_bench_console"
TARGET_MS: Final = 100.0
FILL_CHUNK: Final = 100_000
ACCOUNT_SID: Final = "AC" + "be" * 16
AUTH_TOKEN: Final = "bench-console-token"


async def _fill_audit(pg: asyncpg.Pool, rows: int) -> None:
    await pg.execute(ENSURE_MONTHS)
    await pg.execute(FILL_SUBJECTS, PARTICIPANTS, PROXIES)
    for start in range(0, rows, FILL_CHUNK):
        await pg.execute(
            FILL_EVENTS, PARTICIPANTS, PROXIES, SERVICES, start, min(start + FILL_CHUNK, rows) - 1
        )
    await pg.execute("ANALYZE audit_events")


async def _signed_in(base: str, sid: str, secret: str) -> aiohttp.ClientSession:
    http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with http.get(base + "/console/login") as r:
        pre = re.search(r'name="csrf" value="([^"]+)"', await r.text())
    assert pre, "no sign-in form"
    async with http.post(
        base + "/console/login", data={"csrf": pre.group(1), "sid": sid, "secret": secret}
    ) as r:
        assert r.status == 200 and r.url.path == "/console", f"sign-in failed: {r.status}"
    return http


async def _time(http: aiohttp.ClientSession, url: str, rounds: int) -> list[float]:
    times = []
    for i in range(rounds + 3):
        started = time.perf_counter()
        async with http.get(url) as r:
            await r.read()
            assert r.status == 200, f"{url}: HTTP {r.status}"
        if i >= 3:  # warm-up
            times.append((time.perf_counter() - started) * 1000)
    return times


async def main(settings: Settings, args: argparse.Namespace) -> int:
    redis_url = with_database(settings.redis_url, str(args.redis_db))
    redis = redis_client(redis_url)
    await redis.flushdb()  # the bench's own DB only
    pg = await asyncpg.create_pool(
        await _fresh_database(settings.database_url, BENCH_DB), min_size=2, max_size=8
    )
    port, phones = procs.free_port(), procs.free_port()
    conf = dataclasses.replace(
        settings,
        redis_url=redis_url,
        public_url=f"http://127.0.0.1:{port}",
        twilio_account_sid=ACCOUNT_SID,
        twilio_auth_token=AUTH_TOKEN,
        twilio_api_url=f"http://127.0.0.1:{phones}",
    )
    runner = web.AppRunner(create_app(conf, redis=redis, pg=pg, background=False), access_log=None)
    try:
        started = time.perf_counter()
        await _fill_audit(pg, args.audit_rows)
        print(f"audit log: {args.audit_rows:,} rows in {time.perf_counter() - started:.0f} s")
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        base = conf.public_url
        sid, secret = await create_key(pg, "bench", permissions=frozenset({"proxy", "audit"}))
        auth = {"Authorization": aiohttp.encode_basic_auth(sid, secret)}
        async with aiohttp.ClientSession(headers=auth) as api:
            async with api.post(base + "/v1/Services", data={"UniqueName": "bench-console"}) as r:
                ks = (await r.json())["sid"]
            for n in range(200):
                async with api.post(
                    f"{base}/v1/Services/{ks}/PhoneNumbers", data={"PhoneNumber": f"+1415555{1000 + n}"}
                ):
                    pass
        store = SessionStore(redis)
        started = time.perf_counter()
        gate = asyncio.Semaphore(64)

        async def create(i: int) -> str:
            people = [
                ParticipantRequest(identifier=f"+1212555{i:04d}"),
                ParticipantRequest(identifier=f"+1312555{i:04d}"),
            ]
            async with gate:
                return str(
                    (await store.create_session(ks, unique_name=f"order-{i}", participants=people))["sid"]
                )

        sids = await asyncio.gather(*(create(i) for i in range(args.sessions)))
        print(f"live sessions: {len(sids):,} created in {time.perf_counter() - started:.0f} s")
        sim = Simulator(ACCOUNT_SID, AUTH_TOKEN, maskline_url=base)
        parts = await store.list_participants(ks, sids[0])
        for k in range(20):
            await sim.text(parts[0]["identifier"], parts[0]["proxy_identifier"], f"text {k}")
        await sim.aclose()

        http = await _signed_in(base, sid, secret)
        sessions = f"{base}/console/services/{ks}/sessions"
        pages = {
            "services": f"{base}/console",
            "service + pool": f"{base}/console/services/{ks}",
            "recent sessions": sessions,
            "session by unique name": f"{sessions}?q=order-4242",
            "session by participant number": f"{sessions}?q=%2B12125554242",
            "session by proxy number": f"{sessions}?q=%2B14155551000",
            "session page": f"{sessions}/{sids[0]}",
            "timeline (live refresh)": f"{sessions}/{sids[0]}/timeline",
            "audit by number": f"{base}/console/audit?Number=%2B15550042424",
            "audit by time (1 h)": f"{base}/console/audit?Since=2026-01-01T00:00:00Z&Until=2026-01-01T01:00:00Z",
        }
        kc = await pg.fetchval("SELECT session_sid FROM audit_events WHERE session_sid IS NOT NULL LIMIT 1")
        pages["audit by session"] = f"{base}/console/audit?Session={kc}"
        pages["audit page (search form)"] = f"{base}/console/audit"
        worst = 0.0
        print(f"console pages, {args.rounds} requests each after a warm-up (target <= {TARGET_MS:.0f} ms):")
        for name, url in pages.items():
            times = await _time(http, url, args.rounds)
            p95 = statistics.quantiles(times, n=20)[18] if len(times) >= 20 else max(times)
            worst = max(worst, p95)
            print(
                f"  {name:32} median {statistics.median(times):6.1f} ms  p95 {p95:6.1f} ms  max {max(times):6.1f} ms"
            )
        await http.close()
        print(
            f"worst p95: {worst:.1f} ms ({'meets' if worst <= TARGET_MS else 'misses'} the {TARGET_MS:.0f} ms target)"
        )
        return 0 if worst <= TARGET_MS else 1
    finally:
        await runner.cleanup()
        await redis.flushdb()
        await redis.aclose()
        await pg.close()
