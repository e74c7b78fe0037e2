"""Every identifier Maskline mints: resource sids (Twilio's shape: two letters and 32 hex digits)
and audit event ids. One place, so their shapes cannot drift apart."""

from __future__ import annotations

import uuid
from typing import Final

__all__ = ["EVENT_ID_PREFIX", "new_sid", "new_event_id", "new_event_id_base", "creation_event_id"]

EVENT_ID_PREFIX: Final = "EV"


def new_sid(prefix: str) -> str:
    """`prefix` + 32 hex digits: KS (Service), PN (number), KC (Session), KP (Participant), KI..."""
    return prefix + uuid.uuid4().hex


def new_event_id() -> str:
    """An audit event id, "EV" + 32 hex; the audit log stores each id once."""
    return new_sid(EVENT_ID_PREFIX)


def new_event_id_base() -> str:
    """ "EV" + 28 hex: a script that emits several events appends 4 hex digits per event."""
    return new_event_id()[:30]


def creation_event_id(sid: str) -> str:
    """The id of the event that creates resource `sid` ("EV" + its 32 hex digits). Deterministic,
    so that two attempts to record one interaction (the route script, then the record of a webhook
    that fell back) store it once: the audit log keeps the first event of an id."""
    return EVENT_ID_PREFIX + sid[2:]
