"""Putting sessions back into Redis after Redis lost its data (restore_session.lua).

The caller reads what to restore from the audit log (maskline/recovery.py; sessions/ never imports
audit/) and hands it over as plain values: a session's fields and participants, or the pairs that
should still be cooling off. Idempotent and never takes what is held: a session Redis already has
is left alone, a participant whose pair another session holds is skipped (and reported)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import orjson
import redis.asyncio as aioredis

from core import keys
from core.clock import SYSTEM, Clock
from core.scripts import Scripts
from sessions.scripts import SESSION_LUA

__all__ = ["SESSION_FIELDS", "PARTICIPANT_FIELDS", "Restored", "SessionRestorer", "expires_at_ms"]

# The session hash's fields a restore writes (create_session.lua writes the same ones).
SESSION_FIELDS: Final = (
    "unique_name",
    "status",
    "mode",
    "ttl",
    "date_expiry_ms",
    "created_ms",
    "updated_ms",
    "started_ms",
    "last_activity_ms",
    "last_interaction_ms",
)
PARTICIPANT_FIELDS: Final = (
    "sid",
    "identifier",
    "proxy_identifier",
    "friendly_name",
    "created_ms",
    "updated_ms",
    "pin",
)
# Scripts in flight at once (each one a few dozen Redis commands).
DEFAULT_CONCURRENCY: Final = 32

T = TypeVar("T")


@dataclass(frozen=True)
class Restored:
    session_sid: str
    outcome: str  # restored | exists | expired | closed (restore_session.lua)
    participants: tuple[str, ...]  # the participant sids now in Redis
    skipped: tuple[dict[str, str], ...]  # {sid, proxy, why}: held | not_in_pool


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def expires_at_ms(fields: Mapping[str, Any]) -> int:
    """min(date_expiry, last activity + ttl), 0 for never: `expires_at` of sessions/lua/_session.lua."""
    at = 0
    ttl = _int(fields.get("ttl"))
    if ttl > 0:
        at = _int(fields.get("last_activity_ms")) + ttl * 1000
    de = _int(fields.get("date_expiry_ms"))
    if de > 0 and (at == 0 or de < at):
        at = de
    return at


def _session_fields(fields: Mapping[str, Any]) -> dict[str, str]:
    """Every field the script writes, as a string; times missing from an old event default to creation."""
    out = {name: "" if fields.get(name) is None else str(fields.get(name)) for name in SESSION_FIELDS}
    created = str(_int(out["created_ms"]))
    out["created_ms"] = created
    out["ttl"] = str(_int(out["ttl"]))
    for name in ("updated_ms", "started_ms", "last_activity_ms"):
        out[name] = str(_int(out[name]) or created)
    out["status"] = out["status"] or "open"
    out["mode"] = out["mode"] or "voice-and-message"
    return out


def _participant(p: Mapping[str, Any], created_ms: str) -> dict[str, str]:
    out = {name: "" if p.get(name) is None else str(p.get(name)) for name in PARTICIPANT_FIELDS}
    out["created_ms"] = str(_int(out["created_ms"]) or created_ms)
    out["updated_ms"] = str(_int(out["updated_ms"]) or out["created_ms"])
    return out


def _listed(value: Any) -> list[Any]:
    # cjson writes an empty Lua table as {}: an empty list.
    return value if isinstance(value, list) else []


class SessionRestorer:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        scripts: Scripts | None = None,
        clock: Clock = SYSTEM,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self.redis = redis
        self.scripts = scripts or Scripts(redis, SESSION_LUA)
        self.clock = clock
        self.concurrency = max(1, concurrency)

    async def restore(
        self,
        service_sid: str,
        session_sid: str,
        fields: Mapping[str, Any],
        participants: Sequence[Mapping[str, Any]],
    ) -> Restored:
        """One live session (its hash's fields and its participants) back into Redis."""
        f = _session_fields(fields)
        payload = {
            "sid": session_sid,
            "fields": f,
            "participants": [_participant(p, f["created_ms"]) for p in participants],
        }
        raw = await self.scripts.call(
            "restore_session",
            keys.service_prefix(service_sid),
            self.clock.script_now(),
            "live",
            orjson.dumps(payload).decode(),
        )
        result: dict[str, Any] = orjson.loads(raw)
        return Restored(
            session_sid,
            str(result["outcome"]),
            tuple(str(p) for p in _listed(result.get("restored"))),
            tuple({k: str(v) for k, v in s.items()} for s in _listed(result.get("skipped"))),
        )

    async def cool_off(
        self, service_sid: str, session_sid: str, pairs: Sequence[tuple[str, str, str, int, str]]
    ) -> int:
        """Set released pairs (participant sid, identifier, proxy, until ms, PIN or "") cooling
        off again where no key exists; returns how many were set."""
        if not pairs:
            return 0
        payload = {
            "sid": session_sid,
            "participants": [
                {
                    "sid": kp,
                    "identifier": ident,
                    "proxy_identifier": proxy,
                    "until_ms": str(until),
                    "pin": pin,
                }
                for kp, ident, proxy, until, pin in pairs
            ],
        }
        raw = await self.scripts.call(
            "restore_session",
            keys.service_prefix(service_sid),
            self.clock.script_now(),
            "cooling",
            orjson.dumps(payload).decode(),
        )
        return len(_listed(orjson.loads(raw).get("restored")))

    async def restore_scheduled(self, service_sid: str, message: Mapping[str, str], *, lost: bool) -> str:
        """One scheduled message back into Redis (restore_scheduled.lua): `lost` when its time had
        come before Redis lost its data (it ends failed, store_lost). Returns the script's word."""
        return str(
            await self.scripts.call(
                "restore_scheduled",
                keys.service_prefix(service_sid),
                self.clock.script_now(),
                orjson.dumps(dict(message)).decode(),
                "lost" if lost else "scheduled",
            )
        )

    async def gather(self, calls: Iterable[Awaitable[T]]) -> list[T]:
        """Run restore / cool_off calls `concurrency` at a time, in order."""
        gate = asyncio.Semaphore(self.concurrency)

        async def one(call: Awaitable[T]) -> T:
            async with gate:
                return await call

        return list(await asyncio.gather(*(one(c) for c in calls)))
