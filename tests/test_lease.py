"""Background duties run in exactly one process (core/lease.py): one holder at a time, a dead holder
replaced within the lease's time, fencing numbers that only grow, and `maskline serve` processes
sharing one Redis hand the sweeper and the audit writer over when the holder is killed."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson

from core.lease import Lease, lease_key, run_while_holding

ROOT = Path(__file__).resolve().parent.parent


async def test_one_holder_at_a_time_and_a_dead_holder_is_replaced(redis) -> None:
    running: list[str] = []
    log: list[tuple[str, str, int]] = []  # (who, start/stop, fence)

    def duty(who: str):  # type: ignore[no-untyped-def]
        async def run(stop: asyncio.Event, fence: int) -> None:
            running.append(who)
            log.append((who, "start", fence))
            assert len(running) == 1, f"two holders at once: {running}"
            try:
                await stop.wait()
            finally:
                running.remove(who)
                log.append((who, "stop", fence))

        return run

    stops = {who: asyncio.Event() for who in "ab"}
    leases = {who: Lease(redis, "test-duty", ttl_s=0.6) for who in "ab"}
    tasks = {who: asyncio.create_task(run_while_holding(leases[who], duty(who), stops[who])) for who in "ab"}
    await asyncio.sleep(0.5)
    first = running[0]
    other = "b" if first == "a" else "a"
    assert running == [first]

    # The holder dies without a word (no release, no more renewals): like kill -9.
    async def silence() -> None:
        return None

    leases[first].release = silence  # type: ignore[method-assign]
    tasks[first].cancel()
    died = time.monotonic()
    assert await redis.get(lease_key("test-duty")) == leases[first].token
    while running != [other]:
        await asyncio.sleep(0.02)
        assert time.monotonic() - died < 2.0, "nobody took over"
    took_over_s = time.monotonic() - died
    assert 0.3 < took_over_s < 1.2  # after the dead lease expired (0.6 s), within a retry (0.2 s)
    fences = [fence for _, what, fence in log if what == "start"]
    assert fences == sorted(fences) and len(set(fences)) == len(fences)

    stops[other].set()
    await asyncio.wait_for(tasks[other], 2)
    assert running == [] and await redis.get(lease_key("test-duty")) is None  # given back


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(port: int, settings, redis_url: str, database_url: str) -> subprocess.Popen[bytes]:  # type: ignore[no-untyped-def]
    env = {
        **os.environ,
        "MASKLINE_REDIS_URL": redis_url,
        "MASKLINE_DATABASE_URL": database_url,
        "MASKLINE_EMBEDDED": "never",
        "MASKLINE_LEASE_TTL_S": "1.5",
        "MASKLINE_TWILIO_AUTH_TOKEN": settings.twilio_auth_token,
        "MASKLINE_TWILIO_ACCOUNT_SID": settings.twilio_account_sid,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "maskline", "serve", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _holder_pid(redis, name: str) -> int | None:  # type: ignore[no-untyped-def]
    value = await redis.get(lease_key(name))
    return int(value.split(":")[1]) if value else None


async def test_serve_processes_hand_the_duties_over_when_the_holder_is_killed(
    settings, redis, pg, redis_url, database_url
) -> None:
    procs = [_serve(_free_port(), settings, redis_url, database_url) for _ in range(2)]
    try:
        deadline = time.monotonic() + 30
        while None in (await _holder_pid(redis, "sweeper"), await _holder_pid(redis, "audit-writer")):
            assert time.monotonic() < deadline, "no process took the duties"
            await asyncio.sleep(0.1)
        holder = await _holder_pid(redis, "sweeper")
        assert holder in {p.pid for p in procs}
        assert await _holder_pid(redis, "audit-writer") in {p.pid for p in procs}
        victim = next(p for p in procs if p.pid == holder)
        survivor = next(p for p in procs if p is not victim)
        victim.send_signal(signal.SIGKILL)
        victim.wait(5)
        killed = time.monotonic()
        while await _holder_pid(redis, "sweeper") != survivor.pid:
            assert time.monotonic() - killed < 6, "the sweeper was not taken over"
            await asyncio.sleep(0.1)
        while await _holder_pid(redis, "audit-writer") != survivor.pid:
            assert time.monotonic() - killed < 6, "the audit writer was not taken over"
            await asyncio.sleep(0.1)
        took_over_s = time.monotonic() - killed
        print(f"\nduties taken over {took_over_s:.2f} s after kill -9 of their holder (lease 1.5 s)")

        # The survivor's writer drains what is emitted now: nothing lost, nothing twice.
        from core.events import emit_event

        for i in range(20):
            await emit_event(redis, service_sid="KS" + "0" * 32, type="test.event", data={"n": i})
        deadline = time.monotonic() + 10
        while True:
            rows = await pg.fetch("SELECT data FROM audit_events WHERE type = 'test.event'")
            if len(rows) >= 20 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        numbers = sorted(orjson.loads(r["data"])["n"] for r in rows)
        assert numbers == list(range(20))
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
