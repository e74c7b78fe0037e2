"""A running Maskline app on the test port (so signed webhook URLs and `url` fields match
settings.public_url) and an API key to call it with."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from core.clock import ManualClock
from core.settings import Settings
from maskline.server import create_app
from relay.credentials import create_key


@dataclass
class RunningApp:
    app: web.Application
    base: str
    key_sid: str
    key_secret: str
    http: aiohttp.ClientSession
    clock: ManualClock

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": aiohttp.encode_basic_auth(self.key_sid, self.key_secret)}

    async def call(self, method: str, path: str, data: Any = None, *, auth: bool = True) -> tuple[int, Any]:
        kwargs: dict[str, Any] = {"data": data}
        if auth:
            kwargs["headers"] = self.auth_headers
        async with self.http.request(method, self.base + path, **kwargs) as resp:
            body = await resp.json() if resp.content_type == "application/json" else await resp.text()
            return resp.status, body


@asynccontextmanager
async def running_app(
    settings: Settings,
    redis: aioredis.Redis,
    pg: asyncpg.Pool,
    *,
    permissions: frozenset[str] = frozenset({"proxy"}),
) -> AsyncIterator[RunningApp]:
    clock = ManualClock(1_900_000_000_000)
    app = create_app(settings, redis=redis, pg=pg, clock=clock, background=False)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    sid, secret = await create_key(pg, "tests", permissions=permissions)
    async with aiohttp.ClientSession() as http:
        try:
            yield RunningApp(app, settings.public_url, sid, secret, http, clock)
        finally:
            await runner.cleanup()
