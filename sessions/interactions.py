"""Interactions of sessions held in Redis: read, list, delete, status updates, proactive messages.

Keys (docs/design.md): `ml:{KS}:ix:{KI}` (hash) and `ml:{KS}:sess:{KC}:ix` (zset by creation ms).
route_inbound.lua creates the interactions of inbound texts and calls; this module records the
proactive ones (the API's MessageInteractions, record_proactive.lua), audits out-of-session
attempts and applies Twilio's status callbacks. The record's fields: sessions/models.py.

Reads return None when Redis no longer has the interaction or session: that is the seam where
the audit log (Postgres) will answer for sessions gone from Redis."""

from __future__ import annotations

from typing import Any, Final

import orjson
import redis.asyncio as aioredis

from core import keys
from core.clock import SYSTEM, Clock
from core.events import emit_event
from core.ids import creation_event_id, new_event_id, new_sid
from core.paging import Page, PageRequest, newest_first
from core.scripts import Scripts
from sessions.models import interaction_record
from sessions.scripts import SESSION_LUA

__all__ = ["InteractionStore", "STATUS_RANK", "TERMINAL_STATUSES"]

# A status callback may arrive out of order (Twilio posts each in its own request): never move a
# resource back from a later state to an earlier one.
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
TERMINAL_STATUSES: Final = frozenset(s for s, r in STATUS_RANK.items() if r >= 6)
# STATUS_RANK as update_interaction.lua takes it.
_RANKS: Final = ",".join(f"{status}={rank}" for status, rank in STATUS_RANK.items())


