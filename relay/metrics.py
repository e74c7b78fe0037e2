"""GET /metrics in Prometheus' text format (prometheus-client): what the webhooks and the API did,
counted as they answer, and what the stores hold, read when scraped.

Counted: webhook answers by kind (sms, voice) and outcome (answered, fallback, refused) with their
latency; API requests by method, route template and status with their latency; API errors by code
(pool exhaustion is 80203/80205-80208). Read at scrape: Redis and Postgres up, each Service's pool
numbers and the (participant, proxy) pairs live sessions hold on them, and the audit stream's lag
(entries the audit writer has not read yet) and pending entries (read, not yet committed).

With settings.metrics_token set, a scrape must send `Authorization: Bearer <token>`."""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any, Final

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from core import keys
from relay.state import PG, REDIS, SETTINGS

__all__ = ["routes", "REGISTRY", "observe_webhook", "observe_api", "rate_limited"]

log = logging.getLogger("maskline.metrics")

REGISTRY: Final = CollectorRegistry()
_LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
WEBHOOKS: Final = Histogram(
    "maskline_webhook_seconds",
    "Webhook answers by kind and outcome, and how long they took",
    ["kind", "outcome"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
API_REQUESTS: Final = Histogram(
    "maskline_api_seconds",
    "API requests by method, route template and HTTP status, and how long they took",
    ["method", "route", "status"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
RATE_LIMITED: Final = Counter(
    "maskline_rate_limited_total",
    "Texts and calls refused by a Service's abuse limits, by kind",
    ["kind"],
    registry=REGISTRY,
)
API_ERRORS: Final = Counter(
    "maskline_api_errors_total", "API errors by Twilio-style code", ["code"], registry=REGISTRY
)
STORE_UP: Final = Gauge(
    "maskline_store_up", "1 if the store answered the scrape's probe", ["store"], registry=REGISTRY
)
POOL_NUMBERS: Final = Gauge(
    "maskline_pool_numbers", "Numbers in each Service's pool", ["service"], registry=REGISTRY
)
PAIRS_IN_USE: Final = Gauge(
    "maskline_pairs_in_use",
    "(participant, proxy) pairs held by live sessions, per Service",
    ["service"],
    registry=REGISTRY,
)
AUDIT_LAG: Final = Gauge(
    "maskline_audit_lag_events",
    "Audit events not yet read by the audit writer, per Service",
    ["service"],
    registry=REGISTRY,
)
AUDIT_PENDING: Final = Gauge(
    "maskline_audit_pending_events",
    "Audit events read, not yet committed to Postgres",
    ["service"],
    registry=REGISTRY,
)
PROBE_S: Final = 0.5  # a store slower than this reads as down on this scrape
MAX_NUMBERS: Final = 50_000  # pairs in use are summed over at most this many numbers per scrape

routes = web.RouteTableDef()


# The histogram's child per (kind, outcome), looked up once (labels() per webhook showed in the
# worker's profile).
_WEBHOOK_CHILDREN: Final[dict[tuple[str, str], Any]] = {}


def observe_webhook(kind: str, outcome: str, seconds: float) -> None:
    child = _WEBHOOK_CHILDREN.get((kind, outcome))
    if child is None:
        child = _WEBHOOK_CHILDREN[kind, outcome] = WEBHOOKS.labels(kind, outcome)
    child.observe(seconds)


def rate_limited(kind: str) -> None:
    RATE_LIMITED.labels(kind).inc()


def observe_api(request: web.Request, status: int, seconds: float, code: int | None = None) -> None:
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    API_REQUESTS.labels(request.method, route, str(status)).observe(seconds)
    if code is not None:
        API_ERRORS.labels(str(code)).inc()


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    token = request.app[SETTINGS].metrics_token
    if token:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return web.Response(status=401, text="Unauthorized: send Authorization: Bearer <token>\n")
    await _read_stores(request.app[REDIS], request.app[PG])
    return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _read_stores(redis: aioredis.Redis, pg: asyncpg.Pool) -> None:
    numbers: list[Any] = []
    try:
        async with asyncio.timeout(PROBE_S):
            numbers = await pg.fetch(
                "SELECT service_sid, phone_number FROM phone_numbers LIMIT $1", MAX_NUMBERS
            )
            services = [r["sid"] for r in await pg.fetch("SELECT sid FROM services")]
        STORE_UP.labels("postgres").set(1)
    except Exception as err:  # down, slow or shutting down: the scrape still answers
        log.debug("metrics: Postgres probe failed: %s", err)
        STORE_UP.labels("postgres").set(0)
        services = []
    try:
        async with asyncio.timeout(PROBE_S):
            await redis.ping()
            await _read_redis(redis, services, numbers)
        STORE_UP.labels("redis").set(1)
    except Exception as err:
        log.debug("metrics: Redis probe failed: %s", err)
        STORE_UP.labels("redis").set(0)


async def _read_redis(redis: aioredis.Redis, services: list[str], numbers: list[Any]) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for row in numbers:
            pipe.hget(keys.number(row["service_sid"], row["phone_number"]), "in_use")
        counts = await pipe.execute() if numbers else []
    held: dict[str, int] = dict.fromkeys(services, 0)
    size: dict[str, int] = dict.fromkeys(services, 0)
    for row, count in zip(numbers, counts, strict=True):
        held[row["service_sid"]] = held.get(row["service_sid"], 0) + int(count or 0)
        size[row["service_sid"]] = size.get(row["service_sid"], 0) + 1
    for ks in held:
        PAIRS_IN_USE.labels(ks).set(held[ks])
        POOL_NUMBERS.labels(ks).set(size[ks])
        groups: list[dict[str, Any]] = []
        try:
            groups = await redis.xinfo_groups(keys.events(ks))
        except Exception:  # no stream yet: nothing to read
            groups = []
        audit = next((g for g in groups if g.get("name") == "audit"), None)
        AUDIT_LAG.labels(ks).set(int(audit.get("lag") or 0) if audit else await redis.xlen(keys.events(ks)))
        AUDIT_PENDING.labels(ks).set(int(audit.get("pending") or 0) if audit else 0)
