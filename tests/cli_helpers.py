"""Run `maskline` (as `python -m maskline`) against the test servers, off the event loop."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Mapping


async def maskline(
    *args: str, database_url: str, redis_url: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`env` adds (or overrides) variables, e.g. MASKLINE_TWILIO_API_URL for the fake Twilio."""
    full = {
        **os.environ,
        "MASKLINE_DATABASE_URL": database_url,
        "MASKLINE_REDIS_URL": redis_url,
        **(env or {}),
    }
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "maskline", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
