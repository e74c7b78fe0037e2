"""Scheduled messages: texts to one participant of a session, from their proxy number, at a time
(a Maskline extension: MessageInteractions with SendAt; /v1/.../Sessions/{KC}/ScheduledMessages).

A message belongs to its session: closing, expiring or deleting the session cancels it, as do
removing the participant and the participant's STOP (in the same scripts, so nothing slips
between). Statuses: scheduled -> sending -> sent | failed; scheduled -> canceled | expired (more
than the Service's ScheduleLateness late when its turn came, e.g. after an outage). A claim for
sending expires: a sender that died mid-send leaves its message `failed` (reason sender_died),
never sent twice. Every change is an audit event (scheduled_message.*)."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import Any, Final, cast

import orjson
import redis.asyncio as aioredis

from core import keys
from core.clock import SYSTEM, Clock
from core.errors import NotFound
from core.ids import new_event_id, new_sid
from core.scripts import Scripts
from sessions.scripts import SESSION_LUA

__all__ = ["ScheduledMessages", "STATUSES", "CLAIM_MS"]

STATUSES: Final = ("scheduled", "sending", "sent", "failed", "canceled", "expired")
# How long a claim lasts: longer than one send with its retries (relay/outbound.py).
CLAIM_MS: Final = 60_000


class ScheduledMessages:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        scripts: Scripts | None = None,
        clock: Clock = SYSTEM,
        claim_ms: int = CLAIM_MS,
    ) -> None:
        self.redis = redis
        self.scripts = scripts or Scripts(redis, SESSION_LUA)
        self.clock = clock
        # How long a sender's claim on a due message lasts: past it, a sender that died mid-send
        # leaves the message failed (sender_died). Longer than a send with its retries takes.
        self.claim_ms = claim_ms

    async def schedule(
        self, service_sid: str, session_sid: str, participant_sid: str, send_at_ms: int, data: dict[str, Any]
    ) -> dict[str, Any]:
        return await self.scripts.call_json(
            "schedule_message",
            keys.service_prefix(service_sid),
            self.clock.script_now(),
            new_event_id(),
            session_sid,
            participant_sid,
            new_sid("KM"),
            send_at_ms,
            orjson.dumps(data).decode(),
        )

    async def get(self, service_sid: str, session_sid: str, message_sid: str) -> dict[str, Any]:
        row = cast(dict[str, Any], await self.redis.hgetall(keys.scheduled(service_sid, message_sid)))
        if not row or row.get("session_sid") != session_sid:
            raise NotFound(f"ScheduledMessage {message_sid} was not found in Session {session_sid}")
        return row

    async def list(self, service_sid: str, session_sid: str) -> list[dict[str, Any]]:
        """Every scheduled message of the session (any status), by send time."""
        sids = await self.redis.zrange(keys.session_scheduled(service_sid, session_sid), 0, -1)
        if not sids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for km in sids:
                pipe.hgetall(keys.scheduled(service_sid, str(km)))
            rows = await pipe.execute()
        return [r for r in rows if r]

    async def cancel(
        self, service_sid: str, session_sid: str, message_sid: str, *, reason: str = "api"
    ) -> dict[str, Any]:
        return await self.scripts.call_json(
            "cancel_message",
            keys.service_prefix(service_sid),
            self.clock.script_now(),
            session_sid,
            message_sid,
            reason,
        )

    async def claim_due(
        self, service_sid: str, *, limit: int = 200, claim_ms: int | None = None
    ) -> builtins.list[dict[str, Any]]:
        raw = await self.scripts.call(
            "claim_due",
            keys.service_prefix(service_sid),
            self.clock.script_now(),
            limit,
            self.claim_ms if claim_ms is None else claim_ms,
        )
        claimed: builtins.list[dict[str, Any]] = orjson.loads(raw)
        return claimed

    async def finish(
        self,
        service_sid: str,
        message_sid: str,
        status: str,
        *,
        reason: str = "",
        interaction_sid: str = "",
        interaction_update: Sequence[str | int] = ("", "", "", ""),
    ) -> bool:
        """How a claimed message ended; `interaction_update`: Twilio's answer for its interaction,
        applied in the same step (InteractionStore.send_result_args)."""
        done = await self.scripts.call(
            "finish_scheduled",
            keys.service_prefix(service_sid),
            self.clock.script_now(),
            message_sid,
            status,
            reason,
            interaction_sid,
            *interaction_update,
        )
        return bool(done)
