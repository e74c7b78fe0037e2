"""Records more than one package reads: the interaction record's field list, defined once. The
session scripts write it (sessions/lua/_session.lua gets it as a Lua constant), sessions/ builds it
in Python, and the audit log rebuilds Interactions from it (audit/queries.py)."""

from __future__ import annotations

from typing import Final

__all__ = ["INTERACTION_FIELDS"]

# The interaction record (`ml:{KS}:ix:{KI}` and the `interaction.created` event's data). `origin`:
# inbound (a webhook), api (a proactive MessageInteraction); `outcome` is an Outcome, "proactive",
# "out_of_session" or "not_relayed" (answered with fallback TwiML: the store failed or stalled).
# Every field is a string in Redis.
INTERACTION_FIELDS: Final = (
    "sid",
    "session_sid",
    "type",
    "data",
    "outcome",
    "origin",
    "inbound_participant_sid",
    "inbound_resource_sid",
    "inbound_resource_status",
    "inbound_resource_type",
    "outbound_participant_sid",
    "outbound_resource_sid",
    "outbound_resource_status",
    "outbound_resource_type",
    "created_ms",
    "updated_ms",
)
