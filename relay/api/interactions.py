"""/v1/Services/{KS}/Sessions/{KC}/Interactions and .../Participants/{KP}/MessageInteractions.

Interactions are read from Redis while their session is there (live, or closed within
closed_retention_s); once Redis has forgotten the session, the audit log (Postgres) answers."""

from __future__ import annotations

import re
import time
from typing import Any, Final

import orjson
from aiohttp import web

from audit.queries import interactions_from_audit
from core.errors import InvalidParameter, MissingParameter, NotFound
from core.paging import PageRequest, page_of
from relay.api import render
from relay.api.common import account_sid, base_url, json, require, service_sid
from relay.api.common import session_sid as session_of
from relay.api.params import Params, check_url, iso, page_args, read_params
from relay.api.scheduled import SOON_MS, scheduled_view, send_at_ms
from relay.proactive import send_proactive
from relay.state import PG, RELAY, SCHEDULED

__all__ = ["routes", "interaction_view", "message_interaction_view"]

routes = web.RouteTableDef()

BASE = "/v1/Services/{ServiceSid}/Sessions/{SessionSid}"
# Twilio's Body limit for one message (it splits into segments itself).
MAX_BODY_CHARS = 1600
# Twilio's limit of media per message.
MAX_MEDIA = 10
# The most interactions of one session read back from the audit log or filtered in memory.
MAX_LOGGED = 10_000
# A Content API template's sid (ContentSid).
_CONTENT_SID: Final = re.compile(r"HX[0-9a-fA-F]{32}")


def _resource_url(api_url: str, account: str, kind: str, sid: str) -> str | None:
    if not sid:
        return None
    plural = "Messages" if kind == "Message" else "Calls"
    return api_url + render.path("2010-04-01", "Accounts", account, plural, f"{sid}.json")


def interaction_view(ix: dict[str, Any], ks: str, base: str, account: str, api_url: str) -> dict[str, Any]:
    """An Interaction exactly as Twilio Proxy v1 shows it (twilio_proxy_v1.json)."""

    def opt(name: str) -> str | None:
        return ix.get(name) or None

    return {
        "sid": ix["sid"],
        "session_sid": ix["session_sid"],
        "service_sid": ks,
        "account_sid": account,
        "data": ix.get("data") or None,
        "type": ix.get("type") or "unknown",
        "inbound_participant_sid": opt("inbound_participant_sid"),
        "inbound_resource_sid": opt("inbound_resource_sid"),
        "inbound_resource_status": opt("inbound_resource_status"),
        "inbound_resource_type": opt("inbound_resource_type"),
        "inbound_resource_url": _resource_url(
            api_url, account, ix.get("inbound_resource_type", ""), ix.get("inbound_resource_sid", "")
        ),
        "outbound_participant_sid": opt("outbound_participant_sid"),
        "outbound_resource_sid": opt("outbound_resource_sid"),
        "outbound_resource_status": opt("outbound_resource_status"),
        "outbound_resource_type": opt("outbound_resource_type"),
        "outbound_resource_url": _resource_url(
            api_url, account, ix.get("outbound_resource_type", ""), ix.get("outbound_resource_sid", "")
        ),
        "date_created": iso(ix.get("created_ms")),
        "date_updated": iso(ix.get("updated_ms")),
        "url": base
        + render.path("v1", "Services", ks, "Sessions", ix["session_sid"], "Interactions", ix["sid"]),
    }


def message_interaction_view(
    ix: dict[str, Any], ks: str, participant_sid: str, base: str, account: str, api_url: str
) -> dict[str, Any]:
    view = interaction_view(ix, ks, base, account, api_url)
    view["participant_sid"] = participant_sid
    view["url"] = base + render.path(
        "v1",
        "Services",
        ks,
        "Sessions",
        ix["session_sid"],
        "Participants",
        participant_sid,
        "MessageInteractions",
        ix["sid"],
    )
    return view


