"""Erasing a person's number from Redis (the hot-path copies), for `maskline audit erase`.

The number lives in Redis in session hashes (a participant's field `{n}i`: sessions/models.py,
PARTICIPANT_SLOT) and the hashes of participants removed from a session (`part:{KP}` field
`identifier`), in the NAMES of its routing pairs (`pair:{identifier}:{proxy}`) and of its
opt-outs (`optout:{identifier}:{proxy}`),
in the sticky proxy numbers (`last:{period}` hashes, field `{identifier}`; `last:{identifier}`
keys before them), in the abuse limits' counters (`rl:` hashes, field `p:{identifier}`), and in
the views carried by events not yet written (`events` streams: the audit writer drains those, see
maskline/erasure.py). Every session the number took part in (live, closed and still readable, or
one it was removed from) is deleted through SessionStore.delete_session: a live one is closed
first, so its pairs are released and `in_use` stays right, and `session.closed` /
`session.deleted` are emitted as for any delete; its participants and interactions go with it.
Then the number's remaining keys are deleted, cooling pairs included (the person asked to be
forgotten; a late caller then simply gets "no session").

Channel identifiers built on the number ("whatsapp:+1...") are erased with it, as audit/erase.py
does. Erasure is rare: a SCAN per Service (MATCH on the Service's hash tag) is fine."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Final

import redis.asyncio as aioredis

from core import keys
from core.errors import NotFound
from sessions.models import PARTICIPANT_SLOT, is_slot_field
from sessions.store import SessionStore

__all__ = ["RedisErasure", "erase_number_from_redis", "glob_escape", "is_identifier_of"]

_SCAN_COUNT: Final = 1000
_IDENTIFIER: Final = PARTICIPANT_SLOT["identifier"]
_GLOB_SPECIAL: Final = str.maketrans({c: "\\" + c for c in "\\*?[]^{}"})


@dataclass
class RedisErasure:
    """What `erase_number_from_redis` removed."""

    services: int = 0  # Services scanned
    sessions_closed: int = 0  # live sessions of the number, closed (pairs released) then deleted
    sessions_deleted: int = 0  # every session of the number deleted (the closed ones included)
    participants: int = 0  # participant hashes left after the sessions went (removed participants)
    pairs: int = 0  # pair keys left after the sessions went (cooling pairs)
    last: int = 0  # sticky proxy numbers (`last:` hash fields, or keys of the earlier form)
    optouts: int = 0  # `optout:` keys

    @property
    def keys_deleted(self) -> int:
        return self.participants + self.pairs + self.last + self.optouts

    def as_dict(self) -> dict[str, int]:
        return {f.name: int(getattr(self, f.name)) for f in fields(self)}


def glob_escape(text: str) -> str:
    """`text` matched literally in a SCAN MATCH pattern (the hash tag's braces included, as
    ServiceStore.delete does)."""
    return text.translate(_GLOB_SPECIAL)


def is_identifier_of(identifier: Any, number_e164: str) -> bool:
    """The identifier is the number itself or a channel identifier built on it ("whatsapp:+1...")."""
    if isinstance(identifier, bytes):
        identifier = identifier.decode(errors="replace")
    return isinstance(identifier, str) and (
        identifier == number_e164 or identifier.endswith(":" + number_e164)
    )


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


async def erase_number_from_redis(
    redis: aioredis.Redis, number_e164: str, *, store: SessionStore | None = None
) -> RedisErasure:
    """Delete every Redis copy of the number in every Service (`ml:services`); returns counts.
    Emits the session events of the sessions it deletes: drain the streams afterwards."""
    store = store or SessionStore(redis)
    counts = RedisErasure()
    for raw_sid in sorted(await redis.smembers(keys.SERVICES)):
        counts.services += 1
        await _erase_in_service(redis, store, _text(raw_sid), number_e164, counts)
    return counts


async def _erase_in_service(
    redis: aioredis.Redis, store: SessionStore, service_sid: str, number: str, counts: RedisErasure
) -> None:
    prefix = keys.service_prefix(service_sid)
    tag = glob_escape(prefix)
    ident = glob_escape(number)

    # 1. Sessions with the number among their participants (fields of the session's hash: `{n}i`),
    # participants of it removed from a session (their own hashes), and the sessions those were in.
    participants: list[str] = []
    sessions: set[str] = set()
    session_key = prefix + "sess:"
    async for key in redis.scan_iter(match=tag + "sess:KC*", count=_SCAN_COUNT):
        name = _text(key)
        kc = name[len(session_key) :]
        if ":" in kc:
            continue  # a session's interaction or message index
        row = await redis.hgetall(key)
        if any(
            is_slot_field(_text(f)) and _text(f).endswith(_IDENTIFIER) and is_identifier_of(v, number)
            for f, v in row.items()
        ):
            sessions.add(kc)
    async for key in redis.scan_iter(match=tag + "part:*", count=_SCAN_COUNT):
        identifier, holder = await redis.hmget(key, ["identifier", "session_sid"])
        if is_identifier_of(identifier, number):
            participants.append(_text(key))
            if holder:
                sessions.add(_text(holder))

    # 2. Pairs whose identifier is the number (`pair:{identifier}:{proxy}`), and their holders.
    pairs = await _named_keys(redis, tag + "pair:*" + ident + ":*", prefix + "pair:", number, proxy=True)
    if pairs:
        holders = await redis.mget(pairs)
        sessions.update(_text(h).split(":", 1)[0] for h in holders if h)

    # 3. The sessions: closed first when live (pairs released, in_use right, events emitted).
    for session_sid in sorted(sessions):
        status = await redis.hget(keys.session(service_sid, session_sid), "status")
        if status is None:
            continue  # gone already (retention, or a stale pair's holder)
        try:
            await store.delete_session(service_sid, session_sid)
        except NotFound:
            continue  # deleted meanwhile
        counts.sessions_deleted += 1
        if _text(status) != "closed":
            counts.sessions_closed += 1

    # 4. What the session deletes left: removed participants, cooling pairs, last:, optout:, PINs.
    lasts = await _named_keys(redis, tag + "last:*" + ident, prefix + "last:", number, proxy=False)
    optouts = await _named_keys(
        redis, tag + "optout:*" + ident + ":*", prefix + "optout:", number, proxy=True
    )
    # PIN mode: the number's live PINs on a shared number, its wrong tries and its lock-out.
    # WhatsApp: its 24-hour windows with proxy numbers (`wa:whatsapp:+1...:{proxy}`).
    for kind in ("pins", "pintries", "pinlock", "wa"):
        pairs += await _named_keys(
            redis, tag + kind + ":*" + ident + ":*", prefix + kind + ":", number, proxy=True
        )
    # Abuse-limit counters (`rl:{kind}:{window}` hashes, field `p:{identifier}`; an hour at most).
    await _delete_fields(redis, tag + "rl:*", "p:", ident, number)
    counts.participants += await _delete(redis, participants)
    counts.pairs += await _delete(redis, pairs)
    counts.last += await _delete(redis, lasts)
    # Sticky proxy numbers (`last:{period}` hashes, field `{identifier}`).
    counts.last += await _delete_fields(redis, tag + "last:*", "", ident, number)
    counts.optouts += await _delete(redis, optouts)


async def _delete_fields(
    redis: aioredis.Redis, match: str, field_prefix: str, ident: str, number: str
) -> int:
    """Delete the fields `<field_prefix><identifier>` whose identifier is the number from the
    hashes whose names match `match`; returns how many."""
    deleted = 0
    async for raw in redis.scan_iter(match=match, count=_SCAN_COUNT):
        if await redis.type(raw) not in ("hash", b"hash"):
            continue  # (`last:{identifier}` strings of the earlier form: deleted as keys)
        fields = [
            f
            async for f, _ in redis.hscan_iter(raw, match=field_prefix + "*" + ident, count=_SCAN_COUNT)
            if is_identifier_of(_text(f)[len(field_prefix) :], number)
        ]
        if fields:
            deleted += int(await redis.hdel(raw, *fields))
    return deleted


async def _named_keys(
    redis: aioredis.Redis, match: str, kind_prefix: str, number: str, *, proxy: bool
) -> list[str]:
    """Keys `<kind_prefix><identifier>[:<proxy>]` whose identifier is the number (the MATCH
    pattern only narrows the scan; each name is checked exactly)."""
    found: list[str] = []
    async for raw in redis.scan_iter(match=match, count=_SCAN_COUNT):
        key = _text(raw)
        if not key.startswith(kind_prefix):
            continue
        rest = key[len(kind_prefix) :]
        identifier = rest.rsplit(":", 1)[0] if proxy else rest
        if is_identifier_of(identifier, number):
            found.append(key)
    return found


async def _delete(redis: aioredis.Redis, names: list[str]) -> int:
    deleted = 0
    for start in range(0, len(names), 500):
        deleted += int(await redis.delete(*names[start : start + 500]))
    return deleted
