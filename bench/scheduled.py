"""`maskline bench scheduled`: N scheduled messages spread over S seconds (default 100,000 over 300 s)
delivered by the duties process (`maskline serve --duties-only`: the scheduler under its lease, as
`maskline serve --workers N` runs it beside N webhook workers started with --no-duties) to a fake
Twilio that notes when each arrives. Prints the drift (arrival - send_at) p50/p99/max, how many
arrived twice (target 0) and how many never arrived (target 0), and the relay throughput of the
webhook worker (signed inbound SMS, closed loop; the worker pinned to a core of its own) before and
while the messages fire (target: <= 10 % lower), and the CPU each message sent costs the duties
process, the fake Twilio and Redis (a slice of the firing without relay load).

Data: Redis DB --redis-db (default 9, flushed before and after) and Postgres database
maskline_bench_relay."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, cast

from bench import procs, relay_load
from bench.procs import ROOT
from bench.relay import BENCH_DB, _arg, _prepare
from bench.relay_load import (
    WRK_SCRIPT,
    cpu_seconds,
    pin,
    pyload,
    worker_env,
    write_requests,
    wrk_run,
)

__all__ = ["main"]

LOAD_S = 8


async def _schedule_all(redis_url: str, count: int, spread_s: float, lead_s: float) -> tuple[float, int]:
    """Schedules `count` texts over the live sessions, send_at spread evenly from now + lead_s.
    Returns (t0, sessions used)."""
    import redis.asyncio as aioredis

    from core import keys
    from sessions.scheduled import ScheduledMessages
    from sessions.store import SessionStore

    redis = aioredis.from_url(redis_url, decode_responses=True)
    try:
        (ks,) = await redis.smembers(keys.SERVICES)
        sids = await redis.zrange(keys.sessions_by_created(ks), 0, -1)
        sessions = SessionStore(redis)
        targets = [(kc, (await sessions.list_participants(ks, kc))[0]["sid"]) for kc in sids]
        store = ScheduledMessages(redis)
        t0 = time.time() + lead_s
        gate = asyncio.Semaphore(64)

        async def one(i: int) -> None:
            kc, kp = targets[i % len(targets)]
            at_ms = int((t0 + spread_s * i / count) * 1000)
            async with gate:
                await store.schedule(ks, kc, kp, at_ms, {"body": f"sched {i} {at_ms}"})

        await asyncio.gather(*(one(i) for i in range(count)))
        return t0, len(targets)
    finally:
        await redis.aclose()


async def _statuses(redis_url: str) -> Counter[str]:
    import redis.asyncio as aioredis

    redis = aioredis.from_url(redis_url, decode_responses=True)
    try:
        found: Counter[str] = Counter()
        async for key in redis.scan_iter(match="ml:{*}:sm:*", count=5000):
            found[str(await redis.hget(key, "status"))] += 1
        return found
    finally:
        await redis.aclose()


def _busy_cores(cores: set[int]) -> float:
    """CPU seconds `cores` have been busy so far (from /proc/stat)."""
    busy = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
            values = [int(v) for v in fields]
            busy += (sum(values) - values[3] - values[4]) / tick  # all but idle and iowait
    return busy


def _serve(flags: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`maskline serve --workers 1` with `flags`, as an operator runs it."""
    return subprocess.Popen(
        [sys.executable, "-m", "maskline", "serve", "--workers", "1", *flags],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )


def _spawn_fake(port: int, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.scheduled", "--port", str(port), "--out", str(out)], cwd=ROOT
    )


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def main(settings: Any, args: argparse.Namespace) -> int:
    from maskline.devservers import with_database

    redis_url = with_database(settings.redis_url, str(_arg(args, "redis_db", 9)))
    tmp = Path(tempfile.mkdtemp(prefix="maskline-bench-scheduled-"))
    try:
        return await _measure(settings, args, redis_url, tmp)
    finally:  # its own DB only: the messages and sessions it made (~200 MB of Redis)
        await procs.flush_db(redis_url)
        shutil.rmtree(tmp, ignore_errors=True)