async def _from_audit(
    request: web.Request,
    ks: str,
    session_sid: str,
    interaction_sid: str | None = None,
    *,
    offset: int = 0,
    limit: int = 1,
) -> Any:
    """The session's Interactions rebuilt from the audit log; None when the log has none either."""
    rows = await interactions_from_audit(
        request.config_dict[PG],
        service_sid=ks,
        session_sid=session_sid,
        interaction_sid=interaction_sid,
        limit=limit,
        offset=offset,
    )
    if interaction_sid is not None:
        return rows[0] if rows else None
    return rows


def _view(request: web.Request, ks: str, ix: dict[str, Any]) -> dict[str, Any]:
    settings = request.config_dict[RELAY].settings
    return interaction_view(ix, ks, base_url(request), account_sid(request), settings.twilio_api_url)


def _message_view(request: web.Request, ks: str, kp: str, ix: dict[str, Any]) -> dict[str, Any]:
    settings = request.config_dict[RELAY].settings
    return message_interaction_view(
        ix, ks, kp, base_url(request), account_sid(request), settings.twilio_api_url
    )


async def _get(request: web.Request, ks: str) -> dict[str, Any]:
    session_sid = await session_of(request, ks)
    sid = request.match_info["Sid"]
    ix = await request.config_dict[RELAY].interactions.get(ks, session_sid, sid)
    if ix is None:
        ix = await _from_audit(request, ks, session_sid, sid)
    if ix is None:
        raise NotFound(f"Interaction {sid} was not found in Session {session_sid}")
    return dict(ix)


@routes.get(BASE + "/Interactions")
async def list_interactions(request: web.Request) -> web.Response:
    require(request, "proxy")
    ks = await service_sid(request)
    session_sid = await session_of(request, ks)
    wanted = page_args(request)
    found = await request.config_dict[RELAY].interactions.list(ks, session_sid, wanted)
    if found is None:
        every = await every_interaction(request, ks, session_sid)
        if every is None:
            raise NotFound(f"Session {session_sid} was not found in Service {ks}")
        found = page_of(every, _position, wanted, newest_first=True)
    return json(
        render.page(
            "interactions",
            [_view(request, ks, r) for r in found.items],
            base=base_url(request),
            segments=("v1", "Services", ks, "Sessions", session_sid, "Interactions"),
            request=wanted,
            found=found,
        )
    )


async def every_interaction(request: web.Request, ks: str, session_sid: str) -> list[dict[str, Any]] | None:
    """Every interaction of the session, newest first: those Redis holds (within their hot window:
    the newest state) and those only the audit log has (older, or of a session Redis has
    forgotten), paged in memory (up to MAX_LOGGED). None when neither knows the session."""
    store = request.config_dict[RELAY].interactions
    held = await store.held(ks, session_sid)
    logged = await _from_audit(request, ks, session_sid, limit=MAX_LOGGED)
    if held is None and not logged:
        return None
    rows: dict[str, dict[str, Any]] = {row["sid"]: row for row in logged}
    rows.update((row["sid"], row) for row in held or ())
    return sorted(rows.values(), key=_position, reverse=True)


def _position(ix: dict[str, Any]) -> tuple[int, str]:
    return int(ix.get("created_ms") or 0), str(ix["sid"])


@routes.get(BASE + "/Interactions/{Sid}")
async def fetch_interaction(request: web.Request) -> web.Response:
    require(request, "proxy")
    ks = await service_sid(request)
    return json(_view(request, ks, await _get(request, ks)))


@routes.delete(BASE + "/Interactions/{Sid}")
async def delete_interaction(request: web.Request) -> web.Response:
    require(request, "proxy")
    ks = await service_sid(request)
    session_sid = await session_of(request, ks)
    sid = request.match_info["Sid"]
    store = request.config_dict[RELAY].interactions
    if not await store.delete(ks, session_sid, sid):
        # past its hot window: the audit log's copy is deleted (read as deleted from now on)
        if await _from_audit(request, ks, session_sid, sid) is None:
            raise NotFound(f"Interaction {sid} was not found in Session {session_sid}")
        await store.delete(ks, session_sid, sid, logged=True)
    return web.Response(status=204)


# -------------------------------------------------------------------------------- MessageInteractions


