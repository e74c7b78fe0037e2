"""Liveness and readiness: /healthz (the process answers) and /readyz (Redis and Postgres do, and
Redis holds the hot copy: the recovery marker is set; maskline/recovery.py)."""

from __future__ import annotations

import asyncio
import os

from aiohttp import web

from core import keys
from relay.state import PG, REDIS

__all__ = ["routes", "HOT_COPY_MISSING"]

routes = web.RouteTableDef()

# Redis answers but lost its data: a worker is putting Services, numbers and live sessions back.
HOT_COPY_MISSING = "hot copy missing, rebuilding"


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "pid": os.getpid()})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    checks: dict[str, str] = {}
    try:
        # One GET proves Redis answers and still holds what the hot path needs.
        marker = await asyncio.wait_for(request.app[REDIS].get(keys.PUBLISHED), timeout=1.0)
        checks["redis"] = "ok" if marker else HOT_COPY_MISSING
    except Exception as err:
        checks["redis"] = f"unreachable: {type(err).__name__}"
    try:
        await asyncio.wait_for(request.app[PG].fetchval("SELECT 1"), timeout=1.0)
        checks["postgres"] = "ok"
    except Exception as err:
        checks["postgres"] = f"unreachable: {type(err).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return web.json_response(
        {"status": "ok" if ready else "unavailable", **checks}, status=200 if ready else 503
    )
