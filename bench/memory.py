"""`maskline bench memory`: what Maskline keeps in Redis, per live two-party session and per relayed
text (Redis bills by memory). Targets: <= 1 KiB per live session, <= 200 bytes retained per relayed
text. Also the worker's RSS before and after the texts.

A relayed text is held in full for a while: its interaction record for the hot window (after its
last change; then the audit log is its only copy) and its MessageSid for the de-duplication window
(Twilio's retries), both 900 s in production. The bench runs the worker with both set to
--window-s (long enough to send every text: at least 60 s) and measures twice: while the texts are
within them, and once they have passed, which is what a text retains.

Sessions are created through the session store (a Service with 50 numbers); texts are distinct,
correctly signed inbound SMS webhooks sent to a worker (`maskline serve` as bench relay runs it)
by the aiohttp load generator. Memory is Redis' `used_memory` (INFO memory) before and after,
with the audit writer not running: what a text leaves behind includes its audit event waiting in
the stream (the writer trims what it has committed), reported apart. The worker's RSS after the
texts is compared with a worker's after as many texts to a tenth of the sessions (run first): it
should not grow with the live sessions (the worker keeps nothing per session).

Data: Redis DB --redis-db (default 12, flushed) and Postgres database maskline_bench_relay."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Any

from bench import procs
from bench.relay import _arg, _prepare
from bench.relay_load import pyload, worker_env, write_requests

__all__ = ["main"]

SESSION_TARGET_B = 1024
TEXT_TARGET_B = 200
SETTLE_S = 7.0  # webhook deadline (2 s) + the sweeper's grace (2 s) + a few sweeps


async def _used(redis_url: str) -> tuple[int, int]:
    """(used_memory, bytes in the event streams) of the bench's Redis."""
    import redis.asyncio as aioredis

    from core import keys

    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        # A DB flushed asynchronously (the bench's own, of its last run) is still being freed:
        # wait, or its memory would count against what the texts left.
        for _ in range(600):
            memory = await client.info("memory")
            if not int(memory.get("lazyfree_pending_objects", 0)):
                break
            await asyncio.sleep(0.1)
        used = int(memory["used_memory"])
        streams = 0
        for stream in await client.smembers(keys.EVENT_STREAMS):
            streams += int(await client.memory_usage(stream, samples=0) or 0)
        return used, streams
    finally:
        await client.aclose()


async def _expire(redis_url: str) -> None:
    """Have Redis drop the keys whose time has come now (it expires lazily and by sampling), so
    used_memory shows what is retained: a SCAN touches every key, expiring the expired."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url)
    try:
        async for _ in client.scan_iter(count=1000):
            pass
    finally:
        await client.aclose()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _rss_after_texts(
    settings: Any, redis_url: str, database_url: str, n_sessions: int, n_texts: int, tmp: Path
) -> int:
    """A worker's RSS (KiB) once it relayed `n_texts` texts to `n_sessions` live sessions."""
    pairs = await _prepare(settings, redis_url, database_url, n_sessions)
    port = procs.free_port()
    worker = procs.spawn("worker", port, worker_env(redis_url, database_url, port))
    try:
        await procs.wait_ready(port, worker)
        path = tmp / "few.txt"
        write_requests(path, f"http://127.0.0.1:{port}/twilio/sms", pairs, n_texts, 6)
        await pyload(port, path, duration_s=3600, connections=32, limit=n_texts)
        return _rss_kib(worker.pid)
    finally:
        procs.stop(worker)


async def main(settings: Any, args: argparse.Namespace) -> int:
    from maskline.devservers import with_database

    n_sessions = int(_arg(args, "sessions", 100_000))
    n_texts = int(_arg(args, "texts", 100_000))
    redis_url = with_database(settings.redis_url, str(int(_arg(args, "redis_db", 12))))
    database_url = with_database(settings.database_url, "maskline_bench_relay")
    print(f"maskline bench memory: {n_sessions} live two-party sessions, then {n_texts} relayed texts")
    tmp = Path(tempfile.mkdtemp(prefix="maskline-bench-memory-"))
    worker = duties = None
    try:
        # The worker's RSS as live sessions grow 10x: the same number of texts relayed with a tenth
        # of the sessions live first (here), then with all of them (below).
        few = max(1, n_sessions // 10)
        rss_few = await _rss_after_texts(settings, redis_url, database_url, few, n_texts, tmp)
        pairs = await _prepare(settings, redis_url, database_url, 0)
        base, _ = await _used(redis_url)
        pairs = await _prepare(settings, redis_url, database_url, n_sessions)
        with_sessions, streams0 = await _used(redis_url)
        per_session = (with_sessions - base - streams0) / max(1, n_sessions)
        print(f"Redis per live session: {per_session:,.0f} bytes (target <= {SESSION_TARGET_B}); "
              f"their creation events wait in the streams: {streams0 / max(1, n_sessions):,.0f} bytes each")  # fmt: skip

        port = procs.free_port()
        window_s = int(_arg(args, "window_s", None) or max(60, n_texts // 1000))
        env = worker_env(
            redis_url,
            database_url,
            port,
            MASKLINE_INTERACTION_HOT_S=str(window_s),
            MASKLINE_DEDUPE_TTL_S=str(window_s),
        )
        worker = procs.spawn("worker", port, env)  # a webhook worker, with its duties process beside it
        duties = procs.duties(env)
        await procs.wait_ready(port, worker)
        path = tmp / "texts.txt"
        write_requests(path, f"http://127.0.0.1:{port}/twilio/sms", pairs, n_texts, 7)
        rss0 = _rss_kib(worker.pid)
        before, streams_before = await _used(redis_url)
        # Each line once: the generator stops after the file's last line.
        result = await pyload(port, path, duration_s=3600, connections=32, limit=n_texts)
        sent = result["requests"]
        # What a text leaves only for a while (its entry in the in-flight index, until its answer
        # is written or the sweeper judges it) is not what it retains: let it settle.
        await asyncio.sleep(SETTLE_S)
        texts = max(1.0, sent)
        held, streams_held = await _used(redis_url)
        print(f"Redis per relayed text within its hot window ({window_s} s here, 900 s by default): "
              f"{(held - before - (streams_held - streams_before)) / texts:,.0f} bytes")  # fmt: skip
        await asyncio.sleep(max(0.0, window_s + 1 - SETTLE_S))
        await _expire(redis_url)
        after, streams_after = await _used(redis_url)
        kept = (after - before - (streams_after - streams_before)) / texts
        noise = " (below zero: used_memory's own noise)" if kept < 0 else ""
        print(f"Redis retained per relayed text after it: {kept:,.0f} bytes{noise} (target <= {TEXT_TARGET_B}), "
              f"plus {(streams_after - streams_before) / texts:,.0f} bytes of audit event until the writer commits it "
              f"({sent:,.0f} texts, {result['errors']:.0f} errors)")  # fmt: skip
        print(
            f"worker RSS: {rss0 / 1024:,.1f} MiB before the texts, {_rss_kib(worker.pid) / 1024:,.1f} MiB after; "
            f"after as many texts with {few:,} live sessions (a tenth): {rss_few / 1024:,.1f} MiB (target: flat)"
        )
        return 0
    finally:
        for proc in (worker, duties):
            if proc is not None:
                procs.stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)
