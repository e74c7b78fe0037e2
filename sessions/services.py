"""Services: rows in Postgres (the source of truth), published to Redis for the hot path."""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any, Final
from urllib.parse import urlsplit

import asyncpg
import orjson
import redis.asyncio as aioredis

from core import keys
from core.errors import Conflict, InvalidParameter, NotFound
from core.events import emit_event
from core.ids import new_sid
from core.paging import Page, PageRequest, oldest_first_page, oldest_first_sql
from core.settings import Settings
from sessions.models import (
    LIMIT_OPTIONS,
    MAX_PARTICIPANTS,
    RELAY_SETTING_FIELDS,
    GeoMatchLevel,
    NumberSelection,
)

__all__ = ["ServiceStore", "DEFAULT_COOL_OFF_S", "EDITABLE"]

# A late caller redialling from their call log within this window gets "conversation ended",
# never a stranger. Marketplaces keep contact open ~24 h after a trip; 4 h of quiet after close.
DEFAULT_COOL_OFF_S: Final = 4 * 3600

# Column -> default for the fields a caller may set.
EDITABLE: Final[dict[str, Any]] = {
    "unique_name": None,
    "default_ttl_s": 0,
    "geo_match_level": GeoMatchLevel.COUNTRY.value,
    "number_selection_behavior": NumberSelection.PREFER_STICKY.value,
    "callback_url": None,
    "intercept_callback_url": None,
    "out_of_session_callback_url": None,
    "chat_instance_sid": None,
    "cool_off_s": DEFAULT_COOL_OFF_S,
    "allowed_countries": None,
    "options": {},
}

INSERT: Final = """
INSERT INTO services (sid, account_sid, unique_name, default_ttl_s, geo_match_level,
                      number_selection_behavior, callback_url, intercept_callback_url,
                      out_of_session_callback_url, chat_instance_sid, cool_off_s, allowed_countries, options)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
RETURNING *
"""
SELECT_ONE: Final = "SELECT * FROM services WHERE sid = $1"
SELECT_BY_NAME: Final = "SELECT sid FROM services WHERE unique_name = $1"
_SERVICE_SID: Final = re.compile(r"KS[0-9a-f]{32}")
# Completed by core.paging.oldest_first_sql; $1: the SIDs a scoped API key may see (NULL: all).
SELECT_PAGE: Final = "SELECT * FROM services WHERE ($1::text[] IS NULL OR sid = ANY($1))"
SELECT_ALL: Final = "SELECT * FROM services"
DELETE: Final = "DELETE FROM services WHERE sid = $1 RETURNING sid"


# Column / option -> the API parameter a caller names it by (messages say what to fix).
_PARAM_NAMES: Final = {
    "unique_name": "UniqueName",
    "callback_url": "CallbackUrl",
    "intercept_callback_url": "InterceptCallbackUrl",
    "out_of_session_callback_url": "OutOfSessionCallbackUrl",
    "chat_instance_sid": "ChatInstanceSid",
    "allowed_countries": "AllowedCountries",
}
# What no stored text may hold: NUL (Postgres refuses it in text and jsonb) and the other control
# characters (tab, newline and carriage return only in free-text options), lone surrogates
# (what undecodable bytes become; Postgres and UTF-8 refuse them).
_NEVER: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_NOT_IN_A_LINE: Final = re.compile(r"[\t\n\r]")
_COUNTRY: Final = re.compile(r"[A-Za-z]{2}")


def _param(field: str) -> str:
    return _PARAM_NAMES.get(field) or "".join(part.capitalize() for part in field.split("_"))


def _check_text(field: str, value: object, *, multiline: bool = False) -> None:
    if not isinstance(value, str):
        return
    if _NEVER.search(value) or (not multiline and _NOT_IN_A_LINE.search(value)):
        raise InvalidParameter(f"{_param(field)} must be UTF-8 text without control characters")


