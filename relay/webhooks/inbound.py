"""Inbound texts (/twilio/sms) and calls (/twilio/voice).

One walk, down and back once: the boundary checks the signature and parses the form; one call
into sessions/ (Router.route_text / route_call: dedupe, pair lookup, keywords, opt-outs, TTL,
interaction, event, the Service's relay options) returns a typed Route; this module renders it
as TwiML by hand and remembers the answer for Twilio's retry. Only a Route with no session
takes a detour, through the Service's out-of-session endpoint (out_of_session.py)."""

from __future__ import annotations

import logging
from typing import Any, Final

from aiohttp import web

from pool.numbers import mask
from relay import twiml
from relay.callbacks import intercept
from relay.fallbacks import NotRelayed
from relay.metrics import rate_limited
from relay.state import RelayState
from relay.webhooks import out_of_session
from relay.webhooks.boundary import STORE_FAULTS, answer
from relay.webhooks.forms import Inbound
from sessions.models import (
    PIN_DIGITS,
    Keyword,
    Outcome,
    Replay,
    Route,
    leading_pin,
    sender_address,
    with_pin,
)

__all__ = ["routes"]

log = logging.getLogger("maskline.webhooks")

routes = web.RouteTableDef()

TEXTS_ONLY_MESSAGE: Final = "This number only accepts text messages."
CALLS_ONLY_MESSAGE: Final = "This number only accepts calls."
CALL_APOLOGY: Final = "Sorry, we cannot connect your call right now. Please try again in a few minutes."
# PIN mode (docs/relay.md): what a sender to the shared FallbackNumber is told.
PIN_PROMPT: Final = "Please enter the PIN of your conversation."
PIN_WRONG: Final = "That PIN is not right."
PIN_NONE: Final = "We did not get a PIN. Goodbye."
PIN_TEXT_HOWTO: Final = "Start your message with the PIN of your conversation, for example: 1234 on my way"
PIN_LOCKED: Final = "Too many wrong PINs. Please try again later."


@routes.post("/twilio/sms")
async def sms_webhook(request: web.Request) -> web.Response:
    return await answer(request, "sms", Inbound.text, _handle, twiml.EMPTY, _record_fallback)


@routes.post("/twilio/voice")
async def voice_webhook(request: web.Request) -> web.Response:
    return await answer(request, "voice", Inbound.call, _handle, twiml.say(CALL_APOLOGY), _record_fallback)


def _record_fallback(state: RelayState, inbound: Inbound, err: BaseException, deadline_ms: int) -> None:
    """Answered with fallback TwiML: on record as not relayed once the store is back."""
    reason = "store_unavailable" if isinstance(err, STORE_FAULTS) else "error"
    state.fallbacks.submit(
        NotRelayed(
            kind=inbound.kind,
            from_=inbound.from_,
            to=inbound.to,
            resource_sid=inbound.sid,
            interaction_sid=inbound.interaction_sid,
            body=inbound.body,
            reason=reason,
            not_before_ms=deadline_ms,
        )
    )


async def _handle(state: RelayState, inbound: Inbound) -> str:
    route = await inbound.route(state.router)
    ks = route.service_sid
    if route.outcome is Outcome.UNKNOWN_NUMBER or ks is None:
        log.warning("%s %s to %s: not a number of any Service", inbound.kind, inbound.sid, mask(inbound.to))
        return twiml.EMPTY if inbound.kind == "message" else twiml.reject()
    if route.outcome is Outcome.DUPLICATE:
        # A retry: the first answer again; while the first is still in flight, nothing (no double relay).
        return _replay(state, route, inbound)
    if route.outcome is Outcome.PIN:
        # Nothing chosen, nothing remembered: the next attempt (a <Gather>'s Digits come with the
        # same CallSid) is routed afresh.
        return _pin_answer(state, route, inbound)
    if route.outcome is Outcome.NO_SESSION and route.pin == "unknown":
        # No PIN on the shared number: never connected, never sent to the out-of-session endpoint.
        state.answers.remember(ks, inbound.sid, Replay.OUT_OF_SESSION, inbound.interaction_sid)
        return out_of_session.default_answer(route.options, inbound.kind)
    if route.outcome is Outcome.NO_SESSION:
        detour = await out_of_session.handle(state, route, inbound)
        if isinstance(detour, Route):
            route = detour  # a session was opened for the caller: render its route
        else:
            replay, reply = detour
            state.answers.remember(ks, inbound.sid, replay, inbound.interaction_sid)
            return reply
    if inbound.kind == "message":
        replay, reply = await _render_text(state, route, inbound)
    else:
        replay, reply = await _render_call(state, route)
    # (every interaction the route recorded: off the in-flight index once the answer is written)
    answered = [ix["sid"] for ix in route.interactions]
    state.answers.remember(
        ks, inbound.sid, replay, route.interaction_sid or inbound.interaction_sid, answered
    )
    return reply


