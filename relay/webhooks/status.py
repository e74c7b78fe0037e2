"""Twilio's callbacks about a relay in flight: the whisper the callee hears, the <Dial> outcome,
and the status callbacks of relayed messages and calls. Each updates the interaction (statuses
never move backwards) and tells the Service's CallbackUrl."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from relay import twiml
from relay.state import RELAY
from relay.webhooks.boundary import Form, forbidden, log_fault, read_signed, xml

__all__ = ["routes"]

routes = web.RouteTableDef()


@routes.post("/twilio/voice/whisper")
async def whisper(request: web.Request) -> web.Response:
    """What the callee hears on answering, before the two are connected (<Number url=...>)."""
    form = await read_signed(request)
    if form is None:
        return forbidden(request)
    state = request.app[RELAY]
    ks = request.query.get("Service", "")
    try:
        async with state.webhook_deadline.limit():
            opts = await state.router.relay_options(ks)
        text = " ".join(t for t in (opts.whisper, opts.consent) if t)
    except Exception as err:
        log_fault("whisper", form, err)
        text = ""
    # No <Hangup/>: that would end the callee's leg instead of connecting it.
    return xml(twiml.say(text, hangup=False) if text else twiml.EMPTY)


@routes.post("/twilio/voice/dial-status")
async def dial_status(request: web.Request) -> web.Response:
    """<Dial action>: the outcome of the connected call. Empty TwiML ends the caller's leg."""
    form = await read_signed(request)
    if form is None:
        return forbidden(request)
    duration = form.get("DialCallDuration")
    await _apply_status(
        request,
        form,
        outbound_sid=form.get("DialCallSid"),
        outbound_status=form.get("DialCallStatus"),
        inbound_status="completed",
        data={"duration": duration} if duration else None,
    )
    return xml(twiml.EMPTY)


@routes.post("/twilio/status/message")
async def message_status(request: web.Request) -> web.Response:
    form = await read_signed(request)
    if form is None:
        return forbidden(request)
    await _apply_status(
        request, form, outbound_sid=form.get("MessageSid"), outbound_status=form.get("MessageStatus")
    )
    return web.Response(status=204)


@routes.post("/twilio/status/call")
async def call_status(request: web.Request) -> web.Response:
    """statusCallback of the outbound leg (<Number statusCallback=...>)."""
    form = await read_signed(request)
    if form is None:
        return forbidden(request)
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
        async with state.webhook_deadline.limit():
            row = await state.interactions.update(
                ks,
                ki,
                session_sid=request.query.get("Session", ""),
                outbound_resource_sid=outbound_sid,
                outbound_status=outbound_status,
                inbound_status=inbound_status,
                data=data,
            )
            if row is not None:
                callback_url = (await state.router.relay_options(ks)).callback_url
                if callback_url:
                    state.callbacks.submit(callback_url, state.callback_fields(ks, row))
    except Exception as err:
        log_fault(request.path, form, err)
