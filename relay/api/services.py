"""/v1/Services and /v1/Services/{ServiceSid}/PhoneNumbers."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from core.errors import Forbidden, InvalidParameter, MissingParameter, NotFound
from pool.numbers import parse_proxy_number
from pool.registry import DEFAULT_CAPABILITIES
from relay.api import render
from relay.api.common import account_sid, api_key, base_url, json, require, service_sid
from relay.api.params import Params, page_args, read_params
from relay.state import NUMBERS, SERVICES, TWILIO_ACCOUNT
from sessions.models import GeoMatchLevel, NumberSelection

__all__ = ["routes"]

routes = web.RouteTableDef()

OPTION_PARAMS = {
    # Maskline extensions to a Service, stored in its `options`: Param -> (option key, kind);
    # "text" is free text (spoken or texted: line breaks allowed), "str" a single-line value.
    "CallTimeLimit": ("call_time_limit_s", "int"),
    "Whisper": ("whisper", "text"),
    "RecordCalls": ("record_calls", "bool"),
    "RecordingConsent": ("recording_consent", "text"),
    "OutOfSessionMessage": ("out_of_session_message", "text"),
    "HelpMessage": ("help_message", "text"),
    "BodyPolicy": ("body_policy", "str"),
    # Abuse limits (0: none): sessions/models.LIMIT_OPTIONS, counted in route_inbound.lua.
    "TextsPerMinute": ("texts_per_minute", "int"),
    "CallsPerHour": ("calls_per_hour", "int"),
    "ProxyTextsPerMinute": ("proxy_texts_per_minute", "int"),
    "ProxyCallsPerHour": ("proxy_calls_per_hour", "int"),
    "RateLimitMessage": ("rate_limit_message", "text"),
    # The reply to a text that reached no WhatsApp recipient inside its 24-hour window.
    "WhatsAppWindowMessage": ("whatsapp_window_message", "text"),
    # Sessions of more than two (sessions/models.MAX_PARTICIPANTS at most).
    "MaxParticipants": ("max_participants", "int"),
    "NamePrefix": ("name_prefix", "bool"),
    # Scheduled messages: how late one may still go out (seconds; default 900), else `expired`.
    "ScheduleLateness": ("schedule_lateness_s", "int"),
}
# A message Twilio sends (or <Say>s) in one request: its Body limit.
MAX_TEXT_CHARS = 1600
MAX_UNIQUE_NAME = 191
URL_PARAMS = {
    "CallbackUrl": "callback_url",
    "InterceptCallbackUrl": "intercept_callback_url",
    "OutOfSessionCallbackUrl": "out_of_session_callback_url",
}


def _service_fields(params: Params, current_options: dict[str, Any] | None = None) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if "UniqueName" in params:
        fields["unique_name"] = params.str("UniqueName", max_len=MAX_UNIQUE_NAME) or None
    if "ChatInstanceSid" in params:
        fields["chat_instance_sid"] = params.str("ChatInstanceSid", max_len=64) or None
    for param, column in URL_PARAMS.items():
        if param in params:
            fields[column] = params.url(param) or None
    if (ttl := params.int("DefaultTtl", maximum=31_536_000)) is not None:
        fields["default_ttl_s"] = ttl
    if (cool := params.int("CoolOff", maximum=30 * 86400)) is not None:
        fields["cool_off_s"] = cool
    if (geo := params.enum("GeoMatchLevel", GeoMatchLevel)) is not None:
        fields["geo_match_level"] = geo
    if (nsb := params.enum("NumberSelectionBehavior", NumberSelection)) is not None:
        fields["number_selection_behavior"] = nsb
    if "AllowedCountries" in params:
        raw = params.str("AllowedCountries", max_len=1024) or ""
        fields["allowed_countries"] = [c.strip().upper() for c in raw.split(",") if c.strip()] or None
    options = dict(current_options or {})
    for param, (key, kind) in OPTION_PARAMS.items():
        if param not in params:
            continue
        value: Any = (
            params.int(param)
            if kind == "int"
            else params.bool(param)
            if kind == "bool"
            else params.str(param, max_len=MAX_TEXT_CHARS, text=True)
            if kind == "text"
            else params.str(param, max_len=64)
        )
        if key == "body_policy" and value not in ("keep", "redact", "hash"):
            raise InvalidParameter("BodyPolicy must be one of keep, redact, hash")
        options[key] = value
    if "FallbackNumber" in params:  # PIN mode's shared number ("" to turn it off)
        shared = params.str("FallbackNumber", max_len=64)
        options["fallback_number"] = parse_proxy_number(shared).e164 if shared else None
    if options != (current_options or {}):
        fields["options"] = options
    return fields


@routes.post("/v1/Services")
async def create_service(request: web.Request) -> web.Response:
    require(request, "proxy")
    if api_key(request).service_sids is not None:
        raise Forbidden("this API key is scoped to some Services and cannot create new ones")
    params = await read_params(request)
    if not params.str("UniqueName", max_len=MAX_UNIQUE_NAME):
        raise MissingParameter("Missing required parameter UniqueName")
    fields = _service_fields(params)
    if (fields.get("options") or {}).get("fallback_number"):
        raise InvalidParameter(
            "FallbackNumber must be a phone number of this Service: create the Service, add the "
            "number (PhoneNumbers), then set FallbackNumber",
            code=89005,
        )
    row = await request.config_dict[SERVICES].create(fields)
    return json(render.service(row, base_url(request), account_sid(request)), status=201)


@routes.get("/v1/Services")
async def list_services(request: web.Request) -> web.Response:
    key = require(request, "proxy")
    wanted = page_args(request)
    found = await request.config_dict[SERVICES].list(wanted, only=key.service_sids)
    return json(
        render.page(
            "services",
            [render.service(r, base_url(request), account_sid(request)) for r in found.items],
            base=base_url(request),
            segments=("v1", "Services"),
            request=wanted,
            found=found,
        )
    )


@routes.get("/v1/Services/{ServiceSid}")
async def fetch_service(request: web.Request) -> web.Response:
    require(request, "proxy")
    row = await request.config_dict[SERVICES].get(await service_sid(request))
    return json(render.service(row, base_url(request), account_sid(request)))


@routes.post("/v1/Services/{ServiceSid}")
async def update_service(request: web.Request) -> web.Response:
    require(request, "proxy")
    sid = await service_sid(request)
    store = request.config_dict[SERVICES]
    current = await store.get(sid)
    params = await read_params(request)
    fields = _service_fields(params, current.get("options"))
    fallback = (fields.get("options") or {}).get("fallback_number")
    if fallback and fallback != (current.get("options") or {}).get("fallback_number"):
        await _fallback_in_service(request, sid, fallback)
    row = await store.update(sid, fields)
    return json(render.service(row, base_url(request), account_sid(request)))


async def _fallback_in_service(request: web.Request, sid: str, number: str) -> None:
    try:
        await request.config_dict[NUMBERS].get(sid, number)
    except NotFound:
        raise InvalidParameter(
            f"FallbackNumber {number} is not a phone number of this Service; add it (PhoneNumbers) first",
            code=89005,
        ) from None


@routes.delete("/v1/Services/{ServiceSid}")
async def delete_service(request: web.Request) -> web.Response:
    require(request, "proxy")
    await request.config_dict[SERVICES].delete(await service_sid(request))
    return web.Response(status=204)


@routes.post("/v1/Services/{ServiceSid}/PhoneNumbers")
async def add_number(request: web.Request) -> web.Response:
    require(request, "proxy")
    sid = await service_sid(request)
    params = await read_params(request)
    number = params.str("PhoneNumber", max_len=64)
    incoming = None
    if pn_sid := params.str("Sid", max_len=64):
        # As on Twilio: a number of the account by its IncomingPhoneNumber sid, which it keeps, with
        # its capabilities; 80301 (404) when the account has no such number, 20503 (503) when
        # Twilio cannot be reached (relay/twilio_account.py).
        await request.config_dict[SERVICES].get(sid)
        incoming = await request.config_dict[TWILIO_ACCOUNT].fetch(pn_sid)
        if number and parse_proxy_number(number).e164 != incoming.phone_number:
            raise InvalidParameter(
                f"PhoneNumber {number} is not the number of Sid {pn_sid}; send one of them"
            )
        number = incoming.phone_number
    if not number:
        raise MissingParameter(
            "Missing required parameter PhoneNumber (E.164, e.g. +14155550100) or Sid (PN...)"
        )
    capabilities = incoming.proxy_capabilities if incoming else dict(DEFAULT_CAPABILITIES)
    if params.bool("WhatsApp"):
        # Maskline extension: the number is a WhatsApp sender of the account (Twilio's
        # IncomingPhoneNumbers do not say so): WhatsApp participants get numbers like it.
        capabilities["whatsapp"] = True
    row = await request.config_dict[NUMBERS].add(
        sid,
        number,
        is_reserved=bool(params.bool("IsReserved")),
        friendly_name=params.str("FriendlyName", max_len=64)
        or (incoming.friendly_name if incoming else None),
        sid=incoming.sid if incoming else None,
        capabilities=capabilities,
    )
    return json(render.phone_number(row, base_url(request), account_sid(request)), status=201)


@routes.get("/v1/Services/{ServiceSid}/PhoneNumbers")
async def list_numbers(request: web.Request) -> web.Response:
    require(request, "proxy")
    sid = await service_sid(request)
    await request.config_dict[SERVICES].get(sid)
    wanted = page_args(request)
    found = await request.config_dict[NUMBERS].list(sid, wanted)
    return json(
        render.page(
            "phone_numbers",
            [render.phone_number(r, base_url(request), account_sid(request)) for r in found.items],
            base=base_url(request),
            segments=("v1", "Services", sid, "PhoneNumbers"),
            request=wanted,
            found=found,
        )
    )


@routes.get("/v1/Services/{ServiceSid}/PhoneNumbers/{Sid}")
async def fetch_number(request: web.Request) -> web.Response:
    require(request, "proxy")
    row = await request.config_dict[NUMBERS].get(await service_sid(request), request.match_info["Sid"])
    return json(render.phone_number(row, base_url(request), account_sid(request)))


@routes.post("/v1/Services/{ServiceSid}/PhoneNumbers/{Sid}")
async def update_number(request: web.Request) -> web.Response:
    require(request, "proxy")
    sid = await service_sid(request)
    params = await read_params(request)
    registry = request.config_dict[NUMBERS]
    row = await registry.get(sid, request.match_info["Sid"])
    reserved = params.bool("IsReserved")
    if reserved is not None:
        row = await registry.set_reserved(sid, row["sid"], reserved)
    return json(render.phone_number(row, base_url(request), account_sid(request)))


@routes.delete("/v1/Services/{ServiceSid}/PhoneNumbers/{Sid}")
async def remove_number(request: web.Request) -> web.Response:
    require(request, "proxy")
    await request.config_dict[NUMBERS].remove(await service_sid(request), request.match_info["Sid"])
    return web.Response(status=204)
