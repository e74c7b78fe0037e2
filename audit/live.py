"""What the audit log says is live in Redis: the sessions of a Service that are neither closed nor
deleted, and the pairs still cooling off after their participant left. maskline/recovery.py puts
them back into Redis when Redis has lost its data.

A session's state is its latest `session.*` event (the session view, with `participants`), then
the `participant.added` / `participant.removed` events written after it. It is live when that
latest event is `session.created` or `session.updated`. Interactions are not replayed, but the
latest one of a session (relayed, keyword, blocked or proactive) is its last activity: every
interaction restarts the TTL and moves an open session to in-progress, and route_inbound.lua
emits no session event for that. Numbers come back from their subject tokens as audit/queries.py
reveals them; an erased one reads "[erased]" (its participant cannot be routed again)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import asyncpg
import orjson

from audit.chain import ts_from_ms, ts_to_ms
from audit.cipher import reveal
from audit.subjects import lookup_subjects, tokens_in

__all__ = [
    "LoggedSession",
    "CoolingPair",
    "live_sessions",
    "cooling_pairs",
    "pending_scheduled",
    "ACTIVITY_OUTCOMES",
]

SESSION_TYPES: Final = ("session.created", "session.updated", "session.closed", "session.deleted")
LIVE_TYPES: Final = ("session.created", "session.updated")
PARTICIPANT_TYPES: Final = ("participant.added", "participant.removed")
# The interactions that count as session activity (route_inbound.lua, record_proactive.lua); an
# out-of-session or not-relayed record names a session it never touched.
ACTIVITY_OUTCOMES: Final = ("relay", "keyword", "blocked", "proactive")

# Per session, its latest session event; for the live ones, that event and every participant
# event after it, in the order they were written.
SELECT_LIVE: Final = """
WITH latest AS (
    SELECT DISTINCT ON (session_sid) session_sid, ts, seq, type
      FROM audit_events
     WHERE service_sid = $1 AND session_sid IS NOT NULL AND type = ANY($2::text[])
     ORDER BY session_sid, ts DESC, seq DESC
)
SELECT e.ts, e.seq, e.type, e.session_sid, e.numbers, e.data
  FROM latest l
  JOIN audit_events e
    ON e.service_sid = $1 AND e.session_sid = l.session_sid AND (e.ts, e.seq) >= (l.ts, l.seq)
 WHERE l.type = ANY($3::text[]) AND e.type = ANY($4::text[])
 ORDER BY e.session_sid, e.ts, e.seq
"""
SELECT_ACTIVITY: Final = """
SELECT session_sid, max(ts) AS ts
  FROM audit_events
 WHERE service_sid = $1 AND session_sid = ANY($2::text[]) AND type = 'interaction.created'
   AND (data::jsonb ->> 'outcome') = ANY($3::text[])
 GROUP BY session_sid
"""
# Pairs released at or after $2: by a close (every participant of the session view) or by the
# removal of one participant.
SELECT_RELEASES: Final = """
SELECT ts, seq, type, session_sid, numbers, data
  FROM audit_events
 WHERE service_sid = $1 AND ts >= $2 AND type = ANY($3::text[])
 ORDER BY ts, seq
"""
RELEASE_TYPES: Final = ("session.closed", "participant.removed")
# Per scheduled message, its latest event; those whose latest is its creation were still to go
# out as far as the log knows (claiming it for sending emits nothing; sending it, `sent`).
SELECT_SCHEDULED: Final = """
SELECT * FROM (
    SELECT DISTINCT ON (data::jsonb ->> 'sid') ts, seq, type, session_sid, numbers, data
      FROM audit_events
     WHERE service_sid = $1 AND type LIKE 'scheduled_message.%'
     ORDER BY data::jsonb ->> 'sid', ts DESC, seq DESC
) latest
 WHERE type = 'scheduled_message.created'
 ORDER BY ts, seq
"""


@dataclass
class LoggedSession:
    sid: str
    # The session's own fields (the Redis hash's, as strings), activity folded in.
    fields: dict[str, str]
    # The participants it holds: sid, identifier, proxy_identifier, friendly_name, created_ms, updated_ms.
    participants: list[dict[str, str]] = field(default_factory=list)
    changed_ms: int = 0  # time of the last event folded in


@dataclass(frozen=True)
class CoolingPair:
    """A participant's pair released (close or removal) at `released_ms`."""

    session_sid: str
    participant_sid: str
    identifier: str
    proxy_identifier: str
    released_ms: int
    pin: str = ""  # PIN mode: the PIN the pair was held with on the shared number


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _participant(p: dict[str, Any]) -> dict[str, str]:
    keep = ("sid", "identifier", "proxy_identifier", "friendly_name", "created_ms", "updated_ms", "pin")
    return {k: _text(p.get(k)) for k in keep}


