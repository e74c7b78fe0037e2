"""A text or call with no live session for (From, To): never relayed (the Router has already
audited it). The Service's OutOfSessionCallbackUrl is asked, as Twilio Proxy does: TwiML answers
as given; JSON asks for a session to be opened for the caller (keeping the number they dialled),
after which the text or call is routed again. Without an endpoint, or when it fails, the sender
gets the Service's polite out-of-session message."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from multidict import MultiDict

from core.errors import MasklineError
from core.ids import new_sid
from relay import twiml
from relay.api.params import Params
from relay.callbacks import ask_out_of_session
from relay.state import RelayState
from relay.webhooks.boundary import scrub
from relay.webhooks.forms import Inbound
from sessions.models import Mode, ParticipantRequest, RelayOptions, Replay, Route

__all__ = ["handle", "default_answer"]

log = logging.getLogger("maskline.webhooks")


def default_answer(opts: RelayOptions, kind: str) -> str:
    if kind == "voice":
        return twiml.say(opts.out_of_session_message)
    return twiml.reply(opts.out_of_session_message)


async def handle(state: RelayState, route: Route, inbound: Inbound) -> tuple[Replay, str] | Route:
    """The answer (and how a retry replays it), or the new Route once a session was opened for
    the caller."""
    opts = route.options
    default = Replay.OUT_OF_SESSION, default_answer(opts, inbound.kind)
    if not opts.out_of_session_url or route.service_sid is None or route.sender_blocked:
        return default  # a blocked sender never reaches the Service's endpoint (nor a new session)
    timeout_s = min(state.settings.callback_timeout_s, state.settings.webhook_deadline_s * 0.5)
    reply = await ask_out_of_session(
        state.http,
        state.validator,
        opts.out_of_session_url,
        _callback_params(state, route, inbound),
        timeout_s=timeout_s,
    )
    if reply is not None and reply.twiml:
        return Replay.CUSTOM, reply.twiml
    if reply is not None and reply.create is not None:
        if await _open_session(state, route.service_sid, inbound, reply.create):
            # A fresh interaction sid: the out-of-session record already holds this one.
            return await replace(inbound, interaction_sid=new_sid("KI")).route(state.router)
    return default


def _callback_params(state: RelayState, route: Route, inbound: Inbound) -> dict[str, str]:
    params = {k: str(v) for k, v in inbound.form.items()}
    params["interactionServiceSid"] = route.service_sid or ""
    params["interactionAccountSid"] = state.settings.twilio_account_sid
    previous = route.previous
    if previous is not None:
        params["interactionSessionSid"] = str(previous.get("sid", ""))
        params["sessionStatus"] = str(previous.get("status", ""))
        params["sessionClosedReason"] = str(previous.get("closed_reason", ""))
        participants = previous.get("participants") or []
        if isinstance(participants, list):
            for p in participants:
                side = "inbound" if p.get("identifier") == inbound.from_ else "outbound"
                params[f"{side}ParticipantSid"] = str(p.get("sid", ""))
                params[f"{side}ParticipantIdentifier"] = str(p.get("identifier", ""))
                params[f"{side}ParticipantProxyIdentifier"] = str(p.get("proxy_identifier", ""))
    return params


async def _open_session(state: RelayState, ks: str, inbound: Inbound, spec: dict[str, Any]) -> bool:
    """Open the session the endpoint's JSON describes; False (and a log line) when refused."""
    fields = Params(MultiDict((str(k), str(v)) for k, v in spec.items() if v is not None))
    try:
        other = fields.str("participantIdentifier", max_len=64)
        if not other:
            log.warning("out-of-session auto-create JSON has no participantIdentifier; ignored")
            return False
        await state.router.open_for_caller(
            ks,
            from_=inbound.from_,
            to=inbound.to,
            resource_sid=inbound.sid,
            other=ParticipantRequest(
                identifier=other,
                proxy_identifier=fields.str("participantProxyIdentifier", max_len=64) or "",
                friendly_name=fields.str("participantFriendlyName", max_len=255) or "",
            ),
            mode=Mode(fields.str("mode") or Mode.VOICE_AND_MESSAGE.value),
            unique_name=fields.str("uniqueName", max_len=191) or "",
            ttl_s=fields.int("ttl", maximum=31_536_000),
            date_expiry_ms=fields.datetime_ms("dateExpiry"),
        )
    except (MasklineError, ValueError) as err:
        log.warning("out-of-session auto-create refused: %s", scrub(getattr(err, "message", err)))
        return False
    return True
