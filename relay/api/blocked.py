"""/v1/Services/{ServiceSid}/Blocked (Maskline extension): the Service's block list. A blocked
identifier can neither join a session (89003) nor reach anyone through a proxy number (its texts
and calls are out of session, audited as blocked_sender). `maskline block` does the same."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from core.errors import MissingParameter
from relay.api import render
from relay.api.common import account_sid, base_url, json, require, service_sid
from relay.api.params import page_args, read_params
from relay.state import BLOCKED, SERVICES

__all__ = ["routes"]

routes = web.RouteTableDef()
LIST = "/v1/Services/{ServiceSid}/Blocked"


def _entry(row: dict[str, Any], base: str, account: str) -> dict[str, Any]:
    return {
        "sid": row["sid"],
        "service_sid": row["service_sid"],
        "account_sid": account,
        "identifier": row["identifier"],
        "date_created": render.ts(row["date_created"]),
        "url": base + render.path("v1", "Services", row["service_sid"], "Blocked", row["sid"]),
    }


@routes.post(LIST)
async def block(request: web.Request) -> web.Response:
    require(request, "proxy")
    sid = await service_sid(request)
    params = await read_params(request)
    identifier = params.str("Identifier", max_len=64)
    if not identifier:
        raise MissingParameter("Missing required parameter Identifier (E.164, e.g. +14155550100)")
    await request.config_dict[SERVICES].get(sid)
    row = await request.config_dict[BLOCKED].add(sid, identifier)
    return json(_entry(row, base_url(request), account_sid(request)), status=201)


@routes.get(LIST)
async def list_blocked(request: web.Request) -> web.Response:
    require(request, "proxy")
    sid = await service_sid(request)
    await request.config_dict[SERVICES].get(sid)
    wanted = page_args(request)
    found = await request.config_dict[BLOCKED].list(sid, wanted)
    return json(
        render.page(
            "blocked",
            [_entry(r, base_url(request), account_sid(request)) for r in found.items],
            base=base_url(request),
            segments=("v1", "Services", sid, "Blocked"),
            request=wanted,
            found=found,
        )
    )


@routes.get(LIST + "/{Sid}")
async def fetch_blocked(request: web.Request) -> web.Response:
    require(request, "proxy")
    row = await request.config_dict[BLOCKED].get(await service_sid(request), request.match_info["Sid"])
    return json(_entry(row, base_url(request), account_sid(request)))


@routes.delete(LIST + "/{Sid}")
async def unblock(request: web.Request) -> web.Response:
    require(request, "proxy")
    await request.config_dict[BLOCKED].remove(await service_sid(request), request.match_info["Sid"])
    return web.Response(status=204)
