"""Every Redis key shape Maskline uses, built here for Python. See docs/design.md for what each holds.

Keys of one Service share the hash tag `{KS...}`, so each Lua script touches a single hash slot.
The Lua scripts build the same shapes from the prefix they get as KEYS[1] (`service_prefix`):
`P .. 'pair:' .. identifier .. ':' .. proxy` is `pair(...)` here; each function below names
the script helper that builds it too."""

from __future__ import annotations

from typing import Final

__all__ = [
    "PREFIX",
    "SERVICES",
    "EVENT_STREAMS",
    "GLOBAL_PREFIX",
    "service_prefix",
    "service_settings",
    "session",
    "sessions_by_created",
    "participant",
    "pair",
    "number",
    "proxy_owner",
    "events",
    "interaction",
    "session_interactions",
    "optout",
    "seen",
    "unique_name",
    "expiry",
    "regions",
    "pool_zset",
    "number_sids",
    "last_proxy",
    "inflight",
    "blocked",
    "scheduled",
    "session_scheduled",
    "due",
    "exhausted",
    "cooling",
    "pins",
    "whatsapp_window",
    "PUBLISHED",
    "REBUILD_LOCK",
]

PREFIX: Final = "ml:"
# Set of every Service sid (the sweeper walks it).
SERVICES: Final = "ml:services"
# Set of every events stream key (the audit writer drains them all).
EVENT_STREAMS: Final = "ml:event-streams"
# Prefix for events that belong to no Service (API keys, ...).
GLOBAL_PREFIX: Final = "ml:{global}:"
# Recovery (maskline/recovery.py), both keys in one slot: the marker (a random epoch) is set once
# every Service, number and live session is in Redis, so its absence means Redis lost its data;
# the lock (SET NX PX) lets one worker at a time rebuild.
PUBLISHED: Final = "ml:{recovery}:published"
REBUILD_LOCK: Final = "ml:{recovery}:lock"


def service_prefix(service_sid: str) -> str:
    """`ml:{KS...}:`: KEYS[1] of every pool script."""
    return f"ml:{{{service_sid}}}:"


def service_settings(service_sid: str) -> str:
    return f"ml:{{{service_sid}}}:svc"


def session(service_sid: str, session_sid: str) -> str:
    return f"ml:{{{service_sid}}}:sess:{session_sid}"


def sessions_by_created(service_sid: str) -> str:
    return f"ml:{{{service_sid}}}:sessions"


def participant(service_sid: str, participant_sid: str) -> str:
    """A participant removed from its session (a live one is fields of the session's hash)."""
    return f"ml:{{{service_sid}}}:part:{participant_sid}"


def pair(service_sid: str, identifier: str, proxy: str) -> str:
    """The routing key: (participant's real number, proxy number) -> "KC..." while its session
    holds it, "KC...:KP..." while it cools off (_pool.lua, holds)."""
    return f"ml:{{{service_sid}}}:pair:{identifier}:{proxy}"


def number(service_sid: str, e164: str) -> str:
    return f"ml:{{{service_sid}}}:num:{e164}"


def proxy_owner(e164: str) -> str:
    """Proxy number -> the Service it belongs to (its own slot; workers cache it)."""
    return f"ml:proxy:{e164}"


def events(service_sid: str | None) -> str:
    return f"ml:{{{service_sid}}}:events" if service_sid else GLOBAL_PREFIX + "events"


def interaction(service_sid: str, interaction_sid: str) -> str:
    return f"ml:{{{service_sid}}}:ix:{interaction_sid}"


def session_interactions(service_sid: str, session_sid: str) -> str:
    return f"ml:{{{service_sid}}}:sess:{session_sid}:ix"


def optout(service_sid: str, identifier: str, proxy: str) -> str:
    return f"ml:{{{service_sid}}}:optout:{identifier}:{proxy}"


def seen(service_sid: str, resource_sid: str) -> str:
    return f"ml:{{{service_sid}}}:seen:{resource_sid}"


def unique_name(service_sid: str, name: str) -> str:
    """Session UniqueName -> KC (create_session.lua, close_session)."""
    return f"ml:{{{service_sid}}}:uname:{name}"


def expiry(service_sid: str) -> str:
    """zset of live session sids by expires_at_ms: the sweeper's work list (schedule_expiry)."""
    return f"ml:{{{service_sid}}}:expiry"


def regions(service_sid: str) -> str:
    """hash `{REGION}` / `{REGION}:{AREA}` -> numbers, `...:r` -> reserved ones (number_upsert.lua)."""
    return f"ml:{{{service_sid}}}:regions"


def pool_zset(service_sid: str, region: str, area: str = "") -> str:
    """zset of a region's (or area code's) unreserved numbers, score = live sessions (choose_proxy)."""
    scope = f"{region}:{area}" if area else region
    return f"ml:{{{service_sid}}}:pool:{scope}"


def number_sids(service_sid: str) -> str:
    """hash PN sid -> E.164 (ProxyIdentifierSid look-ups; number_upsert.lua)."""
    return f"ml:{{{service_sid}}}:numsid"


def last_proxy(service_sid: str, period: int) -> str:
    """hash identifier -> the last proxy number given to it within a 30-day period (epoch seconds
    // 2,592,000): prefer-sticky / avoid-sticky (_pool.lua remember_sticky, sticky_proxy)."""
    return f"ml:{{{service_sid}}}:last:{period}"


def inflight(service_sid: str) -> str:
    """zset of interaction sids by their webhook's deadline, until answered (settle_unanswered.lua)."""
    return f"ml:{{{service_sid}}}:inflight"


def blocked(service_sid: str) -> str:
    """set of the Service's blocked identifiers (sessions/blocklist.py; create_session.lua,
    add_participant.lua and route_inbound.lua check it)."""
    return f"ml:{{{service_sid}}}:blocked"


def scheduled(service_sid: str, message_sid: str) -> str:
    """hash: a scheduled message (sessions/scheduled.py; schedule_message.lua, claim_due.lua)."""
    return f"ml:{{{service_sid}}}:sm:{message_sid}"


def session_scheduled(service_sid: str, session_sid: str) -> str:
    """zset of a session's scheduled message sids by send time, every status (schedule_message.lua)."""
    return f"ml:{{{service_sid}}}:sess:{session_sid}:sm"


def due(service_sid: str) -> str:
    """zset of scheduled message sids by send_at_ms, until claimed for sending (claim_due.lua)."""
    return f"ml:{{{service_sid}}}:due"


def exhausted(service_sid: str) -> str:
    """hash hour (epoch hours) -> participants refused for lack of a free number (80207/80208)."""
    return f"ml:{{{service_sid}}}:exhausted"


def cooling(service_sid: str) -> str:
    """zset "proxy KP" -> when the pair's cool-off ends (release_pair; the console counts them)."""
    return f"ml:{{{service_sid}}}:cooling"


def pins(service_sid: str, identifier: str, shared: str) -> str:
    """PIN mode: the participant's live PINs on the shared FallbackNumber (set; _pool.lua pins_key)."""
    return f"ml:{{{service_sid}}}:pins:{identifier}:{shared}"


def whatsapp_window(service_sid: str, identifier: str, proxy: str) -> str:
    """A WhatsApp participant wrote to `proxy` within 24 h (route_inbound.lua; expires with the window)."""
    return f"ml:{{{service_sid}}}:wa:{identifier}:{proxy}"
