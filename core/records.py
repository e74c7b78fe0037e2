"""Records more than one package reads: the interaction record's field list, defined once. The
session scripts write it (sessions/lua/_session.lua gets it as a Lua constant), sessions/ builds it
in Python, and the audit log rebuilds Interactions from it (audit/queries.py)."""

from __future__ import annotations

from typing import Final

__all__ = ["INTERACTION_FIELDS", "STATUS_RANK"]

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

# A status callback may arrive out of order (Twilio posts each in its own request): never move a
# resource back from a later state to an earlier one (update_interaction.lua, and the audit log's
# fold of an interaction's events: audit/queries.py).
STATUS_RANK: Final[dict[str, int]] = {
    "": 0,
    "initiated": 1,
    "accepted": 1,
    "scheduled": 1,
    "queued": 2,
    "ringing": 2,
    "sending": 3,
    "in-progress": 3,
    "answered": 3,
    "receiving": 3,
    "received": 4,
    "sent": 4,
    "delivery-unknown": 5,
    "delivered": 6,
    "undelivered": 6,
    "failed": 6,
    "completed": 6,
    "busy": 6,
    "no-answer": 6,
    "canceled": 6,
    "deleted": 7,
}
