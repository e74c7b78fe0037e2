"""Retention: drop whole monthly partitions older than a cut-off (`maskline audit prune`).

A partition goes only when its *whole* month ends before the cut-off, never partially. Its chains
(one per Service and month) go with it, heads included, so verify stays green; the prune itself
is recorded as an `audit.pruned` event. DROP is DDL: the append-only row trigger does not apply."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Final

import asyncpg

from audit.chain import Event, append_events
from core.ids import new_event_id

__all__ = ["prune", "partition_bounds"]

PARTITION_NAME: Final = re.compile(r"^audit_events_p(\d{4})(\d{2})$")

LIST_PARTITIONS: Final = """
SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'audit_events'::regclass
ORDER BY c.relname
"""
# Same lock as audit_ensure_partition (migrations/0002_audit.sql): no partition is created while
# another is dropped.
LOCK_PARTITIONS: Final = "SELECT pg_advisory_xact_lock(hashtext('maskline audit partitions'))"
DELETE_HEADS: Final = "DELETE FROM audit_chain_heads WHERE period = ANY($1::date[])"


def partition_bounds(name: str) -> tuple[datetime, datetime] | None:
    """[start, end) of a monthly partition, from its name; None for anything else (the default)."""
    m = PARTITION_NAME.match(name)
    if not m:
        return None
    year, month = int(m[1]), int(m[2])
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return start, end


async def prune(
    pg: asyncpg.Pool, *, older_than: timedelta, actor: str = "retention", now: datetime | None = None
) -> list[str]:
    """Drop the partitions whose month ended more than `older_than` ago; returns their names."""
    cutoff = (now or datetime.now(UTC)) - older_than
    async with pg.acquire() as conn, conn.transaction():
        await conn.execute(LOCK_PARTITIONS)
        dropped: list[str] = []
        periods = []
        for r in await conn.fetch(LIST_PARTITIONS):
            bounds = partition_bounds(r["relname"])
            if bounds is not None and bounds[1] <= cutoff:
                # The name matched ^audit_events_p\d{6}$, so quoting it is safe.
                await conn.execute(f'DROP TABLE "{r["relname"]}"')
                dropped.append(r["relname"])
                periods.append(bounds[0].date())
        if periods:
            await conn.execute(DELETE_HEADS, periods)
        event = Event(
            id=new_event_id(),
            type="audit.pruned",
            service_sid=None,
            ts_ms=time.time_ns() // 1_000_000,
            data={"actor": actor, "older_than_s": int(older_than.total_seconds()), "partitions": dropped},
        )
        await append_events(conn, [event])
    return dropped
