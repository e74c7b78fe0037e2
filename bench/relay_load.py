"""The load side of `maskline bench relay` (bench/relay.py): the signed requests, and what sends them.

`write_requests` writes distinct, correctly signed inbound-SMS webhooks to a file, one per line;
`wrk_run` sends them with `wrk` (through WRK_SCRIPT), `pyload` with the Python generator `load`,
run in its own process (`python -m bench.relay load`). Both report requests per second, p50 and
p99 (the generator also the maximum, and it can hold a fixed rate)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

__all__ = ["AUTH_TOKEN", "ACCOUNT_SID", "WRK_SCRIPT", "load", "pyload", "write_requests", "wrk_run"]
__all__ += ["LOAD_CORES", "answered", "pin", "cpu_seconds", "with_limits", "two_workers", "worker_env"]

ROOT = str(Path(__file__).resolve().parent.parent)

# The load generator's cores (bench/relay.py pins the servers to the others): empty, not pinned.
LOAD_CORES: set[int] = set()


def pin(pid: int, cores: set[int]) -> None:
    """Keep process `pid` on `cores` (no-op when empty or unsupported)."""
    if cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(pid, cores)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time process `pid` (all its threads) has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


AUTH_TOKEN = "maskline-bench-auth-token"
ACCOUNT_SID = "AC" + "be" * 16


def write_requests(path: Path, url: str, pairs: list[tuple[str, str]], count: int, run: int) -> None:
    """`count` distinct signed inbound-SMS webhooks, one per line: signature TAB form body."""
    from twilio.request_validator import RequestValidator

    validator = RequestValidator(AUTH_TOKEN)
    geo = {"City": "SAN FRANCISCO", "State": "CA", "Zip": "94105", "Country": "US"}
    with path.open("w") as out:
        for i in range(count):
            from_, to = pairs[i % len(pairs)]
            sid = f"SM{run:02x}{i:030x}"
            params = {
                "ToCountry": "US", "ToState": "CA", "SmsMessageSid": sid, "NumMedia": "0",
                "ToCity": geo["City"], "FromZip": geo["Zip"], "SmsSid": sid, "FromState": "CA",
                "SmsStatus": "received", "FromCity": geo["City"], "Body": f"On my way, order {i}",
                "FromCountry": "US", "To": to, "MessagingServiceSid": "MG" + "ab" * 16, "ToZip": geo["Zip"],
                "NumSegments": "1", "ReferralNumMedia": "0", "MessageSid": sid, "AccountSid": ACCOUNT_SID,
                "From": from_, "ApiVersion": "2010-04-01",
            }  # fmt: skip
            out.write(validator.compute_signature(url, params) + "\t" + urlencode(params) + "\n")


WRK_SCRIPT = r"""
local reqs = {}
init = function(args)
  for line in io.lines(args[1]) do
    local tab = string.find(line, "\t", 1, true)
    reqs[#reqs + 1] = { string.sub(line, 1, tab - 1), string.sub(line, tab + 1) }
  end
end
local i = 0
request = function()
  i = i + 1
  local r = reqs[(i - 1) % #reqs + 1]
  return wrk.format("POST", "/twilio/sms", {
    ["Content-Type"] = "application/x-www-form-urlencoded",
    ["X-Twilio-Signature"] = r[1],
    ["User-Agent"] = "TwilioProxy/1.1",
  }, r[2])
end
"""


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)\b", text)
    if not m:
        return float("nan")
    value, unit = float(m.group(1)), m.group(2)
    return {"us": value / 1000, "ms": value, "s": value * 1000, "m": value * 60_000}[unit]


async def wrk_run(
    port: int, requests_file: Path, script: Path, *, duration_s: int, connections: int
) -> dict[str, float]:
    proc = await asyncio.create_subprocess_exec(
        "wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "--latency", "-s", str(script),
        f"http://127.0.0.1:{port}/twilio/sms", "--", str(requests_file),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    pin(proc.pid, LOAD_CORES)
    out, err = await proc.communicate()
    text = out.decode()
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    total = re.search(r"(\d+) requests in", text)
    p50 = re.search(r"^\s*50%\s+(\S+)", text, re.M)
    p99 = re.search(r"^\s*99%\s+(\S+)", text, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if not rps:
        raise RuntimeError(f"wrk failed: {text} {err.decode()}")
    return {
        "rps": float(rps.group(1)),
        "p50_ms": _ms(p50.group(1)) if p50 else float("nan"),
        "p99_ms": _ms(p99.group(1)) if p99 else float("nan"),
        "errors": float(non2xx.group(1)) if non2xx else 0.0,
        "requests": float(total.group(1)) if total else float("nan"),
    }


async def pyload(
    port: int, requests_file: Path, *, duration_s: float, connections: int, rate: float = 0.0, limit: int = 0
) -> dict[str, float]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.relay", "load", "--port", str(port), "--file", str(requests_file),
        "--duration", str(duration_s), "--connections", str(connections), "--rate", str(rate),
        "--limit", str(limit),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )  # fmt: skip
    pin(proc.pid, LOAD_CORES)
    out, err = await proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"load generator failed: {err.decode()[-2000:]}")
    result: dict[str, float] = json.loads(out)
    return result


class _Client(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection of the generator: a request written whole, its answer
    read by Content-Length (the worker's answers carry it). Bare asyncio, not an HTTP client
    library: what the generator spends per request is time it is not measuring the server."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        length = _CONTENT_LENGTH.search(self.buffer, 0, end)
        size = end + 4 + (int(length.group(1)) if length else 0)
        if len(self.buffer) < size:
            return
        status = int(self.buffer[9:12])
        del self.buffer[:size]
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(str(exc or "closed")))

    async def send(self, request: bytes) -> int:
        if self.transport is None:
            raise ConnectionError("closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter


_CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")


async def load(
    port: int, path: Path, duration_s: float, connections: int, rate: float, limit: int = 0
) -> dict[str, float]:
    """Closed loop (rate 0: `connections` senders back to back, at most `limit` requests if set) or
    open loop at `rate` req/s over `connections` keep-alive connections, where latency counts from
    the scheduled send time (no coordinated omission: a request waiting for a free connection
    counts its wait)."""
    head = (
        "POST /twilio/sms HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: TwilioProxy/1.1\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\nX-Twilio-Signature: {sig}\r\n"
        "Content-Length: {length}\r\n\r\n"
    )
    requests = []
    for line in path.open():
        sig, body = line.rstrip("\n").split("\t", 1)
        requests.append(head.format(port=port, sig=sig, length=len(body)).encode() + body.encode())
    loop = asyncio.get_running_loop()
    idle: asyncio.Queue[_Client] = asyncio.Queue()
    for _ in range(connections):
        _, client = await loop.create_connection(_Client, "127.0.0.1", port)
        idle.put_nowait(client)
    latencies: list[float] = []
    errors = 0

    async def send(i: int, scheduled: float) -> None:
        nonlocal errors
        client = await idle.get()
        try:
            if await client.send(requests[i % len(requests)]) != 200:
                errors += 1
        except ConnectionError:
            errors += 1
            _, client = await loop.create_connection(_Client, "127.0.0.1", port)
        idle.put_nowait(client)
        latencies.append((time.perf_counter() - scheduled) * 1000)

    start = time.perf_counter()
    end = start + duration_s
    if rate > 0:
        tasks = []
        i = 0
        while True:
            scheduled = start + i / rate
            if scheduled >= end:
                break
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(i, scheduled)))
            i += 1
        await asyncio.gather(*tasks)
    else:
        counter = iter(range(limit or 10**9))

        async def sender() -> None:
            for i in counter:
                if time.perf_counter() >= end:
                    break
                await send(i, time.perf_counter())

        await asyncio.gather(*(sender() for _ in range(connections)))
    elapsed = time.perf_counter() - start
    while not idle.empty():
        client = idle.get_nowait()
        if client.transport is not None:
            client.transport.close()
    latencies.sort()
    n = len(latencies)
    return {
        "seconds": elapsed,
        "rps": n / elapsed,
        "p50_ms": statistics.median(latencies) if n else float("nan"),
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] if n else float("nan"),
        "max_ms": latencies[-1] if n else float("nan"),
        "errors": float(errors),
        "requests": float(n),
    }


async def answered(port: int, *, within: str | None = None) -> float:
    """The worker's own count of answered sms webhooks (GET /metrics); `within`: of those answered
    within that many seconds (a bucket bound of its latency histogram, e.g. "0.01")."""
    import aiohttp

    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    series = "maskline_webhook_seconds_count{" if within is None else "maskline_webhook_seconds_bucket{"
    for line in text.splitlines():
        if (
            line.startswith(series)
            and 'kind="sms"' in line
            and 'outcome="answered"' in line
            and (within is None or f'le="{within}"' in line)
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def with_limits(redis_url: str, worker: Any, runs: list[Any], duration_s: int) -> dict[str, float]:
    """Closed-loop runs without and with the Service's abuse limits set (so route_inbound.lua
    counts every text) but out of reach, `runs` being the runs in the order off, on, on, off, off,
    on, ... (pairs of neighbours, every other pair reversed, so that the machine's drift between
    runs cancels out). Returns the medians of the pairs' ratios (rps, worker CPU per relayed text),
    of the "on" rps and worker CPU, and Redis' time per routing script call (FCALL on Redis 7,
    EVALSHA before: INFO commandstats, the whole server) with and without."""
    import statistics

    import redis.asyncio as aioredis

    from core import keys

    client = aioredis.from_url(redis_url, decode_responses=True)

    async def script_calls() -> tuple[float, float]:
        stats = await client.info("commandstats")
        both = [stats.get(f"cmdstat_{c}") or {} for c in ("fcall", "evalsha")]
        return sum(float(s.get("calls", 0)) for s in both), sum(float(s.get("usec", 0)) for s in both)

    try:
        (ks,) = await client.smembers(keys.SERVICES)
        measured: list[tuple[bool, float, float, float]] = []  # (on, rps, CPU s per text, Redis us per call)
        for i, run in enumerate(runs):
            on = i % 4 in (1, 2)
            await client.hset(
                keys.service_settings(ks), "limits", "1000000,1000000,1000000,1000000" if on else ""
            )
            cpu0, (calls0, usec0) = cpu_seconds(worker.pid), await script_calls()
            result = await run()
            calls, usec = await script_calls()
            relayed = max(1.0, result["rps"] * duration_s)
            per_call = (usec - usec0) / max(1.0, calls - calls0)
            measured.append((on, result["rps"], (cpu_seconds(worker.pid) - cpu0) / relayed, per_call))
        await client.hset(keys.service_settings(ks), "limits", "")
        pairs = [
            (a, b) if b[0] else (b, a)  # (off, on)
            for a, b in zip(measured[0::2], measured[1::2], strict=True)
        ]
        return {
            "rps": statistics.median(on[1] for _, on in pairs),
            "rps_ratio": statistics.median(on[1] / off[1] for off, on in pairs if off[1]),
            "cpu_us": statistics.median(on[2] for _, on in pairs) * 1e6,
            "cpu_ratio": statistics.median(on[2] / off[2] for off, on in pairs if off[2]),
            "redis_us": statistics.median(on[3] for _, on in pairs),
            "redis_delta_us": statistics.median(on[3] - off[3] for off, on in pairs),
            "pairs": float(len(pairs)),
        }
    finally:
        await client.aclose()


def worker_env(redis_url: str, database_url: str, port: int, **more: str) -> dict[str, str]:
    """The environment of a bench's Maskline process answering on `port` (`more`: other
    MASKLINE_* settings), signing with the load generator's account."""
    return {
        **os.environ,
        "MASKLINE_REDIS_URL": redis_url,
        "MASKLINE_DATABASE_URL": database_url,
        "MASKLINE_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "MASKLINE_TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "MASKLINE_TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "MASKLINE_EMBEDDED": "never",
        "MASKLINE_LOG_LEVEL": "WARNING",
        **more,
    }


