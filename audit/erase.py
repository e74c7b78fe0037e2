"""GDPR erasure of a person's number: crypto-shredding, so the chained rows are never rewritten.

Deleting the number's subject row (token + key) makes the token in every stored event
unresolvable and the personal text encrypted under its key unreadable, while each row stays byte
for byte what its hash covers (verify stays green). The erasure is itself an event
(`audit.erased`, with the actor and the now meaningless token, never the number).

Before the shredding, `catch_up` stores every event still waiting in Redis (they hold the number in
clear) and `scrub_dead_letters` deletes the set-aside entries that hold it; maskline/erasure.py runs
the whole erasure (Redis first, then these, then `erase_number`) and checks that no copy is left."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from audit.chain import Event, append_events
from audit.writer import DEAD_LETTERS, GROUP, AuditWriter
from core import keys
from core.errors import InvalidParameter
from core.ids import new_event_id

__all__ = ["erase_number", "CatchUp", "catch_up", "scrub_dead_letters"]

E164: Final = re.compile(r"^\+[1-9][0-9]{1,14}$")

# The number itself and channel identifiers built on it ("whatsapp:+1555..."). FOR UPDATE waits for
# writers that hold the subject (FOR SHARE) to commit, so their rows are erased too.
LOCK_SUBJECTS: Final = """
SELECT subject_id FROM audit_subjects WHERE number = $1 OR number LIKE '%:' || $1 FOR UPDATE
"""
COUNT_EVENTS: Final = "SELECT count(*) FROM audit_events WHERE numbers && $1::text[]"
DELETE_SUBJECTS: Final = "DELETE FROM audit_subjects WHERE subject_id = ANY($1::text[])"


async def erase_number(pg: asyncpg.Pool, number_e164: str, *, actor: str) -> int:
    """Erase a number from the audit log; returns how many stored events concerned it."""
    if not E164.match(number_e164):
        raise InvalidParameter(f"number must be E.164 (+ and up to 15 digits), got {number_e164!r}")
    async with pg.acquire() as conn, conn.transaction():
        tokens = [r["subject_id"] for r in await conn.fetch(LOCK_SUBJECTS, number_e164)]
        count = int(await conn.fetchval(COUNT_EVENTS, tokens)) if tokens else 0
        if tokens:
            await conn.execute(DELETE_SUBJECTS, tokens)
        event = Event(
            id=new_event_id(),
            type="audit.erased",
            service_sid=None,
            ts_ms=time.time_ns() // 1_000_000,
            data={"actor": actor, "subjects": tokens, "events": count},
        )
        await append_events(conn, [event])
    return count


# -- before the shredding: nothing about the number may still wait in Redis ---------------------


@dataclass
class CatchUp:
    """What `catch_up` did: entries it stored (acknowledged), acknowledged entries it found still in
    a stream and deleted, and entries up to the mark still waiting when it gave up (0: caught up)."""

    stored: int = 0
    swept: int = 0
    left: int = 0


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _entry_id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


async def catch_up(
    redis: aioredis.Redis,
    pg: asyncpg.Pool,
    *,
    consumer: str,
    timeout_s: float = 120.0,
    claim_idle_ms: int = 5_000,
    poll_s: float = 0.2,
) -> CatchUp:
    """Store every event emitted so far: drain each events stream up to its last entry at the call
    (the mark), until no entry up to the mark is left in any stream. Entries another writer is
    storing are waited for (it deletes them after its commit); entries idle `claim_idle_ms` are
    claimed (a dead writer's). Storage is exactly once, so running beside other writers is safe.
    Acknowledged entries still in a stream (acknowledged, then the XDEL failed) are deleted."""
    writer = AuditWriter(redis, pg, consumer=consumer, claim_idle_ms=claim_idle_ms)
    await writer.discover_streams()
    streams = sorted(_text(s) for s in await redis.smembers(keys.EVENT_STREAMS))
    marks: dict[str, str] = {}
    for stream in streams:
        last = await redis.xrevrange(stream, count=1)
        if last:
            marks[stream] = _text(last[0][0])
    result = CatchUp()
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            result.stored += await writer.drain_once()
            result.left = 0
            for stream, mark in list(marks.items()):
                left, swept = await _behind(redis, stream, mark)
                result.swept += swept
                result.left += left
                if not left:
                    del marks[stream]
            if not marks or time.monotonic() >= deadline:
                return result
            await asyncio.sleep(poll_s)
    finally:
        await _forget_consumer(redis, streams, consumer)


async def _behind(redis: aioredis.Redis, stream: str, mark: str) -> tuple[int, int]:
    """(entries up to `mark` not stored yet, acknowledged ones found and deleted now)."""
    entries = await redis.xrange(stream, "-", mark, count=10_000) or []
    present = [_text(entry_id) for entry_id, _ in entries]
    if not present:
        return 0, 0
    try:
        pending = await redis.xpending_range(stream, GROUP, "-", mark, 10_000)
        groups = await redis.xinfo_groups(stream)
    except ResponseError:  # no group yet: nothing was delivered
        return len(present), 0
    waiting = {_text(p["message_id"]) for p in pending}
    delivered = next((_text(g["last-delivered-id"]) for g in groups if _text(g["name"]) == GROUP), "0-0")
    acked = [i for i in present if i not in waiting and _entry_id(i) <= _entry_id(delivered)]
    if acked:
        await redis.xdel(stream, *acked)
    return len(present) - len(acked), len(acked)


async def _forget_consumer(redis: aioredis.Redis, streams: list[str], consumer: str) -> None:
    """Drop the drain's consumer from the groups where it holds nothing (no clutter in XINFO)."""
    for stream in streams:
        try:
            for info in await redis.xinfo_consumers(stream, GROUP):
                if _text(info["name"]) == consumer and int(info["pending"]) == 0:
                    await redis.xgroup_delconsumer(stream, GROUP, consumer)
        except ResponseError:
            continue


async def scrub_dead_letters(redis: aioredis.Redis, pattern: re.Pattern[str]) -> int:
    """Delete the dead letters (malformed entries set aside by the writer, never stored in
    Postgres) whose any field name or value matches `pattern`; returns how many."""
    doomed: list[str] = []
    start = "-"
    while batch := await redis.xrange(DEAD_LETTERS, start, "+", count=1000):
        for entry_id, entry in batch:
            if any(pattern.search(_text(k)) or pattern.search(_text(v)) for k, v in (entry or {}).items()):
                doomed.append(_text(entry_id))
        start = "(" + _text(batch[-1][0])
    for at in range(0, len(doomed), 500):
        await redis.xdel(DEAD_LETTERS, *doomed[at : at + 500])
    return len(doomed)
