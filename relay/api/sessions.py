"""/v1/Services/{ServiceSid}/Sessions and their Participants."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from core.errors import InvalidParameter, MissingParameter
from core.paging import page_of
from relay.api import render
from relay.api.common import account_sid, base_url, json, require, service_sid, session_sid
from relay.api.params import Params, check_text, page_args, read_params
from relay.state import SESSIONS
from sessions.models import Mode, ParticipantRequest, Status

__all__ = ["routes"]

routes = web.RouteTableDef()


MAX_UNIQUE_NAME = 191
MAX_FRIENDLY_NAME = 255
MAX_IDENTIFIER = 64
MAX_PARTICIPANTS_JSON = 4096
_PARTICIPANT_EXAMPLE = 'a JSON object such as {"Identifier": "+14155550100"}'


def _participant_field(fields: dict[str, Any], name: str, max_len: int) -> str:
    """A member of a Participants object (PascalCase or snake_case), a string if present."""
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")
    value = fields.get(name.lower())
    if value is None:
        value = fields.get(snake)
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        raise InvalidParameter(f"Participants {name} must be a string, in {_PARTICIPANT_EXAMPLE}")
    return check_text(f"Participants {name}", value, max_len=max_len)


def _participant_from_json(raw: str) -> ParticipantRequest:
    """One `Participants` entry: twilio-python sends each as a JSON object string."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidParameter(f"each Participants value must be {_PARTICIPANT_EXAMPLE}") from None
    if not isinstance(obj, dict):
        raise InvalidParameter(f"each Participants value must be {_PARTICIPANT_EXAMPLE}")
    fields = {k.lower(): v for k, v in obj.items()}
    identifier = _participant_field(fields, "Identifier", MAX_IDENTIFIER)
    if not identifier:
        raise MissingParameter("each Participant needs an Identifier (E.164 phone number)")
    return ParticipantRequest(
        identifier=identifier,
        friendly_name=_participant_field(fields, "FriendlyName", MAX_FRIENDLY_NAME),
        proxy_identifier=_participant_field(fields, "ProxyIdentifier", MAX_IDENTIFIER),
        proxy_identifier_sid=_participant_field(fields, "ProxyIdentifierSid", MAX_IDENTIFIER),
    )


def _session(request: web.Request, sid: str, view: dict[str, Any]) -> dict[str, Any]:
    return render.session(view, sid, base_url(request), account_sid(request))


def _participant(request: web.Request, sid: str, p: dict[str, Any]) -> dict[str, Any]:
    return render.participant(p, sid, base_url(request), account_sid(request))


def _expiry_ms(params: Params, request: web.Request) -> int | None:
    expiry = params.datetime_ms("DateExpiry")
    if expiry is not None and expiry <= request.config_dict[SESSIONS].clock.now_ms():
        raise InvalidParameter("DateExpiry must be in the future")
    return expiry


@routes.post("/v1/Services/{ServiceSid}/Sessions")
async def create_session(request: web.Request) -> web.Response:
    require(request, "proxy")
    sid = await service_sid(request)
    params = await read_params(request)
    status = params.enum("Status", Status) or Status.OPEN.value
    view = await request.config_dict[SESSIONS].create_session(
        sid,
        unique_name=params.str("UniqueName", max_len=MAX_UNIQUE_NAME) or "",
        mode=Mode(params.enum("Mode", Mode) or Mode.VOICE_AND_MESSAGE.value),
        status=Status(status),
        ttl_s=params.int("Ttl", maximum=31_536_000),
        date_expiry_ms=_expiry_ms(params, request),
        participants=[
            _participant_from_json(raw)
            for raw in params.list("Participants", max_len=MAX_PARTICIPANTS_JSON, text=True)
        ],
    )
    return json(_session(request, sid, view), status=201)


@routes.get("/v1/Services/{ServiceSid}/Sessions")
async def list_sessions(request: web.Request) -> web.Response:
    require(request, "proxy")
    sid = await service_sid(request)
    wanted = page_args(request)
    found = await request.config_dict[SESSIONS].list_sessions(sid, wanted)
    return json(
        render.page(
            "sessions",
            [_session(request, sid, v) for v in found.items],
            base=base_url(request),
            segments=("v1", "Services", sid, "Sessions"),
            request=wanted,
            found=found,
        )
    )


