"""Twilio's webhooks: inbound texts (/twilio/sms), calls (/twilio/voice), the <Dial> outcome,
the whisper, and status callbacks. The boundary of the webhooks: whatever happens they answer
TwiML (never a 5xx, never a stack trace), within settings.webhook_deadline_s; only a request
whose X-Twilio-Signature does not check out gets 403, and nothing of it is acted on.

The hot path (a relayed text) is: parse the form once, check the signature, one Lua call
(route_inbound: dedupe, pair lookup, opt-outs, TTL, interaction, event, Service options), build
the TwiML by hand, one SET to remember the answer for Twilio's retry."""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import orjson
from aiohttp import web
from multidict import MultiDict, MultiDictProxy
from twilio.request_validator import HMAC_SHA1, SIGNATURE_SETTINGS_HEADER, get_signature_algorithm

from pool import keys
from pool.errors import MasklineError
from pool.numbers import mask
from relay import twiml
from relay.api.params import Params
from relay.callbacks import ask_out_of_session, interaction_fields, intercept
from relay.relay_state import (
    CALL_APOLOGY,
    CALLS_ONLY_MESSAGE,
    RELAY,
    TEXTS_ONLY_MESSAGE,
    RelayOptions,
    RelayState,
)
from sessions.models import Mode, ParticipantRequest
from sessions.routing import Route, classify_keyword

__all__ = ["routes", "scrub"]

log = logging.getLogger("maskline.webhooks")

routes = web.RouteTableDef()

# Twilio sends at most 10 media per MMS.
MAX_MEDIA: Final = 10
# A keyword is one short word; longer bodies skip the check (most texts, on the hot path).
_KEYWORD_MAX_CHARS: Final = 16
_LONG_NUMBER: Final = re.compile(r"\+?\d[\d ().-]{5,}\d")
_FORBIDDEN: Final = "Forbidden: invalid or missing X-Twilio-Signature\n"

Form = MultiDictProxy[str] | MultiDict[str]


def scrub(text: object) -> str:
    """`text` for a log line, with anything that looks like a phone number masked."""
    return _LONG_NUMBER.sub(lambda m: mask(m.group(0)), str(text))[:300]


def _xml(body: str) -> web.Response:
    return web.Response(text=body, content_type="text/xml")


async def _read_signed(request: web.Request) -> Form | None:
    """The request's parameters if its signature checks out over the public URL, else None."""
    signature = request.headers.get("X-Twilio-Signature")
    if not signature:
        return None
    state = request.app[RELAY]
    url = state.settings.public_url + request.path_qs
    algorithm = get_signature_algorithm(request.headers.get(SIGNATURE_SETTINGS_HEADER))
    if request.content_type == "application/json":
        # JSON bodies are covered by bodySHA256 in the query; without it the body is unsigned.
        if "bodySHA256" not in request.query:
            return None
        text = await request.text()
        if not state.validator.validate(url, text, signature, algorithm):
            return None
        try:
            obj = orjson.loads(text or "{}")
        except orjson.JSONDecodeError:
            return None
        form: MultiDict[str] = MultiDict()
        if isinstance(obj, dict):
            for k, v in obj.items():
                form.add(str(k), v if isinstance(v, str) else orjson.dumps(v).decode())
        return form
    params = await request.post()
    # Fast path: the URL exactly as configured (one HMAC, constant-time compare); otherwise the
    # validator's full check (with and without the default port, SHA-256 settings header).
    if algorithm == HMAC_SHA1 and hmac.compare_digest(
        state.validator.compute_signature(url, params), signature
    ):
        return params  # type: ignore[return-value]
    if not state.validator.validate(url, params, signature, algorithm):
        return None
    return params  # type: ignore[return-value]


def _forbidden(request: web.Request) -> web.Response:
    log.warning("refused %s %s: bad or missing X-Twilio-Signature", request.method, request.path)
    return web.Response(status=403, text=_FORBIDDEN)


def _media(form: Form) -> list[str]:
    try:
        count = min(int(form.get("NumMedia") or 0), MAX_MEDIA)
    except ValueError:
        count = 0
    return [url for i in range(count) if (url := form.get(f"MediaUrl{i}"))]


