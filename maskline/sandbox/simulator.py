"""A simulated Twilio for the sandbox (`maskline dev`) and the end-to-end tests: phones that text
and call Maskline's proxy numbers.

It plays Twilio's part both ways. Inbound: a phone's text or call becomes the webhook Twilio would
post (its form fields, `X-Twilio-Signature` over the URL and the sorted parameters, computed with
twilio's RequestValidator), and the TwiML Maskline answers is carried out: `<Message to from>`
delivers a text to that phone from that number, `<Message>` alone answers the sender from the
proxy number, `<Dial callerId><Number>` rings the phone with the proxy number as caller ID,
`<Say>` is shown to the caller. Outbound: Twilio's Messages API (`POST .../Messages.json`)
delivers a proactive text and posts the status callbacks. Answering, declining or hanging up a
call posts the `<Dial action>` and `<Number statusCallback>` requests Twilio would.

Every change is an event (`Simulator.events`): the phones page streams them (SSE)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
from twilio.request_validator import RequestValidator

from pool.numbers import parse_proxy_number

__all__ = ["Simulator", "Call", "REAL_TWILIO_HOSTS"]

# The simulated Twilio must never stand in front of the real one (credentials would go there).
REAL_TWILIO_HOSTS: Final = ("twilio.com",)
USER_AGENT: Final = "TwilioProxy/1.1"


@dataclass
class Call:
    sid: str
    caller: str  # the phone that called
    proxy: str  # the number it called
    ringing: str | None = None  # the phone that rings (caller ID: `caller_id`)
    caller_id: str | None = None
    action: str | None = None  # <Dial action>: told how the dial ended
    status_callback: str | None = None  # <Number statusCallback>
    status: str = "ringing"  # ringing -> in-progress -> completed | busy | no-answer
    time_limit_s: float | None = None  # <Dial timeLimit>: hung up after this long, as Twilio does


@dataclass
class Simulator:
    account_sid: str
    auth_token: str
    maskline_url: str  # where Maskline's webhooks are (its public URL: what Twilio signs)
    phones: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # number -> its events
    calls: dict[str, Call] = field(default_factory=dict)
    _listeners: set[asyncio.Queue[dict[str, Any]]] = field(default_factory=set)
    _http: aiohttp.ClientSession | None = None
    _timers: set[asyncio.Task[None]] = field(default_factory=set)

    # ------------------------------------------------------------------ phones and events

    def add_phone(self, number: str) -> str:
        e164 = normalize(number)
        if e164 not in self.phones:
            self.phones[e164] = []
            self._emit({"kind": "phone", "phone": e164})
        return e164

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)
        self._listeners.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._listeners.discard(queue)

    def close_streams(self) -> None:
        """End every event stream (the server is stopping): each gets a `closing` event."""
        for queue in list(self._listeners):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait({"kind": "closing"})

    def _emit(self, event: dict[str, Any]) -> None:
        phone = event.get("phone")
        if phone in self.phones and event["kind"] != "phone":
            self.phones[phone].append(event)
        for queue in list(self._listeners):
            if queue.full():  # a stalled page: drop it rather than grow without bound
                self._listeners.discard(queue)
            else:
                queue.put_nowait(event)

    def _deliver(self, to: str, from_: str, body: str, media: list[str], *, via: str) -> None:
        if to not in self.phones:
            self._emit(
                {"kind": "notice", "phone": None, "text": f"{via}: a text to {to}, not a sandbox phone"}
            )
            return
        self._emit(
            {"kind": "text", "phone": to, "direction": "in", "from": from_, "body": body, "media": media}
        )

    # ------------------------------------------------------------------ inbound: phone -> Maskline

    async def text(self, phone: str, to: str, body: str) -> None:
        """The phone texts `to` (a proxy number): Twilio's SMS webhook, then its TwiML carried out."""
        phone, to = self.add_phone(phone), normalize(to)
        sid = "SM" + secrets.token_hex(16)
        self._emit({"kind": "text", "phone": phone, "direction": "out", "to": to, "body": body, "media": []})
        params = {
            "AccountSid": self.account_sid,
            "ApiVersion": "2010-04-01",
            "Body": body,
            "From": phone,
            "To": to,
            "MessageSid": sid,
            "SmsMessageSid": sid,
            "SmsSid": sid,
            "SmsStatus": "received",
            "NumMedia": "0",
            "NumSegments": "1",
        }
        status, xml = await self.post_signed("/twilio/sms", params)
        if status != 200:
            self._emit({"kind": "notice", "phone": phone, "text": f"Maskline answered HTTP {status}"})
            return
        root = ET.fromstring(xml)
        messages = root.findall("Message")
        if not messages:
            self._emit({"kind": "notice", "phone": phone, "text": "not relayed (no <Message> in the TwiML)"})
        for msg in messages:
            text = "".join(msg.itertext())
            media = [m.text or "" for m in msg.findall("Media")]
            receiver, sender = msg.get("to") or phone, msg.get("from") or to
            self._deliver(receiver, sender, text, media, via="TwiML")
            await self._message_status(msg.get("statusCallback"), receiver, sender)

    async def call(self, phone: str, to: str) -> Call:
        """The phone calls `to`: Twilio's voice webhook; `<Dial>` rings the other phone."""
        phone, to = self.add_phone(phone), normalize(to)
        call = Call(sid="CA" + secrets.token_hex(16), caller=phone, proxy=to)
        self.calls[call.sid] = call
        params = {
            "AccountSid": self.account_sid,
            "ApiVersion": "2010-04-01",
            "CallSid": call.sid,
            "CallStatus": "ringing",
            "Direction": "inbound",
            "From": phone,
            "Caller": phone,
            "To": to,
            "Called": to,
        }
        self._emit({"kind": "call", "phone": phone, "direction": "out", "to": to, "sid": call.sid})
        status, xml = await self.post_signed("/twilio/voice", params)
        root = ET.fromstring(xml) if status == 200 else ET.Element("Response")
        for said in root.iter("Say"):
            self._emit({"kind": "say", "phone": phone, "text": said.text or "", "sid": call.sid})
        dial = root.find("Dial")
        number = dial.find("Number") if dial is not None else None
        if dial is None or number is None or not (number.text or "").strip():
            call.status = "completed"
            self._emit({"kind": "hangup", "phone": phone, "sid": call.sid, "status": "completed"})
            return call
        call.ringing = (number.text or "").strip()
        call.caller_id = dial.get("callerId")
        call.action, call.status_callback = dial.get("action"), number.get("statusCallback")
        limit = dial.get("timeLimit")
        call.time_limit_s = float(limit) if limit and limit.isdigit() else None
        if call.ringing not in self.phones:
            await self.end(call.sid, "no-answer")
        else:
            self._emit({"kind": "ring", "phone": call.ringing, "from": call.caller_id, "sid": call.sid})
        return call

    async def answer(self, sid: str) -> None:
        call = self.calls[sid]
        if call.status != "ringing" or call.ringing is None:
            return
        call.status = "in-progress"
        await self._number_status(call, "in-progress")
        for phone in (call.caller, call.ringing):
            self._emit(
                {"kind": "connected", "phone": phone, "sid": sid, "with": call.caller_id or call.proxy}
            )
        if call.time_limit_s:
            self._timers.add(asyncio.create_task(self._hang_up_after(sid, call.time_limit_s)))

    async def _hang_up_after(self, sid: str, seconds: float) -> None:
        await asyncio.sleep(seconds)
        if sid in self.calls:
            caller = self.calls[sid].caller
            self._emit({"kind": "notice", "phone": caller, "text": f"time limit ({seconds:.0f} s) reached"})
            await self.end(sid, "completed")

    async def end(self, sid: str, outcome: str = "completed") -> None:
        """Hang up (`completed`), decline (`busy`) or let ring out (`no-answer`)."""
        call = self.calls.pop(sid, None)
        if call is None:
            return
        answered = call.status == "in-progress"
        call.status = "completed" if answered else outcome
        if answered:
            await self._number_status(call, "completed")
        if call.action:
            await self.post_signed(
                call.action,
                {
                    "AccountSid": self.account_sid,
                    "CallSid": call.sid,
                    "DialCallSid": "CA" + secrets.token_hex(16),
                    "DialCallStatus": call.status,
                    "DialCallDuration": "1" if answered else "0",
                },
            )
        for phone in {call.caller, call.ringing} - {None}:
            self._emit({"kind": "hangup", "phone": phone, "sid": sid, "status": call.status})

    async def _number_status(self, call: Call, status: str) -> None:
        if call.status_callback:
            await self.post_signed(
                call.status_callback,
                {
                    "AccountSid": self.account_sid,
                    "CallSid": "CA" + call.sid[2:],
                    "ParentCallSid": call.sid,
                    "CallStatus": status,
                    "From": call.caller_id or "",
                    "To": call.ringing or "",
                },
            )

    # ------------------------------------------------------------------ outbound: Maskline -> phone

    async def send_message(self, form: Mapping[str, str], media: list[str]) -> dict[str, Any]:
        """Twilio's Messages API: deliver now, then tell the StatusCallback `sent` and `delivered`."""
        sid = "SM" + secrets.token_hex(16)
        to, from_ = form.get("To", ""), form.get("From", "")
        self._deliver(to, from_, form.get("Body", ""), media, via="Messages API")
        await self._message_status(form.get("StatusCallback"), to, from_, sid)
        return {
            "sid": sid,
            "account_sid": self.account_sid,
            "to": to,
            "from": from_,
            "body": form.get("Body", ""),
            "status": "queued",
            "num_media": str(len(media)),
            "api_version": "2010-04-01",
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json",
        }

    async def _message_status(self, callback: str | None, to: str, from_: str, sid: str = "") -> None:
        """A message's StatusCallback, told `sent` then `delivered` (or `undelivered` when `to`
        is no sandbox phone), as Twilio tells it."""
        if not callback:
            return
        sid = sid or "SM" + secrets.token_hex(16)
        for status in ("sent", "delivered" if to in self.phones else "undelivered"):
            params = {
                "AccountSid": self.account_sid,
                "MessageSid": sid,
                "MessageStatus": status,
                "To": to,
                "From": from_,
            }
            await self.post_signed(callback, params)

    # ------------------------------------------------------------------ HTTP

    async def post_signed(self, url: str, params: Mapping[str, str]) -> tuple[int, str]:
        """POST a form to Maskline as Twilio does: signed over the full URL and the parameters."""
        if url.startswith("/"):
            url = self.maskline_url + url
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        signature = RequestValidator(self.auth_token).compute_signature(url, dict(params))
        headers = {"X-Twilio-Signature": signature, "User-Agent": USER_AGENT}
        try:
            async with self._http.post(url, data=dict(params), headers=headers) as resp:
                return resp.status, await resp.text()
        except aiohttp.ClientError as err:
            self._emit(
                {"kind": "notice", "phone": params.get("From"), "text": f"Maskline unreachable: {err}"}
            )
            return 599, ""

    async def aclose(self) -> None:
        for timer in self._timers:
            timer.cancel()
        if self._http is not None:
            await self._http.close()
            self._http = None


def normalize(number: str) -> str:
    """E.164, or InvalidParameter (20422) naming what is wrong."""
    return parse_proxy_number(number).e164
