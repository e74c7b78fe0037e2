"""Proxy numbers of a Service: rows in Postgres, pool membership in Redis (number_upsert.lua)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

import asyncpg
import orjson
import redis.asyncio as aioredis

from core import keys
from core.errors import InvalidParameter, NotFound, PoolError
from core.events import emit_event
from core.ids import new_sid
from core.paging import Page, PageRequest, oldest_first_page, oldest_first_sql
from core.scripts import Scripts
from pool.numbers import parse_proxy_number
from pool.scripts import POOL_LUA

__all__ = ["NumberRegistry", "DEFAULT_CAPABILITIES", "PN_SID", "proxy_capabilities"]

# A number added by PhoneNumber (no Twilio account look-up): assumed to text and call.
DEFAULT_CAPABILITIES: Final = {
    "sms_inbound": True,
    "sms_outbound": True,
    "voice_inbound": True,
    "voice_outbound": True,
}
# Twilio's IncomingPhoneNumber sid; a number imported from the account keeps it.
PN_SID: Final = re.compile(r"PN[0-9a-fA-F]{32}")
_CHANNELS: Final = ("voice", "sms", "mms", "fax")


def proxy_capabilities(twilio: Mapping[str, Any]) -> dict[str, bool]:
    """A Proxy PhoneNumber's `capabilities` from an IncomingPhoneNumber's `{voice, sms, mms, fax}`
    booleans (keys read case-insensitively: Twilio spells them "SMS" in some resources).

    Both shapes are written: Twilio Proxy's own `<channel>_inbound` / `<channel>_outbound` keys
    (what its API answers) and the `voice`, `sms`, `mms`, `fax` properties its OpenAPI schema
    declares (what typed SDKs read)."""
    given = {str(k).lower(): v is True or str(v).lower() == "true" for k, v in twilio.items()}
    caps: dict[str, bool] = {}
    for channel in _CHANNELS:
        on = given.get(channel, False)
        caps[f"{channel}_inbound"] = on
        caps[f"{channel}_outbound"] = on
    caps.update({channel: given.get(channel, False) for channel in _CHANNELS})
    return caps


INSERT: Final = """
INSERT INTO phone_numbers (sid, service_sid, phone_number, friendly_name, iso_country, capabilities, is_reserved)
VALUES ($1, $2, $3, $4, $5, $6, $7)
RETURNING *
"""
SELECT_ONE: Final = "SELECT * FROM phone_numbers WHERE service_sid = $1 AND (sid = $2 OR phone_number = $2)"
SELECT_PAGE: Final = "SELECT * FROM phone_numbers WHERE service_sid = $1"  # + core.paging.oldest_first_sql
SELECT_SERVICE_ALL: Final = "SELECT * FROM phone_numbers WHERE service_sid = $1"
UPDATE_RESERVED: Final = """
UPDATE phone_numbers SET is_reserved = $3, date_updated = now() WHERE service_sid = $1 AND sid = $2 RETURNING *
"""
DELETE: Final = "DELETE FROM phone_numbers WHERE service_sid = $1 AND sid = $2"
SERVICE_EXISTS: Final = "SELECT 1 FROM services WHERE sid = $1"


def _row(record: asyncpg.Record) -> dict[str, Any]:
    row = dict(record)
    if isinstance(row.get("capabilities"), str):
        row["capabilities"] = orjson.loads(row["capabilities"])
    return row


class NumberRegistry:
    def __init__(self, pg: asyncpg.Pool, redis: aioredis.Redis, *, scripts: Scripts | None = None) -> None:
        self.pg = pg
        self.redis = redis
        self.scripts = scripts or Scripts(redis, POOL_LUA)

    async def add(
        self,
        service_sid: str,
        phone_number: str,
        *,
        is_reserved: bool = False,
        friendly_name: str | None = None,
        sid: str | None = None,
        capabilities: Mapping[str, bool] | None = None,
    ) -> dict[str, Any]:
        """Add a number to the Service's pool. `sid` and `capabilities` come from the Twilio
        account's IncomingPhoneNumber when the number is imported (Twilio's PN sid is kept, so
        ProxyIdentifierSid and the number's Twilio sid are one); otherwise a new PN sid and
        DEFAULT_CAPABILITIES."""
        number = parse_proxy_number(phone_number)
        if sid is not None and not PN_SID.fullmatch(sid):
            raise InvalidParameter(f"Sid {sid!r} is not a phone number sid (PN followed by 32 hex digits)")
        if await self.pg.fetchval(SERVICE_EXISTS, service_sid) is None:
            raise NotFound(f"Service {service_sid} was not found")
        sid = sid or new_sid("PN")
        try:
            record = await self.pg.fetchrow(
                INSERT,
                sid,
                service_sid,
                number.e164,
                friendly_name or number.e164,
                number.iso_country,
                orjson.dumps(
                    dict(capabilities) if capabilities is not None else DEFAULT_CAPABILITIES
                ).decode(),
                is_reserved,
            )
        except asyncpg.UniqueViolationError:  # the number, or its (Twilio) sid, is in a Service already
            raise PoolError(
                f"PhoneNumber {number.e164} is not available: it is in a Service's pool already", code=80601
            ) from None
        row = _row(record)
        row["in_use"] = await self.publish(row)
        await emit_event(self.redis, service_sid=service_sid, type="number.added", data=_event_view(row))
        return row

    async def publish(self, row: dict[str, Any]) -> int:
        """Put the number in Redis' pool (idempotent); returns its live session count."""
        number = parse_proxy_number(row["phone_number"])
        in_use = await self.scripts.call(
            "number_upsert",
            keys.service_prefix(row["service_sid"]),
            number.e164,
            row["sid"],
            number.region,
            number.area,
            "1" if row["is_reserved"] else "0",
            "1" if _capabilities(row).get("whatsapp") else "0",
        )
        await self.redis.set(keys.proxy_owner(number.e164), row["service_sid"])
        return int(in_use)

    async def publish_service(self, service_sid: str) -> int:
        rows = await self.pg.fetch(SELECT_SERVICE_ALL, service_sid)
        for record in rows:
            await self.publish(_row(record))
        return len(rows)

    async def get(self, service_sid: str, sid_or_number: str) -> dict[str, Any]:
        record = await self.pg.fetchrow(SELECT_ONE, service_sid, sid_or_number)
        if record is None:
            raise NotFound(f"PhoneNumber {sid_or_number} was not found in Service {service_sid}")
        row = _row(record)
        row["in_use"] = await self._in_use(service_sid, row["phone_number"])
        return row

    async def list(self, service_sid: str, request: PageRequest) -> Page[dict[str, Any]]:
        """Oldest first, each with its `in_use` count."""
        sql, args = oldest_first_sql(SELECT_PAGE, [service_sid], request)
        page = oldest_first_page([_row(r) for r in await self.pg.fetch(sql, *args)], request)
        rows = page.items
        if rows:
            async with self.redis.pipeline(transaction=False) as pipe:
                for row in rows:
                    pipe.hget(keys.number(service_sid, row["phone_number"]), "in_use")
                counts = await pipe.execute()
            for row, count in zip(rows, counts, strict=True):
                row["in_use"] = int(count or 0)
        return page

    async def set_reserved(self, service_sid: str, sid: str, is_reserved: bool) -> dict[str, Any]:
        record = await self.pg.fetchrow(UPDATE_RESERVED, service_sid, sid, is_reserved)
        if record is None:
            raise NotFound(f"PhoneNumber {sid} was not found in Service {service_sid}")
        row = _row(record)
        row["in_use"] = await self.publish(row)
        await emit_event(self.redis, service_sid=service_sid, type="number.updated", data=_event_view(row))
        return row

    async def remove(self, service_sid: str, sid: str) -> None:
        row = await self.get(service_sid, sid)
        in_use = int(
            await self.scripts.call("number_remove", keys.service_prefix(service_sid), row["phone_number"])
        )
        if in_use > 0:
            raise PoolError(
                f"PhoneNumber {sid} carries {in_use} live session(s); close them before removing it from the pool",
                code=80611,
            )
        await self.pg.execute(DELETE, service_sid, row["sid"])
        await self.redis.delete(keys.proxy_owner(row["phone_number"]))
        await emit_event(self.redis, service_sid=service_sid, type="number.removed", data=_event_view(row))

    async def _in_use(self, service_sid: str, e164: str) -> int:
        return int(await self.redis.hget(keys.number(service_sid, e164), "in_use") or 0)


def _capabilities(row: dict[str, Any]) -> dict[str, Any]:
    """The row's capabilities, whether read through _row (a dict) or raw (JSON text)."""
    caps = row.get("capabilities") or {}
    return orjson.loads(caps) if isinstance(caps, str | bytes) else dict(caps)


def _event_view(row: dict[str, Any]) -> dict[str, Any]:
    """The event's data: the row (orjson writes its dates as ISO 8601) and the number it concerns."""
    return {**row, "numbers": [row["phone_number"]]}