async def two_workers(
    worker: Any,
    spawn: Callable[[], Any],
    stop: Callable[[Any], None],
    closed_loop: Callable[[Path, int], Awaitable[dict[str, float]]],
    paths: list[Path],
    seconds: int,
    procs: list[Any],
) -> dict[str, float]:
    """One worker, then two on its port (`spawn`: another, joining by SO_REUSEPORT), then one
    again, nothing pinned (the workers and the load share every core): the CPU per relayed text
    with two against the mean of the runs with one beside it, so that neither the pinning of the
    main run nor the machine's drift counts as the second worker's cost."""
    every = set(range(os.cpu_count() or 1))
    for pid in (worker.pid, os.getpid()):
        pin(pid, every)
    LOAD_CORES.clear()

    async def run(path: Path, workers: list[Any]) -> tuple[float, float]:
        """(req/s, worker CPU us per relayed text)"""
        before = sum(cpu_seconds(w.pid) for w in workers)
        result = await closed_loop(path, seconds)
        cpu_s = sum(cpu_seconds(w.pid) for w in workers) - before
        return result["rps"], cpu_s / max(1.0, result["rps"] * seconds) * 1e6

    one_before = await run(paths[0], [worker])
    second = spawn()
    procs.append(second)
    await asyncio.sleep(2.0)  # started and listening (the port already answers: no probe possible)
    two = await run(paths[1], [worker, second])
    stop(second)
    one_after = await run(paths[2], [worker])
    return {
        "rps": two[0],
        "cpu_us": two[1],
        "one_rps": (one_before[0] + one_after[0]) / 2,
        "one_cpu_us": (one_before[1] + one_after[1]) / 2,
    }
