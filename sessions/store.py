"""Sessions and participants: every write is one Lua script (sessions/lua), so the pair invariant
holds under any concurrency. Reads are plain hash reads."""

from __future__ import annotations

import re
import secrets
from typing import Any, Final, cast

import redis.asyncio as aioredis

from core import keys
from core.clock import SYSTEM, Clock
from core.errors import InvalidParameter, NotFound, PoolError
from core.ids import new_event_id, new_event_id_base, new_sid
from core.paging import Page, PageRequest, newest_first
from core.scripts import Scripts
from pool.numbers import parse_participant, parse_proxy_number, split_channel
from sessions.models import (
    MAX_PARTICIPANTS,
    PARTICIPANT_SLOT,
    PIN_DIGITS,
    SESSION_AS_CREATED,
    SESSION_DEFAULTS,
    SESSION_OPTIONAL,
    Mode,
    ParticipantRequest,
    Status,
    is_slot_field,
)
from sessions.scripts import SESSION_LUA

__all__ = ["SESSION_SID", "SessionStore", "read_members", "read_participant"]

# A session sid's shape (a path may name a session by sid or by UniqueName).
SESSION_SID: Final = re.compile(r"KC[0-9a-f]{32}")
# PIN mode (the Service's FallbackNumber): candidates drawn per participant, the script takes the
# first one the participant holds on the shared number in no live or cooling session.
_PIN_CANDIDATES: Final = 8


def pin_candidates() -> str:
    return ",".join(f"{secrets.randbelow(10**PIN_DIGITS):0{PIN_DIGITS}d}" for _ in range(_PIN_CANDIDATES))