def _check(fields: dict[str, Any]) -> None:
    """Values a caller sent, checked before anything is written; messages say what to fix."""
    for field in _PARAM_NAMES:
        value = fields.get(field)
        for item in value if isinstance(value, list) else [value]:
            _check_text(field, item)
    options = fields.get("options")
    if options is not None:
        if not isinstance(options, dict):
            raise InvalidParameter("options must be an object")
        for key, value in options.items():
            # Options are free text a participant hears or reads (messages, whisper, consent).
            _check_text(key, value, multiline=True)
    if "unique_name" in fields:
        name = fields["unique_name"]
        if not name or len(name) > 191:
            raise InvalidParameter("UniqueName must be 1 to 191 characters")
    if "default_ttl_s" in fields and not 0 <= fields["default_ttl_s"] <= 31_536_000:
        raise InvalidParameter("DefaultTtl must be between 0 (no TTL) and 31536000 seconds")
    if "cool_off_s" in fields and not 0 <= fields["cool_off_s"] <= 30 * 86400:
        raise InvalidParameter("CoolOff must be between 0 and 2592000 seconds")
    if "geo_match_level" in fields and fields["geo_match_level"] not in set(GeoMatchLevel):
        raise InvalidParameter("GeoMatchLevel must be one of: " + ", ".join(GeoMatchLevel))
    if "number_selection_behavior" in fields and fields["number_selection_behavior"] not in set(
        NumberSelection
    ):
        raise InvalidParameter("NumberSelectionBehavior must be one of: " + ", ".join(NumberSelection))
    for url_field in ("callback_url", "intercept_callback_url", "out_of_session_callback_url"):
        url = fields.get(url_field)
        if url and not _http_url(url):
            raise InvalidParameter(
                f"{_param(url_field)} must be an absolute http(s) URL such as https://example.com/hook"
            )
    countries = fields.get("allowed_countries")
    if countries is not None and any(not _COUNTRY.fullmatch(c) for c in countries):
        raise InvalidParameter(
            "AllowedCountries must be ISO 3166 alpha-2 codes, comma separated (e.g. US,CA)"
        )


def _http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return (
            parts.scheme.lower() in ("http", "https")
            and bool(parts.hostname)
            and not any(c.isspace() for c in url)
        )
    except ValueError:
        return False


SELECT_BLOCKED: Final = "SELECT identifier FROM blocked_identifiers WHERE service_sid = $1"


def service_hash(row: dict[str, Any], *, closed_retention_s: int) -> dict[str | bytes, str | int]:
    """The Service's `svc` hash: what the scripts and the hot path read (RELAY_SETTING_FIELDS by
    name, the allocation settings, the retention of closed sessions)."""
    countries = row.get("allowed_countries")
    # The relay settings are columns of the same names; `options` (a dict) is stored as JSON.
    relay: dict[str | bytes, str | int] = {
        name: orjson.dumps(row.get(name) or {}).decode() if name == "options" else row.get(name) or ""
        for name in RELAY_SETTING_FIELDS
    }
    return {
        "sid": row["sid"],
        "default_ttl_s": row["default_ttl_s"],
        "geo_match_level": row["geo_match_level"],
        "number_selection_behavior": row["number_selection_behavior"],
        "cool_off_s": row["cool_off_s"],
        "closed_retention_s": closed_retention_s,
        "allowed_countries": "," + ",".join(c.upper() for c in countries) + "," if countries else "",
        "limits": _limits(row.get("options") or {}),
        # How late a scheduled message may still go out (ScheduleLateness; claim_due.lua).
        "lateness_s": _lateness(row.get("options") or {}),
        # PIN mode's shared number (FallbackNumber; _pool.lua's choose_or_pin, route_inbound.lua).
        "fallback_number": (row.get("options") or {}).get("fallback_number") or "",
        # Participants a session may have (MaxParticipants; Twilio's 2 unless set).
        "max_participants": min(
            MAX_PARTICIPANTS, max(2, int((row.get("options") or {}).get("max_participants") or 2))
        ),
        **relay,
    }


def _lateness(options: dict[str, Any]) -> int:
    value = options.get("schedule_lateness_s")
    return 900 if value is None else max(0, int(value))


def _limits(options: dict[str, Any]) -> str:
    """`limits` for route_inbound.lua: the four LIMIT_OPTIONS, comma-separated; "" when none is set."""
    values = [max(0, int(options.get(name) or 0)) for name in LIMIT_OPTIONS]
    return ",".join(map(str, values)) if any(values) else ""


def _row(record: asyncpg.Record) -> dict[str, Any]:
    row = dict(record)
    if isinstance(row.get("options"), str):
        row["options"] = orjson.loads(row["options"])
    return row