# -------------------------------------------------------------------------------- inbound text


@routes.post("/twilio/sms")
async def sms_webhook(request: web.Request) -> web.Response:
    return await _answer(request, "sms", _text, twiml.EMPTY)


async def _answer(
    request: web.Request, what: str, handle: Callable[[RelayState, Form], Awaitable[str]], fallback: str
) -> web.Response:
    """The inbound webhooks' boundary: unsigned or tampered gets 403 and nothing is done; otherwise
    TwiML within the deadline, and `fallback` when Redis is down or slow or anything unexpected."""
    form = await _read_signed(request)
    if form is None:
        return _forbidden(request)
    state = request.app[RELAY]
    try:
        async with asyncio.timeout(state.settings.webhook_deadline_s):
            return _xml(await handle(state, form))
    except Exception as err:
        _log_fault(what, form, err)
        return _xml(fallback)


async def _text(state: RelayState, form: Form) -> str:
    from_ = form.get("From", "")
    to = form.get("To", "")
    sid = form.get("MessageSid") or form.get("SmsMessageSid") or form.get("SmsSid") or ""
    body = form.get("Body", "")
    media = _media(form)
    keyword = classify_keyword(body) if len(body) <= _KEYWORD_MAX_CHARS else ""
    data: dict[str, Any] = {"body": body}
    if media:
        data["media"] = media
    route = await state.router.route_inbound(
        from_=from_, to=to, kind="message", resource_sid=sid, data=data, keyword=keyword
    )
    if route.outcome == "duplicate":
        # A retry: the first answer again; while the first is still in flight, nothing (no double relay).
        return str(route.data.get("answer") or twiml.EMPTY)
    if route.outcome == "unknown_number" or route.service_sid is None:
        log.warning("text %s to %s: not a number of any Service", sid, mask(to))
        return twiml.EMPTY
    ks = route.service_sid
    opts = state.options(route.data.get("svc"))
    if route.outcome == "relay":
        answer = await _relay_text(state, ks, opts, route, body, media, sid)
    elif route.outcome == "no_session":
        answer = await _out_of_session(state, ks, opts, "message", form, route, sid)
    elif route.outcome == "mode":
        answer = twiml.reply(CALLS_ONLY_MESSAGE)
    elif route.outcome == "keyword":
        answer = twiml.reply(opts.help_message) if route.data.get("keyword") == "help" else twiml.EMPTY
        _notify(state, ks, opts, route, "message", data, sid)
    else:  # blocked: the recipient opted out of texts from that number
        answer = twiml.EMPTY
        _notify(state, ks, opts, route, "message", data, sid)
    state.answers.remember(ks, sid, answer)
    return answer


async def _relay_text(
    state: RelayState, ks: str, opts: RelayOptions, route: Route, body: str, media: list[str], sid: str
) -> str:
    ki = route.interaction_sid
    if opts.intercept_url and not await _intercepted(state, ks, opts, route, "message", {"body": body}, sid):
        return twiml.EMPTY
    out = route.outbound
    answer = twiml.message(
        to=out["identifier"],
        from_=out["proxy_identifier"],
        body=body,
        media=media,
        status_callback=f"{state.settings.public_url}/twilio/status/message?Service={ks}&Interaction={ki}",
    )
    if opts.callback_url:
        _notify(state, ks, opts, route, "message", {"body": body, **({"media": media} if media else {})}, sid)
    return answer


# -------------------------------------------------------------------------------- inbound call


@routes.post("/twilio/voice")
async def voice_webhook(request: web.Request) -> web.Response:
    return await _answer(request, "voice", _call, twiml.say(CALL_APOLOGY))


