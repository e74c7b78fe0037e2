"""Scheduled messages (Maskline extension): `SendAt` on MessageInteractions schedules the text
(sessions/scheduled.py), and /v1/Services/{KS}/Sessions/{KC}/ScheduledMessages lists them, fetches
one and cancels it (DELETE). relay/scheduler.py sends them when they are due."""

from __future__ import annotations

import re
import time
from typing import Any, Final

import orjson
from aiohttp import web

from core.errors import InvalidParameter
from relay.api import render
from relay.api.common import account_sid, base_url, json, require, service_sid
from relay.api.common import session_sid as session_of
from relay.api.params import Params, iso
from relay.state import SCHEDULED

__all__ = ["routes", "send_at_ms", "scheduled_view", "SOON_MS"]

routes = web.RouteTableDef()
BASE: Final = "/v1/Services/{ServiceSid}/Sessions/{SessionSid}/ScheduledMessages"
# A SendAt sooner than this is sent at once, as without SendAt.
SOON_MS: Final = 1000
# How far ahead a message may be scheduled (a year).
MAX_AHEAD_MS: Final = 366 * 86_400_000
_EPOCH_SECONDS = re.compile(r"^\d{9,11}(\.\d+)?$")


def send_at_ms(params: Params) -> int | None:
    """`SendAt` as epoch ms: ISO 8601, or epoch seconds. None when absent."""
    raw = params.str("SendAt", max_len=64)
    if not raw:
        return None
    at = int(float(raw) * 1000) if _EPOCH_SECONDS.fullmatch(raw.strip()) else params.datetime_ms("SendAt")
    assert at is not None
    if at - int(time.time() * 1000) > MAX_AHEAD_MS:
        raise InvalidParameter("SendAt must be within a year from now")
    return at


def scheduled_view(request: web.Request, ks: str, row: dict[str, Any]) -> dict[str, Any]:
    data = orjson.loads(row.get("data") or "{}")
    url = base_url(request) + render.path(
        "v1", "Services", ks, "Sessions", row["session_sid"], "ScheduledMessages", row["sid"]
    )
    return {
        "sid": row["sid"],
        "account_sid": account_sid(request),
        "service_sid": ks,
        "session_sid": row["session_sid"],
        "participant_sid": row["participant_sid"],
        "body": data.get("body") or None,
        "media_url": data.get("media") or [],
        "content_sid": data.get("content_sid") or None,
        "content_variables": data.get("content_variables") or None,
        "send_at": iso(row.get("send_at_ms")),
        "status": row.get("status"),
        "reason": row.get("reason") or None,
        "interaction_sid": row.get("interaction_sid") or None,
        "date_created": iso(row.get("created_ms")),
        "date_updated": iso(row.get("updated_ms")),
        "url": url,
    }


@routes.get(BASE)
async def list_scheduled(request: web.Request) -> web.Response:
    require(request, "proxy")
    ks = await service_sid(request)
    kc = await session_of(request, ks)
    rows = await request.config_dict[SCHEDULED].list(ks, kc)
    return json(
        {
            "scheduled_messages": [scheduled_view(request, ks, r) for r in rows],
            "meta": {"key": "scheduled_messages"},
        }
    )


@routes.get(BASE + "/{Sid}")
async def fetch_scheduled(request: web.Request) -> web.Response:
    require(request, "proxy")
    ks = await service_sid(request)
    kc = await session_of(request, ks)
    return json(
        scheduled_view(
            request, ks, await request.config_dict[SCHEDULED].get(ks, kc, request.match_info["Sid"])
        )
    )


@routes.delete(BASE + "/{Sid}")
async def cancel_scheduled(request: web.Request) -> web.Response:
    require(request, "proxy")
    ks = await service_sid(request)
    kc = await session_of(request, ks)
    await request.config_dict[SCHEDULED].cancel(ks, kc, request.match_info["Sid"])
    return web.Response(status=204)
