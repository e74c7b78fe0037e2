"""TwiML for the webhooks, built by hand: the relay answers thousands of webhooks a second and
twilio.twiml's ElementTree round trip costs more than the rest of the answer. Every text goes
through `escape` and every attribute through `quoteattr` (or as it is when it holds nothing they
would change); tests/test_relay_messages.py checks that each builder parses and matches what
twilio.twiml produces for the same input."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final
from xml.sax.saxutils import escape, quoteattr

__all__ = [
    "EMPTY",
    "XML_DECL",
    "messages",
    "reply",
    "say",
    "gather",
    "dial",
    "reject",
    "text_safe",
]

XML_DECL: Final = '<?xml version="1.0" encoding="UTF-8"?>'
EMPTY: Final = XML_DECL + "<Response />"

# Characters XML 1.0 cannot carry at all (a body with one would make the whole answer unparsable).
_NOT_XML_CHARS: Final = "\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff"
_NOT_XML: Final = re.compile(f"[{_NOT_XML_CHARS}]")
# What escape / quoteattr would change: a string with none of these goes out as it is (most
# numbers and bodies: one search instead of the escaping's replaces).
_TEXT_UNSAFE: Final = re.compile(f"[&<>{_NOT_XML_CHARS}]")
_ATTR_UNSAFE: Final = re.compile(f'[&<>"\n\r\t{_NOT_XML_CHARS}]')


def text_safe(text: str) -> str:
    if _TEXT_UNSAFE.search(text) is None:
        return text
    return escape(_NOT_XML.sub("", text))


def _attr(value: str) -> str:
    if _ATTR_UNSAFE.search(value) is None:
        return f'"{value}"'
    return quoteattr(_NOT_XML.sub("", value))


def messages(legs: Sequence[tuple[str, str, str, Sequence[str], str | None]]) -> str:
    """Relay a text: one `<Message to from [statusCallback]>body<Media>...</Media></Message>` per
    (to, from, body, media, statusCallback) leg; a leg with an empty `to` is a reply to the sender."""
    return f"{XML_DECL}<Response>{''.join(_message(*leg) for leg in legs)}</Response>"


def _message(to: str, from_: str, body: str, media: Sequence[str], status_callback: str | None) -> str:
    # No `to`: a reply to the sender, from the number they wrote to.
    attrs = f" to={_attr(to)} from={_attr(from_)}" if to else ""
    if status_callback:
        attrs += f" statusCallback={_attr(status_callback)}"
    if media:
        inner = f"<Body>{text_safe(body)}</Body>" + "".join(f"<Media>{text_safe(m)}</Media>" for m in media)
    else:
        inner = text_safe(body)
    return f"<Message{attrs}>{inner}</Message>"


def reply(body: str) -> str:
    """A text back to the sender, from the number they texted."""
    return f"{XML_DECL}<Response><Message>{text_safe(body)}</Message></Response>"


def say(text: str, *, hangup: bool = True) -> str:
    tail = "<Hangup />" if hangup else ""
    return f"{XML_DECL}<Response><Say>{text_safe(text)}</Say>{tail}</Response>"


def gather(prompt: str, *, num_digits: int, action: str, then: str) -> str:
    """Ask for digits: `<Gather numDigits action method=POST><Say>prompt</Say></Gather>`; Twilio
    posts the Digits to `action`, or, when none come, goes on to `<Say>then</Say><Hangup/>`."""
    return (
        f'{XML_DECL}<Response><Gather numDigits="{num_digits}" action={_attr(action)} method="POST">'
        f"<Say>{text_safe(prompt)}</Say></Gather><Say>{text_safe(then)}</Say><Hangup /></Response>"
    )


def reject() -> str:
    return f"{XML_DECL}<Response><Reject /></Response>"


def dial(
    *,
    number: str,
    caller_id: str,
    action: str,
    time_limit_s: int | None = None,
    record: bool = False,
    announce: str | None = None,
    whisper_url: str | None = None,
    status_callback: str | None = None,
) -> str:
    """Connect a call: `[<Say>announce</Say>]<Dial callerId action [timeLimit] [record]><Number>`.
    callerId is always set: without it Twilio passes the caller's real number through."""
    attrs = f" action={_attr(action)} callerId={_attr(caller_id)}"
    if record:
        attrs += ' record="record-from-answer-dual"'
    if time_limit_s:
        attrs += f' timeLimit="{int(time_limit_s)}"'
    number_attrs = ""
    if status_callback:
        number_attrs += f' statusCallback={_attr(status_callback)} statusCallbackEvent="answered completed"'
    if whisper_url:
        number_attrs += f" url={_attr(whisper_url)}"
    head = f"<Say>{text_safe(announce)}</Say>" if announce else ""
    return f"{XML_DECL}<Response>{head}<Dial{attrs}><Number{number_attrs}>{text_safe(number)}</Number></Dial></Response>"
