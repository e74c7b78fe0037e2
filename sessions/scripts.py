"""The session scripts' Lua library: core helpers, the pool's allocation helpers, then
sessions/lua (the session state machine), with the record field lists and session defaults of
sessions/models.py (PARTICIPANT_SLOT: the participants' fields in a session's hash) and
core/records.py's STATUS_RANK as Lua constants."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from core.records import STATUS_RANK
from pool.scripts import POOL_LUA
from sessions.models import (
    INTERACTION_FIELDS,
    PARTICIPANT_SLOT,
    RELAY_SETTING_FIELDS,
    SESSION_AS_CREATED,
    SESSION_DEFAULTS,
    SESSION_OPTIONAL,
)

__all__ = ["SESSION_LUA"]

SESSION_LUA: Final = POOL_LUA.extend(
    Path(__file__).parent / "lua",
    constants={
        "INTERACTION_FIELDS": INTERACTION_FIELDS,
        "RELAY_SETTING_FIELDS": RELAY_SETTING_FIELDS,
        "STATUS_RANK": STATUS_RANK,
        "SESSION_OPTIONAL": SESSION_OPTIONAL,
        "SESSION_DEFAULTS": SESSION_DEFAULTS,
        "SESSION_AS_CREATED": SESSION_AS_CREATED,
        "PARTICIPANT_SLOT": PARTICIPANT_SLOT,
        # (by the code's byte: session_record reads a field's code with string.byte)
        "SLOT_NAME": {ord(code): name for name, code in PARTICIPANT_SLOT.items()},
    },
)
