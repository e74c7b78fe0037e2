"""A proactive text to one participant, from their proxy number, through Twilio's Messages API:
recorded as an interaction first (record_proactive.lua checks the session, the participant and
their opt-out), then sent, then the interaction updated with Twilio's answer. The API's
MessageInteractions and the scheduler (relay/scheduler.py) both send this way; the scheduler
applies Twilio's answer in the same step as the scheduled message's end (finish_scheduled.lua)."""

from __future__ import annotations

from typing import Any

from relay.outbound import TwilioSendError
from relay.state import RelayState
from sessions.models import sender_address, with_pin

__all__ = ["record_and_send", "send_proactive", "twilio_answer"]


async def send_proactive(
    state: RelayState, service_sid: str, session_sid: str, participant_sid: str, data: dict[str, Any]
) -> dict[str, Any]:
    """The interaction as updated with Twilio's answer. Raises MasklineError (nothing sent) or
    TwilioSendError (the interaction is marked failed)."""
    ix, message = await record_and_send(state, service_sid, session_sid, participant_sid, data)
    sid, status = twilio_answer(message)
    updated = await state.interactions.update(
        service_sid, ix["sid"], outbound_resource_sid=sid, outbound_status=status
    )
    return updated or ix


def twilio_answer(message: dict[str, Any]) -> tuple[str, str]:
    """The Message sid and status Twilio answered a send with, for its interaction."""
    return str(message.get("sid") or ""), str(message.get("status") or "queued")


async def record_and_send(
    state: RelayState, service_sid: str, session_sid: str, participant_sid: str, data: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The interaction as recorded and Twilio's Message resource; the caller applies the latter
    to the former (send_proactive, or the scheduler in the same step as the message's end)."""
    ix, participant = await state.interactions.record_proactive(
        service_sid, session_sid, participant_sid, data
    )
    ki = ix["sid"]
    try:
        message = await state.messages.send(
            to=participant["identifier"],
            from_=sender_address(participant),
            body=with_pin(participant, str(data.get("body") or "")),
            content_sid=str(data.get("content_sid") or ""),
            content_variables=str(data.get("content_variables") or ""),
            media_urls=list(data.get("media") or ()),
            status_callback=state.url(
                f"/twilio/status/message?Service={service_sid}&Interaction={ki}&Session={session_sid}"
            ),
        )
    except TwilioSendError:
        await state.interactions.update(service_sid, ki, outbound_status="failed")
        raise
    return ix, message
