"""A Service's block list: identifiers that may neither join a session (create_session.lua and
add_participant.lua refuse them, 89003) nor reach anyone through a proxy number (route_inbound.lua
treats their texts and calls as out of session). Postgres holds the list; Redis a copy per Service
(`ml:{KS}:blocked`), which the scripts check in the same call."""

from __future__ import annotations

from typing import Any, Final

import asyncpg
import redis.asyncio as aioredis

from core import keys
from core.errors import NotFound
from core.events import emit_event
from core.ids import new_sid
from core.paging import Page, PageRequest, oldest_first_page, oldest_first_sql
from pool.numbers import parse_participant

__all__ = ["BlockList", "forget_identifier"]

INSERT: Final = """
INSERT INTO blocked_identifiers (sid, service_sid, identifier) VALUES ($1, $2, $3)
ON CONFLICT (service_sid, identifier) DO NOTHING RETURNING *
"""
SELECT_ONE: Final = (
    "SELECT * FROM blocked_identifiers WHERE service_sid = $1 AND (sid = $2 OR identifier = $2)"
)
SELECT_PAGE: Final = "SELECT * FROM blocked_identifiers WHERE service_sid = $1"  # + oldest_first_sql
DELETE: Final = "DELETE FROM blocked_identifiers WHERE service_sid = $1 AND sid = $2 RETURNING identifier"
FORGET: Final = "DELETE FROM blocked_identifiers WHERE identifier = $1 RETURNING service_sid"


class BlockList:
    def __init__(self, redis: aioredis.Redis, pg: asyncpg.Pool) -> None:
        self.redis, self.pg = redis, pg

    async def add(self, service_sid: str, identifier: str) -> dict[str, Any]:
        """Block `identifier` (E.164; 20422 otherwise) in the Service; blocking it again returns
        the existing entry. Audited as `identifier.blocked`."""
        e164 = parse_participant(identifier).e164
        row = await self.pg.fetchrow(INSERT, new_sid("BL"), service_sid, e164)
        if row is None:
            return await self.get(service_sid, e164)
        await self.redis.sadd(keys.blocked(service_sid), e164)
        await emit_event(
            self.redis,
            service_sid=service_sid,
            type="identifier.blocked",
            data={"sid": row["sid"], "numbers": [e164]},
        )
        return dict(row)

    async def get(self, service_sid: str, sid_or_identifier: str) -> dict[str, Any]:
        row = await self.pg.fetchrow(SELECT_ONE, service_sid, sid_or_identifier)
        if row is None:
            raise NotFound(f"Blocked identifier {sid_or_identifier} was not found in Service {service_sid}")
        return dict(row)

    async def remove(self, service_sid: str, sid_or_identifier: str) -> None:
        row = await self.get(service_sid, sid_or_identifier)
        if await self.pg.fetchval(DELETE, service_sid, row["sid"]) is None:
            return  # removed meanwhile
        await self.redis.srem(keys.blocked(service_sid), row["identifier"])
        await emit_event(
            self.redis,
            service_sid=service_sid,
            type="identifier.unblocked",
            data={"sid": row["sid"], "numbers": [row["identifier"]]},
        )

    async def list(self, service_sid: str, request: PageRequest) -> Page[dict[str, Any]]:
        sql, args = oldest_first_sql(SELECT_PAGE, [service_sid], request)
        return oldest_first_page([dict(r) for r in await self.pg.fetch(sql, *args)], request)


async def forget_identifier(redis: aioredis.Redis, pg: asyncpg.Pool, identifier: str) -> int:
    """Erasure: the identifier leaves every Service's block list (both stores). Returns how many."""
    services = [r["service_sid"] for r in await pg.fetch(FORGET, identifier)]
    for ks in services:
        await redis.srem(keys.blocked(ks), identifier)
    return len(services)
