"""The processes of the relay benches (bench/relay.py, bench/memory.py, bench/scheduled.py,
bench/console.py): a free port, a webhook worker or the bare handler (`python -m bench.relay`), the
duties process, waiting for one to listen, Redis' CPU so far, emptying the bench's Redis DB, and
stopping one."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["ROOT", "free_port", "spawn", "duties", "wait_ready", "redis_cpu", "flush_db", "stop"]

ROOT = str(Path(__file__).resolve().parent.parent)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn(mode: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.relay", mode, "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )


def duties(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """The background duties in their own process, as `maskline serve --workers N` runs them; the
    audit writer left out (`maskline bench audit` measures it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "maskline", "serve", "--duties-only", "--no-audit-writer"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )


async def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            raise RuntimeError(f"server on port {port} exited: {err}")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await asyncio.sleep(0.3)
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not start in {timeout_s} s")


async def redis_cpu(url: str) -> float:
    """Redis' own CPU seconds so far (INFO cpu: user + system of the main thread and children)."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(url)
    try:
        info = await client.info("cpu")
    finally:
        await client.aclose()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def flush_db(url: str) -> None:
    """Empty the bench's own Redis DB (the one `url` names) once it is done with it."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
