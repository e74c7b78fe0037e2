"""create_app: the one place that wires Maskline together. It opens every resource in a cleanup
context (injected ones are used as given and left open: tests pass their own Redis / Postgres),
registers the HTTP edge's routes, and runs the background duties (sweeper, audit writer)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import redis.asyncio as aioredis
from aiohttp import web
from twilio.request_validator import RequestValidator

from audit.writer import AuditWriter
from core.clock import SYSTEM, Clock
from core.connections import redis_client
from core.resp import RespClient
from core.scripts import Scripts
from core.settings import Settings
from pool.registry import NumberRegistry
from relay import health
from relay.api import audit as audit_api
from relay.api import interactions as interactions_api
from relay.api import services as services_api
from relay.api import sessions as sessions_api
from relay.callbacks import CallbackDispatcher
from relay.credentials import KeyVerifier
from relay.fallbacks import FallbackRecorder
from relay.middleware import api_error_middleware, auth_middleware
from relay.outbound import TwilioMessages
from relay.state import (
    NUMBERS,
    PG,
    REDIS,
    RELAY,
    SERVICES,
    SESSIONS,
    SETTINGS,
    VERIFIER,
    AnswerWriter,
    RelayState,
)
from relay.webhooks import ROUTES as WEBHOOK_ROUTES
from sessions.expiry import run_sweeper
from sessions.interactions import InteractionStore
from sessions.routing import Router
from sessions.scripts import SESSION_LUA
from sessions.services import ServiceStore
from sessions.store import SessionStore

__all__ = ["create_app"]

log = logging.getLogger("maskline")

# Twilio posts at most a 1,600-character body; the API's largest requests are far below this.
CLIENT_MAX_SIZE = 2 * 1024 * 1024


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
        middlewares=[api_error_middleware, auth_middleware], client_max_size=CLIENT_MAX_SIZE
    )
    app[SETTINGS] = settings

    async def stores(app: web.Application) -> AsyncIterator[None]:
        r = redis or redis_client(settings.redis_url)
        p = pg or await asyncpg.create_pool(settings.database_url, min_size=1, max_size=10)
        scripts = Scripts(r, SESSION_LUA)
        app[REDIS] = r
        app[PG] = p
        app[VERIFIER] = KeyVerifier(p)
        app[SESSIONS] = SessionStore(r, scripts=scripts, clock=clock)
        app[SERVICES] = ServiceStore(
            p, r, account_sid=settings.twilio_account_sid, closed_retention_s=settings.closed_retention_s
        )
        app[NUMBERS] = NumberRegistry(p, r)
        await _republish(app)
        try:
            yield
        finally:
            if redis is None:
                await r.aclose()
            if pg is None:
                await p.close()

    async def relay(app: web.Application) -> AsyncIterator[None]:
        sessions = app[SESSIONS]
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
        # The webhooks' own pipelined connection (core/resp.py), to the same Redis as app[REDIS].
        fast = RespClient.like(app[REDIS])
        callbacks = CallbackDispatcher(
            http, auth_token=settings.twilio_auth_token, timeout_s=settings.callback_timeout_s
        )
        callbacks.start()
        interactions = InteractionStore(app[REDIS], clock=clock, scripts=sessions.scripts)
        router = Router(
            app[REDIS],
            scripts=sessions.scripts,
            clock=clock,
            fast=fast,
            sessions=sessions,
            interactions=interactions,
            dedupe_ttl_s=settings.dedupe_ttl_s,
        )
        fallbacks = FallbackRecorder(router)
        fallbacks.start()
        app[RELAY] = RelayState(
            settings=settings,
            router=router,
            sessions=sessions,
            interactions=interactions,
            http=http,
            callbacks=callbacks,
            messages=TwilioMessages(
                http,
                api_url=settings.twilio_api_url,
                account_sid=settings.twilio_account_sid,
                auth_token=settings.twilio_auth_token,
            ),
            validator=RequestValidator(settings.twilio_auth_token),
            answers=AnswerWriter(fast, ttl_s=settings.dedupe_ttl_s),
            fallbacks=fallbacks,
        )
        # Everything alive now lives as long as the process: keep it out of the collector's scans,
        # so a full collection under load does not stall webhooks (p99).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await app[RELAY].answers.drain()
            await fallbacks.stop()
            await callbacks.stop()
            await http.close()
            await fast.aclose()

    async def duties(app: web.Application) -> AsyncIterator[None]:
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
            writer = AuditWriter(writer_redis, app[PG], consumer=f"{socket.gethostname()}-{os.getpid()}")
            tasks.append(asyncio.create_task(writer.run(stop)))
        try:
            yield
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if writer_redis is not None:
                await writer_redis.aclose()

    app.cleanup_ctx.extend([stores, relay, duties])
    app.add_routes(health.routes)
    app.add_routes(services_api.routes)
    app.add_routes(sessions_api.routes)
    app.add_routes(interactions_api.routes)
    app.add_routes(audit_api.routes)
    app.add_routes(WEBHOOK_ROUTES)
    return app


async def _republish(app: web.Application) -> None:
    """Redis may have lost its data (restart without AOF): put every Service and number back."""
    try:
        await app[SERVICES].publish_all()
        for row in await app[PG].fetch("SELECT sid FROM services"):
            await app[NUMBERS].publish_service(row["sid"])
    except Exception as err:
        log.warning("could not re-publish Services to Redis at start-up: %s", err)
