"""`maskline bench relay`: signed inbound SMS webhooks per second against one worker, and the same
load against a bare aiohttp handler (parse the form, answer a fixed TwiML), their ratio, the p99
at a fixed 1,000 requests per second, the cost of counting the Service's abuse limits (runs
without and with them, off-on-on-off) and two workers (against one, both unpinned, in runs
1-2-1). Targets: >= 10 x the Flask masked-numbers tutorial app's ~500 req/s on one core (both
figures from a machine whose bare handler gives ~16,000 req/s: ../shared/NOTES.md; the bench also
prints the target scaled by this run's bare figure, for a slower or faster machine), >= 0.35 of the
bare handler, p99 < 10 ms at 1,000 rps.

Processes (loopback only): this one sets up the data and orchestrates; the worker (the app as
`maskline serve --workers N` runs each of its webhook workers: uvloop, no access log, no
background duties) and the bare handler each run in their own subprocess, pinned to one core (the
load generator, this process and the duties process to the others, when there are two or more: a
generator sharing the server's core flatters every ratio). The duties process (`maskline serve
--duties-only --no-audit-writer`: sweeper, scheduler, recovery watchdog, each under its lease)
runs beside them as in production, where `--workers N` keeps them off the webhook workers (in the
worker they held its event loop for ~10 ms once a second on this machine: the p99 at 1,000 rps);
the audit writer is left out (its cost: `maskline bench audit`), so the events pile up in Redis as
the bench's texts go; the worker's
CPU time (/proc), Redis' (INFO cpu) and the duties process's over the main run give the CPU cost
per relayed text of each; the load comes from `wrk` when installed (apt install wrk), else from a
Python/aiohttp generator in another subprocess (keep-alive, bounded concurrency), both driven from
bench/relay_load.py. Every request
is a distinct, correctly signed webhook with Twilio's full parameter set, for a live session
(a repeated MessageSid would only measure the de-duplication path). The worker is profiled with
py-spy during an extra run, and the functions that dominate are printed.

Data: Redis DB --redis-db (default 10, flushed) and Postgres database maskline_bench_relay
(dropped, re-created and migrated on each run)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import random
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench import procs, relay_load
from bench.profile import profile, summarise_profile
from bench.relay_load import (
    ACCOUNT_SID,
    WRK_SCRIPT,
    cpu_seconds,
    load,
    pin,
    pyload,
    two_workers,
    worker_env,
    write_requests,
    wrk_run,
)
from bench.relay_load import answered as _counted
from bench.relay_load import with_limits as _with_limits

__all__ = ["main"]

BENCH_DB = "maskline_bench_relay"
BARE_TWIML = (
    '<?xml version="1.0" encoding="UTF-8"?><Response><Message to="+14155550102" from="+14155550201" '
    'statusCallback="http://127.0.0.1/twilio/status/message?Service=KS1&amp;Interaction=KI1">hello</Message></Response>'
)
# The per-core target: 10 x the Flask tutorial app (gunicorn, one worker, SQLite, no
# signature check), both measured on a machine whose bare handler gave ~16,000 req/s.
FLASK_TUTORIAL_RPS = 500
REFERENCE_BARE_RPS = 16_000
AREA_CODES = (212, 213, 305, 312, 415, 503, 512, 617, 646, 702, 713, 718, 773, 818, 917)


def _numbers(count: int, seed: int) -> list[str]:
    import phonenumbers

    rng = random.Random(seed)
    out: set[str] = set()
    while len(out) < count:
        e164 = f"+1{rng.choice(AREA_CODES)}{rng.randint(200, 999)}{rng.randint(0, 9999):04d}"
        if phonenumbers.is_valid_number(phonenumbers.parse(e164)):
            out.add(e164)
    return sorted(out)


def _arg(args: argparse.Namespace, name: str, default: Any) -> Any:
    value = getattr(args, name, None)
    return default if value is None else value


# ---------------------------------------------------------------------------------------- set-up


async def _prepare(
    settings: Any, redis_url: str, database_url: str, n_sessions: int
) -> list[tuple[str, str]]:
    """A Service, its pool and n live sessions; returns (From, To) of one participant per session."""
    import asyncpg
    import redis.asyncio as aioredis

    from maskline.devservers import with_database
    from maskline.migrate import apply_migrations
    from pool.registry import NumberRegistry
    from sessions.models import ParticipantRequest
    from sessions.services import ServiceStore
    from sessions.store import SessionStore

    admin = await asyncpg.connect(with_database(database_url, "postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{BENCH_DB}"')
    finally:
        await admin.close()
    await apply_migrations(database_url)
    redis = aioredis.from_url(redis_url, decode_responses=True)
    pg = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    try:
        await redis.flushdb()
        services = ServiceStore(pg, redis, account_sid=ACCOUNT_SID)
        ks = (await services.create({"unique_name": "bench-relay", "cool_off_s": 3600}))["sid"]
        registry = NumberRegistry(pg, redis)
        for number in _numbers(50, seed=11):
            await registry.add(ks, number)
        store = SessionStore(redis)
        people = _numbers(2 * n_sessions, seed=12)
        pairs: list[tuple[str, str]] = []
        sem = asyncio.Semaphore(32)

        async def one(a: str, b: str) -> None:
            async with sem:
                view = await store.create_session(
                    ks, participants=[ParticipantRequest(identifier=a), ParticipantRequest(identifier=b)]
                )
            first = view["participants"][0]
            pairs.append((first["identifier"], first["proxy_identifier"]))

        await asyncio.gather(*(one(people[2 * i], people[2 * i + 1]) for i in range(n_sessions)))
        return pairs
    finally:
        await redis.aclose()
        await pg.close()


# ---------------------------------------------------------------------------------------- processes


# ---------------------------------------------------------------------------------------- main


async def main(settings: Any, args: argparse.Namespace) -> int:
    from maskline.devservers import with_database

    n_sessions = int(_arg(args, "sessions", 2000))
    duration_s = int(_arg(args, "duration", 8))
    connections = int(_arg(args, "concurrency", 32))
    redis_db = int(_arg(args, "redis_db", 10))
    rate = float(_arg(args, "rate", 1000))
    redis_url = with_database(settings.redis_url, str(redis_db))
    database_url = with_database(settings.database_url, BENCH_DB)
    use_wrk = shutil.which("wrk") is not None
    tmp = Path(tempfile.mkdtemp(prefix="maskline-bench-relay-"))
    children: list[subprocess.Popen[bytes]] = []
    try:
        print(f"maskline bench relay: {n_sessions} live sessions, {duration_s} s per run, {connections} connections, "
              f"load from {'wrk' if use_wrk else 'the aiohttp generator'}")  # fmt: skip
        pairs = await _prepare(settings, redis_url, database_url, n_sessions)
        worker_port, bare_port = procs.free_port(), procs.free_port()
        env = worker_env(redis_url, database_url, worker_port)
        worker = procs.spawn("worker", worker_port, env)
        bare = procs.spawn("bare", bare_port, env)
        duties = procs.duties(env)
        children += [worker, bare, duties]
        # Per core: the worker and the bare handler each on the last core (one at a time under
        # load), this process and the load generator on the others, so neither ratio is flattered
        # by a generator that shares the server's core.
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if len(cores) >= 2:
            server_core, load_cores = {cores[-1]}, set(cores[:-1])
            for proc in (worker, bare):
                pin(proc.pid, server_core)
            pin(os.getpid(), load_cores)
            pin(duties.pid, load_cores)
            relay_load.LOAD_CORES.update(load_cores)
            print(f"pinned: worker and bare handler on core {cores[-1]}, load and the duties process on "
                  f"{sorted(load_cores)}")  # fmt: skip
        else:
            print("not pinned: fewer than 2 cores (the ratio is flattered: load shares the server's core)")
        await asyncio.gather(procs.wait_ready(worker_port, worker), procs.wait_ready(bare_port, bare))
        url = f"http://127.0.0.1:{worker_port}/twilio/sms"
        per_run = max(20_000, duration_s * 12_000)
        limit_runs = [f"limits{i}" for i in range(8)]  # off, on, on, off, off, on, on, off
        more_pairs = ["pair1", "pair2"]  # worker then bare again: the ratio's median over three pairs
        two_runs = ["one_before", "two", "one_after"]  # 1 worker, 2, 1 again: all unpinned
        names = ("warm", "main", "fixed", "profile", *two_runs, *limit_runs, *more_pairs)
        files = {name: tmp / f"{name}.txt" for name in names}
        for run, (name, path) in enumerate(files.items()):
            write_requests(path, url, pairs, per_run if name != "warm" else 3_000, run)
        script = tmp / "wrk.lua"
        script.write_text(WRK_SCRIPT)

        async def closed_loop(port: int, path: Path, seconds: int) -> dict[str, float]:
            if use_wrk:
                return await wrk_run(port, path, script, duration_s=seconds, connections=connections)
            return await pyload(port, path, duration_s=seconds, connections=connections)

        await closed_loop(worker_port, files["warm"], 1)  # warm-up: script cache, connections
        await closed_loop(bare_port, files["warm"], 1)
        redis_cpu0 = await procs.redis_cpu(redis_url)
        cpu0, duties_cpu0 = cpu_seconds(worker.pid), cpu_seconds(duties.pid)
        counted0 = await _counted(worker_port)
        relay = await closed_loop(worker_port, files["main"], duration_s)
        counted = await _counted(worker_port) - counted0
        worker_cpu = cpu_seconds(worker.pid) - cpu0
        duties_cpu = cpu_seconds(duties.pid) - duties_cpu0
        redis_cpu = await procs.redis_cpu(redis_url) - redis_cpu0
        relayed = relay["rps"] * duration_s
        bare_result = await closed_loop(bare_port, files["main"], duration_s)
        ratios = [relay["rps"] / bare_result["rps"] if bare_result["rps"] else float("nan")]
        for name in more_pairs:  # the machine drifts: each worker run against a bare run just after
            again = await closed_loop(worker_port, files[name], duration_s)
            bare_again = await closed_loop(bare_port, files[name], duration_s)
            ratios.append(again["rps"] / bare_again["rps"] if bare_again["rps"] else float("nan"))
        answered0, fast0 = await _counted(worker_port), await _counted(worker_port, within="0.01")
        fixed = await pyload(
            worker_port, files["fixed"], duration_s=min(duration_s, 6), connections=64, rate=rate
        )
        answered = await _counted(worker_port) - answered0
        within_10ms = (await _counted(worker_port, within="0.01") - fast0) / max(1.0, answered)

        half = max(2, duration_s // 3)
        limited = await _with_limits(
            redis_url,
            worker,
            [functools.partial(closed_loop, worker_port, files[name], half) for name in limit_runs],
            half,
        )

        prof_path = tmp / "profile.txt"
        spy = profile(worker.pid, max(3, duration_s - 2), prof_path)
        await closed_loop(worker_port, files["profile"], duration_s)
        if spy is not None:
            await asyncio.to_thread(spy.wait, 60)

        ratio = statistics.median(ratios)
        print(f"worker (signed inbound SMS, full relay): {relay['rps']:8.0f} req/s  p50 {relay['p50_ms']:.2f} ms  "
              f"p99 {relay['p99_ms']:.2f} ms  non-2xx {relay['errors']:.0f}   (target >= {10 * FLASK_TUTORIAL_RPS:,}/s: "
              f"10 x the Flask tutorial app where the bare handler gives ~{REFERENCE_BARE_RPS:,}/s; this run's bare "
              f"handler scales it to {10 * FLASK_TUTORIAL_RPS * bare_result['rps'] / REFERENCE_BARE_RPS:,.0f}/s)")  # fmt: skip
        print(f"bare aiohttp handler (parse form, fixed TwiML): {bare_result['rps']:8.0f} req/s  "
              f"p50 {bare_result['p50_ms']:.2f} ms  p99 {bare_result['p99_ms']:.2f} ms")  # fmt: skip
        print(f"ratio worker / bare: {ratio:.2f}, the median of {len(ratios)} pairs of runs "
              f"({', '.join(f'{r:.2f}' for r in ratios)})   (target >= 0.35)")  # fmt: skip
        if relayed:
            print(f"CPU per relayed text: worker {worker_cpu / relayed * 1e6:.0f} us, "
                  f"Redis {redis_cpu / relayed * 1e6:.0f} us (Redis: whole server, any client), "
                  f"duties process {duties_cpu / relayed * 1e6:.1f} us (the sweeper's share; "
                  f"the audit writer's: maskline bench audit)")  # fmt: skip
        print(f"fixed rate {rate:.0f} req/s for {fixed['seconds']:.0f} s: achieved {fixed['rps']:.0f} req/s, "
              f"p50 {fixed['p50_ms']:.2f} ms, p99 {fixed['p99_ms']:.2f} ms, max {fixed['max_ms']:.2f} ms, "
              f"errors {fixed['errors']:.0f}   (target p99 < 10 ms)")  # fmt: skip
        print(f"  the worker's own clock (its latency histogram: from the handler's start to its answer, without "
              f"the queueing before it): {within_10ms:.2%} answered within 10 ms")  # fmt: skip
        print(f"/metrics of the worker: {counted:.0f} sms webhooks answered in the main run, "
              f"the load generator got {relay.get('requests', float('nan')):.0f} answers")  # fmt: skip
        if limited["pairs"]:
            print(f"with abuse limits on (counted, never reached), each run against one without beside it "
                  f"(off-on-on-off, ...): {limited['rps']:.0f} req/s ({limited['rps_ratio'] - 1:+.1%}), worker CPU "
                  f"per relayed text {limited['cpu_us']:.0f} us ({limited['cpu_ratio'] - 1:+.1%}: the worker never "
                  f"reads the limits, so this is the machine's drift), Redis per routing call "
                  f"{limited['redis_us']:.1f} us ({limited['redis_delta_us']:+.1f} us); medians of "
                  f"{limited['pairs']:.0f} pairs   (target: cost <= 5 %)")  # fmt: skip
        two = await two_workers(
            worker,
            functools.partial(procs.spawn, "worker", worker_port, env),
            procs.stop,
            functools.partial(closed_loop, worker_port),
            [files[name] for name in two_runs],
            duration_s,
            children,
        )
        if two["rps"] and two["one_rps"]:
            print(f"2 workers on the port (unpinned: they and the load share both cores): {two['rps']:.0f} req/s "
                  f"vs {two['one_rps']:.0f} with 1 alike (runs before and after), CPU per relayed text "
                  f"{two['cpu_us']:.0f} us vs {two['one_cpu_us']:.0f} us ({two['cpu_us'] / two['one_cpu_us'] - 1:+.0%}; "
                  f"target +-10 %)")  # fmt: skip
        print("profile of the worker under load (py-spy, share of samples):")
        for line in summarise_profile(prof_path):
            print(line)
        return 0
    finally:
        for proc in children:
            procs.stop(proc)
        with contextlib.suppress(Exception):
            await procs.flush_db(redis_url)
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------- subprocesses


def _run_worker(port: int) -> None:
    """A webhook worker exactly as `maskline serve --workers N` runs it (`serve --no-duties`):
    create_app without the background duties, no access log, uvloop."""
    import logging

    from aiohttp import web

    from core.settings import Settings
    from maskline.server import create_app

    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level.upper())
    app = create_app(settings, background=False, recovery=False)
    # reuse_port: a second worker may join on the same port (the two-worker run).
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, reuse_port=True)


def _run_bare(port: int) -> None:
    from aiohttp import web

    async def sms(request: web.Request) -> web.Response:
        await request.post()
        return web.Response(text=BARE_TWIML, content_type="text/xml")

    app = web.Application()
    app.router.add_post("/twilio/sms", sms)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def _cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.relay")
    parser.add_argument("mode", choices=["worker", "bare", "load"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--file")
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=float, default=0)
    parser.add_argument("--limit", type=int, default=0)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    if args.mode == "worker":
        _run_worker(args.port)
    elif args.mode == "bare":
        _run_bare(args.port)
    else:
        result = asyncio.run(
            load(args.port, Path(args.file), args.duration, args.connections, args.rate, args.limit)
        )
        print(json.dumps(result))


if __name__ == "__main__":
    _cli()