async def _call(state: RelayState, form: Form) -> str:
    from_ = form.get("From", "")
    to = form.get("To", "")
    sid = form.get("CallSid", "")
    route = await state.router.route_inbound(from_=from_, to=to, kind="voice", resource_sid=sid, data={})
    if route.outcome == "duplicate":
        return str(route.data.get("answer") or twiml.EMPTY)
    if route.outcome == "unknown_number" or route.service_sid is None:
        log.warning("call %s to %s: not a number of any Service", sid, mask(to))
        return twiml.reject()
    ks = route.service_sid
    opts = state.options(route.data.get("svc"))
    if route.outcome == "relay":
        answer = await _relay_call(state, ks, opts, route, sid)
    elif route.outcome == "no_session":
        answer = await _out_of_session(state, ks, opts, "voice", form, route, sid)
    else:  # mode: a message-only session
        answer = twiml.say(TEXTS_ONLY_MESSAGE)
    state.answers.remember(ks, sid, answer)
    return answer


async def _relay_call(state: RelayState, ks: str, opts: RelayOptions, route: Route, sid: str) -> str:
    ki = route.interaction_sid
    if opts.intercept_url and not await _intercepted(state, ks, opts, route, "voice", {}, sid):
        return twiml.reject()
    out = route.outbound
    base = state.settings.public_url
    query = f"Service={ks}&Interaction={ki}"
    answer = twiml.dial(
        number=out["identifier"],
        caller_id=out["proxy_identifier"],
        action=f"{base}/twilio/voice/dial-status?{query}",
        time_limit_s=opts.call_time_limit_s,
        record=opts.record_calls,
        announce=opts.consent or None,
        whisper_url=f"{base}/twilio/voice/whisper?{query}" if (opts.whisper or opts.consent) else None,
        status_callback=f"{base}/twilio/status/call?{query}",
    )
    if opts.callback_url:
        _notify(state, ks, opts, route, "voice", {}, sid)
    return answer


@routes.post("/twilio/voice/whisper")
async def whisper(request: web.Request) -> web.Response:
    """What the callee hears on answering, before the two are connected (<Number url=...>)."""
    form = await _read_signed(request)
    if form is None:
        return _forbidden(request)
    state = request.app[RELAY]
    ks = request.query.get("Service", "")
    try:
        async with asyncio.timeout(state.settings.webhook_deadline_s):
            raw = await state.router.redis.hmget(
                keys.service_settings(ks),
                "callback_url",
                "intercept_callback_url",
                "out_of_session_callback_url",
                "options",
            )
        opts = state.options(list(raw))
        text = " ".join(t for t in (opts.whisper, opts.consent) if t)
    except Exception as err:
        _log_fault("whisper", form, err)
        text = ""
    # No <Hangup/>: that would end the callee's leg instead of connecting it.
    return _xml(twiml.say(text, hangup=False) if text else twiml.EMPTY)


# -------------------------------------------------------------------------------- status callbacks


@routes.post("/twilio/voice/dial-status")
async def dial_status(request: web.Request) -> web.Response:
    """<Dial action>: the outcome of the connected call. Empty TwiML ends the caller's leg."""
    form = await _read_signed(request)
    if form is None:
        return _forbidden(request)
    duration = form.get("DialCallDuration")
    await _apply_status(
        request,
        form,
        outbound_sid=form.get("DialCallSid"),
        outbound_status=form.get("DialCallStatus"),
        inbound_status="completed",
        data={"duration": duration} if duration else None,
    )
    return _xml(twiml.EMPTY)


@routes.post("/twilio/status/message")
async def message_status(request: web.Request) -> web.Response:
    form = await _read_signed(request)
    if form is None:
        return _forbidden(request)
    await _apply_status(
        request, form, outbound_sid=form.get("MessageSid"), outbound_status=form.get("MessageStatus")
    )
    return web.Response(status=204)


@routes.post("/twilio/status/call")
async def call_status(request: web.Request) -> web.Response:
    """statusCallback of the outbound leg (<Number statusCallback=...>)."""
    form = await _read_signed(request)
    if form is None:
        return _forbidden(request)
    duration = form.get("CallDuration")
    await _apply_status(
        request,
        form,
        outbound_sid=form.get("CallSid"),
        outbound_status=form.get("CallStatus"),
        data={"duration": duration} if duration else None,
    )
    return web.Response(status=204)


