"""create_app: the aiohttp application (Proxy API, webhooks, health), with every resource opened
and closed in a cleanup context. Tests inject their own Redis / Postgres clients."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from audit.writer import AuditWriter
from pool.connections import redis_client
from pool.registry import NumberRegistry
from pool.scripts import Scripts
from relay.api import audit as audit_api
from relay.api import services as services_api
from relay.api import sessions as sessions_api
from relay.apikeys import KeyVerifier
from relay.appkeys import API_KEY, NUMBERS, PG, REDIS, SERVICES, SESSIONS, SETTINGS
from relay.errors import api_error_middleware, error_response
from relay.settings import Settings
from sessions.clock import SYSTEM, Clock
from sessions.expiry import run_sweeper
from sessions.services import ServiceStore
from sessions.store import SessionStore

__all__ = ["create_app", "VERIFIER"]

log = logging.getLogger("maskline")

VERIFIER: web.AppKey[KeyVerifier] = web.AppKey("verifier", KeyVerifier)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """HTTP Basic with an API key on the REST API (/v1/...); webhooks check signatures instead."""
    if request.path.startswith("/v1/"):
        key = await request.app[VERIFIER].verify_header(request.headers.get("Authorization"))
        if key is None:
            response = error_response(
                20003, "Authenticate with HTTP Basic: API key SID as user, its secret as password", 401
            )
            response.headers["WWW-Authenticate"] = 'Basic realm="Maskline"'
            return response
        request[API_KEY] = key
    return await handler(request)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


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


def create_app(
    settings: Settings,
    *,
    redis: aioredis.Redis | None = None,
    pg: asyncpg.Pool | None = None,
    clock: Clock = SYSTEM,
    background: bool = True,
    audit_writer: bool = False,
) -> web.Application:
    """`background=False` leaves out the sweeper (tests drive expiry with an explicit clock);
    `audit_writer=True` also drains the event streams into the audit log in this process."""
    app = web.Application(
        middlewares=[api_error_middleware, auth_middleware], client_max_size=2 * 1024 * 1024
    )
    app[SETTINGS] = settings

    async def resources(app: web.Application) -> AsyncIterator[None]:
        own_redis = redis is None
        own_pg = pg is None
        r = redis or redis_client(settings.redis_url)
        p = pg or await asyncpg.create_pool(settings.database_url, min_size=1, max_size=10)
        scripts = Scripts(r)
        app[REDIS] = r
        app[PG] = p
        app[VERIFIER] = KeyVerifier(p)
        app[SESSIONS] = SessionStore(r, scripts=scripts, clock=clock)
        app[SERVICES] = ServiceStore(p, r, account_sid=settings.twilio_account_sid)
        app[NUMBERS] = NumberRegistry(p, r, scripts=scripts)
        # Redis may have lost its data (restart without AOF): put every Service and number back.
        try:
            await app[SERVICES].publish_all()
            for row in await p.fetch("SELECT sid FROM services"):
                await app[NUMBERS].publish_service(row["sid"])
        except Exception as err:
            log.warning("could not re-publish Services to Redis at start-up: %s", err)
        # Everything alive now lives as long as the process: keep it out of the collector's scans,
        # so a full collection under load does not stall webhooks (p99).
        gc.collect()
        gc.freeze()
        stop = asyncio.Event()
        tasks = []
        writer_redis = None
        if background:
            tasks.append(
                asyncio.create_task(
                    run_sweeper(app[SESSIONS], interval_s=settings.sweep_interval_s, stop=stop)
                )
            )
        if audit_writer:
            # Its own connection: the writer blocks on XREADGROUP.
            writer_redis = redis_client(settings.redis_url, max_connections=4)
            writer = AuditWriter(writer_redis, p, consumer=f"{socket.gethostname()}-{os.getpid()}")
            tasks.append(asyncio.create_task(writer.run(stop)))
        yield
        stop.set()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if writer_redis is not None:
            await writer_redis.aclose()
        if own_redis:
            await r.aclose()
        if own_pg:
            await p.close()

    app.cleanup_ctx.append(resources)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.add_routes(services_api.routes)
    app.add_routes(sessions_api.routes)
    app.add_routes(audit_api.routes)
    # Webhooks and interactions (relay/relay_state.py): after `resources`, whose Redis they use.
    from relay import relay_state

    relay_state.setup(app)
    return app
