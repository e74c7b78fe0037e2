"""Typed application state (aiohttp AppKey) and the per-request authenticated key."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from pool.registry import NumberRegistry
from relay.settings import Settings
from sessions.services import ServiceStore
from sessions.store import SessionStore

__all__ = ["SETTINGS", "REDIS", "PG", "SESSIONS", "SERVICES", "NUMBERS", "ApiKey", "API_KEY"]

SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
REDIS: web.AppKey[aioredis.Redis] = web.AppKey("redis", aioredis.Redis)
PG: web.AppKey[asyncpg.Pool] = web.AppKey("pg", asyncpg.Pool)
SESSIONS: web.AppKey[SessionStore] = web.AppKey("sessions", SessionStore)
SERVICES: web.AppKey[ServiceStore] = web.AppKey("services", ServiceStore)
NUMBERS: web.AppKey[NumberRegistry] = web.AppKey("numbers", NumberRegistry)


@dataclass(frozen=True)
class ApiKey:
    """The key a request authenticated with (set by the auth middleware as request[API_KEY])."""

    sid: str
    friendly_name: str
    permissions: frozenset[str]  # "proxy" (the Proxy API), "audit" (compliance read API)
    service_sids: frozenset[str] | None  # None: every Service

    def may_see(self, service_sid: str) -> bool:
        return self.service_sids is None or service_sid in self.service_sids


API_KEY: web.RequestKey[ApiKey] = web.RequestKey("api_key", ApiKey)
