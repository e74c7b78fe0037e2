"""Inbound routing: which session a text or call belongs to, by (From, To), in one round trip.

The webhook knows only From and To. To -> Service comes from a per-worker cache (numbers rarely
change Service); the pair lookup itself lives in the Service's slot, so a stale cache entry can
only ever find "no session", and a miss re-reads the owner once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, cast

import orjson
import redis.asyncio as aioredis

from pool import keys
from pool.resp import RespClient
from pool.scripts import Scripts, event_id, script_source
from sessions.clock import SYSTEM, Clock
from sessions.store import new_sid

__all__ = ["Router", "Route", "classify_keyword", "OPT_OUT_WORDS", "OPT_IN_WORDS", "HELP_WORDS"]

# Carrier rules: these are never forwarded (see docs: Twilio Proxy's opt-out keywords).
OPT_OUT_WORDS: Final = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
OPT_IN_WORDS: Final = frozenset({"START", "UNSTOP", "YES"})
HELP_WORDS: Final = frozenset({"HELP"})
# Twilio remembers a MessageSid / CallSid retry window of minutes; a day is ample.
SEEN_TTL_S: Final = 86_400


def classify_keyword(body: str | None) -> str:
    word = (body or "").strip().upper()
    if word in OPT_OUT_WORDS:
        return "optout"
    if word in OPT_IN_WORDS:
        return "optin"
    if word in HELP_WORDS:
        return "help"
    return ""


@dataclass(frozen=True, slots=True)
class Route:
    outcome: str  # duplicate | no_session | mode | keyword | blocked | relay | unknown_number
    service_sid: str | None
    data: dict[str, Any]

    @property
    def session(self) -> dict[str, Any]:
        return self.data.get("session") or {}

    @property
    def inbound(self) -> dict[str, Any]:
        return self.data.get("inbound") or {}

    @property
    def outbound(self) -> dict[str, Any]:
        return self.data.get("outbound") or {}

    @property
    def interaction_sid(self) -> str:
        return str(self.data.get("interaction") or "")


class Router:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        scripts: Scripts | None = None,
        clock: Clock = SYSTEM,
        fast: RespClient | None = None,
    ) -> None:
        self.redis = redis
        self.scripts = scripts or Scripts(redis)
        self.clock = clock
        # The hot path's one round trip goes through the lean pipelined client when there is one.
        self.fast = fast
        self._route_source = script_source("route_inbound")
        self._owner: dict[str, str] = {}

    async def service_for(self, proxy: str, *, fresh: bool = False) -> str | None:
        if not fresh and (owner := self._owner.get(proxy)):
            return owner
        found = cast(str | None, await self.redis.get(keys.proxy_owner(proxy)))
        if found:
            if len(self._owner) > 200_000:
                self._owner.clear()
            self._owner[proxy] = found
        else:
            self._owner.pop(proxy, None)
        return found

    async def route_inbound(
        self, *, from_: str, to: str, kind: str, resource_sid: str, data: dict[str, Any], keyword: str = ""
    ) -> Route:
        service_sid = await self.service_for(to)
        if service_sid is None:
            return Route("unknown_number", None, {})
        route = await self._route(service_sid, from_, to, kind, resource_sid, data, keyword)
        if route.outcome == "no_session" and not route.data.get("previous"):
            # The cached owner may be stale (number moved Service): look once more.
            fresh = await self.service_for(to, fresh=True)
            if fresh and fresh != service_sid:
                route = await self._route(fresh, from_, to, kind, resource_sid, data, keyword)
        return route

    async def _route(
        self,
        service_sid: str,
        from_: str,
        to: str,
        kind: str,
        resource_sid: str,
        data: dict[str, Any],
        keyword: str,
    ) -> Route:
        args: list[str | int] = [
            self.clock.script_now(),
            event_id(),
            from_,
            to,
            kind,
            resource_sid,
            new_sid("KI"),
            keyword,
            orjson.dumps(data).decode(),
            SEEN_TTL_S,
        ]
        prefix = keys.service_prefix(service_sid)
        if self.fast is not None:
            raw = await self.fast.run_script(self._route_source, [prefix], args)
        else:
            raw = await self.scripts.call("route_inbound", prefix, *args)
        result: dict[str, Any] = orjson.loads(raw)
        return Route(str(result["outcome"]), service_sid, result)

    async def remember_answer(self, service_sid: str, resource_sid: str, answer: str) -> None:
        """Store the answer given to a MessageSid / CallSid so Twilio's retry gets the same one."""
        await self.redis.set(keys.seen(service_sid, resource_sid), answer, ex=SEEN_TTL_S)