async def _measure(settings: Any, args: argparse.Namespace, redis_url: str, tmp: Path) -> int:
    from maskline.devservers import with_database

    count = int(_arg(args, "messages", 100_000))
    spread_s = float(_arg(args, "spread", 300))
    database_url = with_database(settings.database_url, BENCH_DB)
    received = tmp / "received.jsonl"
    print(f"maskline bench scheduled: {count:,} messages over {spread_s:.0f} s")
    pairs = await _prepare(settings, redis_url, database_url, 2000)
    port, fake_port = procs.free_port(), procs.free_port()
    fake = _spawn_fake(fake_port, received)
    env = worker_env(redis_url, database_url, port, MASKLINE_TWILIO_API_URL=f"http://127.0.0.1:{fake_port}")
    # As `maskline serve --workers N` runs them: a webhook worker that answers HTTP only, and the
    # duties process (the scheduler under its lease) apart from it.
    worker = _serve(["--no-duties", "--port", str(port)], env)
    duties = _serve(["--duties-only"], env)
    use_wrk = shutil.which("wrk") is not None
    script = tmp / "wrk.lua"
    script.write_text(WRK_SCRIPT)
    try:
        await procs.wait_ready(port, worker)
        await procs.wait_ready(fake_port, fake)
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        rest = set(cores[:-1])
        if rest:  # the worker on a core of its own; duties, fake Twilio and load on the rest
            pin(worker.pid, {cores[-1]})
            for pid in (duties.pid, fake.pid, os.getpid()):
                pin(pid, rest)
            relay_load.LOAD_CORES.update(rest)
            print(
                f"pinned: webhook worker on core {cores[-1]}; duties, fake Twilio and load on {sorted(rest)}"
            )
        url = f"http://127.0.0.1:{port}/twilio/sms"
        # The machine drifts: the idle rate is taken before the messages fire and after they are
        # all sent, the firing rate twice (a third and two thirds into the spread).
        files = {name: tmp / f"{name}.txt" for name in ("before", "firing1", "firing2", "after")}
        for run, path in enumerate(files.values()):
            write_requests(path, url, pairs, 60_000, 40 + run)

        async def closed_loop(path: Path) -> dict[str, float]:
            """The run's figures, with the worker's CPU per relayed text and the busy share of
            the other cores (Redis, Postgres, the duties, the fake Twilio and the load share them)."""
            cpu0, busy0 = cpu_seconds(worker.pid), _busy_cores(rest)
            if use_wrk:
                result = await wrk_run(port, path, script, duration_s=LOAD_S, connections=32)
            else:
                result = await pyload(port, path, duration_s=LOAD_S, connections=32)
            relayed = result["rps"] * LOAD_S
            result["cpu_us"] = (cpu_seconds(worker.pid) - cpu0) / relayed * 1e6 if relayed else float("nan")
            result["others_busy"] = (_busy_cores(rest) - busy0) / LOAD_S / max(1, len(rest))
            return result

        lead_s = max(25.0, count / 4000 + LOAD_S + 5)
        started = time.time()
        t0, n_sessions = await _schedule_all(redis_url, count, spread_s, lead_s)
        print(f"scheduled {count:,} messages over {n_sessions:,} sessions in {time.time() - started:.0f} s")
        before = await closed_loop(files["before"])

        async def snapshot() -> tuple[float, ...]:
            return (time.time(), cpu_seconds(duties.pid), cpu_seconds(fake.pid), await procs.redis_cpu(redis_url),
                    _busy_cores(rest))  # fmt: skip

        # What the messages cost while nothing else runs: a slice of the firing before the first
        # run under load (arrivals counted from the fake Twilio's log afterwards).
        await asyncio.sleep(max(0.0, t0 + 2 - time.time()))
        slice_start = await snapshot()
        slice_end = slice_start
        firing_runs = []
        for part, name in ((1, "firing1"), (2, "firing2")):
            await asyncio.sleep(max(0.0, t0 + spread_s * part / 3 - time.time()))
            if part == 1:
                slice_end = await snapshot()
            if time.time() + LOAD_S < t0 + spread_s:  # (a short spread has room for one only)
                firing_runs.append(await closed_loop(files[name]))
        await asyncio.sleep(max(0.0, t0 + spread_s + 20 - time.time()))
        after = await closed_loop(files["after"])
    finally:
        procs.stop(worker)
        procs.stop(duties)
        fake.send_signal(signal.SIGTERM)
        fake.wait(timeout=30)
    arrivals: dict[int, list[float]] = {}
    drift_ms: list[float] = []
    for line in received.read_text().splitlines():
        at, body = json.loads(line)
        _, i, send_at_ms = body.split()
        arrivals.setdefault(int(i), []).append(at)
        drift_ms.append(at * 1000 - int(send_at_ms))
    twice = sum(1 for v in arrivals.values() if len(v) > 1)
    missed = count - len(arrivals)
    statuses = await _statuses(redis_url)
    print(
        f"drift (arrival at the fake Twilio - send_at): p50 {_percentile(drift_ms, 0.5):.0f} ms, "
        f"p99 {_percentile(drift_ms, 0.99):.0f} ms, max {max(drift_ms, default=float('nan')):.0f} ms (target p99 <= 1,000 ms)"
    )
    print(f"sent twice: {twice} (target 0); never arrived: {missed} (target 0); statuses: {dict(statuses)}")
    idle = {k: (before[k] + after[k]) / 2 for k in ("rps", "p99_ms", "cpu_us", "others_busy")}
    # (a spread too short for a firing run has no figure)
    firing = {k: statistics.median(r[k] for r in firing_runs) if firing_runs else float("nan") for k in idle}
    change = firing["rps"] / idle["rps"] - 1 if idle["rps"] else float("nan")
    runs = ", ".join(f"{r['rps']:.0f}" for r in firing_runs)
    print(
        f"relay while they fire: {firing['rps']:.0f} req/s ({runs}) "
        f"vs {idle['rps']:.0f} without ({before['rps']:.0f} before, {after['rps']:.0f} after) ({change:+.1%}; "
        f"target >= -10 %); p99 {firing['p99_ms']:.1f} ms vs {idle['p99_ms']:.1f} ms"
    )
    cpu_change = firing["cpu_us"] / idle["cpu_us"] - 1 if idle["cpu_us"] else float("nan")
    print(
        f"webhook worker CPU per relayed text: {firing['cpu_us']:.0f} us while they fire vs "
        f"{idle['cpu_us']:.0f} us without ({cpu_change:+.1%}); the other cores busy "
        f"{firing['others_busy']:.0%} vs {idle['others_busy']:.0%} (Redis, Postgres, duties, fake Twilio, load)"
    )
    sent_in_slice = sum(
        1 for times in arrivals.values() for at in times if slice_start[0] <= at < slice_end[0]
    )
    if sent_in_slice:
        seconds = slice_end[0] - slice_start[0]
        duties_us, fake_us, redis_us = (
            (slice_end[i] - slice_start[i]) / sent_in_slice * 1e6 for i in (1, 2, 3)
        )
        busy = (slice_end[4] - slice_start[4]) / seconds / max(1, len(rest))
        print(
            f"CPU per message sent, while they fire without relay load ({sent_in_slice:,} in {seconds:.0f} s): "
            f"duties process {duties_us:.0f} us (scheduler and audit writer), fake Twilio {fake_us:.0f} us, "
            f"Redis {redis_us:.0f} us; the other cores busy {busy:.0%}"
        )
    return 0 if twice == 0 and missed == 0 else 1