class SessionStore:
    def __init__(
        self, redis: aioredis.Redis, *, scripts: Scripts | None = None, clock: Clock = SYSTEM
    ) -> None:
        self.redis = redis
        self.scripts = scripts or Scripts(redis, SESSION_LUA)
        self.clock = clock

    # -- participants' arguments -------------------------------------------------------------
    async def _participant_args(self, service_sid: str, req: ParticipantRequest) -> list[str]:
        # The Service's country allow-list is enforced inside the script, atomically with the rest.
        # A WhatsApp participant ("whatsapp:+E164") keeps its channel in its identifier: pairs are
        # per channel address; the pool script gives it a WhatsApp-capable number.
        channel, address = split_channel(req.identifier)
        number = parse_participant(address)
        proxy = ""
        if req.proxy_identifier:
            proxy = parse_proxy_number(req.proxy_identifier).e164
        elif req.proxy_identifier_sid:
            proxy = await self._number_for_sid(service_sid, req.proxy_identifier_sid)
        return [
            new_sid("KP"),
            channel + number.e164,
            number.region,
            number.area,
            proxy,
            req.friendly_name,
            pin_candidates(),
        ]

    async def _number_for_sid(self, service_sid: str, pn_sid: str) -> str:
        e164 = await self.redis.hget(keys.number_sids(service_sid), pn_sid)
        if not e164:
            raise InvalidParameter(
                f"ProxyIdentifierSid {pn_sid} is not a phone number of this Service", code=80605
            )
        return str(e164)

    # -- sessions --------------------------------------------------------------------------------
    async def create_session(
        self,
        service_sid: str,
        *,
        unique_name: str = "",
        mode: Mode = Mode.VOICE_AND_MESSAGE,
        status: Status = Status.OPEN,
        ttl_s: int | None = None,
        date_expiry_ms: int | None = None,
        participants: list[ParticipantRequest] | tuple[ParticipantRequest, ...] = (),
        session_sid: str | None = None,
    ) -> dict[str, Any]:
        if len(participants) > MAX_PARTICIPANTS:
            raise PoolError(f"a Session may have at most {MAX_PARTICIPANTS} participants", code=80609)
        if status not in (Status.OPEN, Status.IN_PROGRESS):
            raise InvalidParameter(
                f"Status must be open or in-progress when creating a Session, not {status}"
            )
        args: list[str | int] = [
            self.clock.script_now(),
            new_event_id(),
            session_sid or new_sid("KC"),
            unique_name,
            mode.value,
            status.value,
            "" if ttl_s is None else ttl_s,
            "" if date_expiry_ms is None else date_expiry_ms,
            len(participants),
        ]
        for req in participants:
            args.extend(await self._participant_args(service_sid, req))
        return await self.scripts.call_json("create_session", keys.service_prefix(service_sid), *args)

    async def get_session(self, service_sid: str, session_sid: str) -> dict[str, Any]:
        data: dict[str, Any] = cast(
            dict[str, Any], await self.redis.hgetall(keys.session(service_sid, session_sid))
        )
        if not data:
            raise NotFound(f"Session {session_sid} was not found in Service {service_sid}")
        return session_record(session_sid, data)

    async def resolve(self, service_sid: str, sid_or_name: str) -> str:
        """The SID of the Session named in a path: its SID, or the UniqueName of a Session Redis
        holds (as at Twilio). NotFound 80308 ("Session with the unique name not found") otherwise."""
        if SESSION_SID.fullmatch(sid_or_name):
            return sid_or_name
        sid = cast(str | None, await self.redis.get(keys.unique_name(service_sid, sid_or_name)))
        if sid is None:
            raise NotFound(
                f"Session with the unique name {sid_or_name} was not found in Service {service_sid}",
                code=80308,
            )
        return sid

    async def list_sessions(self, service_sid: str, request: PageRequest) -> Page[dict[str, Any]]:
        """Newest first. Sessions whose records Redis let expire are skipped (the sweeper prunes
        them from the index: prune_index)."""
        index = keys.sessions_by_created(service_sid)
        positions, more = await newest_first(self.redis, index, request)
        if not positions:
            return Page.of([], [], request, more)
        async with self.redis.pipeline(transaction=False) as pipe:
            for _, sid in positions:
                pipe.hgetall(keys.session(service_sid, sid))
            rows = await pipe.execute()
        found = [session_record(sid, row) for (_, sid), row in zip(positions, rows, strict=True) if row]
        return Page.of(found, positions, request, more)

    async def prune_index(self, service_sid: str, *, batch: int = 200) -> int:
        """Drop from the listing index the oldest sessions whose records Redis has let expire.
        The sweeper calls it each tick, so the index does not grow with every session ever made."""
        index = keys.sessions_by_created(service_sid)
        oldest = cast(list[str], await self.redis.zrange(index, 0, batch - 1))
        if not oldest:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid in oldest:
                pipe.exists(keys.session(service_sid, sid))
            present = await pipe.execute()
        gone = [sid for sid, there in zip(oldest, present, strict=True) if not there]
        if gone:
            await self.redis.zrem(index, *gone)
        return len(gone)

    async def update_session(
        self,
        service_sid: str,
        session_sid: str,
        *,
        ttl_s: int | None = None,
        date_expiry_ms: int | None = None,
        status: Status | None = None,
    ) -> dict[str, Any]:
        return await self.scripts.call_json(
            "update_session",
            keys.service_prefix(service_sid),
            self.clock.script_now(),
            new_event_id(),
            session_sid,
            "" if ttl_s is None else ttl_s,
            "" if date_expiry_ms is None else date_expiry_ms,
            "" if status is None else status.value,
        )

    async def close_session(self, service_sid: str, session_sid: str) -> dict[str, Any]:
        return await self.update_session(service_sid, session_sid, status=Status.CLOSED)

    async def delete_session(self, service_sid: str, session_sid: str) -> None:
        deleted = await self.scripts.call(
            "delete_session",
            keys.service_prefix(service_sid),
            self.clock.script_now(),
            new_event_id_base(),
            session_sid,
        )
        if not deleted:
            raise NotFound(f"Session {session_sid} was not found in Service {service_sid}")

    async def close_expired(self, service_sid: str, *, limit: int = 500) -> int:
        closed = await self.scripts.call(
            "close_expired",
            keys.service_prefix(service_sid),
            self.clock.script_now(),
            new_event_id_base(),
            limit,
        )
        return int(closed)

    async def settle_unanswered(
        self, service_sid: str, *, grace_ms: int = 2_000, limit: int = 500
    ) -> tuple[int, int]:
        """Mark not relayed the relays whose webhook never answered (settle_unanswered.lua);
        returns (judged, settled). Uses the server's clock: the index holds real deadlines."""
        judged, settled = await self.scripts.call(
            "settle_unanswered", keys.service_prefix(service_sid), "", new_event_id_base(), grace_ms, limit
        )
        return int(judged), int(settled)

    # -- participants ----------------------------------------------------------------------------
    async def add_participant(
        self, service_sid: str, session_sid: str, req: ParticipantRequest
    ) -> dict[str, Any]:
        args = await self._participant_args(service_sid, req)
        return await self.scripts.call_json(
            "add_participant",
            keys.service_prefix(service_sid),
            self.clock.script_now(),
            new_event_id(),
            session_sid,
            *args,
        )

    async def remove_participant(
        self, service_sid: str, session_sid: str, participant_sid: str
    ) -> dict[str, Any]:
        return await self.scripts.call_json(
            "remove_participant",
            keys.service_prefix(service_sid),
            self.clock.script_now(),
            new_event_id(),
            session_sid,
            participant_sid,
        )

    async def get_participant(
        self, service_sid: str, session_sid: str, participant_sid: str
    ) -> dict[str, Any]:
        found = await read_participant(self.redis, service_sid, session_sid, participant_sid)
        if found is None:
            raise NotFound(f"Participant {participant_sid} was not found in Session {session_sid}")
        return found

    async def list_participants(self, service_sid: str, session_sid: str) -> list[dict[str, Any]]:
        members = await read_members(self.redis, service_sid, session_sid)
        if members is None:
            raise NotFound(f"Session {session_sid} was not found in Service {service_sid}")
        return members


