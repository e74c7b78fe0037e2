"""Run `maskline` (as `python -m maskline`) against the test servers, off the event loop."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys


async def maskline(*args: str, database_url: str, redis_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MASKLINE_DATABASE_URL": database_url, "MASKLINE_REDIS_URL": redis_url}
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "maskline", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