# ------------------------------------------------------------------------------ the fake Twilio


def _fake_twilio(port: int, out: Path) -> None:
    """Twilio's Messages API as far as the scheduler uses it: each POST answered 201 at once with a
    Message resource, (time, Body) of each noted; written to `out` on SIGTERM. A bare asyncio
    protocol (HTTP/1.1 with keep-alive and Content-Length bodies, what aiohttp's client sends)
    rather than an aiohttp app: it shares a core with the duties process, and the real Twilio's
    CPU is not Maskline's (an aiohttp fake cost 75-85 us per message there; this one's cost is
    printed with the rest)."""
    from urllib.parse import parse_qsl

    seen: list[tuple[float, str]] = []
    count = itertools.count(1)

    class Messages(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.Transport, transport)
            self.buffer = b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while (head_end := self.buffer.find(b"\r\n\r\n")) >= 0:
                length = 0
                for line in self.buffer[:head_end].split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                end = head_end + 4 + length
                if len(self.buffer) < end:
                    return
                body, self.buffer = self.buffer[head_end + 4 : end], self.buffer[end:]
                text = next((v for k, v in parse_qsl(body.decode()) if k == "Body"), "")
                seen.append((time.time(), text))
                payload = b'{"sid": "SM%032x", "status": "queued"}' % next(count)
                self.transport.write(
                    b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(payload), payload)
                )

    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(Messages, "127.0.0.1", port))
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    try:
        loop.run_forever()
    finally:
        server.close()
        with out.open("w") as f:
            for at, text in seen:
                f.write(json.dumps([at, text]) + "\n")


if __name__ == "__main__":
    cli = argparse.ArgumentParser(prog="python -m bench.scheduled")
    cli.add_argument("--port", type=int, required=True)
    cli.add_argument("--out", required=True)
    parsed = cli.parse_args()
    _fake_twilio(parsed.port, Path(parsed.out))
