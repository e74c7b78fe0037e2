"""Session vocabulary: statuses, modes, the participant a caller asks for, the interaction record,
a Service's relay options, and the routing decision the webhooks render.

INTERACTION_FIELDS (from core/records.py) and RELAY_SETTING_FIELDS are the one definition of those records: the session
Lua scripts receive them as constants (sessions/scripts.py) and write and read them by name."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

import orjson

from core.records import INTERACTION_FIELDS
from pool.numbers import split_channel

__all__ = [
    "Status",
    "Mode",
    "GeoMatchLevel",
    "NumberSelection",
    "ParticipantRequest",
    "LIVE_STATUSES",
    "Outcome",
    "Keyword",
    "Replay",
    "seen_value",
    "INTERACTION_FIELDS",
    "interaction_record",
    "interaction_from_redis",
    "RELAY_SETTING_FIELDS",
    "SESSION_OPTIONAL",
    "SESSION_DEFAULTS",
    "SESSION_AS_CREATED",
    "PARTICIPANT_SLOT",
    "is_slot_field",
    "RelayOptions",
    "Route",
    "DEFAULT_OUT_OF_SESSION_MESSAGE",
    "DEFAULT_HELP_MESSAGE",
    "DEFAULT_RATE_LIMIT_MESSAGE",
    "DEFAULT_WHATSAPP_WINDOW_MESSAGE",
    "LIMIT_OPTIONS",
    "MAX_PARTICIPANTS",
    "PIN_DIGITS",
    "leading_pin",
    "sender_address",
    "with_pin",
    "DEFAULT_RECORDING_CONSENT",
]


class Status(StrEnum):
    OPEN = "open"
    IN_PROGRESS = "in-progress"
    CLOSED = "closed"
    FAILED = "failed"
    UNKNOWN = "unknown"


LIVE_STATUSES = frozenset({Status.OPEN, Status.IN_PROGRESS})


class Mode(StrEnum):
    MESSAGE_ONLY = "message-only"
    VOICE_ONLY = "voice-only"
    VOICE_AND_MESSAGE = "voice-and-message"


class GeoMatchLevel(StrEnum):
    AREA_CODE = "area-code"
    OVERLAY = "overlay"
    RADIUS = "radius"
    COUNTRY = "country"


class NumberSelection(StrEnum):
    AVOID_STICKY = "avoid-sticky"
    PREFER_STICKY = "prefer-sticky"


@dataclass(frozen=True, slots=True)
class ParticipantRequest:
    """A participant as the API receives it (raw strings; validated by the store)."""

    identifier: str
    friendly_name: str = ""
    proxy_identifier: str = ""
    proxy_identifier_sid: str = ""


# -------------------------------------------------------------------------------- routing


class Outcome(StrEnum):
    """What routing an inbound text or call decided (route_inbound.lua's `outcome`)."""

    RELAY = "relay"  # relay it to the other participant
    DUPLICATE = "duplicate"  # Twilio's retry: give the first answer again
    NO_SESSION = "no_session"  # no live session for (From, To): out-of-session handling
    MODE = "mode"  # the session's mode refuses this kind (a call to a message-only session)
    KEYWORD = "keyword"  # STOP / START / HELP: never relayed
    BLOCKED = "blocked"  # the recipient opted out of texts from that proxy number
    RATE_LIMITED = "rate_limited"  # the sender or the proxy number is over the Service's limits
    OUTSIDE_WINDOW = "outside_window"  # every recipient is on WhatsApp outside its 24-hour window
    PIN = "pin"  # PIN mode, no session chosen: ask for the PIN (Route.pin says why) or refuse
    UNKNOWN_NUMBER = "unknown_number"  # To is no Service's number


class Replay(StrEnum):
    """What the answer to a MessageSid / CallSid was, remembered for Twilio's retry (the `seen:`
    key holds "<replay>:<KI>", never the TwiML: no number or body outlives the interaction there).
    A retry is answered by rendering the same answer again from the interaction's records."""

    IN_FLIGHT = ""  # routed, not answered yet: a retry gets nothing (never a second relay)
    RELAY = "relay"
    EMPTY = "empty"
    REJECT = "reject"
    HELP = "help"
    OUT_OF_SESSION = "oos"  # the Service's out-of-session message
    MODE = "mode"  # "this number only accepts texts / calls"
    RATE_LIMITED = "limited"  # the Service's rate-limit reply
    WINDOW = "window"  # the Service's WhatsApp-window reply
    CUSTOM = "custom"  # TwiML from the Service's endpoint: not kept, a retry gets nothing


def seen_value(replay: Replay, interaction_sid: str) -> str:
    """What the `seen:` key holds once a MessageSid / CallSid was answered (route_inbound.lua
    parses it back)."""
    return f"{replay.value}:{interaction_sid}"


class Keyword(StrEnum):
    NONE = ""
    OPT_OUT = "optout"
    OPT_IN = "optin"
    HELP = "help"


def interaction_record(**values: Any) -> dict[str, str]:
    """An interaction record built in Python: every field, "" where not given."""
    unknown = set(values) - set(INTERACTION_FIELDS)
    if unknown:
        raise ValueError(f"not interaction fields: {sorted(unknown)}")
    return {f: str(values.get(f, "")) for f in INTERACTION_FIELDS}


def interaction_from_redis(sid: str, row: dict[str, Any]) -> dict[str, Any]:
    """An interaction's Redis hash, whole again (interaction_stored in _session.lua): its sid (the
    key's), its resource types (by its type and origin) and its empty fields are not stored."""
    full: dict[str, Any] = {**dict.fromkeys(INTERACTION_FIELDS, ""), **row}
    kind = "Call" if full["type"] == "voice" else "Message"
    full["sid"], full["outbound_resource_type"] = sid, kind
    full["inbound_resource_type"] = kind if full["origin"] == "inbound" else ""
    return full


# -------------------------------------------------------------------------------- relay options

DEFAULT_OUT_OF_SESSION_MESSAGE: Final = "This conversation has ended. Please contact us through the app."
DEFAULT_RATE_LIMIT_MESSAGE: Final = (
    "Too many messages or calls in a short time; please wait a moment and try again."
)
DEFAULT_HELP_MESSAGE: Final = (
    "This is a masked number for your conversation. Reply STOP to stop texts from it."
)
DEFAULT_RECORDING_CONSENT: Final = "This call may be recorded."
DEFAULT_WHATSAPP_WINDOW_MESSAGE: Final = (
    "Your message was not delivered: the other person has not written on WhatsApp in the last "
    "24 hours. They will get your messages once they write again."
)

# The Service's settings the relay needs, as published in its `svc` hash (sessions/services.py)
# and returned by route_inbound.lua; `options` is JSON (the Maskline extensions).
# The Service's abuse limits (options, 0 or absent: none), in the order of the `limits` field of
# its `svc` hash that route_inbound.lua reads: texts per minute and calls per hour per participant
# number, then per proxy number.
LIMIT_OPTIONS: Final = (
    "texts_per_minute",
    "calls_per_hour",
    "proxy_texts_per_minute",
    "proxy_calls_per_hour",
)

# A Service's MaxParticipants may raise a session's participants from Twilio's 2 up to this.
MAX_PARTICIPANTS: Final = 50

# PIN mode (a Service's FallbackNumber): a participant's PIN on the shared number, and a text to
# it that starts with one ("1234 on my way": the PIN, then a space or the end).
PIN_DIGITS: Final = 4
_LEADING_PIN: Final = re.compile(rf"\s*(\d{{{PIN_DIGITS}}})(?:\s+|$)")


def leading_pin(body: str) -> tuple[str, str]:
    """(the PIN a text starts with, the rest of the text), or ("", body)."""
    found = _LEADING_PIN.match(body)
    return (found.group(1), body[found.end() :]) if found else ("", body)


def sender_address(participant: dict[str, Any]) -> str:
    """The `From` of a text to `participant`: their proxy number on their channel
    ("whatsapp:+1..." for a WhatsApp participant)."""
    return split_channel(participant["identifier"])[0] + str(participant["proxy_identifier"])


def with_pin(participant: dict[str, Any], body: str) -> str:
    """A text to `participant`, preceded by their PIN when they are in PIN mode (what to start a
    reply to the shared number with); as it is otherwise."""
    pin = participant.get("pin")
    return f"PIN {pin}: {body}" if pin else body


# A session's hash leaves out its empty optional fields and the fields that hold their default
# (each would cost Redis memory for every session); sessions/store.py session_record and
# _session.lua's session_record (which gets both as Lua constants) fill them in.
SESSION_OPTIONAL: Final = (
    "unique_name",
    "date_expiry_ms",
    "last_interaction_ms",
    "ended_ms",
    "closed_reason",
)
SESSION_DEFAULTS: Final = {"mode": Mode.VOICE_AND_MESSAGE.value, "ttl": "0", "expires_at_ms": "0"}
# ...and the times that hold its created_ms until something happens to it.
SESSION_AS_CREATED: Final = ("updated_ms", "started_ms", "last_activity_ms")

# A session's live participants are fields of the session's hash (one key per session, not one
# more per participant): field `{n}{code}` holds participant n's value of the field `code` stands
# for, n its place in the session's `parts` (1-based). Left out besides the empty fields:
# created_ms when it is the session's, updated_ms when it is the participant's created_ms. A
# participant removed from its session gets a hash of its own (`part:{KP}`, full field names,
# with deleted_ms). _session.lua (as a Lua constant) and sessions/store.py read and write them.
PARTICIPANT_SLOT: Final = {
    "identifier": "i",
    "proxy_identifier": "x",
    "proxy_identifier_sid": "s",
    "friendly_name": "f",
    "pin": "n",
    "created_ms": "c",
    "updated_ms": "u",
}
_SLOT_FIELD: Final = re.compile(r"[0-9]+[a-z]")


def is_slot_field(name: str) -> bool:
    """A participant's field in its session's hash (PARTICIPANT_SLOT), not one of the session's."""
    return _SLOT_FIELD.fullmatch(name) is not None


RELAY_SETTING_FIELDS: Final = (
    "callback_url",
    "intercept_callback_url",
    "out_of_session_callback_url",
    "options",
)


@dataclass(frozen=True, slots=True)
class RelayOptions:
    """A Service's relay settings, parsed from its `svc` hash fields (RELAY_SETTING_FIELDS)."""

    callback_url: str = ""
    intercept_url: str = ""
    out_of_session_url: str = ""
    call_time_limit_s: int | None = None
    whisper: str = ""
    record_calls: bool = False
    recording_consent: str = ""
    out_of_session_message: str = DEFAULT_OUT_OF_SESSION_MESSAGE
    help_message: str = DEFAULT_HELP_MESSAGE
    rate_limit_message: str = DEFAULT_RATE_LIMIT_MESSAGE
    name_prefix: bool = True  # sessions of more than two: "[Name] " before a relayed text
    # The reply to a text that reached no WhatsApp recipient inside its 24-hour window.
    whatsapp_window_message: str = DEFAULT_WHATSAPP_WINDOW_MESSAGE

    @classmethod
    def from_settings(cls, settings: dict[str, Any] | None) -> RelayOptions:
        values = settings or {}
        raw = values.get("options")
        try:
            options = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            options = {}
        if not isinstance(options, dict):
            options = {}
        limit = options.get("call_time_limit_s")
        return cls(
            callback_url=values.get("callback_url") or "",
            intercept_url=values.get("intercept_callback_url") or "",
            out_of_session_url=values.get("out_of_session_callback_url") or "",
            call_time_limit_s=int(limit) if isinstance(limit, int) and limit > 0 else None,
            whisper=str(options.get("whisper") or ""),
            record_calls=bool(options.get("record_calls")),
            recording_consent=str(options.get("recording_consent") or ""),
            out_of_session_message=str(
                options.get("out_of_session_message") or DEFAULT_OUT_OF_SESSION_MESSAGE
            ),
            help_message=str(options.get("help_message") or DEFAULT_HELP_MESSAGE),
            rate_limit_message=str(options.get("rate_limit_message") or DEFAULT_RATE_LIMIT_MESSAGE),
            name_prefix=options.get("name_prefix") is not False,
            whatsapp_window_message=str(
                options.get("whatsapp_window_message") or DEFAULT_WHATSAPP_WINDOW_MESSAGE
            ),
        )

    @property
    def consent(self) -> str:
        return (self.recording_consent or DEFAULT_RECORDING_CONSENT) if self.record_calls else ""


@dataclass(slots=True)  # not frozen: built once per webhook, and a frozen __init__ costs more
class Route:
    """The routing decision for one inbound text or call; the webhook renders it as TwiML."""

    outcome: Outcome
    service_sid: str | None = None
    options: RelayOptions = field(default_factory=RelayOptions)
    session: dict[str, Any] = field(default_factory=dict)
    inbound: dict[str, Any] = field(default_factory=dict)  # the sender's participant
    outbound: dict[str, Any] = field(default_factory=dict)  # the other participant
    interaction: dict[str, str] = field(default_factory=dict)  # the record, as stored
    previous: dict[str, Any] | None = None  # NO_SESSION: the closed session the pair last had
    keyword: Keyword = Keyword.NONE
    replay: Replay = Replay.IN_FLIGHT  # DUPLICATE: the answer given the first time
    sender_blocked: bool = False  # NO_SESSION because From is on the Service's block list
    # A text in a session of more than two: (participant, interaction) of every recipient, the
    # first being `outbound` and `interaction`. Empty otherwise.
    legs: list[tuple[dict[str, Any], dict[str, str]]] = field(default_factory=list)
    # PIN mode (To is the Service's shared FallbackNumber): "" when not, else for Outcome.PIN
    # needed | wrong | locked, and "unknown" for a NO_SESSION sender holding no PIN on it.
    pin: str = ""
    # RELAY: recipients left out because they are on WhatsApp outside their 24-hour window.
    outside_window: int = 0

    @property
    def interaction_sid(self) -> str:
        return self.interaction.get("sid", "")

    @property
    def interactions(self) -> list[dict[str, str]]:
        """Every interaction the route recorded: one per leg, else its one (none if it recorded none)."""
        return [ix for _, ix in self.legs] or ([self.interaction] if self.interaction else [])
