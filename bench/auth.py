"""`maskline bench auth`: what 30 concurrent clients guessing API secrets do to the webhooks.

`maskline serve` runs in its own process (pinned to core 1 when `taskset` is there; this
process, the load, to core 0). Signed inbound texts go at a fixed rate and their latency is
measured three times: alone; with 30 clients sending wrong secrets for a real key SID as fast as
they can (the failed-login limiter on, as shipped); and the same with the limiter off
(MASKLINE_AUTH_FAILURE_LIMIT=0), where only the bounded scrypt pool stands between the guessers
and the cores. Target: webhook p95 under attack <= 1.5x the quiet p95. Also the timing oracle:
median time of unknown-SID vs wrong-secret logins. Uses Redis DB --redis-db (default 8, flushed)
and the database maskline_bench_auth (dropped and re-created)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

import aiohttp
import asyncpg
import orjson
import redis.asyncio as aioredis
from twilio.request_validator import RequestValidator

from core.settings import Settings
from maskline.devservers import with_database
from maskline.migrate import apply_migrations
from relay.credentials import create_key

__all__ = ["main"]

BENCH_DB = "maskline_bench_auth"
AUTH_TOKEN = "maskline-bench-auth-token"
ATTACKERS = 30
RATE_PER_S = 200
PHASE_S = 6.0


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pinned(core: int) -> list[str]:
    return ["taskset", "-c", str(core)] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


async def _serve(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once; readiness is polled below
        [*_pinned(1), sys.executable, "-m", "maskline", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            try:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    if resp.status == 200:
                        return proc
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    proc.kill()
    raise RuntimeError("maskline serve did not start")


async def _phase(base: str, texts: list[dict[str, str]], attack: str | None) -> dict[str, float]:
    validator = RequestValidator(AUTH_TOKEN)
    latencies: list[float] = []
    stop = asyncio.Event()
    attempts = 0

    async def text(http: aiohttp.ClientSession, params: dict[str, str]) -> None:
        headers = {"X-Twilio-Signature": validator.compute_signature(base + "/twilio/sms", params)}
        started = time.perf_counter()
        async with http.post(base + "/twilio/sms", data=params, headers=headers) as resp:
            await resp.read()
        latencies.append((time.perf_counter() - started) * 1000)

    async def guess(http: aiohttp.ClientSession) -> None:
        nonlocal attempts
        while not stop.is_set():
            header = "Basic " + base64.b64encode(f"{attack}:{secrets.token_urlsafe(24)}".encode()).decode()
            async with http.get(base + "/v1/Services", headers={"Authorization": header}) as resp:
                await resp.read()
            attempts += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        guessers = [asyncio.create_task(guess(http)) for _ in range(ATTACKERS if attack else 0)]
        await asyncio.sleep(1.0 if attack else 0)
        tasks, start = [], time.monotonic()
        for i, params in enumerate(texts):
            await asyncio.sleep(max(0.0, start + i / RATE_PER_S - time.monotonic()))
            tasks.append(asyncio.create_task(text(http, params)))
        await asyncio.gather(*tasks)
        stop.set()
        await asyncio.gather(*guessers)
    ordered = sorted(latencies)
    return {
        "p50": statistics.median(ordered),
        "p95": ordered[int(len(ordered) * 0.95) - 1],
        "guesses": attempts,
    }


async def _logins(base: str, sid: str) -> tuple[float, float]:
    """Medians (ms) of 100 unknown-SID and 100 wrong-secret logins, alternated."""
    unknown: list[float] = []
    wrong: list[float] = []
    async with aiohttp.ClientSession() as http:
        for i in range(200):
            who = "SK" + secrets.token_hex(16) if i % 2 else sid
            header = "Basic " + base64.b64encode(f"{who}:{secrets.token_urlsafe(24)}".encode()).decode()
            started = time.perf_counter()
            async with http.get(base + "/v1/Services", headers={"Authorization": header}) as resp:
                await resp.read()
            (unknown if i % 2 else wrong).append((time.perf_counter() - started) * 1000)
    return statistics.median(unknown), statistics.median(wrong)


async def main(settings: Settings, args: argparse.Namespace) -> int:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})  # the load on core 0, the server on core 1
    redis_url = with_database(settings.redis_url, str(args.redis_db))
    admin = await asyncpg.connect(with_database(settings.database_url, "postgres"))
    await admin.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
    await admin.execute(f"CREATE DATABASE {BENCH_DB}")
    await admin.close()
    database_url = with_database(settings.database_url, BENCH_DB)
    await apply_migrations(database_url)
    r = aioredis.from_url(redis_url)
    await r.flushdb()
    pg = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    sid, secret = await create_key(pg, "bench")
    auth = {"Authorization": "Basic " + base64.b64encode(f"{sid}:{secret}".encode()).decode()}
    results: dict[str, dict[str, float]] = {}
    try:
        for label, limit in (("limiter on", "20"), ("limiter off", "0")):
            port = _port()
            base = f"http://127.0.0.1:{port}"
            env = {
                **os.environ,
                "MASKLINE_REDIS_URL": redis_url,
                "MASKLINE_DATABASE_URL": database_url,
                "MASKLINE_EMBEDDED": "never",
                "MASKLINE_TWILIO_AUTH_TOKEN": AUTH_TOKEN,
                "MASKLINE_AUTH_FAILURE_LIMIT": limit,
                "MASKLINE_LOG_LEVEL": "ERROR",
            }
            proc = await _serve(env, port)
            try:
                async with aiohttp.ClientSession(headers=auth) as http:
                    # Each run on its own pool numbers: a number belongs to one Service.
                    numbers = (
                        ("+14155550201", "+14155550202") if limit != "0" else ("+14155550211", "+14155550212")
                    )
                    async with http.post(base + "/v1/Services", data={"UniqueName": f"b-{port}"}) as resp:
                        ks = (await resp.json())["sid"]
                    for n in numbers:
                        await (
                            await http.post(f"{base}/v1/Services/{ks}/PhoneNumbers", data={"PhoneNumber": n})
                        ).read()
                    form = [
                        ("Participants", orjson.dumps({"Identifier": n}).decode())
                        for n in ("+14155550101", "+14155550102")
                    ]
                    async with http.post(f"{base}/v1/Services/{ks}/Sessions", data=form) as resp:
                        created = await resp.json()
                        assert resp.status == 201, created
                        kc = created["sid"]
                    async with http.get(f"{base}/v1/Services/{ks}/Sessions/{kc}/Participants") as resp:
                        proxy = {
                            p["identifier"]: p["proxy_identifier"]
                            for p in (await resp.json())["participants"]
                        }

                def texts(proxy: dict[str, str] = proxy) -> list[dict[str, Any]]:
                    return [
                        {
                            "From": "+14155550101",
                            "To": proxy["+14155550101"],
                            "Body": "hi",
                            "MessageSid": "SM" + secrets.token_hex(16),
                        }
                        for _ in range(int(RATE_PER_S * PHASE_S))
                    ]

                if label == "limiter on":
                    results["quiet"] = await _phase(base, texts(), None)
                else:  # the timing oracle, where no limiter answers 429 before the hash
                    unknown, wrong = await _logins(base, sid)
                    results["timing"] = {"unknown_sid_ms": unknown, "wrong_secret_ms": wrong}
                await r.delete(*[k async for k in r.scan_iter(match="ml:{auth}:*")] or ["-"])
                results[f"attack, {label}"] = await _phase(base, texts(), sid)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    finally:
        await pg.close()
        await r.flushdb()
        await r.aclose()
    quiet = results["quiet"]["p95"]
    print(
        f"maskline bench auth: {RATE_PER_S} signed texts/s for {PHASE_S:.0f} s, {ATTACKERS} guessing clients"
    )
    for label in ("quiet", "attack, limiter on", "attack, limiter off"):
        res = results[label]
        print(
            f"  {label:20s} webhook p50 {res['p50']:6.1f} ms, p95 {res['p95']:6.1f} ms "
            f"({res['p95'] / quiet:.2f}x quiet; target <= 1.5x), {int(res['guesses'])} guesses"
        )
    t = results["timing"]
    gap = abs(t["unknown_sid_ms"] - t["wrong_secret_ms"]) / max(t["wrong_secret_ms"], 1e-9)
    print(
        f"  login timing: unknown SID {t['unknown_sid_ms']:.1f} ms vs wrong secret {t['wrong_secret_ms']:.1f} ms "
        f"(medians of 100; {gap:.1%} apart; target <= 10%)"
    )
    return 0