@routes.get("/v1/Services/{ServiceSid}/Sessions/{Sid}")
async def fetch_session(request: web.Request) -> web.Response:
    require(request, "proxy")
    sid = await service_sid(request)
    view = await request.config_dict[SESSIONS].get_session(sid, await session_sid(request, sid, "Sid"))
    return json(_session(request, sid, view))


@routes.post("/v1/Services/{ServiceSid}/Sessions/{Sid}")
async def update_session(request: web.Request) -> web.Response:
    require(request, "proxy")
    sid = await service_sid(request)
    params = await read_params(request)
    status = params.enum("Status", Status)
    view = await request.config_dict[SESSIONS].update_session(
        sid,
        await session_sid(request, sid, "Sid"),
        ttl_s=params.int("Ttl", maximum=31_536_000),
        date_expiry_ms=_expiry_ms(params, request),
        status=Status(status) if status else None,
    )
    return json(_session(request, sid, view))


@routes.delete("/v1/Services/{ServiceSid}/Sessions/{Sid}")
async def delete_session(request: web.Request) -> web.Response:
    require(request, "proxy")
    ks = await service_sid(request)
    await request.config_dict[SESSIONS].delete_session(ks, await session_sid(request, ks, "Sid"))
    return web.Response(status=204)


@routes.post("/v1/Services/{ServiceSid}/Sessions/{SessionSid}/Participants")
async def add_participant(request: web.Request) -> web.Response:
    require(request, "proxy")
    sid = await service_sid(request)
    params = await read_params(request)
    req = ParticipantRequest(
        identifier=params.str("Identifier", required=True, max_len=MAX_IDENTIFIER) or "",
        friendly_name=params.str("FriendlyName", max_len=MAX_FRIENDLY_NAME) or "",
        proxy_identifier=params.str("ProxyIdentifier", max_len=MAX_IDENTIFIER) or "",
        proxy_identifier_sid=params.str("ProxyIdentifierSid", max_len=MAX_IDENTIFIER) or "",
    )
    p = await request.config_dict[SESSIONS].add_participant(sid, await session_sid(request, sid), req)
    return json(_participant(request, sid, p), status=201)


@routes.get("/v1/Services/{ServiceSid}/Sessions/{SessionSid}/Participants")
async def list_participants(request: web.Request) -> web.Response:
    require(request, "proxy")
    sid = await service_sid(request)
    session = await session_sid(request, sid)
    wanted = page_args(request)
    everyone = sorted(await request.config_dict[SESSIONS].list_participants(sid, session), key=_position)
    found = page_of(everyone, _position, wanted, newest_first=False)
    return json(
        render.page(
            "participants",
            [_participant(request, sid, p) for p in found.items],
            base=base_url(request),
            segments=("v1", "Services", sid, "Sessions", session, "Participants"),
            request=wanted,
            found=found,
        )
    )


def _position(p: dict[str, Any]) -> tuple[int, str]:
    return int(p.get("created_ms") or 0), str(p["sid"])


@routes.get("/v1/Services/{ServiceSid}/Sessions/{SessionSid}/Participants/{Sid}")
async def fetch_participant(request: web.Request) -> web.Response:
    require(request, "proxy")
    sid = await service_sid(request)
    p = await request.config_dict[SESSIONS].get_participant(
        sid, await session_sid(request, sid), request.match_info["Sid"]
    )
    return json(_participant(request, sid, p))


@routes.delete("/v1/Services/{ServiceSid}/Sessions/{SessionSid}/Participants/{Sid}")
async def remove_participant(request: web.Request) -> web.Response:
    require(request, "proxy")
    sid = await service_sid(request)
    await request.config_dict[SESSIONS].remove_participant(
        sid, await session_sid(request, sid), request.match_info["Sid"]
    )
    return web.Response(status=204)