async def _revealed(conn: asyncpg.Connection, rows: list[asyncpg.Record]) -> list[dict[str, Any]]:
    """Each row's data as a reader sees it (numbers back from tokens, text decrypted)."""
    datas = [orjson.loads(r["data"]) for r in rows]
    wanted: set[str] = set()
    for r, d in zip(rows, datas, strict=True):
        wanted.update(r["numbers"])
        wanted |= tokens_in(d)
    subjects = await lookup_subjects(conn, wanted)
    return [reveal(d, list(r["numbers"]), subjects) for r, d in zip(rows, datas, strict=True)]


def _fold(sessions: dict[str, LoggedSession], type_: str, sid: str, ts_ms: int, data: dict[str, Any]) -> None:
    if type_ in LIVE_TYPES:
        parts = data.get("participants")
        fields = {
            k: _text(v)
            for k, v in data.items()
            if k not in ("participants", "numbers", "parts") and not isinstance(v, dict | list)
        }
        sessions[sid] = LoggedSession(
            sid,
            fields,
            [_participant(p) for p in parts if isinstance(p, dict)] if isinstance(parts, list) else [],
            ts_ms,
        )
        return
    current = sessions.get(sid)
    p = data.get("participant")
    if current is None or not isinstance(p, dict) or not p.get("sid"):
        return
    kept = [q for q in current.participants if q["sid"] != p["sid"]]
    if type_ == "participant.added":
        kept.append(_participant(p))
    current.participants = kept
    current.changed_ms = max(current.changed_ms, ts_ms)


async def live_sessions(pg: asyncpg.Pool, service_sid: str) -> list[LoggedSession]:
    """The Service's sessions the log says are live, oldest first. Expiry is not checked here (the
    caller knows the clock): `fields` has ttl, date_expiry_ms and last_activity_ms."""
    async with pg.acquire() as conn:
        rows = await conn.fetch(
            SELECT_LIVE, service_sid, list(SESSION_TYPES), list(LIVE_TYPES), [*LIVE_TYPES, *PARTICIPANT_TYPES]
        )
        if not rows:
            return []
        datas = await _revealed(conn, rows)
        sessions: dict[str, LoggedSession] = {}
        for r, d in zip(rows, datas, strict=True):
            if isinstance(d, dict):
                _fold(sessions, r["type"], r["session_sid"], ts_to_ms(r["ts"]), d)
        activity = await conn.fetch(SELECT_ACTIVITY, service_sid, list(sessions), list(ACTIVITY_OUTCOMES))
    for a in activity:
        s = sessions.get(a["session_sid"])
        if s is None:
            continue
        at = ts_to_ms(a["ts"])
        f = s.fields
        if at > _int(f.get("last_activity_ms")):
            f["last_activity_ms"] = str(at)
        if at > _int(f.get("last_interaction_ms")):
            f["last_interaction_ms"] = str(at)
            f["updated_ms"] = str(max(at, _int(f.get("updated_ms"))))
        if f.get("status") == "open":
            f["status"] = "in-progress"
    return sorted(sessions.values(), key=lambda s: (_int(s.fields.get("created_ms")), s.sid))


async def cooling_pairs(pg: asyncpg.Pool, service_sid: str, *, since_ms: int) -> list[CoolingPair]:
    """Pairs released at or after `since_ms` (a close releases every participant of the session,
    a removal one), oldest first. A pair released and then held again by a live session appears
    here too: the caller restores live sessions first, and a cooling pair never replaces a held one."""
    async with pg.acquire() as conn:
        rows = await conn.fetch(SELECT_RELEASES, service_sid, ts_from_ms(since_ms), list(RELEASE_TYPES))
        if not rows:
            return []
        datas = await _revealed(conn, rows)
    found: list[CoolingPair] = []
    for r, d in zip(rows, datas, strict=True):
        if not isinstance(d, dict):
            continue
        listed = d.get("participants")
        parts: list[Any] = [d.get("participant")] if r["type"] == "participant.removed" else []
        if r["type"] == "session.closed" and isinstance(listed, list):
            parts = listed
        for p in parts:
            if isinstance(p, dict) and p.get("sid") and p.get("identifier") and p.get("proxy_identifier"):
                found.append(
                    CoolingPair(
                        r["session_sid"],
                        str(p["sid"]),
                        str(p["identifier"]),
                        str(p["proxy_identifier"]),
                        ts_to_ms(r["ts"]),
                        _text(p.get("pin")),
                    )
                )
    return found


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


async def pending_scheduled(pg: asyncpg.Pool, service_sid: str) -> list[dict[str, str]]:
    """The Service's scheduled messages the log last saw `scheduled`, oldest first: {sid,
    session_sid, participant_sid, data (JSON text, body decrypted), send_at_ms, created_ms}."""
    async with pg.acquire() as conn:
        rows = await conn.fetch(SELECT_SCHEDULED, service_sid)
        if not rows:
            return []
        datas = await _revealed(conn, rows)
    keep = ("sid", "session_sid", "participant_sid", "data", "send_at_ms", "created_ms")
    return [
        {k: _text(d.get(k)) for k in keep}
        for d in datas
        if isinstance(d, dict) and d.get("sid") and d.get("session_sid") and d.get("participant_sid")
    ]
