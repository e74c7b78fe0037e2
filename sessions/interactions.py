"""Interactions of sessions held in Redis: read, list, delete, status updates, proactive messages.

Keys (docs/design.md): `ml:{KS}:ix:{KI}` (hash) and `ml:{KS}:sess:{KC}:ix` (zset by creation ms).
route_inbound.lua creates the interactions of inbound texts and calls; this module records the
proactive ones (the API's MessageInteractions, record_proactive.lua), audits out-of-session
attempts and applies Twilio's status callbacks. The record's fields: sessions/models.py.

Redis holds an interaction for its hot window (Settings.interaction_hot_s after its last change;
_session.lua, record_interaction), then the audit log (Postgres) is its only copy. Reads return
None when Redis cannot answer alone; the API then merges the two (relay/api/interactions.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import orjson
import redis.asyncio as aioredis

from core import keys
from core.clock import SYSTEM, Clock
from core.events import emit_event
from core.ids import creation_event_id, new_event_id, new_sid
from core.paging import Page, PageRequest, newest_first
from core.records import STATUS_RANK
from core.scripts import Scripts
from core.settings import Settings
from sessions.models import interaction_from_redis, interaction_record
from sessions.scripts import SESSION_LUA
from sessions.store import SESSION_SID, read_members, read_participant

__all__ = ["InteractionStore", "Row", "STATUS_RANK", "TERMINAL_STATUSES"]

TERMINAL_STATUSES: Final = frozenset(s for s, r in STATUS_RANK.items() if r >= 6)


Row = dict[str, Any]  # an interaction as Redis holds it (every field a string)


class InteractionStore:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        clock: Clock = SYSTEM,
        scripts: Scripts | None = None,
        hot_s: int = Settings.interaction_hot_s,
    ) -> None:
        self.redis = redis
        self.clock = clock
        self.scripts = scripts or Scripts(redis, SESSION_LUA)
        # How long Redis keeps an interaction record after its last change (Settings).
        self.hot_ms = hot_s * 1000

    # -- reads (None: not in Redis; the audit log may still know it) -------------------------
    async def get(self, service_sid: str, session_sid: str, interaction_sid: str) -> dict[str, Any] | None:
        raw: Any = await self.redis.hgetall(keys.interaction(service_sid, interaction_sid))
        if not raw or raw.get("session_sid") != session_sid:
            return None
        return interaction_from_redis(interaction_sid, raw)

    async def list(
        self, service_sid: str, session_sid: str, request: PageRequest
    ) -> Page[dict[str, Any]] | None:
        """Newest first; None when Redis alone cannot answer: it no longer holds the session, or
        some of its interactions are past their hot window (the audit log has those; `held`
        gives what Redis still has, to merge with them)."""
        index = keys.session_interactions(service_sid, session_sid)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(keys.session(service_sid, session_sid))
            pipe.hget(keys.session(service_sid, session_sid), "ix_count")
            pipe.zcard(index)
            exists, count, indexed = await pipe.execute()
        if not exists or (count is not None and int(indexed) < int(count)):
            return None
        positions, more = await newest_first(self.redis, index, request)
        if not positions:
            return Page.of([], [], request, more)
        rows = await self._rows(service_sid, [sid for _, sid in positions])
        if not all(rows):
            return None
        return Page.of(list(rows), positions, request, more)

    async def held(self, service_sid: str, session_sid: str) -> Sequence[Row] | None:
        """The session's interactions Redis still holds (within their hot window), any order;
        None when Redis no longer holds the session."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(keys.session(service_sid, session_sid))
            pipe.zrange(keys.session_interactions(service_sid, session_sid), 0, -1)
            exists, sids = await pipe.execute()
        rows = [row for row in await self._rows(service_sid, [str(s) for s in sids]) if row]
        return rows if exists else None

    async def _rows(self, service_sid: str, sids: Sequence[str]) -> Sequence[Row]:
        if not sids:
            return ()
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid in sids:
                pipe.hgetall(keys.interaction(service_sid, sid))
            rows: Sequence[Row] = await pipe.execute()
        return [interaction_from_redis(sid, row) if row else row for sid, row in zip(sids, rows, strict=True)]

    async def delete(
        self, service_sid: str, session_sid: str, interaction_sid: str, *, logged: bool = False
    ) -> bool:
        """Delete it from Redis and log interaction.deleted, in one script (delete_interaction.lua;
        the audit log's copy is then read as deleted). `logged`: the audit log holds it, Redis may
        not (past its hot window). False: Redis holds no such interaction of that session."""
        deleted = await self.scripts.call(
            "delete_interaction",
            keys.service_prefix(service_sid),
            self.clock.script_now(),
            new_event_id(),
            session_sid,
            interaction_sid,
            "1" if logged else "",
        )
        return bool(deleted)

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
            self.hot_ms,
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
        row = interaction_from_redis(interaction_sid, dict(raw))
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
        session_sid: str = "",
    ) -> dict[str, Any] | None:
        """Apply a status callback, atomically (update_interaction.lua: a status never moves back,
        even when two callbacks race); emits interaction.updated when anything changed. Returns
        the interaction, or None if Redis no longer has it (past its hot window: the change is
        still logged, for the audit log's copy, when `session_sid` says whose it is)."""
        raw = await self.scripts.call(
            "update_interaction",
            keys.service_prefix(service_sid),
            self.clock.script_now(),
            interaction_sid,
            outbound_resource_sid or "",
            outbound_status or "",
            inbound_status or "",
            orjson.dumps(data).decode() if data else "",
            new_event_id(),
            self.hot_ms,
            session_sid if SESSION_SID.fullmatch(session_sid) else "",
        )
        row: dict[str, Any] = orjson.loads(raw)
        return row or None

    def send_result_args(self, outbound_resource_sid: str, outbound_status: str) -> tuple[str, str, str, int]:
        """Twilio's answer to a send as finish_scheduled.lua applies it to the interaction (as
        `update` would: the same script helper and hot window)."""
        return (outbound_resource_sid, outbound_status, new_event_id(), self.hot_ms)

    async def _event_view(self, service_sid: str, row: dict[str, Any]) -> dict[str, Any]:
        """The interaction with the real numbers it concerns (design.md, "Events")."""
        view: dict[str, Any] = dict(row)
        numbers: list[str] = []
        session_sid = str(row.get("session_sid", ""))
        members = await read_members(self.redis, service_sid, session_sid) or []
        for side in ("inbound", "outbound"):
            kp = row.get(f"{side}_participant_sid")
            if not kp:
                continue
            part = await read_participant(self.redis, service_sid, session_sid, kp, members) or {}
            ident, proxy = part.get("identifier"), part.get("proxy_identifier")
            if ident:
                view[f"{side}_identifier"] = str(ident)
                numbers.append(str(ident))
            if proxy:
                numbers.append(str(proxy))
        view["numbers"] = numbers
        return view
