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
from core.deadline import Watchdog
from core.lease import Lease, run_while_holding
from core.resp_cluster import fast_client
from core.scripts import Scripts
from core.settings import Settings
from maskline.erasure import erase_in_words
from maskline.recovery import RECOVERY, Recovery
from pool.registry import NumberRegistry
from relay import health, metrics, openapi
from relay.api import audit as audit_api
from relay.api import blocked as blocked_api
from relay.api import interactions as interactions_api
from relay.api import scheduled as scheduled_api
from relay.api import services as services_api
from relay.api import sessions as sessions_api
from relay.api_limits import RequestLimiter
from relay.callbacks import CallbackDispatcher
from relay.console import add_console
from relay.credentials import key_verifier
from relay.fallbacks import FallbackRecorder
from relay.middleware import api_error_middleware, auth_middleware, behind_boundary
from relay.outbound import TwilioMessages
from relay.scheduler import Scheduler
from relay.state import (
    API_LIMITS,
    BLOCKED,
    ERASER,
    NUMBERS,
    PG,
    REDIS,
    RELAY,
    SCHEDULED,
    SERVICES,
    SESSIONS,
    SETTINGS,
    TWILIO_ACCOUNT,
    VERIFIER,
    AnswerWriter,
    RelayState,
)
from relay.twilio_account import TwilioAccount
from relay.webhooks import ROUTES as WEBHOOK_ROUTES
from sessions.blocklist import BlockList
from sessions.expiry import run_sweeper
from sessions.interactions import InteractionStore
from sessions.restore import SessionRestorer
from sessions.routing import Router
from sessions.scheduled import ScheduledMessages
from sessions.scripts import SESSION_LUA
from sessions.services import ServiceStore
from sessions.store import SessionStore

__all__ = ["create_app"]

log = logging.getLogger("maskline")

# Twilio posts at most a 1,600-character body; the API's largest requests are far below this.
CLIENT_MAX_SIZE = 2 * 1024 * 1024
STARTUP_REPUBLISH_S = 5.0


