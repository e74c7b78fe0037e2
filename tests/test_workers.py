"""`maskline serve --workers 2`: two processes answer on one port, a killed worker is replaced,
SIGHUP replaces every worker without a refused request, SIGTERM stops them all, and the workers die
with a supervisor killed with SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from core.lease import lease_key

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _supervisor(port: int, redis_url: str, database_url: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "MASKLINE_REDIS_URL": redis_url,
        "MASKLINE_DATABASE_URL": database_url,
        "MASKLINE_EMBEDDED": "never",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "maskline", "serve", "--workers", "2", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


async def _pids(port: int, tries: int = 60) -> tuple[set[int], int]:
    """Worker pids seen over `tries` fresh connections to /healthz, and how many requests failed."""
    seen: set[int] = set()
    failed = 0
    for _ in range(tries):
        try:
            async with aiohttp.ClientSession() as http:  # a new connection each time
                async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    seen.add(int((await resp.json())["pid"]))
        except aiohttp.ClientError:
            failed += 1
    return seen, failed


async def _until(predicate, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.2)


def _children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(p) for p in path.read_text().split()} if path.exists() else set()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()


async def test_two_workers_share_the_port_are_restarted_reloaded_and_stopped(
    redis, pg, redis_url, database_url
) -> None:
    port = _free_port()
    sup = _supervisor(port, redis_url, database_url)
    try:

        async def both_answer() -> bool:
            seen, _ = await _pids(port, 20)
            return len(seen) == 2

        await _until(both_answer, 40, "two workers did not answer on the port")
        children = _children(sup.pid)
        answering, _ = await _pids(port, 20)
        assert len(children) == 3 and answering < children  # two workers and the duties process
        [duties] = children - answering

        # The background duties run in the duties process, never in a process answering webhooks.
        async def duties_hold_the_leases() -> bool:
            holders = [await redis.get(lease_key(name)) for name in ("sweeper", "scheduler", "audit-writer")]
            pids = [str(h.decode() if isinstance(h, bytes) else h).split(":")[1] for h in holders if h]
            return pids == [str(duties)] * 3

        await _until(duties_hold_the_leases, 30, "the duties process did not take the leases")

        victim = sorted(answering)[0]
        os.kill(victim, signal.SIGKILL)

        async def replaced() -> bool:
            now = _children(sup.pid)
            return victim not in now and len(now) == 3 and len((await _pids(port, 20))[0]) == 2

        await _until(replaced, 30, "the killed worker was not replaced")

        before = _children(sup.pid)
        sup.send_signal(signal.SIGHUP)
        failures = 0
        deadline = time.monotonic() + 60
        while _children(sup.pid) & before:  # requests keep coming while the workers are replaced
            assert time.monotonic() < deadline, "SIGHUP did not replace the workers"
            failures += (await _pids(port, 5))[1]
        assert failures == 0, "a request was refused during the reload"
        assert len((await _pids(port, 20))[0]) == 2

        last = _children(sup.pid)
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(40) == 0
        assert not any(_alive(p) for p in last)
    finally:
        if sup.poll() is None:
            os.killpg(sup.pid, signal.SIGKILL)
            sup.wait()


async def test_workers_die_with_a_killed_supervisor(redis, pg, redis_url, database_url) -> None:
    port = _free_port()
    sup = _supervisor(port, redis_url, database_url)
    try:

        async def both_answer() -> bool:
            return len((await _pids(port, 20))[0]) == 2

        await _until(both_answer, 40, "two workers did not answer on the port")
        workers = _children(sup.pid)
        sup.send_signal(signal.SIGKILL)
        sup.wait()

        async def gone() -> bool:
            return not any(_alive(p) for p in workers)

        await _until(gone, 20, "workers outlived their supervisor")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sup.pid, signal.SIGKILL)


def test_the_supervisor_knows_whether_the_kernel_resets_a_stopping_workers_queue(tmp_path: Path) -> None:
    """`serve --workers N` warns when net.ipv4.tcp_migrate_req is 0 (docs/deploy.md)."""
    from maskline.workers import _reset_on_close

    sysctl = tmp_path / "tcp_migrate_req"
    sysctl.write_text("0\n")
    assert _reset_on_close(str(sysctl))
    sysctl.write_text("1\n")
    assert not _reset_on_close(str(sysctl))
    assert not _reset_on_close(str(tmp_path / "absent"))  # an older kernel, another OS: unknown