class ServiceStore:
    def __init__(
        self,
        pg: asyncpg.Pool,
        redis: aioredis.Redis,
        *,
        account_sid: str,
        closed_retention_s: int = Settings.closed_retention_s,
    ) -> None:
        self.pg = pg
        self.redis = redis
        self.account_sid = account_sid
        self.closed_retention_s = closed_retention_s

    async def create(self, fields: dict[str, Any]) -> dict[str, Any]:
        if not fields.get("unique_name"):
            raise InvalidParameter("UniqueName is required")
        _check(fields)
        values = {**EDITABLE, **fields}
        sid = new_sid("KS")
        try:
            record = await self.pg.fetchrow(
                INSERT,
                sid,
                self.account_sid,
                values["unique_name"],
                values["default_ttl_s"],
                values["geo_match_level"],
                values["number_selection_behavior"],
                values["callback_url"],
                values["intercept_callback_url"],
                values["out_of_session_callback_url"],
                values["chat_instance_sid"],
                values["cool_off_s"],
                values["allowed_countries"],
                orjson.dumps(values["options"]).decode(),
            )
        except asyncpg.UniqueViolationError:
            raise Conflict(
                f"a Service with UniqueName {values['unique_name']} already exists", code=80602
            ) from None
        row = _row(record)
        await self.publish(row)
        await emit_event(self.redis, service_sid=sid, type="service.created", data=row)
        return row

    async def resolve(self, sid_or_name: str) -> str:
        """The SID of the Service named in a path: its SID, or its UniqueName (as at Twilio).
        NotFound (20404) when no Service has that name."""
        if _SERVICE_SID.fullmatch(sid_or_name):
            return sid_or_name
        sid: str | None = await self.pg.fetchval(SELECT_BY_NAME, sid_or_name)
        if sid is None:
            raise NotFound(f"Service {sid_or_name} was not found (no Service has this SID or UniqueName)")
        return sid

    async def get(self, sid: str) -> dict[str, Any]:
        record = await self.pg.fetchrow(SELECT_ONE, sid)
        if record is None:
            raise NotFound(f"Service {sid} was not found")
        return _row(record)

    async def list(
        self, request: PageRequest, *, only: Collection[str] | None = None
    ) -> Page[dict[str, Any]]:
        """Oldest first; `only`: just these SIDs (an API key scoped to some Services)."""
        sql, args = oldest_first_sql(SELECT_PAGE, [None if only is None else list(only)], request)
        return oldest_first_page([_row(r) for r in await self.pg.fetch(sql, *args)], request)

    async def update(self, sid: str, fields: dict[str, Any]) -> dict[str, Any]:
        _check(fields)
        if not fields:
            return await self.get(sid)
        columns = [c for c in fields if c in EDITABLE]
        assignments = ", ".join(f"{c} = ${i + 2}" for i, c in enumerate(columns))
        values = [orjson.dumps(fields[c]).decode() if c == "options" else fields[c] for c in columns]
        try:
            record = await self.pg.fetchrow(
                f"UPDATE services SET {assignments}, date_updated = now() WHERE sid = $1 RETURNING *",
                sid,
                *values,
            )
        except asyncpg.UniqueViolationError:
            raise Conflict(
                f"a Service with UniqueName {fields.get('unique_name')} already exists", code=80602
            ) from None
        if record is None:
            raise NotFound(f"Service {sid} was not found")
        row = _row(record)
        await self.publish(row)
        await emit_event(self.redis, service_sid=sid, type="service.updated", data=row)
        return row

    async def delete(self, sid: str) -> None:
        """Removes the Service, its numbers and every Redis key of it (sessions included)."""
        numbers = await self.pg.fetch("SELECT phone_number FROM phone_numbers WHERE service_sid = $1", sid)
        if await self.pg.fetchval(DELETE, sid) is None:
            raise NotFound(f"Service {sid} was not found")
        await emit_event(self.redis, service_sid=sid, type="service.deleted", data={"sid": sid})
        prefix = keys.service_prefix(sid)
        events_key = keys.events(sid)
        batch: list[str] = []
        async for key in self.redis.scan_iter(
            match=prefix.replace("{", "\\{").replace("}", "\\}") + "*", count=1000
        ):
            if key != events_key:  # the audit writer still has to drain it
                batch.append(key)
            if len(batch) >= 500:
                await self.redis.unlink(*batch)
                batch.clear()
        if batch:
            await self.redis.unlink(*batch)
        if numbers:
            await self.redis.delete(*(keys.proxy_owner(r["phone_number"]) for r in numbers))
        await self.redis.srem(keys.SERVICES, sid)

    async def publish(self, row: dict[str, Any]) -> None:
        """Copy what the hot path needs into Redis (idempotent; run for every Service at start-up)."""
        mapping = service_hash(row, closed_retention_s=self.closed_retention_s)
        blocked = [r["identifier"] for r in await self.pg.fetch(SELECT_BLOCKED, row["sid"])]
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(keys.service_settings(row["sid"]), mapping=mapping)  # type: ignore[arg-type]
            if blocked:  # the block list's copy (sessions/blocklist.py; never emptied here: no gap)
                pipe.sadd(keys.blocked(row["sid"]), *blocked)
            pipe.sadd(keys.SERVICES, row["sid"])
            # The audit writer drains every registered stream, including the one the scripts append to.
            pipe.sadd(keys.EVENT_STREAMS, keys.events(row["sid"]))
            await pipe.execute()

    async def publish_all(self) -> int:
        rows = [_row(r) for r in await self.pg.fetch(SELECT_ALL)]
        for row in rows:
            await self.publish(row)
        return len(rows)
