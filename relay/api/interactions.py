"""/v1/Services/{KS}/Sessions/{KC}/Interactions and .../Participants/{KP}/MessageInteractions.

Interactions are read from Redis while their session is there (live, or closed within
closed_retention_s); once Redis has forgotten the session, the audit log (Postgres) answers."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from audit.queries import interactions_from_audit
from core.errors import InvalidParameter, MissingParameter, NotFound
from relay.api import render
from relay.api.common import account_sid, base_url, json, require, service_sid
from relay.api.params import check_url, iso, page_args, read_params
from relay.outbound import TwilioSendError
from relay.state import PG, RELAY

__all__ = ["routes", "interaction_view", "message_interaction_view"]

routes = web.RouteTableDef()

BASE = "/v1/Services/{ServiceSid}/Sessions/{SessionSid}"
# Twilio's Body limit for one message (it splits into segments itself).
MAX_BODY_CHARS = 1600
# Twilio's limit of media per message.
MAX_MEDIA = 10


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
        request.app[PG],
        service_sid=ks,
        session_sid=session_sid,
        interaction_sid=interaction_sid,
        limit=limit,
        offset=offset,
    )
    if interaction_sid is not None:
        return rows[0] if rows else None
    if not rows and offset == 0:
        return None
    return rows


def _view(request: web.Request, ks: str, ix: dict[str, Any]) -> dict[str, Any]:
    settings = request.app[RELAY].settings
    return interaction_view(ix, ks, base_url(request), account_sid(request), settings.twilio_api_url)


def _message_view(request: web.Request, ks: str, kp: str, ix: dict[str, Any]) -> dict[str, Any]:
    settings = request.app[RELAY].settings
    return message_interaction_view(
        ix, ks, kp, base_url(request), account_sid(request), settings.twilio_api_url
    )


async def _get(request: web.Request, ks: str) -> dict[str, Any]:
    session_sid = request.match_info["SessionSid"]
    sid = request.match_info["Sid"]
    ix = await request.app[RELAY].interactions.get(ks, session_sid, sid)
    if ix is None:
        ix = await _from_audit(request, ks, session_sid, sid)
    if ix is None:
        raise NotFound(f"Interaction {sid} was not found in Session {session_sid}")
    return dict(ix)


@routes.get(BASE + "/Interactions")
async def list_interactions(request: web.Request) -> web.Response:
    require(request, "proxy")
    ks = service_sid(request)
    session_sid = request.match_info["SessionSid"]
    page_no, size = page_args(request)
    rows = await request.app[RELAY].interactions.list(ks, session_sid, offset=page_no * size, limit=size + 1)
    if rows is None:
        rows = await _from_audit(request, ks, session_sid, offset=page_no * size, limit=size + 1)
    if rows is None:
        raise NotFound(f"Session {session_sid} was not found in Service {ks}")
    return json(
        render.page(
            "interactions",
            [_view(request, ks, r) for r in rows[:size]],
            base=base_url(request),
            segments=("v1", "Services", ks, "Sessions", session_sid, "Interactions"),
            page_no=page_no,
            size=size,
            has_more=len(rows) > size,
        )
    )


@routes.get(BASE + "/Interactions/{Sid}")
async def fetch_interaction(request: web.Request) -> web.Response:
    require(request, "proxy")
    ks = service_sid(request)
    return json(_view(request, ks, await _get(request, ks)))


@routes.delete(BASE + "/Interactions/{Sid}")
async def delete_interaction(request: web.Request) -> web.Response:
    require(request, "proxy")
    ks = service_sid(request)
    session_sid = request.match_info["SessionSid"]
    sid = request.match_info["Sid"]
    if not await request.app[RELAY].interactions.delete(ks, session_sid, sid):
        raise NotFound(f"Interaction {sid} was not found in Session {session_sid}")
    return web.Response(status=204)


# -------------------------------------------------------------------------------- MessageInteractions


@routes.post(BASE + "/Participants/{ParticipantSid}/MessageInteractions")
async def create_message_interaction(request: web.Request) -> web.Response:
    """Send a text to one participant from their proxy number (order confirmations, alerts)."""
    require(request, "proxy")
    ks = service_sid(request)
    session_sid = request.match_info["SessionSid"]
    kp = request.match_info["ParticipantSid"]
    params = await read_params(request)
    body = params.str("Body", max_len=MAX_BODY_CHARS, text=True) or ""
    media = [check_url("MediaUrl", url) for url in params.list("MediaUrl") if url]
    if len(media) > MAX_MEDIA:
        raise InvalidParameter(f"MediaUrl may be given at most {MAX_MEDIA} times")
    if not body and not media:
        raise MissingParameter("Missing required parameter Body (or MediaUrl)")
    state = request.app[RELAY]
    data: dict[str, Any] = {"body": body}
    if media:
        data["media"] = media
    ix, participant = await state.interactions.record_proactive(ks, session_sid, kp, data)
    ki = ix["sid"]
    try:
        message = await state.messages.send(
            to=participant["identifier"],
            from_=participant["proxy_identifier"],
            body=body,
            media_urls=media,
            status_callback=state.url(f"/twilio/status/message?Service={ks}&Interaction={ki}"),
        )
    except TwilioSendError:
        await state.interactions.update(ks, ki, outbound_status="failed")
        raise
    updated = await state.interactions.update(
        ks,
        ki,
        outbound_resource_sid=str(message.get("sid") or ""),
        outbound_status=str(message.get("status") or "queued"),
    )
    return json(_message_view(request, ks, kp, updated or ix), status=201)


@routes.get(BASE + "/Participants/{ParticipantSid}/MessageInteractions")
async def list_message_interactions(request: web.Request) -> web.Response:
    require(request, "proxy")
    ks = service_sid(request)
    session_sid = request.match_info["SessionSid"]
    kp = request.match_info["ParticipantSid"]
    await request.app[RELAY].sessions.get_participant(ks, session_sid, kp)
    page_no, size = page_args(request)
    # A session holds few interactions per participant in Redis; filter, then page.
    rows = await request.app[RELAY].interactions.list(ks, session_sid, offset=0, limit=10_000) or []
    mine = [r for r in rows if r.get("origin") == "api" and r.get("outbound_participant_sid") == kp]
    chunk = mine[page_no * size : (page_no + 1) * size]
    return json(
        render.page(
            "interactions",
            [_message_view(request, ks, kp, r) for r in chunk],
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
            page_no=page_no,
            size=size,
            has_more=len(mine) > (page_no + 1) * size,
        )
    )


@routes.get(BASE + "/Participants/{ParticipantSid}/MessageInteractions/{Sid}")
async def fetch_message_interaction(request: web.Request) -> web.Response:
    require(request, "proxy")
    ks = service_sid(request)
    kp = request.match_info["ParticipantSid"]
    ix = await _get(request, ks)
    if ix.get("outbound_participant_sid") != kp or ix.get("origin") != "api":
        raise NotFound(f"MessageInteraction {ix['sid']} was not found for Participant {kp}")
    return json(_message_view(request, ks, kp, ix))
