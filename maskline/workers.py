"""`maskline serve --workers N`: N worker processes answering on one port (SO_REUSEPORT: the kernel
spreads connections over them), kept alive by this supervisor.

- a worker that dies is started again (after a second if it keeps dying at once);
- SIGTERM / SIGINT: every worker is asked to stop (SIGTERM: it stops accepting, finishes the
  requests in flight, gives its leases back) and the supervisor exits when they have;
- SIGHUP: a rolling restart, one worker at a time: the new one listens before the old one is asked
  to stop, so no webhook finds the port closed (and with net.ipv4.tcp_migrate_req=1 none queued
  on the old one's socket is reset: the kernel hands them to another worker; a warning otherwise);
- workers die with the supervisor (PR_SET_PDEATHSIG), even when it is killed with SIGKILL.

Each worker is `maskline serve --workers 1 --reuse-port --no-duties` with the resolved settings in
its environment (the embedded servers, if any, are the supervisor's): it answers HTTP and nothing
else. The background duties (sweeper, scheduler, audit writer, recovery watchdog) run in one more
process, `maskline serve --duties-only` (no port), kept alive the same way: they never take CPU
from the processes answering webhooks, and still run once across hosts (core/lease.py)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from typing import Final

__all__ = ["supervise"]

log = logging.getLogger("maskline.workers")

_PR_SET_PDEATHSIG: Final = 1
STOP_GRACE_S: Final = 30.0  # a worker still busy after this is killed
READY_TIMEOUT_S: Final = 30.0
_QUICK_DEATH_S: Final = 2.0


def _die_with_parent() -> None:  # runs in the child, before exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class _Workers:
    def __init__(
        self, argv: list[str], env: Mapping[str, str], host: str, port: int, duties: list[str] | None = None
    ) -> None:
        self.argv, self.env, self.host, self.port = argv, dict(env), host, port
        self.duties = duties  # the duties process' argv (None: the workers run the duties)
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.argvs: dict[int, list[str]] = {}  # pid -> what it runs
        self.retired: set[int] = set()  # stopped on purpose by a reload: not restarted
        self.tasks: list[asyncio.Task[None]] = []
        self.stopping = False

    async def start(self, argv: list[str] | None = None) -> asyncio.subprocess.Process:
        argv = argv or self.argv
        proc = await asyncio.create_subprocess_exec(
            *argv, env=self.env, preexec_fn=_die_with_parent if sys.platform == "linux" else None
        )
        self.procs[proc.pid] = proc
        self.argvs[proc.pid] = argv
        log.info("%s %d started", "duties process" if argv is self.duties else "worker", proc.pid)
        return proc

    async def ready(self, proc: asyncio.subprocess.Process) -> bool:
        """Whether the worker answers /healthz itself (its pid in the answer) within the timeout."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline and proc.returncode is None:
            with contextlib.suppress(OSError, ValueError, asyncio.IncompleteReadError):
                reader, writer = await asyncio.open_connection(self.host, self.port)
                writer.write(
                    f"GET /healthz HTTP/1.1\r\nHost: {self.host}\r\nConnection: close\r\n\r\n".encode()
                )
                body = await reader.read()
                writer.close()
                if f'"pid":{proc.pid}'.encode() in body.replace(b" ", b""):
                    return True
            await asyncio.sleep(0.05)
        return False

    async def stop(self, proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
            except TimeoutError:
                log.warning("worker %d still busy after %.0f s: killed", proc.pid, STOP_GRACE_S)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        self.procs.pop(proc.pid, None)

    async def reload(self) -> None:
        """Replace every worker, one at a time, the new one listening before the old one stops
        (the duties process: the new one takes the leases over once the old one gave them back)."""
        for old in list(self.procs.values()):
            argv = self.argvs.get(old.pid, self.argv)
            new = await self.start(argv)
            self.tasks.append(asyncio.get_running_loop().create_task(self.keep(new)))
            if argv is not self.duties and not await self.ready(new):
                log.error("worker %d did not become ready; keeping %d", new.pid, old.pid)
                continue
            self.retired.add(old.pid)
            await self.stop(old)
        log.info("reload done: workers %s", sorted(self.procs))

    async def keep(self, proc: asyncio.subprocess.Process) -> None:
        """Start another worker whenever `proc` (then its successor) dies, unless the supervisor
        is stopping or a reload retired it; a worker that dies at once waits a second first."""
        while True:
            started = time.monotonic()
            code = await proc.wait()
            self.procs.pop(proc.pid, None)
            if self.stopping or proc.pid in self.retired:
                return
            argv = self.argvs.pop(proc.pid, self.argv)
            log.warning("process %d exited (%s); starting another", proc.pid, code)
            if time.monotonic() - started < _QUICK_DEATH_S:
                await asyncio.sleep(1.0)
            proc = await self.start(argv)


async def supervise(
    argv: list[str],
    env: Mapping[str, str],
    *,
    workers: int,
    host: str,
    port: int,
    duties: list[str] | None = None,
) -> int:
    """Run `workers` copies of `argv` (and the `duties` process, if given) until SIGTERM/SIGINT;
    SIGHUP reloads them one by one."""
    pool = _Workers(argv, env, host, port, duties)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: pool.tasks.append(loop.create_task(pool.reload())))
    for _ in range(workers):
        pool.tasks.append(loop.create_task(pool.keep(await pool.start())))
    if duties is not None:
        pool.tasks.append(loop.create_task(pool.keep(await pool.start(duties))))
    if workers > 1 and _reset_on_close():
        log.warning(
            "net.ipv4.tcp_migrate_req is 0: when a worker stops (SIGHUP reload, restart), the kernel "
            "resets the connections still waiting in its accept queue instead of handing them to "
            "another worker; set it to 1 (docs/deploy.md, 'Many workers')"
        )
    extra = " and a duties process" if duties is not None else ""
    print(
        f"maskline supervising {workers} workers{extra} on http://{host}:{port} (SIGHUP reloads)", flush=True
    )
    await stop.wait()
    pool.stopping = True
    print("maskline stopping its workers", flush=True)
    await asyncio.gather(*(pool.stop(p) for p in list(pool.procs.values())))
    for task in pool.tasks:
        task.cancel()
    return 0


def _reset_on_close(path: str = "/proc/sys/net/ipv4/tcp_migrate_req") -> bool:
    """Whether this Linux resets, rather than migrates, the connections queued on a SO_REUSEPORT
    listener that closes (net.ipv4.tcp_migrate_req, Linux 5.14+; elsewhere: unknown, False)."""
    try:
        with open(path) as f:
            return f.read().strip() == "0"
    except OSError:
        return False


def worker_argv(host: str, port: int, *, no_audit_writer: bool) -> list[str]:
    """A webhook worker: HTTP only (the duties run in the duties process)."""
    argv = [sys.executable, "-m", "maskline", "serve", "--workers", "1", "--reuse-port", "--no-duties"]
    argv += ["--host", host, "--port", str(port)]
    return argv + (["--no-audit-writer"] if no_audit_writer else [])


def duties_argv(*, no_audit_writer: bool) -> list[str]:
    """The duties process: sweeper, scheduler, recovery watchdog and (unless told not to) the
    audit writer, each under its lease; no port."""
    argv = [sys.executable, "-m", "maskline", "serve", "--workers", "1", "--duties-only"]
    return argv + (["--no-audit-writer"] if no_audit_writer else [])


def worker_env(settings_env: Mapping[str, str]) -> dict[str, str]:
    return {**os.environ, **settings_env, "MASKLINE_EMBEDDED": "never"}