async def _apply_status(
    request: web.Request,
    form: Form,
    *,
    outbound_sid: str | None,
    outbound_status: str | None,
    inbound_status: str | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    state = request.app[RELAY]
    ks = request.query.get("Service", "")
    ki = request.query.get("Interaction", "")
    if not (ks.startswith("KS") and ki.startswith("KI")):
        return  # a status callback configured without our query: nothing to attach it to
    try:
        async with asyncio.timeout(state.settings.webhook_deadline_s):
            row = await state.interactions.update(
                ks,
                ki,
                outbound_resource_sid=outbound_sid,
                outbound_status=outbound_status,
                inbound_status=inbound_status,
                data=data,
            )
            if row is not None:
                callback_url = await state.router.redis.hget(keys.service_settings(ks), "callback_url")
                if callback_url:
                    state.callbacks.submit(callback_url, _fields(state, ks, row))
    except Exception as err:
        _log_fault(request.path, form, err)


# -------------------------------------------------------------------------------- shared steps


def _ix(route: Route, kind: str, data: Mapping[str, Any], resource_sid: str) -> dict[str, Any]:
    """The interaction route_inbound.lua just recorded, as far as the callbacks need it."""
    session = route.session
    outcome = route.outcome
    return {
        "sid": route.interaction_sid,
        "session_sid": session.get("sid", ""),
        "type": kind,
        "data": orjson.dumps(data).decode(),
        "created_ms": session.get("last_interaction_ms", ""),
        "updated_ms": session.get("last_interaction_ms", ""),
        "inbound_participant_sid": route.inbound.get("sid", ""),
        "inbound_resource_sid": resource_sid,
        "inbound_resource_status": "received" if kind == "message" else "in-progress",
        "inbound_resource_type": "Message" if kind == "message" else "Call",
        "outbound_participant_sid": route.outbound.get("sid", ""),
        "outbound_resource_sid": "",
        "outbound_resource_status": "initiated" if outcome == "relay" else "failed",
        "outbound_resource_type": "Message" if kind == "message" else "Call",
    }


def _fields(state: RelayState, ks: str, ix: Mapping[str, Any]) -> dict[str, str]:
    return interaction_fields(
        ix,
        service_sid=ks,
        account_sid=state.settings.twilio_account_sid,
        twilio_api_url=state.settings.twilio_api_url,
    )


def _notify(
    state: RelayState, ks: str, opts: RelayOptions, route: Route, kind: str, data: Mapping[str, Any], sid: str
) -> None:
    if opts.callback_url and route.interaction_sid:
        state.callbacks.submit(opts.callback_url, _fields(state, ks, _ix(route, kind, data, sid)))


async def _intercepted(
    state: RelayState, ks: str, opts: RelayOptions, route: Route, kind: str, data: Mapping[str, Any], sid: str
) -> bool:
    """True when the intercept endpoint lets the interaction through; a block is recorded."""
    ix = _ix(route, kind, data, sid)
    allowed = await intercept(
        state.http,
        state.validator,
        opts.intercept_url,
        _fields(state, ks, ix),
        timeout_s=state.settings.intercept_timeout_s,
    )
    if not allowed:
        log.info("interaction %s blocked by the intercept callback", route.interaction_sid)
        await state.interactions.update(ks, route.interaction_sid, outbound_status="failed")
        if opts.callback_url:
            state.callbacks.submit(
                opts.callback_url, _fields(state, ks, {**ix, "outbound_resource_status": "failed"})
            )
    return allowed


def _default_out_of_session(opts: RelayOptions, kind: str) -> str:
    if kind == "voice":
        return twiml.say(opts.out_of_session_message)
    return twiml.reply(opts.out_of_session_message)


async def _out_of_session(
    state: RelayState, ks: str, opts: RelayOptions, kind: str, form: Form, route: Route, sid: str
) -> str:
    """No live session for (From, To): never relayed. Ask the Service's OutOfSessionCallbackUrl
    (TwiML answers as given, JSON auto-creates a session), else the polite default."""
    previous = route.data.get("previous") or {}
    await state.interactions.record_out_of_session(
        ks,
        kind=kind,
        from_=form.get("From", ""),
        to=form.get("To", ""),
        resource_sid=sid,
        previous_session_sid=str(previous.get("sid", "")) if isinstance(previous, dict) else "",
        data={"body": form.get("Body", "")} if kind == "message" else {},
    )
    if not opts.out_of_session_url:
        return _default_out_of_session(opts, kind)
    params = {k: str(v) for k, v in form.items()}
    params["interactionServiceSid"] = ks
    params["interactionAccountSid"] = state.settings.twilio_account_sid
    previous = route.data.get("previous") or None
    if isinstance(previous, dict):
        params["interactionSessionSid"] = str(previous.get("sid", ""))
        params["sessionStatus"] = str(previous.get("status", ""))
        params["sessionClosedReason"] = str(previous.get("closed_reason", ""))
        participants = previous.get("participants") or []
        if isinstance(participants, list):
            for p in participants:
                side = "inbound" if p.get("identifier") == form.get("From") else "outbound"
                params[f"{side}ParticipantSid"] = str(p.get("sid", ""))
                params[f"{side}ParticipantIdentifier"] = str(p.get("identifier", ""))
                params[f"{side}ParticipantProxyIdentifier"] = str(p.get("proxy_identifier", ""))
    timeout_s = min(state.settings.callback_timeout_s, state.settings.webhook_deadline_s * 0.5)
    answer = await ask_out_of_session(
        state.http, state.validator, opts.out_of_session_url, params, timeout_s=timeout_s
    )
    if answer is not None and answer.twiml:
        return answer.twiml
    if answer is not None and answer.create is not None:
        created = await _auto_create(state, ks, kind, form, answer.create, sid)
        if created is not None:
            return created
    return _default_out_of_session(opts, kind)


async def _auto_create(
    state: RelayState, ks: str, kind: str, form: Form, spec: dict[str, Any], sid: str
) -> str | None:
    """Create the session the out-of-session endpoint asked for, keeping the proxy number the
    caller dialled (unlike Twilio Proxy), then route the text or call again as if it were live."""
    from_ = form.get("From", "")
    to = form.get("To", "")
    fields = Params(MultiDict((str(k), str(v)) for k, v in spec.items() if v is not None))
    other = fields.str("participantIdentifier", max_len=64)
    if not other:
        log.warning("out-of-session auto-create JSON has no participantIdentifier; ignored")
        return None
    try:
        mode = Mode(fields.str("mode") or Mode.VOICE_AND_MESSAGE.value)
        # The caller's pair may still be cooling off after a closed session: free it (only then).
        await state.interactions.release_cooling_pair(ks, from_, to)
        await state.sessions.create_session(
            ks,
            unique_name=fields.str("uniqueName", max_len=191) or "",
            mode=mode,
            ttl_s=fields.int("ttl", maximum=31_536_000),
            date_expiry_ms=fields.datetime_ms("dateExpiry"),
            participants=[
                ParticipantRequest(identifier=from_, proxy_identifier=to),
                ParticipantRequest(
                    identifier=other,
                    proxy_identifier=fields.str("participantProxyIdentifier", max_len=64) or "",
                    friendly_name=fields.str("participantFriendlyName", max_len=255) or "",
                ),
            ],
        )
    except (MasklineError, ValueError) as err:
        log.warning("out-of-session auto-create refused: %s", scrub(getattr(err, "message", err)))
        return None
    # The first routing marked this MessageSid / CallSid as seen; route it afresh.
    await state.router.redis.delete(keys.seen(ks, sid))
    if kind == "voice":
        return await _call(state, form)
    return await _text(state, form)


def _log_fault(what: str, form: Form, err: BaseException) -> None:
    sid = form.get("MessageSid") or form.get("CallSid") or ""
    log.error(
        "webhook %s %s from %s to %s failed (%s: %s); answered safe TwiML",
        what,
        sid,
        mask(form.get("From", "")),
        mask(form.get("To", "")),
        type(err).__name__,
        scrub(err),
    )