def create_app(
    settings: Settings,
    *,
    redis: aioredis.Redis | None = None,
    pg: asyncpg.Pool | None = None,
    clock: Clock = SYSTEM,
    background: bool = True,
    audit_writer: bool = False,
    recovery: bool | None = None,
) -> web.Application:
    """`background=False` leaves out the sweeper (tests drive expiry with an explicit clock);
    `audit_writer=True` also drains the event streams into the audit log in this process;
    `recovery` runs the watchdog that rebuilds Redis' copy when Redis lost its data
    (maskline/recovery.py; default: with the background duties)."""
    # The webhooks answer on this app, which has no middleware; the REST API is its sub-app at /v1
    # with the API's own (auth, the error boundary); the rest goes through that boundary route by
    # route. The stores live here; the API's handlers read them through request.config_dict.
    app = web.Application(client_max_size=CLIENT_MAX_SIZE)
    app[SETTINGS] = settings

    async def stores(app: web.Application) -> AsyncIterator[None]:
        r = redis or redis_client(settings.redis_url)
        p = pg or await asyncpg.create_pool(settings.database_url, min_size=1, max_size=10)
        scripts = Scripts(r, SESSION_LUA)
        app[REDIS] = r
        app[PG] = p
        app[VERIFIER] = key_verifier(settings, p, r)  # login limiter on this Redis, scrypt threads
        app[API_LIMITS] = RequestLimiter(r, per_second=settings.api_rate_limit)
        app[SESSIONS] = SessionStore(r, scripts=scripts, clock=clock)
        app[SCHEDULED] = ScheduledMessages(
            r, scripts=scripts, clock=clock, claim_ms=int(settings.schedule_claim_s * 1000)
        )

        async def erase(number: str, actor: str) -> str:
            return await erase_in_words(r, p, number, actor)

        app[ERASER] = erase
        app[SERVICES] = ServiceStore(
            p, r, account_sid=settings.twilio_account_sid, closed_retention_s=settings.closed_retention_s
        )
        app[NUMBERS] = NumberRegistry(p, r)
        app[BLOCKED] = BlockList(r, p)
        app[RECOVERY] = Recovery(
            r,
            p,
            services=app[SERVICES],
            numbers=app[NUMBERS],
            restorer=SessionRestorer(r, scripts=scripts, clock=clock),
            settings=settings,
            clock=clock,
        )
        await _republish(app)
        try:
            yield
        finally:
            app[VERIFIER].close()
            if redis is None:
                await r.aclose()
            if pg is None:
                await p.close()

    async def relay(app: web.Application) -> AsyncIterator[None]:
        sessions = app[SESSIONS]
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
        # The webhooks' own pipelined connection (core/resp.py), to the same Redis as app[REDIS].
        fast = fast_client(app[REDIS])
        sessions.scripts.run_on(fast)  # every script: the webhook's route, the scheduler's, the API's
        callbacks = CallbackDispatcher(
            http, auth_token=settings.twilio_auth_token, timeout_s=settings.callback_timeout_s
        )
        callbacks.start()
        interactions = InteractionStore(
            app[REDIS], clock=clock, scripts=sessions.scripts, hot_s=settings.interaction_hot_s
        )
        router = Router(
            app[REDIS],
            scripts=sessions.scripts,
            clock=clock,
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
            webhook_deadline=Watchdog(settings.webhook_deadline_s),
        )
        app[TWILIO_ACCOUNT] = TwilioAccount(  # looks numbers up for PhoneNumbers created by Sid
            http,
            api_url=settings.twilio_api_url,
            account_sid=settings.twilio_account_sid,
            auth_token=settings.twilio_auth_token,
            # Half the API request's deadline: the rest is left to add the number.
            timeout_s=settings.api_deadline_s / 4,
            give_up_s=settings.api_deadline_s / 2,
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
            sessions.scripts.run_on(None)
            await fast.aclose()

    async def duties(app: web.Application) -> AsyncIterator[None]:
        stop = asyncio.Event()
        tasks = []
        writer_redis = None
        # The sweeper and the audit writer run in one process at a time across every worker and
        # host: whoever holds their lease (core/lease.py); another takes over if it dies.
        if background:

            async def sweep(duty_stop: asyncio.Event, fence: int) -> None:
                await run_sweeper(app[SESSIONS], interval_s=settings.sweep_interval_s, stop=duty_stop)

            lease = Lease(app[REDIS], "sweeper", ttl_s=settings.lease_ttl_s)
            tasks.append(asyncio.create_task(run_while_holding(lease, sweep, stop)))
            scheduler = Scheduler(app[RELAY], app[SCHEDULED])

            async def send_due(duty_stop: asyncio.Event, fence: int) -> None:
                await scheduler.run(duty_stop)

            lease = Lease(app[REDIS], "scheduler", ttl_s=settings.lease_ttl_s)
            tasks.append(asyncio.create_task(run_while_holding(lease, send_due, stop)))
        if background if recovery is None else recovery:
            tasks.append(asyncio.create_task(app[RECOVERY].run(stop)))
        if audit_writer:
            # Its own connection: the writer blocks on XREADGROUP.
            writer_redis = redis_client(settings.redis_url, max_connections=4)
            writer = AuditWriter(writer_redis, app[PG], consumer=f"{socket.gethostname()}-{os.getpid()}")

            async def write(duty_stop: asyncio.Event, fence: int) -> None:
                await writer.run(duty_stop)

            lease = Lease(app[REDIS], "audit-writer", ttl_s=settings.lease_ttl_s)
            tasks.append(asyncio.create_task(run_while_holding(lease, write, stop)))
        try:
            yield
        finally:
            stop.set()
            if tasks:  # a moment to stop the duties and give their leases back, then no more
                await asyncio.wait(tasks, timeout=2.0)
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if writer_redis is not None:
                await writer_redis.aclose()

    app.cleanup_ctx.extend([stores, relay, duties])
    app.add_routes(WEBHOOK_ROUTES)
    for table in (health.routes, openapi.routes, metrics.routes):
        app.add_routes(behind_boundary(table))
    add_console(app)
    api = web.Application(
        middlewares=[api_error_middleware, auth_middleware], client_max_size=CLIENT_MAX_SIZE
    )
    for table in API_ROUTES:
        api.add_routes(_mounted(API_PREFIX, table))
    app.add_subapp(API_PREFIX, api)
    return app


API_PREFIX = "/v1"
API_ROUTES = (
    services_api.routes,
    sessions_api.routes,
    interactions_api.routes,
    audit_api.routes,
    blocked_api.routes,
    scheduled_api.routes,
)


def _mounted(prefix: str, routes: web.RouteTableDef) -> list[web.RouteDef]:
    """Routes written with their full paths, as a sub-app mounted at `prefix` declares them."""
    mounted = []
    for route in routes:
        assert isinstance(route, web.RouteDef) and route.path.startswith(prefix + "/"), route
        mounted.append(
            web.RouteDef(route.method, route.path.removeprefix(prefix), route.handler, route.kwargs)
        )
    return mounted


async def _republish(app: web.Application) -> None:
    """Redis may have lost its data (restart without AOF): put every Service and number back, and
    the live sessions too when the recovery marker is gone (maskline/recovery.py)."""
    try:
        # Bounded: a Redis that accepts connections and never answers must not hold start-up
        # hostage; the watchdog (or the next start) finishes the job.
        async with asyncio.timeout(STARTUP_REPUBLISH_S):
            await app[RECOVERY].startup()
    except Exception as err:
        log.warning("could not re-publish Services to Redis at start-up: %s", err)
