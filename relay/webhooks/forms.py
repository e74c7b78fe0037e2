"""What a webhook's form says about an inbound text or call, parsed once at the edge."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.ids import new_sid
from pool.numbers import split_channel
from relay.webhooks.boundary import Form
from sessions.models import Route, leading_pin
from sessions.routing import MAX_MEDIA, Router

__all__ = ["Inbound"]

# The most Digits passed on from a <Gather> (a PIN is sessions.models.PIN_DIGITS long).
MAX_DIGITS = 16


@dataclass(slots=True)  # not frozen: built once per webhook, and a frozen __init__ costs more
class Inbound:
    """What the webhook's form says about the text or call."""

    kind: str  # message | voice
    from_: str
    to: str
    sid: str  # MessageSid / CallSid
    body: str
    media: tuple[str, ...]
    form: Form
    # PIN mode: the PIN a text starts with, or the Digits a call's <Gather> posted; else "".
    pin: str = ""
    # Minted here, so a text answered with fallback TwiML is recorded under the sid its route
    # script would have used (relay/fallbacks.py).
    interaction_sid: str = field(default_factory=lambda: new_sid("KI"))

    @classmethod
    def text(cls, form: Form) -> Inbound:
        sid = form.get("MessageSid") or form.get("SmsMessageSid") or form.get("SmsSid") or ""
        try:
            count = min(int(form.get("NumMedia") or 0), MAX_MEDIA)
        except ValueError:
            count = 0
        media = tuple(url for i in range(count) if (url := form.get(f"MediaUrl{i}")))
        body = form.get("Body", "")
        pin = leading_pin(body)[0]
        # WhatsApp: From stays a channel address ("whatsapp:+1...", the participant's identifier),
        # To is the proxy number ("whatsapp:+1..." -> "+1...").
        to = split_channel(form.get("To", ""))[1]
        return cls("message", form.get("From", ""), to, sid, body, media, form, pin)

    @classmethod
    def call(cls, form: Form) -> Inbound:
        # What the caller keyed in at the PIN prompt, as keyed (anything but a live PIN is wrong).
        pin = form.get("Digits", "")[:MAX_DIGITS]
        return cls(
            "voice", form.get("From", ""), form.get("To", ""), form.get("CallSid", ""), "", (), form, pin
        )

    async def route(self, router: Router) -> Route:
        if self.kind == "voice":
            return await router.route_call(
                from_=self.from_,
                to=self.to,
                call_sid=self.sid,
                interaction_sid=self.interaction_sid,
                pin=self.pin,
            )
        return await router.route_text(
            from_=self.from_,
            to=self.to,
            message_sid=self.sid,
            body=self.body,
            media=self.media,
            interaction_sid=self.interaction_sid,
            pin=self.pin,
        )
