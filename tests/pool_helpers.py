"""Builders shared by the pool and session tests: a Service and its numbers, straight through the
domain stores (Postgres + Redis), no HTTP."""

from __future__ import annotations

from typing import Any

import asyncpg
import redis.asyncio as aioredis

from core.clock import ManualClock
from core.paging import PageRequest
from pool.registry import NumberRegistry
from sessions.models import ParticipantRequest
from sessions.services import ServiceStore
from sessions.store import SessionStore

ACCOUNT = "AC" + "7e57" * 8

# Valid numbers (phonenumbers agrees) used across the tests.
CUSTOMER = "+14155550101"
COURIER = "+14155550102"
HOST = "+12125550103"
GUEST = "+12125550104"
UK_GUEST = "+447400123457"


class World:
    def __init__(self, pg: asyncpg.Pool, redis: aioredis.Redis) -> None:
        self.clock = ManualClock(1_900_000_000_000)
        self.services = ServiceStore(pg, redis, account_sid=ACCOUNT)
        self.numbers = NumberRegistry(pg, redis)
        self.sessions = SessionStore(redis, clock=self.clock)
        self.redis = redis

    async def service(self, **fields: Any) -> str:
        fields.setdefault(
            "unique_name", f"svc-{len((await self.services.list(PageRequest(size=1000))).items)}"
        )
        row = await self.services.create(fields)
        return str(row["sid"])

    async def pool(self, service_sid: str, *numbers: str, reserved: bool = False) -> None:
        for n in numbers:
            await self.numbers.add(service_sid, n, is_reserved=reserved)

    async def session(self, service_sid: str, *identifiers: str, **kwargs: Any) -> dict[str, Any]:
        return await self.sessions.create_session(
            service_sid, participants=[ParticipantRequest(identifier=i) for i in identifiers], **kwargs
        )


def proxies(view: dict[str, Any]) -> dict[str, str]:
    """identifier -> proxy number given to it."""
    return {p["identifier"]: p["proxy_identifier"] for p in view["participants"]}