@routes.post(BASE + "/Participants/{ParticipantSid}/MessageInteractions")
async def create_message_interaction(request: web.Request) -> web.Response:
    """Send a text to one participant from their proxy number (order confirmations, alerts)."""
    require(request, "proxy")
    ks = await service_sid(request)
    session_sid = await session_of(request, ks)
    kp = request.match_info["ParticipantSid"]
    params = await read_params(request)
    body = params.str("Body", max_len=MAX_BODY_CHARS, text=True) or ""
    media = [check_url("MediaUrl", url) for url in params.list("MediaUrl") if url]
    if len(media) > MAX_MEDIA:
        raise InvalidParameter(f"MediaUrl may be given at most {MAX_MEDIA} times")
    template = _template(params)
    if not body and not media and not template:
        raise MissingParameter("Missing required parameter Body (or MediaUrl, or ContentSid)", code=21602)
    data: dict[str, Any] = {"body": body}
    if media:
        data["media"] = media
    data.update(template)
    at = send_at_ms(params)
    if at is not None and at - int(time.time() * 1000) >= SOON_MS:  # Maskline: send it later
        row = await request.config_dict[SCHEDULED].schedule(ks, session_sid, kp, at, data)
        return json(scheduled_view(request, ks, row), status=201)
    ix = await send_proactive(request.config_dict[RELAY], ks, session_sid, kp, data)
    return json(_message_view(request, ks, kp, ix), status=201)


def _template(params: Params) -> dict[str, str]:
    """A Content API template (Maskline extension, Twilio's Messages API parameters): `ContentSid`
    (HX...) and optional `ContentVariables` (a JSON object). WhatsApp needs one outside its 24-hour
    window; Body and MediaUrl are then not sent."""
    sid = params.str("ContentSid", max_len=64)
    if not sid:
        if "ContentVariables" in params:
            raise InvalidParameter("ContentVariables needs ContentSid (the template to fill in)")
        return {}
    if not _CONTENT_SID.fullmatch(sid):
        raise InvalidParameter(f"ContentSid {sid!r} is not a Content SID (HX followed by 32 hex digits)")
    template = {"content_sid": sid}
    if raw := params.str("ContentVariables", max_len=MAX_BODY_CHARS, text=True):
        try:
            variables = orjson.loads(raw)
        except orjson.JSONDecodeError:
            variables = None
        if not isinstance(variables, dict):
            raise InvalidParameter('ContentVariables must be a JSON object, e.g. {"1": "10:00"}')
        template["content_variables"] = raw
    return template


@routes.get(BASE + "/Participants/{ParticipantSid}/MessageInteractions")
async def list_message_interactions(request: web.Request) -> web.Response:
    require(request, "proxy")
    ks = await service_sid(request)
    session_sid = await session_of(request, ks)
    kp = request.match_info["ParticipantSid"]
    await request.config_dict[RELAY].sessions.get_participant(ks, session_sid, kp)
    wanted = page_args(request)
    # A session holds few interactions per participant; filter, then page.
    hot = await request.config_dict[RELAY].interactions.list(ks, session_sid, PageRequest(size=MAX_LOGGED))
    rows = hot.items if hot is not None else await every_interaction(request, ks, session_sid) or []
    mine = [r for r in rows if r.get("origin") == "api" and r.get("outbound_participant_sid") == kp]
    found = page_of(mine, _position, wanted, newest_first=True)
    return json(
        render.page(
            "interactions",
            [_message_view(request, ks, kp, r) for r in found.items],
            base=base_url(request),
            segments=(
                "v1",
                "Services",
                ks,
                "Sessions",
                session_sid,
                "Participants",
                kp,
                "MessageInteractions",
            ),
            request=wanted,
            found=found,
        )
    )


@routes.get(BASE + "/Participants/{ParticipantSid}/MessageInteractions/{Sid}")
async def fetch_message_interaction(request: web.Request) -> web.Response:
    require(request, "proxy")
    ks = await service_sid(request)
    kp = request.match_info["ParticipantSid"]
    ix = await _get(request, ks)
    if ix.get("outbound_participant_sid") != kp or ix.get("origin") != "api":
        raise NotFound(f"MessageInteraction {ix['sid']} was not found for Participant {kp}")
    return json(_message_view(request, ks, kp, ix))
