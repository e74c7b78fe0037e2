"""Inbound texts (/twilio/sms) and calls (/twilio/voice).

One walk, down and back once: the boundary checks the signature and parses the form; one call
into sessions/ (Router.route_text / route_call: dedupe, pair lookup, keywords, opt-outs, TTL,
interaction, event, the Service's relay options) returns a typed Route; this module renders it
as TwiML by hand and remembers the answer for Twilio's retry. Only a Route with no session
takes a detour, through the Service's out-of-session endpoint (out_of_session.py)."""

from __future__ import annotations

import logging
from typing import Final

from aiohttp import web

from pool.numbers import mask
from relay import twiml
from relay.callbacks import intercept
from relay.state import RelayState
from relay.webhooks import out_of_session
from relay.webhooks.boundary import Form, answer
from relay.webhooks.forms import Inbound
from sessions.models import Keyword, Outcome, Route

__all__ = ["routes"]

log = logging.getLogger("maskline.webhooks")

routes = web.RouteTableDef()

TEXTS_ONLY_MESSAGE: Final = "This number only accepts text messages."
CALLS_ONLY_MESSAGE: Final = "This number only accepts calls."
CALL_APOLOGY: Final = "Sorry, we cannot connect your call right now. Please try again in a few minutes."


@routes.post("/twilio/sms")
async def sms_webhook(request: web.Request) -> web.Response:
    return await answer(request, "sms", _text, twiml.EMPTY)


@routes.post("/twilio/voice")
async def voice_webhook(request: web.Request) -> web.Response:
    return await answer(request, "voice", _call, twiml.say(CALL_APOLOGY))


async def _text(state: RelayState, form: Form) -> str:
    return await _handle(state, Inbound.text(form))


async def _call(state: RelayState, form: Form) -> str:
    return await _handle(state, Inbound.call(form))


async def _handle(state: RelayState, inbound: Inbound) -> str:
    route = await inbound.route(state.router)
    if route.outcome is Outcome.DUPLICATE:
        # A retry: the first answer again; while the first is still in flight, nothing (no double relay).
        return route.answer or twiml.EMPTY
    ks = route.service_sid
    if route.outcome is Outcome.UNKNOWN_NUMBER or ks is None:
        log.warning("%s %s to %s: not a number of any Service", inbound.kind, inbound.sid, mask(inbound.to))
        return twiml.EMPTY if inbound.kind == "message" else twiml.reject()
    if route.outcome is Outcome.NO_SESSION:
        detour = await out_of_session.handle(state, route, inbound)
        if isinstance(detour, Route):
            route = detour  # a session was opened for the caller: render its route
        else:
            state.answers.remember(ks, inbound.sid, detour)
            return detour
    if inbound.kind == "message":
        reply = await _render_text(state, route, inbound)
    else:
        reply = await _render_call(state, route)
    state.answers.remember(ks, inbound.sid, reply)
    return reply


async def _render_text(state: RelayState, route: Route, inbound: Inbound) -> str:
    opts = route.options
    if route.outcome is Outcome.RELAY:
        if opts.intercept_url and not await _intercepted(state, route):
            return twiml.EMPTY
        out = route.outbound
        reply = twiml.message(
            to=out["identifier"],
            from_=out["proxy_identifier"],
            body=inbound.body,
            media=inbound.media,
            status_callback=_status_url(state, route, "/twilio/status/message"),
        )
    elif route.outcome is Outcome.MODE:
        return twiml.reply(CALLS_ONLY_MESSAGE)
    elif route.outcome is Outcome.KEYWORD:
        reply = twiml.reply(opts.help_message) if route.keyword is Keyword.HELP else twiml.EMPTY
    elif route.outcome is Outcome.BLOCKED:  # the recipient opted out of texts from that number
        reply = twiml.EMPTY
    else:  # still no session after the out-of-session endpoint's answer
        return twiml.reply(opts.out_of_session_message)
    _notify(state, route)
    return reply


async def _render_call(state: RelayState, route: Route) -> str:
    opts = route.options
    if route.outcome is Outcome.MODE:  # a message-only session
        return twiml.say(TEXTS_ONLY_MESSAGE)
    if route.outcome is not Outcome.RELAY:
        return twiml.say(opts.out_of_session_message)
    if opts.intercept_url and not await _intercepted(state, route):
        return twiml.reject()
    out = route.outbound
    base = state.settings.public_url
    query = _status_query(route)
    reply = twiml.dial(
        number=out["identifier"],
        caller_id=out["proxy_identifier"],
        action=f"{base}/twilio/voice/dial-status?{query}",
        time_limit_s=opts.call_time_limit_s,
        record=opts.record_calls,
        announce=opts.consent or None,
        whisper_url=f"{base}/twilio/voice/whisper?{query}" if (opts.whisper or opts.consent) else None,
        status_callback=f"{base}/twilio/status/call?{query}",
    )
    _notify(state, route)
    return reply


def _status_query(route: Route) -> str:
    return f"Service={route.service_sid}&Interaction={route.interaction_sid}"


def _status_url(state: RelayState, route: Route, path: str) -> str:
    return f"{state.settings.public_url}{path}?{_status_query(route)}"


def _notify(state: RelayState, route: Route) -> None:
    """The Service's CallbackUrl hears of every recorded interaction (in the background)."""
    url = route.options.callback_url
    if url and route.interaction_sid and route.service_sid:
        state.callbacks.submit(url, state.callback_fields(route.service_sid, route.interaction))


async def _intercepted(state: RelayState, route: Route) -> bool:
    """True when the intercept endpoint lets the interaction through; a block is recorded."""
    ks = route.service_sid or ""
    opts = route.options
    allowed = await intercept(
        state.http,
        state.validator,
        opts.intercept_url,
        state.callback_fields(ks, route.interaction),
        timeout_s=state.settings.intercept_timeout_s,
    )
    if not allowed:
        log.info("interaction %s blocked by the intercept callback", route.interaction_sid)
        await state.interactions.update(ks, route.interaction_sid, outbound_status="failed")
        if opts.callback_url:
            blocked = {**route.interaction, "outbound_resource_status": "failed"}
            state.callbacks.submit(opts.callback_url, state.callback_fields(ks, blocked))
    return allowed