async def _render_text(state: RelayState, route: Route, inbound: Inbound) -> tuple[Replay, str]:
    opts = route.options
    if route.outcome is Outcome.RELAY:
        if opts.intercept_url and not await _intercepted(state, route):
            return Replay.EMPTY, twiml.EMPTY
        answer = Replay.RELAY, _relay_text(state, route, inbound)
    elif route.outcome is Outcome.MODE:
        return Replay.MODE, twiml.reply(CALLS_ONLY_MESSAGE)
    elif route.outcome is Outcome.KEYWORD and route.keyword is Keyword.HELP:
        answer = Replay.HELP, twiml.reply(opts.help_message)
    elif route.outcome is Outcome.RATE_LIMITED:
        rate_limited("message")
        answer = Replay.RATE_LIMITED, twiml.reply(opts.rate_limit_message)
    elif route.outcome is Outcome.OUTSIDE_WINDOW:  # Twilio would refuse it (63016): the sender is told
        answer = Replay.WINDOW, twiml.reply(opts.whatsapp_window_message)
    elif route.outcome in (Outcome.KEYWORD, Outcome.BLOCKED):  # BLOCKED: the recipient opted out
        answer = Replay.EMPTY, twiml.EMPTY
    else:  # still no session after the out-of-session endpoint's answer
        return Replay.OUT_OF_SESSION, out_of_session.default_answer(opts, "message")
    _notify(state, route)
    return answer


async def _render_call(state: RelayState, route: Route) -> tuple[Replay, str]:
    opts = route.options
    if route.outcome is Outcome.MODE:  # a message-only session
        return Replay.MODE, twiml.say(TEXTS_ONLY_MESSAGE)
    if route.outcome is Outcome.RATE_LIMITED:
        rate_limited("voice")
        _notify(state, route)
        return Replay.RATE_LIMITED, twiml.say(opts.rate_limit_message)
    if route.outcome is not Outcome.RELAY:
        return Replay.OUT_OF_SESSION, out_of_session.default_answer(opts, "voice")
    if opts.intercept_url and not await _intercepted(state, route):
        return Replay.REJECT, twiml.reject()
    reply = _relay_call(state, route)
    _notify(state, route)
    return Replay.RELAY, reply


def _replay(state: RelayState, route: Route, inbound: Inbound) -> str:
    """The first answer rendered again from the records (no intercept, no callback: done once)."""
    opts, voice = route.options, inbound.kind == "voice"
    match route.replay:
        case Replay.RELAY if route.outbound and route.interaction:
            return _relay_call(state, route) if voice else _relay_text(state, route, inbound)
        case Replay.REJECT:
            return twiml.reject()
        case Replay.HELP:
            return twiml.reply(opts.help_message)
        case Replay.MODE:
            return twiml.say(TEXTS_ONLY_MESSAGE) if voice else twiml.reply(CALLS_ONLY_MESSAGE)
        case Replay.RATE_LIMITED:
            return twiml.say(opts.rate_limit_message) if voice else twiml.reply(opts.rate_limit_message)
        case Replay.WINDOW:
            return twiml.reply(opts.whatsapp_window_message)
        case Replay.OUT_OF_SESSION:
            return out_of_session.default_answer(opts, inbound.kind)
        case _:  # in flight, empty, the endpoint's own TwiML (not kept), or records gone
            return twiml.EMPTY


