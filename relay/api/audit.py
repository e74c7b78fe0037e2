"""/v1/Audit/Events: the compliance read API (keys with the "audit" permission only).

- `GET /v1/Audit/Events` one page of events, (ts, id) order, keyset paging through `PageToken`;
- `GET /v1/Audit/Events.csv` / `.jsonl` (or `?Format=csv|jsonl`) the whole result, streamed from a
  server-side cursor (audit.queries.export_events), so memory stays flat whatever its size.

Filters: Session, Number, ProxyNumber, Service (repeatable), Since, Until (ISO 8601), Type
(repeatable). A key scoped to some Services only ever reads those Services' events: naming another
Service is refused (20403), and a Session with no event in its scope reads as absent (20404, the
same answer whether the session belongs to another tenant or to nobody, so scope is not probed).

Every query and export is itself recorded (`audit.queried` / `audit.exported`: key, filters, time)
on the Service's stream when it reads exactly one Service, else on the global stream."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from urllib.parse import quote, urlencode

from aiohttp import web

from audit.chain import ts_from_ms
from audit.queries import EXPORT_FORMATS, decode_cursor, export_events, query_events
from core.errors import Forbidden, InvalidParameter, NotFound
from core.events import emit_event
from relay.api.common import base_url, json, require
from relay.api.params import Params, query_params
from relay.state import PG, REDIS, VIA, ApiKey

__all__ = ["routes"]

log = logging.getLogger("maskline.api.audit")

routes = web.RouteTableDef()

PATH: Final = "/v1/Audit/Events"
DEFAULT_PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 1000
MAX_LIST_VALUES: Final = 50
CONTENT_TYPES: Final = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}

_SERVICE_SID = re.compile(r"^KS[0-9a-fA-F]{32}$")
_SESSION_SID = re.compile(r"^KC[0-9a-fA-F]{32}$")
# E.164, or a channel identifier built on one (design.md: `channel:+1...`).
_NUMBER = re.compile(r"^(?:[a-z]+:)?\+[1-9][0-9]{6,14}$")
_EVENT_TYPE = re.compile(r"^[a-z]+\.[a-z_]+$")

# Does the session have any event the key may read? (ignores the other filters on purpose)
SESSION_IN_SCOPE: Final = """
SELECT EXISTS (SELECT 1 FROM audit_events WHERE session_sid = $1 AND ($2::text[] IS NULL OR service_sid = ANY($2::text[])))
"""


@dataclass(frozen=True)
class _Query:
    service_sids: set[str] | None  # None: every Service and events of no Service
    session_sid: str | None
    number: str | None
    proxy_number: str | None
    since: datetime | None
    until: datetime | None
    types: list[str]

    def filters(self) -> dict[str, Any]:
        return {
            "service_sids": self.service_sids,
            "session_sid": self.session_sid,
            "number": self.number,
            "proxy_number": self.proxy_number,
            "since": self.since,
            "until": self.until,
            "types": self.types or None,
        }

    def on_record(self) -> dict[str, Any]:
        """The filters as the audit.queried / audit.exported event records them."""
        out: dict[str, Any] = {}
        for name, value in self.filters().items():
            if value is None:
                continue
            if isinstance(value, datetime):
                value = value.isoformat().replace("+00:00", "Z")
            elif isinstance(value, set | list):
                value = sorted(value)
            out[name] = value
        return out

    @property
    def record_service(self) -> str | None:
        """The stream that records the read: the one Service read, else the global stream."""
        if self.service_sids is not None and len(self.service_sids) == 1:
            return next(iter(self.service_sids))
        return None


def _matching(params: Params, name: str, pattern: re.Pattern[str], example: str) -> str | None:
    value = params.str(name, max_len=64)
    if not value:
        return None
    if not pattern.fullmatch(value):
        raise InvalidParameter(f"{name} must look like {example}, got {value[:40]!r}")
    return value


def _many(params: Params, name: str, pattern: re.Pattern[str], example: str) -> list[str]:
    values = [v for v in params.list(name, max_len=64) if v]
    if len(values) > MAX_LIST_VALUES:
        raise InvalidParameter(f"{name} may be given at most {MAX_LIST_VALUES} times")
    for v in values:
        if not pattern.fullmatch(v):
            raise InvalidParameter(f"{name} must look like {example}, got {v[:40]!r}")
    return values


def _time(params: Params, name: str) -> datetime | None:
    ms = params.datetime_ms(name)
    return None if ms is None else ts_from_ms(ms)


async def parse_query(request: web.Request, key: ApiKey, params: Params) -> _Query:
    services = _many(params, "Service", _SERVICE_SID, "KS followed by 32 hex digits")
    session_sid = _matching(params, "Session", _SESSION_SID, "KC followed by 32 hex digits")
    number = _matching(params, "Number", _NUMBER, "an E.164 phone number such as +14155550100")
    proxy_number = _matching(params, "ProxyNumber", _NUMBER, "an E.164 phone number such as +14155550100")
    types = _many(params, "Type", _EVENT_TYPE, "session.created or interaction.created")
    since, until = _time(params, "Since"), _time(params, "Until")
    if since is not None and until is not None and since >= until:
        raise InvalidParameter("Since must be earlier than Until")

    scope: set[str] | None
    if services:
        outside = sorted(s for s in services if not key.may_see(s))
        if outside:
            raise Forbidden(f"API key {key.sid} may not read the audit log of Service {outside[0]}")
        scope = set(services)
    else:
        scope = None if key.service_sids is None else set(key.service_sids)

    if session_sid is not None:
        in_scope = await request.config_dict[PG].fetchval(
            SESSION_IN_SCOPE, session_sid, None if scope is None else sorted(scope)
        )
        if not in_scope:
            raise NotFound(f"Session {session_sid} was not found in the audit log")
    return _Query(scope, session_sid, number, proxy_number, since, until, types)


async def record_read(request: web.Request, key: ApiKey, query: _Query, type: str, **extra: Any) -> None:
    numbers = [n for n in (query.number, query.proxy_number) if n]
    await emit_event(
        request.config_dict[REDIS],
        service_sid=query.record_service,
        type=type,
        # `numbers`: the writer tokenises them like any number, so an erasure covers these too.
        data={
            "actor": key.sid,
            "actor_name": key.friendly_name,
            "via": request.get(VIA, "api"),  # or "console"
            "filters": query.on_record(),
            "numbers": numbers,
            **extra,
        },
    )


def _page_url(request: web.Request, **changes: Any) -> str:
    # request.query is safe to echo here: query_params() has already refused a query that is not
    # valid UTF-8, so nothing in it was replaced.
    kept = [(k, v) for k, v in request.query.items() if k.lower() not in ("pagetoken", "page", "pagesize")]
    return f"{base_url(request)}{quote(request.path)}?{urlencode(kept + list(changes.items()))}"


@routes.get(PATH)
async def list_events(request: web.Request) -> web.StreamResponse:
    key = require(request, "audit")
    params = query_params(request)
    fmt = params.str("Format", max_len=16)
    if fmt:
        if fmt.lower() not in EXPORT_FORMATS:
            raise InvalidParameter(f"Format must be one of {', '.join(EXPORT_FORMATS)}; got {fmt!r}")
        return await export_response(request, fmt.lower())
    size = params.int("PageSize", minimum=1, maximum=MAX_PAGE_SIZE) or DEFAULT_PAGE_SIZE
    page_no = params.int("Page", minimum=0, maximum=10_000_000) or 0
    token = params.str("PageToken", max_len=512) or None
    if token is not None:
        try:
            decode_cursor(token)
        except InvalidParameter:
            raise InvalidParameter("PageToken is not one this API returned; use meta.next_page_url") from None
    query = await parse_query(request, key, params)
    events, next_token = await query_events(
        request.config_dict[PG], **query.filters(), limit=size, cursor=token
    )
    await record_read(request, key, query, "audit.queried", page_size=size, returned=len(events))
    first = _page_url(request, PageSize=size)
    return json(
        {
            "events": [e.as_dict() for e in events],
            "meta": {
                "page": page_no,
                "page_size": size,
                "first_page_url": first,
                "previous_page_url": None,  # keyset paging goes forward only
                "url": _page_url(
                    request, PageSize=size, Page=page_no, **({"PageToken": token} if token else {})
                ),
                "next_page_url": (
                    _page_url(request, PageSize=size, Page=page_no + 1, PageToken=next_token)
                    if next_token
                    else None
                ),
                "key": "events",
            },
        }
    )


@routes.get(PATH + ".csv")
async def export_csv(request: web.Request) -> web.StreamResponse:
    return await export_response(request, "csv")


@routes.get(PATH + ".jsonl")
async def export_jsonl(request: web.Request) -> web.StreamResponse:
    return await export_response(request, "jsonl")


async def export_response(request: web.Request, fmt: str) -> web.StreamResponse:
    key = require(request, "audit")
    query = await parse_query(request, key, query_params(request))
    # Recorded before the first byte: an export cut off half-way still was an export.
    await record_read(request, key, query, "audit.exported", format=fmt)
    chunks = export_events(request.config_dict[PG], **query.filters(), fmt=fmt)  # type: ignore[arg-type]
    # Pull the first chunk before answering: a failure there still becomes a JSON error.
    first = await anext(chunks, b"")
    response = web.StreamResponse(
        headers={
            "Content-Type": CONTENT_TYPES[fmt],
            "Content-Disposition": f'attachment; filename="audit-events.{fmt}"',
        }
    )
    response.enable_chunked_encoding()
    await response.prepare(request)
    try:
        await response.write(first)
        async for chunk in chunks:
            await response.write(chunk)
    except Exception:
        # Headers are gone: the only honest signal left is a truncated (unterminated) body.
        log.exception("audit export failed half-way for key %s", key.sid)
        await chunks.aclose()
        raise
    await response.write_eof()
    return response
