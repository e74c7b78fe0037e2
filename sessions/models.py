"""Session vocabulary: statuses, modes and the participant a caller asks for."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Status", "Mode", "GeoMatchLevel", "NumberSelection", "ParticipantRequest", "LIVE_STATUSES"]


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
