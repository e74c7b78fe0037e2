"""Liveness and readiness: /healthz (the process answers) and /readyz (Redis and Postgres do)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from relay.state import PG, REDIS

__all__ = ["routes"]

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(request.app[REDIS].ping(), timeout=1.0)
        checks["redis"] = "ok"
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
