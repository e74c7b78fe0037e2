"""py-spy for the benchmarks: record a process under load (`profile`), then the lines that say where
its time went (`summarise_profile`: inclusive shares of the parts that matter, then the hottest
functions by self time)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

__all__ = ["profile", "summarise_profile"]


def profile(pid: int, seconds: int, out: Path) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return None
    return subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "250", "--format", "raw",
         "--output", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def summarise_profile(path: Path, top: int = 14) -> list[str]:
    """Self time by function and time inside a few areas of interest, from py-spy's raw output."""
    if not path.exists():
        return ["(no profile: py-spy unavailable or not permitted)"]
    leaf: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    patterns = {
        "signature check (twilio RequestValidator)": "request_validator.py",
        "form parsing (aiohttp request.post)": "post (aiohttp/web_request.py",
        "redis client (redis.asyncio + hiredis)": "redis/",
        "route_inbound (Router)": "route_inbound (sessions/routing.py",
        "aiohttp HTTP server machinery": "aiohttp/web_protocol.py",
        "TwiML building": "relay/twiml.py",
        "JSON (orjson)": "orjson",
    }
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        leaf[frames[-1]] += n
        for label, needle in patterns.items():
            if needle in stack:
                areas[label] += n
    if not total:
        return ["(empty profile)"]
    lines = [f"  inclusive: {label:44s} {100 * n / total:5.1f}%" for label, n in areas.most_common()]
    lines += [f"  self:      {frame[:90]:90s} {100 * n / total:5.1f}%" for frame, n in leaf.most_common(top)]
    return lines