async def read_members(
    redis: aioredis.Redis, service_sid: str, session_sid: str
) -> list[dict[str, Any]] | None:
    """A session's live participants, in order, as session_record in _session.lua gives them (None:
    no such session). A session written before they moved into its hash reads from their own
    hashes (the next script to touch it moves them in)."""
    row: dict[str, Any] = cast(dict[str, Any], await redis.hgetall(keys.session(service_sid, session_sid)))
    if not row:
        return None
    sids = part_sids(row.get("parts", ""))
    if sids and "1" + PARTICIPANT_SLOT["identifier"] not in row:
        async with redis.pipeline(transaction=False) as pipe:
            for sid in sids:
                pipe.hgetall(keys.participant(service_sid, sid))
            rows = await pipe.execute()
        return [participant_record(sid, part) for sid, part in zip(sids, rows, strict=True) if part]
    members = []
    for n, sid in enumerate(sids, start=1):
        part = {name: row[f"{n}{code}"] for name, code in PARTICIPANT_SLOT.items() if f"{n}{code}" in row}
        part["session_sid"] = session_sid
        part.setdefault("created_ms", row.get("created_ms", ""))
        part.setdefault("updated_ms", part["created_ms"])
        members.append(participant_record(sid, part))
    # A live session's PN sids are the pool's (_session.lua, with_pn).
    unknown = [p for p in members if "proxy_identifier_sid" not in p and p.get("proxy_identifier")]
    if unknown:
        async with redis.pipeline(transaction=False) as pipe:
            for p in unknown:
                pipe.hget(keys.number(service_sid, p["proxy_identifier"]), "sid")
            for p, pn in zip(unknown, await pipe.execute(), strict=True):
                if pn:
                    p["proxy_identifier_sid"] = pn
    return members


async def read_participant(
    redis: aioredis.Redis,
    service_sid: str,
    session_sid: str,
    participant_sid: str,
    members: list[dict[str, Any]] | None = None,
) -> dict[str, Any] | None:
    """Participant `participant_sid` of the session: a live one (of `members`, read_members' list,
    when the caller has it), or one removed from it (its own hash, with deleted_ms); None when
    neither."""
    if members is None:
        members = await read_members(redis, service_sid, session_sid) or []
    for part in members:
        if part["sid"] == participant_sid:
            return part
    row: dict[str, Any] = cast(
        dict[str, Any], await redis.hgetall(keys.participant(service_sid, participant_sid))
    )
    if not row or row.get("session_sid") != session_sid:
        return None
    return participant_record(participant_sid, row)


def session_record(sid: str, row: dict[str, Any]) -> dict[str, Any]:
    """A session's hash as the scripts read it (session_record in _session.lua): with its sid
    (the key's, not stored), its empty fields as '' and its defaults filled in, without its
    participants' fields (read_members)."""
    row = {name: value for name, value in row.items() if not is_slot_field(name)}
    row["sid"] = sid
    for name in SESSION_OPTIONAL:
        row.setdefault(name, "")
    for name, default in SESSION_DEFAULTS.items():
        row.setdefault(name, default)
    for name in SESSION_AS_CREATED:
        row.setdefault(name, row.get("created_ms", ""))
    return row


def participant_record(sid: str, row: dict[str, Any]) -> dict[str, Any]:
    """A participant as the scripts' views give it: its sid and friendly_name always there."""
    row["sid"] = sid
    row.setdefault("friendly_name", "")
    return row


def part_sids(parts: str) -> list[str]:
    """A session's participant sids from its `parts` field, as part_sids() in _session.lua reads
    it: 32 hex digits per sid without the 'KP', end to end, or (older sessions, odd sids) the sids
    comma-separated."""
    if parts.startswith("KP"):
        return [sid for sid in parts.split(",") if sid]
    return ["KP" + parts[i : i + 32] for i in range(0, len(parts), 32)]