def _pin_answer(state: RelayState, route: Route, inbound: Inbound) -> str:
    """PIN mode, no session chosen: ask for the PIN (again), or refuse while locked out."""
    if route.pin == "locked":
        return twiml.say(PIN_LOCKED) if inbound.kind == "voice" else twiml.reply(PIN_LOCKED)
    wrong = f"{PIN_WRONG} " if route.pin == "wrong" else ""
    if inbound.kind == "message":
        return twiml.reply(wrong + PIN_TEXT_HOWTO)
    action = f"{state.settings.public_url}/twilio/voice"
    return twiml.gather(wrong + PIN_PROMPT, num_digits=PIN_DIGITS, action=action, then=PIN_NONE)


def _text_body(route: Route, inbound: Inbound, out: dict[str, Any]) -> str:
    """The text as relayed to participant `out`: without the PIN the sender started it with (PIN
    mode), with the sender's name in a session of more than two, and with the recipient's own PIN
    in front when the recipient is in PIN mode (the PIN to start a reply with)."""
    body = inbound.body
    if inbound.pin and inbound.pin == route.inbound.get("pin"):
        rest = leading_pin(body)[1]
        body = rest if rest or inbound.media else body  # a bare PIN is relayed as sent
    name = str(route.inbound.get("friendly_name") or "")
    if route.legs and name and route.options.name_prefix:
        body = f"[{name}] {body}"
    return with_pin(out, body)


def _relay_text(state: RelayState, route: Route, inbound: Inbound) -> str:
    """One `<Message>` per recipient (several in a session of more than two), each from the
    recipient's own proxy number with its own status callback; and a reply to the sender when
    some were left out for WhatsApp's closed window."""
    legs: list[tuple[str, str, str, tuple[str, ...], str | None]] = [
        (
            out["identifier"],
            sender_address(out),
            _text_body(route, inbound, out),
            inbound.media,
            _status_url(state, route, "/twilio/status/message", ix.get("sid", "")),
        )
        for out, ix in route.legs or [(route.outbound, route.interaction)]
    ]
    if route.outside_window:
        legs.append(("", "", route.options.whatsapp_window_message, (), None))
    return twiml.messages(legs)


def _relay_call(state: RelayState, route: Route) -> str:
    opts, out = route.options, route.outbound
    base = state.settings.public_url
    query = _status_query(route)
    return twiml.dial(
        number=out["identifier"],
        caller_id=out["proxy_identifier"],
        action=f"{base}/twilio/voice/dial-status?{query}",
        time_limit_s=opts.call_time_limit_s,
        record=opts.record_calls,
        announce=opts.consent or None,
        whisper_url=f"{base}/twilio/voice/whisper?{query}" if (opts.whisper or opts.consent) else None,
        status_callback=f"{base}/twilio/status/call?{query}",
    )


def _status_query(route: Route, interaction_sid: str | None = None) -> str:
    """Which interaction a Twilio callback is about: the route's, or one leg's (`interaction_sid`)."""
    ki = interaction_sid or route.interaction_sid
    kc = route.interaction.get("session_sid") or route.session.get("sid", "")
    return f"Service={route.service_sid}&Interaction={ki}&Session={kc}"


def _status_url(state: RelayState, route: Route, path: str, interaction_sid: str | None = None) -> str:
    return f"{state.settings.public_url}{path}?{_status_query(route, interaction_sid)}"


def _notify(state: RelayState, route: Route) -> None:
    """The Service's CallbackUrl hears of every recorded interaction (in the background)."""
    url = route.options.callback_url
    if url and route.interaction_sid and route.service_sid:
        for interaction in route.interactions:
            state.callbacks.submit(url, state.callback_fields(route.service_sid, interaction))


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
        for interaction in route.interactions:
            await state.interactions.update(ks, interaction["sid"], outbound_status="failed")
        if opts.callback_url:
            blocked = {**route.interaction, "outbound_resource_status": "failed"}
            state.callbacks.submit(opts.callback_url, state.callback_fields(ks, blocked))
    return allowed
