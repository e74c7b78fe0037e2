"""Inbound routing: which session a text or call belongs to, by (From, To), in one round trip.

The webhook knows only From and To. To -> Service comes from a per-worker cache (numbers rarely
change Service); the pair lookup itself lives in the Service's slot, so a stale cache entry can
only ever find "no session", and a miss re-reads the owner once.

`route_text` / `route_call` return a typed `Route` (sessions/models.py) that the webhook renders
as TwiML. Everything decided about the text or call is decided here: carrier keywords, the
session, its mode, opt-outs, the audit record of an out-of-session attempt, and (on the
out-of-session endpoint's request) opening a session for the caller."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, cast

import orjson
import redis.asyncio as aioredis

from core import keys
from core.clock import SYSTEM, Clock
from core.ids import creation_event_id, new_sid
from core.scripts import Scripts
from core.settings import Settings
from sessions.interactions import InteractionStore
from sessions.models import (
    RELAY_SETTING_FIELDS,
    Keyword,
    Mode,
    Outcome,
    ParticipantRequest,
    RelayOptions,
    Replay,
    Route,
    seen_value,
)
from sessions.scripts import SESSION_LUA
from sessions.store import SessionStore

__all__ = ["Router", "classify_keyword", "OPT_OUT_WORDS", "OPT_IN_WORDS", "HELP_WORDS"]

# Carrier rules: these are never forwarded (see docs: Twilio Proxy's opt-out keywords).
OPT_OUT_WORDS: Final = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
OPT_IN_WORDS: Final = frozenset({"START", "UNSTOP", "YES"})
HELP_WORDS: Final = frozenset({"HELP"})
# A keyword is one short word; longer bodies skip the check (most texts, on the hot path).
_KEYWORD_MAX_CHARS: Final = 16
# Twilio sends at most 10 media per MMS.
MAX_MEDIA: Final = 10
_OWNER_CACHE_MAX: Final = 200_000
_OPTIONS_CACHE_MAX: Final = 10_000
# The script's words as enum members by value (a dict lookup; Outcome(value) costs more per webhook).
_OUTCOMES: Final = {o.value: o for o in Outcome}
_KEYWORDS: Final = {k.value: k for k in Keyword}
_REPLAYS: Final = {r.value: r for r in Replay}


def classify_keyword(body: str | None) -> Keyword:
    if not body or len(body) > _KEYWORD_MAX_CHARS:
        return Keyword.NONE
    word = body.strip().upper()
    if word in OPT_OUT_WORDS:
        return Keyword.OPT_OUT
    if word in OPT_IN_WORDS:
        return Keyword.OPT_IN
    if word in HELP_WORDS:
        return Keyword.HELP
    return Keyword.NONE


class Router:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        scripts: Scripts | None = None,
        clock: Clock = SYSTEM,
        sessions: SessionStore | None = None,
        interactions: InteractionStore | None = None,
        dedupe_ttl_s: int = Settings.dedupe_ttl_s,
    ) -> None:
        self.redis = redis
        self.scripts = scripts or Scripts(redis, SESSION_LUA)
        self.clock = clock
        self.sessions = sessions or SessionStore(redis, scripts=self.scripts, clock=clock)
        self.interactions = interactions or InteractionStore(redis, clock=clock, scripts=self.scripts)
        self.dedupe_ttl_s = dedupe_ttl_s
        self._owner: dict[str, str] = {}
        self._options: dict[tuple[Any, ...], RelayOptions] = {}

    async def service_for(self, proxy: str, *, fresh: bool = False) -> str | None:
        if not fresh and (owner := self._owner.get(proxy)):
            return owner
        found = cast(str | None, await self.redis.get(keys.proxy_owner(proxy)))
        if found:
            if len(self._owner) > _OWNER_CACHE_MAX:
                self._owner.clear()
            self._owner[proxy] = found
        else:
            self._owner.pop(proxy, None)
        return found

    async def route_text(
        self,
        *,
        from_: str,
        to: str,
        message_sid: str,
        body: str,
        media: Sequence[str] = (),
        interaction_sid: str | None = None,
        pin: str = "",
    ) -> Route:
        """`interaction_sid`: the sid to record the text under (the webhook mints it, so that a
        text it answers with fallback TwiML is recorded under the same sid: record_not_relayed).
        `pin`: the PIN the text starts with (models.leading_pin), read in PIN mode only."""
        data: dict[str, Any] = {"body": body}
        if media:
            data["media"] = list(media[:MAX_MEDIA])
        keyword = classify_keyword(body)
        ki = interaction_sid or new_sid("KI")
        return await self._route_inbound(from_, to, "message", message_sid, ki, data, keyword, pin)

    async def route_call(
        self, *, from_: str, to: str, call_sid: str, interaction_sid: str | None = None, pin: str = ""
    ) -> Route:
        """`pin`: the Digits the caller entered at the PIN prompt (PIN mode), else ""."""
        ki = interaction_sid or new_sid("KI")
        return await self._route_inbound(from_, to, "voice", call_sid, ki, {}, Keyword.NONE, pin)

    async def _route_inbound(
        self,
        from_: str,
        to: str,
        kind: str,
        resource_sid: str,
        ki: str,
        data: dict[str, Any],
        keyword: Keyword,
        pin: str,
    ) -> Route:
        service_sid = await self.service_for(to)
        if service_sid is None:
            return Route(Outcome.UNKNOWN_NUMBER)
        args: list[str | int] = [
            self.clock.script_now(),
            creation_event_id(ki),
            from_,
            to,
            kind,
            resource_sid,
            ki,
            keyword.value,
            orjson.dumps(data).decode(),
            self.dedupe_ttl_s,
            pin,
            self.interactions.hot_ms,
        ]
        result = await self._run(service_sid, args)
        if (
            result["outcome"] == Outcome.NO_SESSION
            and not result.get("previous")
            and not result.get("sender_blocked")
            and not result.get("pin")
        ):
            # The cached owner may be stale (number moved Service): look once more.
            fresh = await self.service_for(to, fresh=True)
            if fresh and fresh != service_sid:
                service_sid = fresh
                result = await self._run(service_sid, args)
        route = self._decision(service_sid, result)
        if route.outcome is Outcome.NO_SESSION:
            # Never relayed, but audited, with the session the pair last belonged to (if any).
            await self.interactions.record_out_of_session(
                service_sid,
                outcome="blocked_sender" if route.sender_blocked else "out_of_session",
                kind=kind,
                from_=from_,
                to=to,
                resource_sid=resource_sid,
                interaction_sid=ki,
                previous_session_sid=str((route.previous or {}).get("sid", "")),
                data={"body": data["body"]} if kind == "message" else {},
            )
        return route

    async def _run(self, service_sid: str, args: list[str | int]) -> dict[str, Any]:
        # (one round trip; through the pipelined client when the scripts run on it: Scripts.run_on)
        raw = await self.scripts.call("route_inbound", keys.service_prefix(service_sid), *args)
        result: dict[str, Any] = orjson.loads(raw)
        return result

    def _decision(self, service_sid: str, result: dict[str, Any]) -> Route:
        outcome = _OUTCOMES[result["outcome"]]
        previous = result.get("previous")
        return Route(
            outcome,
            service_sid,
            options=self.options(result.get("svc")),
            session=result.get("session") or {},
            inbound=result.get("inbound") or {},
            outbound=result.get("outbound") or {},
            interaction=result.get("interaction") or {},
            previous=previous if isinstance(previous, dict) else None,
            keyword=_KEYWORDS[result.get("keyword") or ""],
            replay=_REPLAYS[result.get("replay") or ""],
            sender_blocked=bool(result.get("sender_blocked")),
            legs=[(leg["participant"], leg["interaction"]) for leg in result.get("legs") or ()],
            pin=str(result.get("pin") or ""),
            outside_window=int(result.get("outside_window") or 0),
        )

    async def record_not_relayed(
        self,
        *,
        from_: str,
        to: str,
        kind: str,
        resource_sid: str,
        interaction_sid: str,
        body: str,
        reason: str,
    ) -> bool:
        """Record a text or call that was answered with fallback TwiML (the store failed or
        stalled): never relayed. Call it once the caller's deadline has passed, so the route
        script either ran before it or never will. False when To is no Service's number."""
        service_sid = await self.service_for(to)
        if service_sid is None:
            return False
        await self.interactions.record_not_relayed(
            service_sid,
            kind=kind,
            from_=from_,
            to=to,
            resource_sid=resource_sid,
            interaction_sid=interaction_sid,
            data={"body": body} if kind == "message" else {},
            reason=reason,
        )
        return True

    def options(self, settings: dict[str, Any] | None) -> RelayOptions:
        """A Service's relay options, parsed once per distinct settings, then a dict lookup."""
        key = tuple(sorted((settings or {}).items()))
        found = self._options.get(key)
        if found is None:
            if len(self._options) > _OPTIONS_CACHE_MAX:
                self._options.clear()
            found = self._options[key] = RelayOptions.from_settings(settings)
        return found

    async def relay_options(self, service_sid: str) -> RelayOptions:
        """The Service's relay options read from Redis (off the hot path: whisper, status)."""
        values = await self.redis.hmget(keys.service_settings(service_sid), list(RELAY_SETTING_FIELDS))
        return self.options(dict(zip(RELAY_SETTING_FIELDS, values, strict=True)))

    async def remember_answer(
        self, service_sid: str, resource_sid: str, replay: Replay, interaction_sid: str
    ) -> None:
        """Remember how a MessageSid / CallSid was answered, so Twilio's retry gets the same answer
        (rendered again from the records: the key holds no number and no body)."""
        value = seen_value(replay, interaction_sid)
        await self.redis.set(keys.seen(service_sid, resource_sid), value, ex=self.dedupe_ttl_s)

    async def open_for_caller(
        self,
        service_sid: str,
        *,
        from_: str,
        to: str,
        resource_sid: str,
        other: ParticipantRequest,
        mode: Mode = Mode.VOICE_AND_MESSAGE,
        unique_name: str = "",
        ttl_s: int | None = None,
        date_expiry_ms: int | None = None,
    ) -> None:
        """Create the session the out-of-session endpoint asked for, keeping the proxy number the
        caller dialled (unlike Twilio Proxy), so that routing the text or call again finds it.
        Raises the store's errors when the session cannot be created."""
        # The caller's pair may still be cooling off after a closed session: free it (only then).
        await self.interactions.release_cooling_pair(service_sid, from_, to)
        await self.sessions.create_session(
            service_sid,
            unique_name=unique_name,
            mode=mode,
            ttl_s=ttl_s,
            date_expiry_ms=date_expiry_ms,
            participants=[ParticipantRequest(identifier=from_, proxy_identifier=to), other],
        )
        # The first routing marked this MessageSid / CallSid as seen; let it be routed afresh.
        await self.redis.delete(keys.seen(service_sid, resource_sid))
