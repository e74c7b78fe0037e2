"""GDPR erasure of a person's number: crypto-shredding, so the chained rows are never rewritten.

Deleting the number's subject row (token + key) makes the token in every stored event
unresolvable and the personal text encrypted under its key unreadable, while each row stays byte
for byte what its hash covers (verify stays green). The erasure is itself an event
(`audit.erased`, with the actor and the now meaningless token, never the number)."""

from __future__ import annotations

import re
import time
from typing import Final

import asyncpg

from audit.chain import Event, append_events
from core.errors import InvalidParameter
from core.ids import new_event_id

__all__ = ["erase_number"]

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