class InteractionStore:
    def __init__(
        self, redis: aioredis.Redis, *, clock: Clock = SYSTEM, scripts: Scripts | None = None
    ) -> None:
        self.redis = redis
        self.clock = clock
        self.scripts = scripts or Scripts(redis, SESSION_LUA)

    # -- reads (None: not in Redis; the audit log may still know it) -------------------------
    async def get(self, service_sid: str, session_sid: str, interaction_sid: str) -> dict[str, Any] | None:
        raw: Any = await self.redis.hgetall(keys.interaction(service_sid, interaction_sid))
        row: dict[str, Any] = raw
        if not row or row.get("session_sid") != session_sid:
            return None
        return row

    async def list(
        self, service_sid: str, session_sid: str, request: PageRequest
    ) -> Page[dict[str, Any]] | None:
        """Newest first; None when Redis no longer holds the session."""
        if not await self.redis.exists(keys.session(service_sid, session_sid)):
            return None
        index = keys.session_interactions(service_sid, session_sid)
        positions, more = await newest_first(self.redis, index, request)
        if not positions:
            return Page.of([], [], request, more)
        async with self.redis.pipeline(transaction=False) as pipe:
            for _, sid in positions:
                pipe.hgetall(keys.interaction(service_sid, sid))
            rows = await pipe.execute()
        return Page.of([row for row in rows if row], positions, request, more)

    async def delete(self, service_sid: str, session_sid: str, interaction_sid: str) -> bool:
        row = await self.get(service_sid, session_sid, interaction_sid)
        if row is None:
            return False
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.interaction(service_sid, interaction_sid))
            pipe.zrem(keys.session_interactions(service_sid, session_sid), interaction_sid)
            await pipe.execute()
        await emit_event(
            self.redis,
            service_sid=service_sid,
            type="interaction.deleted",
            data={"sid": interaction_sid, "session_sid": session_sid},
        )
        return True

    # -- writes ----------------------------------------------------------------------------------
    async def record_proactive(
        self, service_sid: str, session_sid: str, participant_sid: str, data: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(interaction, participant). Raises NotFound / PoolError (80607, 21610, 63016)."""
        result = await self.scripts.call_json(
            "record_proactive",
            keys.service_prefix(service_sid),
            self.clock.script_now(),
            new_event_id(),
            session_sid,
            participant_sid,
            new_sid("KI"),
            orjson.dumps(data).decode(),
            "1" if data.get("content_sid") else "",
        )
        return result["interaction"], result["participant"]

    async def record_out_of_session(
        self,
        service_sid: str,
        *,
        kind: str,
        from_: str,
        to: str,
        resource_sid: str,
        interaction_sid: str,
        previous_session_sid: str,
        data: dict[str, Any],
        outcome: str = "out_of_session",
    ) -> None:
        """An inbound text or call that reached no live session (`outcome` out_of_session, or
        blocked_sender for a sender on the block list): never relayed, but audited, with the
        session the pair last belonged to (if any)."""
        await self._record_unrelayed(
            service_sid,
            outcome=outcome,
            kind=kind,
            from_=from_,
            to=to,
            resource_sid=resource_sid,
            interaction_sid=interaction_sid,
            session_sid=previous_session_sid,
            data=data,
        )

    async def record_not_relayed(
        self,
        service_sid: str,
        *,
        kind: str,
        from_: str,
        to: str,
        resource_sid: str,
        interaction_sid: str,
        data: dict[str, Any],
        reason: str,
    ) -> None:
        """A text or call answered with fallback TwiML: never relayed. If the route script had
        recorded it (it ran before the deadline, its answer came too late), its record is marked
        failed; otherwise it is recorded now, under the same sid and event id, so it is stored
        once whatever reached the log first."""
        key = keys.interaction(service_sid, interaction_sid)
        if await self.redis.exists(key):
            await self._mark_not_relayed(service_sid, interaction_sid, reason)
            return
        await self._record_unrelayed(
            service_sid,
            outcome="not_relayed",
            kind=kind,
            from_=from_,
            to=to,
            resource_sid=resource_sid,
            interaction_sid=interaction_sid,
            session_sid="",
            data=data,
            reason=reason,
        )

    async def _record_unrelayed(
        self,
        service_sid: str,
        *,
        outcome: str,
        kind: str,
        from_: str,
        to: str,
        resource_sid: str,
        interaction_sid: str,
        session_sid: str,
        data: dict[str, Any],
        reason: str = "",
    ) -> None:
        now = self.clock.now_ms()
        message = kind == "message"
        record = interaction_record(
            sid=interaction_sid,
            session_sid=session_sid,
            type=kind,
            data=orjson.dumps(data).decode(),
            outcome=outcome,
            origin="inbound",
            inbound_resource_sid=resource_sid,
            inbound_resource_status="received" if message else "in-progress",
            inbound_resource_type="Message" if message else "Call",
            outbound_resource_status="failed",
            created_ms=now,
            updated_ms=now,
        )
        extra: dict[str, Any] = {"inbound_identifier": from_, "numbers": [from_, to]}
        if reason:
            extra["reason"] = reason
        await emit_event(
            self.redis,
            service_sid=service_sid,
            type="interaction.created",
            ts_ms=now,
            data={**record, **extra},
            event_id=creation_event_id(interaction_sid),
        )

    async def _mark_not_relayed(self, service_sid: str, interaction_sid: str, reason: str) -> None:
        key = keys.interaction(service_sid, interaction_sid)
        now_ms = self.clock.now_ms()
        changes: Any = {
            "outcome": "not_relayed",
            "outbound_resource_status": "failed",
            "updated_ms": str(now_ms),
        }
        await self.redis.hset(key, mapping=changes)
        raw: Any = await self.redis.hgetall(key)
        row: dict[str, Any] = dict(raw)
        view = await self._event_view(service_sid, row)
        view["reason"] = reason
        await emit_event(
            self.redis, service_sid=service_sid, type="interaction.updated", data=view, ts_ms=now_ms
        )

    async def release_cooling_pair(self, service_sid: str, identifier: str, proxy: str) -> bool:
        released = await self.scripts.call(
            "release_cooling_pair", keys.service_prefix(service_sid), identifier, proxy
        )
        return bool(released)

    async def update(
        self,
        service_sid: str,
        interaction_sid: str,
        *,
        outbound_resource_sid: str | None = None,
        outbound_status: str | None = None,
        inbound_status: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """Apply a status callback, atomically (update_interaction.lua: a status never moves back,
        even when two callbacks race); emits interaction.updated when anything changed. Returns
        the interaction, or None if Redis no longer has it."""
        raw = await self.scripts.call(
            "update_interaction",
            keys.service_prefix(service_sid),
            self.clock.script_now(),
            interaction_sid,
            outbound_resource_sid or "",
            outbound_status or "",
            inbound_status or "",
            orjson.dumps(data).decode() if data else "",
            _RANKS,
            new_event_id(),
        )
        row: dict[str, Any] = orjson.loads(raw)
        return row or None

    async def _event_view(self, service_sid: str, row: dict[str, Any]) -> dict[str, Any]:
        """The interaction with the real numbers it concerns (design.md, "Events")."""
        view: dict[str, Any] = dict(row)
        numbers: list[str] = []
        for side in ("inbound", "outbound"):
            kp = row.get(f"{side}_participant_sid")
            if not kp:
                continue
            ident, proxy = await self.redis.hmget(
                keys.participant(service_sid, kp), "identifier", "proxy_identifier"
            )
            if ident:
                view[f"{side}_identifier"] = str(ident)
                numbers.append(str(ident))
            if proxy:
                numbers.append(str(proxy))
        view["numbers"] = numbers
        return view
